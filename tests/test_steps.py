"""The pipeline steps as plain functions (no kfp): smoke profile, local sqlite MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from anet import steps
from anet.errors import UserError


def test_pipeline_overrides_merge_typed_parameters():
    merged = json.loads(steps.pipeline_overrides('["stage_two.epochs=0"]', lambda_a=0.5, lambda_g=-1.0,
                                                 lambda_van=0.0, epochs=3, seed=7, promotion_margin=-1.0))
    assert merged == ["stage_two.epochs=0", "loss.lambda_a=0.5", "loss.lambda_van=0.0", "stage_one.epochs=3",
                      "runtime.seed=7"]
    assert json.loads(steps.pipeline_overrides("")) == []
    with pytest.raises(UserError, match="JSON list"):
        steps.pipeline_overrides('{"a": 1}')


def test_resolve_config_applies_dataset_and_locations(tmp_path):
    cfg = steps.resolve_config("veri776", "smoke", ["loss.lambda_g=2"], str(tmp_path / "v"), str(tmp_path / "c"))
    assert (cfg.data.dataset, cfg.data.root, cfg.data.cache_dir) == ("veri776", str(tmp_path / "v"),
                                                                     str(tmp_path / "c"))
    assert cfg.loss.lambda_g == 2.0 and cfg.data.image_size == (32, 32)


def test_missing_real_dataset_fails_fast_with_the_import_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "veri776").mkdir(parents=True)
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        steps.prepare_data("veri776", "smoke", "[]", "", "", str(tmp_path / "out"))
    assert "anet data import veri776 <path-or-s3-uri>" in str(err.value) and "data/veri776" in str(err.value)
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()


def test_pruned_checkpoint_skips_evaluate_and_register(tmp_path, capsys):
    cfg_json = steps.resolve_config("synthetic", "smoke", []).to_json()
    model_dir = tmp_path / "two"
    model_dir.mkdir()
    (model_dir / steps.PRUNED_MARKER).write_text("pruned")
    ev = steps.evaluate(cfg_json, str(tmp_path / "nothing"), str(model_dir), str(tmp_path / "ev"), "")
    assert ev["status"] == "pruned" and ev["metrics"] == {}
    reg = steps.register(cfg_json, "synthetic", json.dumps(ev), str(model_dir), "")
    assert reg["status"] == "pruned" and reg["model_version"] is None
    two = steps.train(cfg_json, str(tmp_path / "nothing"), "stage_two", str(model_dir), str(tmp_path / "t2"), "", "")
    assert two["pruned"] and steps.is_pruned(tmp_path / "t2")


def test_a_failing_step_prints_one_error_line(tmp_path, capsys):
    cfg_json = steps.resolve_config("synthetic", "smoke", []).to_json()
    with pytest.raises(UserError):
        steps.train(cfg_json, str(tmp_path / "missing"), "stage_one", "", str(tmp_path / "o"), "", "")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: train: ") and "descriptor" in lines[0]


@pytest.mark.slow
def test_all_steps_end_to_end_with_nested_mlflow_runs(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ANET_PROGRESS", "0")
    data, cache = str(tmp_path / "data" / "smoke"), str(tmp_path / "cache")
    cfg = steps.resolve_config("synthetic", "smoke", [], data, cache)
    parent = steps.start_pipeline_run("synthetic", "smoke", cfg.to_json(), {"test": "steps"})

    prep = steps.prepare_data("synthetic", "smoke", "[]", data, cache, str(tmp_path / "prep"), parent)
    cfg_json = prep["config_json"]
    assert Path(steps.read_descriptor(tmp_path / "prep")["cache_dir"]).is_dir()
    one = steps.train(cfg_json, str(tmp_path / "prep"), "stage_one", "", str(tmp_path / "one"), parent, "")
    two = steps.train(cfg_json, str(tmp_path / "prep"), "stage_two", str(tmp_path / "one"), str(tmp_path / "two"),
                      parent, "")
    assert not one["pruned"] and Path(two["checkpoint"]).is_file()
    ev = steps.evaluate(cfg_json, str(tmp_path / "prep"), str(tmp_path / "two"), str(tmp_path / "ev"), parent)
    assert ev["status"] == "ok" and 0.0 <= ev["primary_value"] <= 1.0 and "eval/test/R1" in ev["metrics"]
    reg = steps.register(cfg_json, "synthetic", json.dumps(ev), str(tmp_path / "two"), parent)
    assert reg["model_version"] == "1" and reg["champion"] is True
    steps.finish_pipeline_run(parent, "succeeded", reg)

    client = MlflowClient()
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["anet.step"] for r in children) == [
        "evaluate", "prepare", "register", "train_stage_one", "train_stage_two"]
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and "eval/test/mAP" in run.data.metrics
    assert run.data.tags["data.fingerprint"] == steps.read_descriptor(tmp_path / "prep")["fingerprint"]
    stage_one = next(r for r in children if r.data.tags["anet.step"] == "train_stage_one")
    assert any(k.startswith("train/") for k in stage_one.data.metrics)
