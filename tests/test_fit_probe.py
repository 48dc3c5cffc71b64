"""Fit before run: a step that does not fit the GPU, or a global batch that does not divide over the
ranks, fails before training in one line (exit 2, the MLflow step run FAILED with that reason, nothing
written). No GPU here: the torch.cuda memory calls are faked (a fake 8 GiB GPU whose step costs grow
with the batch), the probe steps, the message, the CLI's exit path and the MLflow store are real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from anet import steps
from anet.cli import main as cli_main
from anet.config import load_config, resolve_config
from anet.losses import Criterion
from anet.steps.prepare import prepare_from_config
from anet.train import fit, probe
from anet.train.data import build_train_data
from anet.train.fit import DoesNotFit, check_divides, check_fit
from anet.train.runtime import RuntimeContext
from anet.train.stage import build_model_for

pytestmark = pytest.mark.usefixtures("one_thread")
GIB = 1024**3


def _cfg(tmp: Path, *overrides: str):
    return load_config("smoke", [f"data.root={tmp / 'data'}", f"data.cache_dir={tmp / 'cache'}", *overrides])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fit")


@pytest.fixture(scope="module")
def prepared(workdir):
    return prepare_from_config(_cfg(workdir), progress=False)


class FakeGpu:
    """8 GiB, 1 GiB of weights, 0.5 GiB per image in fp32 (0.25 in bf16): the smoke share of 16 images
    needs 9 GiB in fp32; 8 images (2 GPUs) or bf16 fit. Steps really run (on the CPU)."""

    def __init__(self, monkeypatch):
        self.peak = 0
        self.images: list[tuple[int, str]] = []
        real_step = probe.probe_step

        def step(model, criterion, data, batch, device, precision, channels_last):
            images = len(batch.labels)
            self.images.append((images, precision))
            need = GIB + images * GIB * (0.5 if precision == "fp32" else 0.25)
            if need > 8 * GIB:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need / GIB:.2f} GiB")
            real_step(model, criterion, data, batch, device, precision, channels_last)
            self.peak = int(need)

        monkeypatch.setattr(fit, "probe_step", step)
        monkeypatch.setattr(fit, "_probes_memory", lambda device: True)
        for name, fake in {"mem_get_info": lambda device=None: (7 * GIB, 8 * GIB),
                           "memory_allocated": lambda device=None: GIB,
                           "max_memory_allocated": lambda device=None: self.peak,
                           "reset_peak_memory_stats": lambda device=None: None,
                           "empty_cache": lambda: None,
                           "get_device_name": lambda device=None: "Fake GPU 8GB"}.items():
            monkeypatch.setattr(torch.cuda, name, fake)


def test_an_oversized_step_names_its_need_the_gpu_and_what_would_fit(workdir, prepared, monkeypatch):
    cfg = _cfg(workdir)
    gpu = FakeGpu(monkeypatch)
    torch.manual_seed(0)
    model, data = build_model_for(cfg, prepared), build_train_data(prepared, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DoesNotFit) as caught:
        check_fit(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, RuntimeContext(torch.device("cpu")))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("stage_one: one training step does not fit the GPU: 16 images")
    assert "data.p_ids=4 x data.k_imgs=4 over 1 GPU(s), fp32" in message
    # 1 GiB + 16 x 0.5 GiB + Adam's state (~0.1 GiB for the smoke R18), estimated from the halved share that ran
    assert re.search(r"needs ~9\.[12] GiB, the Fake GPU 8GB has 8\.0 GiB", message)
    assert "on 2 GPUs in all (8 images each" in message and re.search(r"runtime.precision=bf16 \(~5\.[12] GiB\)", message)
    assert gpu.images[0] == (16, "fp32") and (8, "fp32") in gpu.images and (16, "bf16") in gpu.images
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats put back


def test_a_step_that_fits_passes_and_leaves_the_model_alone(workdir, prepared, monkeypatch):
    cfg = _cfg(workdir, "runtime.precision=bf16")
    FakeGpu(monkeypatch)
    model, data = build_model_for(cfg, prepared), build_train_data(prepared, cfg)
    position = data.sampler.state_dict()
    check_fit(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, RuntimeContext(torch.device("cpu")))
    assert data.sampler.state_dict() == position and all(p.grad is None for p in model.parameters())


def test_the_train_step_fails_before_training_with_exit_2_and_a_failed_mlflow_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("ANET_CHECKPOINT_ROOT", raising=False)
    FakeGpu(monkeypatch)
    cfg = resolve_config("smoke", data_root=str(tmp_path / "data"), cache_root=str(tmp_path / "cache"))
    prep = steps.prepare_data(str(tmp_path / "prep"), config_json=cfg.to_json(), open_parent_run=True)
    parent, out = prep["parent_run_id"], tmp_path / "train"
    with pytest.raises(DoesNotFit) as caught:
        steps.train(prep["config_json"], str(tmp_path / "prep"), "stage_one", str(out), parent_run_id=parent)
    client = MlflowClient()
    [step_run] = client.search_runs([client.get_run(parent).info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{parent}' and tags.`anet.step` = 'train_stage_one'")
    assert step_run.info.status == "FAILED" and client.get_run(parent).info.status == "FAILED"
    assert client.get_run(parent).data.tags["anet.error"] in (str(caught.value), f"train: {caught.value}")
    assert client.get_run(parent).data.tags["anet.failed_step"] == "train"
    assert not any(out.rglob("*.pt")) and not any(out.rglob("*.json"))  # nothing half-written
    rc = cli_main(["train", "--config", "smoke", f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}",
                   "--stage", "one", "--out", str(tmp_path / "cli"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"error: {caught.value}" and "Traceback" not in "\n".join(err)
    assert not any((tmp_path / "cli").rglob("*.pt"))


def test_a_global_batch_that_does_not_divide_over_the_ranks_is_refused_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(DoesNotFit, match=r"data.p_ids=4 x data.k_imgs=4 .* does not divide over 3 ranks "
                                         r"\(1 node\(s\) x 3 process\(es\)\).* run on 1, 2, 4 ranks"):
        check_divides(4, 4, 3, "1 node(s) x 3 process(es)")
    check_divides(4, 4, 2, "2 nodes")
    monkeypatch.setenv("ANET_NPROC", "3")  # the train step refuses before torchrun starts or data is read
    cfg = load_config("smoke")
    with pytest.raises(DoesNotFit, match="does not divide over 3 ranks"):
        steps.train(cfg.to_json(), str(tmp_path / "no-such-dataset"), "stage_one", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
