"""The pipeline steps as plain functions (no kfp): smoke profile, local sqlite MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from anet import steps
from anet.config import RunSettings, load_config, resolve_config
from anet.errors import UserError


def test_run_settings_reach_the_config_by_name():
    cfg = resolve_config("smoke", {"stage_two.epochs": 0}, RunSettings(lambda_a=0.5, lambda_van=0.0, epochs=3, seed=7))
    assert (cfg.loss.lambda_a, cfg.loss.lambda_van, cfg.stage_one.epochs, cfg.runtime.seed) == (0.5, 0.0, 3, 7)
    assert cfg.stage_two.epochs == 0 and cfg.loss.lambda_g == load_config("smoke").loss.lambda_g


def test_resolve_config_applies_dataset_and_locations(tmp_path):
    cfg = resolve_config("smoke", {"loss.lambda_g": 2}, dataset="veri776", data_root=str(tmp_path / "v"),
                         cache_root=str(tmp_path / "c"))
    assert (cfg.data.dataset, cfg.data.root, cfg.data.cache_dir) == ("veri776", str(tmp_path / "v"),
                                                                     str(tmp_path / "c"))
    assert cfg.loss.lambda_g == 2.0 and cfg.data.image_size == (32, 32)


def test_prepare_refuses_parameters_beside_a_resolved_config_json(tmp_path):
    cfg = resolve_config("smoke", {})
    cfg_json = cfg.to_json()
    with pytest.raises(UserError, match="lambda_g=3.0"):
        steps.prepare_data(str(tmp_path / "out"), config_json=cfg_json, settings=RunSettings(lambda_g=3.0))
    with pytest.raises(UserError, match="leave the run settings unset"):  # even one that agrees: no read-back
        steps.prepare_data(str(tmp_path / "out"), config_json=cfg_json, settings=RunSettings(seed=cfg.runtime.seed))
    with pytest.raises(UserError, match="overrides"):
        steps.prepare_data(str(tmp_path / "out"), config_json=cfg_json, overrides={"loss.lambda_g": 3.0})
    assert not (tmp_path / "out").exists()


def test_missing_real_dataset_fails_fast_with_the_import_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "veri776").mkdir(parents=True)
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        steps.prepare_data(str(tmp_path / "out"), profile="smoke", dataset="veri776")
    assert "anet data import veri776 <path-or-s3-uri>" in str(err.value) and "data/veri776" in str(err.value)
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()


def test_pruned_checkpoint_skips_evaluate_and_register(tmp_path, capsys):
    cfg_json = resolve_config("smoke").to_json()
    model_dir = tmp_path / "two"
    model_dir.mkdir()
    (model_dir / steps.PRUNED_MARKER).write_text("pruned")
    ev = steps.evaluate(cfg_json, str(tmp_path / "nothing"), str(model_dir), str(tmp_path / "ev"))
    assert ev["status"] == "pruned" and ev["metrics"] == {}
    reg = steps.register(cfg_json, "synthetic", json.dumps(ev), str(model_dir))
    assert reg["status"] == "pruned" and reg["model_version"] is None
    two = steps.train(cfg_json, str(tmp_path / "nothing"), "stage_two", str(tmp_path / "t2"), init_from=str(model_dir))
    assert two["pruned"] and steps.is_pruned(tmp_path / "t2")


def test_a_failing_step_logs_one_error_line(tmp_path, caplog):
    cfg_json = resolve_config("smoke").to_json()
    with pytest.raises(UserError):
        steps.train(cfg_json, str(tmp_path / "missing"), "stage_one", str(tmp_path / "o"))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "error: train: " in lines[0] and "descriptor" in lines[0]


def test_a_final_checkpoint_is_never_replaced_by_last_pt(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"mid-stage state")
    with pytest.raises(UserError, match="final.pt"):
        steps.checkpoint_in(tmp_path)


@pytest.mark.slow
def test_all_steps_end_to_end_with_a_parent_run_the_pipeline_opens_itself(tmp_path, monkeypatch):
    """A run started from the Kubeflow UI has no driver: prepare opens the parent run, register closes it."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ANET_PROGRESS", "0")
    data, cache = str(tmp_path / "data" / "smoke"), str(tmp_path / "cache")
    cfg = resolve_config("smoke", data_root=data, cache_root=cache)
    prep = steps.prepare_data(str(tmp_path / "prep"), config_json=cfg.to_json(), open_parent_run=True)
    cfg_json, parent = prep["config_json"], prep["parent_run_id"]
    assert MlflowClient().get_run(parent).info.status == "RUNNING"
    assert Path(steps.read_descriptor(tmp_path / "prep")["cache_dir"]).is_dir()
    one = steps.train(cfg_json, str(tmp_path / "prep"), "stage_one", str(tmp_path / "one"), parent_run_id=parent)
    two = steps.train(cfg_json, str(tmp_path / "prep"), "stage_two", str(tmp_path / "two"),
                      init_from=str(tmp_path / "one"), parent_run_id=parent)
    assert not one["pruned"] and Path(two["checkpoint"]).is_file()
    ev = steps.evaluate(cfg_json, str(tmp_path / "prep"), str(tmp_path / "two"), str(tmp_path / "ev"),
                        parent_run_id=parent)
    assert ev["status"] == "ok" and 0.0 <= ev["primary_value"] <= 1.0 and "eval/test/R1" in ev["metrics"]
    reg = steps.register(cfg_json, "synthetic", json.dumps(ev), str(tmp_path / "two"), parent_run_id=parent)
    assert reg["model_version"] == "1" and reg["champion"] is True

    client = MlflowClient()
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["anet.step"] for r in children) == [
        "evaluate", "prepare", "register", "train_stage_one", "train_stage_two"]
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and "eval/test/mAP" in run.data.metrics
    assert run.data.tags["anet.outcome"] == "succeeded" and run.data.tags["anet.model_version"] == "1"
    assert run.data.tags["anet.selection"] == "val" and run.data.tags["anet.primary_metric"] == "eval/val/mAP"
    assert "dvc.data_hash" not in run.data.tags  # the smoke data was generated outside any DVC-tracked folder
    assert {"eval/val/mAP", "eval/test/mAP"} <= set(run.data.metrics) and reg["primary_metric"] == "eval/val/mAP"
    assert run.data.tags["data.fingerprint"] == steps.read_descriptor(tmp_path / "prep")["fingerprint"]
    stage_one = next(r for r in children if r.data.tags["anet.step"] == "train_stage_one")
    assert any(k.startswith("train/") for k in stage_one.data.metrics)
