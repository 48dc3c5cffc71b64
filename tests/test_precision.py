"""runtime.precision: auto on a CPU: fp32 and bf16 are timed on the real model and batch, the faster one
trains, the choice and both timings are logged and reach the callbacks (MLflow); the probe steps leave
no trace, and a resumed stage keeps its choice. No timing is asserted: which one wins depends on the CPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from anet.config import load_config
from anet.losses import Criterion
from anet.steps.prepare import prepare_from_config
from anet.train.callbacks import Callback
from anet.train.data import build_train_data
from anet.train.engine import train_stage
from anet.train.precision import CHOICE_FILE
from anet.train.stage import build_model_for

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp: Path, *overrides: str):
    return load_config("smoke", [f"data.root={tmp / 'data'}", f"data.cache_dir={tmp / 'cache'}", *overrides])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def prepared(workdir):
    return prepare_from_config(_cfg(workdir), progress=False)


class Measured(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, float]]] = []

    def on_measured(self, stage_name: str, params: dict[str, str], metrics: dict[str, float]) -> None:
        self.seen.append((stage_name, params, metrics))


def _train(cfg, prepared, out: Path, callbacks=(), resume: bool = True):
    torch.manual_seed(0)
    model, data = build_model_for(cfg, prepared), build_train_data(prepared, cfg)
    result = train_stage(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, out, config=cfg,
                         callbacks=callbacks, progress=False, resume=resume)
    return torch.load(result.checkpoint, weights_only=True)["model"]


def test_auto_times_both_formats_keeps_one_and_trains_like_that_format(workdir, prepared, caplog):
    cfg = _cfg(workdir, "runtime.precision=auto")
    measured = Measured()
    with caplog.at_level(logging.INFO, logger="anet.train.precision"):
        auto = _train(cfg, prepared, workdir / "auto", [measured])
    [(stage, params, metrics)] = measured.seen
    chosen = params["runtime.precision_used"]
    assert stage == "stage_one" and chosen in ("fp32", "bf16") and params["runtime.precision_source"] == "measured"
    assert set(metrics) == {"runtime/precision_auto/fp32_s_per_step", "runtime/precision_auto/bf16_s_per_step"}
    assert all(v > 0 for v in metrics.values())
    line = next(r.getMessage() for r in caplog.records if "precision=auto" in r.getMessage())
    assert f"training in {chosen}" in line and "fp32" in line and "bf16" in line and " ms" in line
    saved = json.loads((workdir / "auto" / CHOICE_FILE).read_text())
    assert saved["precision"] == chosen and set(saved["seconds_per_step"]) == {"fp32", "bf16"}
    # the probe steps changed nothing: the same weights as a run configured with the chosen format
    fixed = _train(_cfg(workdir, f"runtime.precision={chosen}"), prepared, workdir / "fixed")
    assert fixed.keys() == auto.keys() and all(torch.equal(fixed[k], auto[k]) for k in fixed)


def test_a_resumed_stage_keeps_the_precision_it_started_with(workdir, prepared, caplog):
    cfg = _cfg(workdir, "runtime.precision=auto")
    out = workdir / "resumed"
    out.mkdir()
    (out / CHOICE_FILE).write_text(json.dumps({"precision": "bf16", "seconds_per_step": {}}))
    measured = Measured()
    with caplog.at_level(logging.INFO, logger="anet.train.precision"):
        _train(cfg, prepared, out, [measured])  # no last.pt yet: measured afresh, the stale file is ignored
        assert measured.seen[-1][1]["runtime.precision_source"] == "measured"
        first = measured.seen[-1][1]["runtime.precision_used"]
        (out / CHOICE_FILE).write_text(json.dumps({"precision": "bf16" if first == "fp32" else "fp32"}))
        _train(cfg, prepared, out, [measured])  # the same stage again: it resumes from last.pt
    # last.pt existed: the recorded format is used without timing (whatever this machine would pick now)
    assert measured.seen[-1][1]["runtime.precision_source"] == "resumed"
    assert measured.seen[-1][1]["runtime.precision_used"] == ("bf16" if first == "fp32" else "fp32")
    assert measured.seen[-1][2] == {}
    assert any("resuming in" in r.getMessage() for r in caplog.records)


def test_the_choice_and_both_timings_reach_the_step_run_in_mlflow(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from anet.mlops.tracking.callback import MlflowCallback
    from anet.train.precision import PrecisionChoice

    # set, not only the env var: an earlier test's mlflow.set_tracking_uri stays global in this process
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test (set_tracking_uri writes it too)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    choice = PrecisionChoice("bf16", "measured", {"fp32": 0.25, "bf16": 0.125})
    with mlflow.start_run() as run:
        callback = MlflowCallback()
        callback.on_measured("stage_one", choice.params(), choice.metrics())
        assert callback.flush(final=True)
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.params["runtime.precision_used"] == "bf16" and data.params["runtime.precision_source"] == "measured"
    assert data.metrics == {"runtime/precision_auto/fp32_s_per_step": 0.25, "runtime/precision_auto/bf16_s_per_step": 0.125}
