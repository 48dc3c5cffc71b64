"""The train step on a cluster: GPUs requested must be visible; a retried task resumes from the PVC."""

from __future__ import annotations

import pytest
import torch

from anet import steps
from anet.config import resolve_config
from anet.errors import UserError
from anet.steps.train_step import check_gpus


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: nothing is missing")
def test_requested_gpus_that_are_not_visible_fail_the_step():
    with pytest.raises(UserError, match="requested 2 GPU"):
        check_gpus(2)
    check_gpus(0)


@pytest.mark.slow
def test_a_retried_train_task_resumes_from_the_checkpoint_root(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ANET_CHECKPOINT_ROOT", str(tmp_path / "pvc" / "checkpoints"))
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
