"""The train step on a cluster: GPUs requested must be visible; a retried task resumes from the PVC."""

from __future__ import annotations

import pytest
import torch

from anet import steps
from anet.config import resolve_config
from anet.contract import CHECKPOINT_ROOT_ENV
from anet.errors import UserError
from anet.steps.train_step import check_gpus, remove_run_checkpoints, stage_dir


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: nothing is missing")
def test_requested_gpus_that_are_not_visible_fail_the_step():
    with pytest.raises(UserError, match="requested 2 GPU"):
        check_gpus(2)
    check_gpus(0)


@pytest.mark.slow
def test_a_retried_train_task_resumes_from_the_checkpoint_root(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(CHECKPOINT_ROOT_ENV, str(tmp_path / "pvc" / "checkpoints"))
    cfg = resolve_config("smoke", data_root=str(tmp_path / "data"), cache_root=str(tmp_path / "cache"))
    prep = steps.prepare_data(str(tmp_path / "prep"), config_json=cfg.to_json(), open_parent_run=True)
    parent = prep["parent_run_id"]
    first = steps.train(prep["config_json"], str(tmp_path / "prep"), "stage_one", str(tmp_path / "pod-1"),
                        parent_run_id=parent)
    on_pvc = tmp_path / "pvc" / "checkpoints" / parent / "stage_one"
    assert (on_pvc / "last.pt").is_file() and first["checkpoint"] == str(tmp_path / "pod-1" / "final.pt")
    caplog.clear()
    with caplog.at_level("INFO"):  # the retry: a new pod (new output folder), the same pipeline run
        again = steps.train(prep["config_json"], str(tmp_path / "prep"), "stage_one", str(tmp_path / "pod-2"),
                            parent_run_id=parent)
    assert any("starting at epoch 2" in r.getMessage() for r in caplog.records), "the retry trained again"
    assert torch.equal(*(torch.load(p, weights_only=True)["model"]["j_head.fc.weight"]
                         for p in (first["checkpoint"], again["checkpoint"])))
    remove_run_checkpoints(parent)  # what the evaluate step does once the model is evaluated
    assert not (tmp_path / "pvc" / "checkpoints" / parent).exists()


def test_checkpoints_live_on_the_pvc_only_on_a_cluster(tmp_path, monkeypatch):
    """Only the DAG compiled for a cluster names the PVC checkpoint root; the steps use it when set."""
    import yaml
    from kfp import compiler

    from pipelines.dag import make_pipeline

    for cluster in (True, False):
        path = tmp_path / f"cluster-{cluster}.yaml"
        compiler.Compiler().compile(make_pipeline(gpus=0, cluster=cluster), str(path))
        executors = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]
        named = {e: {v["name"] for v in spec["container"].get("env", [])} for e, spec in executors.items()}
        assert {e for e, names in named.items() if CHECKPOINT_ROOT_ENV in names} == (
            {"exec-train", "exec-train-2", "exec-evaluate"} if cluster else set()), cluster
    root = tmp_path / "pvc" / "checkpoints"
    monkeypatch.setenv(CHECKPOINT_ROOT_ENV, str(root))
    assert stage_dir(tmp_path / "out", "stage_one", "run1") == root / "run1" / "stage_one"
    assert stage_dir(tmp_path / "out", "stage_one", None) == tmp_path / "out"  # no run to resume under
    for run in ("run1", "run2"):
        (root / run / "stage_one").mkdir(parents=True)
        (root / run / "stage_one" / "last.pt").write_bytes(b"x")
    remove_run_checkpoints("run1")
    assert sorted(p.name for p in root.iterdir()) == ["run2"]  # only this run's folder goes
    remove_run_checkpoints(None)
    remove_run_checkpoints("..")  # never a folder outside the root
    assert sorted(p.name for p in root.iterdir()) == ["run2"] and (tmp_path / "pvc").is_dir()
    monkeypatch.delenv(CHECKPOINT_ROOT_ENV)  # kfp.local, the CLI: no PVC, checkpoints stay in the output
    assert stage_dir(tmp_path / "out", "stage_one", "run2") == tmp_path / "out"
    remove_run_checkpoints("run2")
    assert (root / "run2" / "stage_one" / "last.pt").is_file()
