"""The whole DAG through kfp.local against a real ``mlflow server`` (sqlite, artifacts on moto S3) and
a DVC remote on the same S3 endpoint.

One temporary project (git + DVC, remote ``s3://dvc-store`` on the moto endpoint) holds a fake
VeRi-776 copy that is pushed to the remote and then deleted, so the prepare step has to
``dvc pull`` it. Three DAG runs on the smoke profile (synthetic data) exercise tracking and the
registry: the first becomes champion, a second one with an unbeatable margin is kept out, a third
one with a better mAP takes over (smoke runs are deterministic; the two configs were measured).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).resolve().parent))

# measured on the smoke set (deterministic), validation mAP (2 held-out identities): untrained 0.597, the
# default 1 + 1 epochs 0.597, 3 + 1 epochs 0.523, 6 + 1 epochs 0.697 (`tests/test_pipeline_e2e.py` picks 6 + 1)
WORSE = {"stage_one.epochs": 0, "stage_two.epochs": 0}
BETTER: dict = {"stage_one.epochs": 6}


def _dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True, text=True)


def _fake_veri(root: Path) -> None:
    from anet.config import SyntheticCfg
    from anet.synthetic.generator import render_dataset
    from anet.synthetic.layouts import write_veri776

    write_veri776(render_dataset(SyntheticCfg(train_ids=8, test_ids=6, images_per_id=6, cameras=3,
                                              render_size=32, difficulty=0.3)), root)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """Servers up, a DVC project whose data lives only on the S3 remote; cwd = that project."""
    import boto3
    from mlflow_server import mlflow_server
    from s3_server import moto_server, s3_env

    base = tmp_path_factory.mktemp("e2e")
    repo = base / "project"
    repo.mkdir()
    saved_cwd, saved_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    with moto_server() as endpoint, s3_env(endpoint), mlflow_server(base / "mlflow", s3_endpoint=endpoint) as url:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dvc-store")
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        _dvc(repo, "init", "-q")
        _dvc(repo, "remote", "add", "-d", "s3remote", "s3://dvc-store/store")
        _fake_veri(repo / "data" / "veri776")
        _dvc(repo, "add", "data")
        _dvc(repo, "push")
        shutil.rmtree(repo / "data")
        shutil.rmtree(repo / ".dvc" / "cache")
        os.environ["MLFLOW_TRACKING_URI"] = url
        os.environ["ANET_PROGRESS"] = "0"
        # the servers here share 2 cores with three pipelines: give them time (the timeouts' own
        # behaviour is tested in test_tracking_outage / test_preflight with servers that never answer)
        os.environ["ANET_MLFLOW_HTTP_TIMEOUT_S"] = "300"
        os.environ["ANET_S3_TIMEOUT_S"] = "60"
        os.chdir(repo)
        try:
            yield {"repo": repo, "url": url, "endpoint": endpoint}
        finally:
            os.chdir(saved_cwd)
            for name in ("ANET_PROGRESS", "ANET_MLFLOW_HTTP_TIMEOUT_S", "ANET_S3_TIMEOUT_S"):
                os.environ.pop(name, None)
            if saved_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def _run(overrides: dict, **kwargs):
    from pipelines.run import run_pipeline

    started = time.monotonic()
    outcome = run_pipeline(dataset="synthetic", profile="smoke", overrides=overrides, echo=False, **kwargs)
    print(f"pipeline run: {time.monotonic() - started:.1f} s -> {outcome.status} {outcome.primary_value}")
    assert outcome.status == "succeeded", outcome.error
    return outcome


def test_prepare_step_pulls_the_dataset_from_the_dvc_remote(project):
    from anet import steps

    assert not (project["repo"] / "data" / "veri776").exists()
    result = steps.prepare_data(str(project["repo"] / "prepared"), profile="smoke", dataset="veri776")
    assert (project["repo"] / "data" / "veri776" / "name_train.txt").is_file()
    descriptor = steps.read_descriptor(project["repo"] / "prepared")
    assert descriptor["dataset"] == "veri776" and Path(descriptor["cache_dir"]).is_dir()
    assert result["metadata"]["images"] > 0


def test_dag_runs_tracks_registers_and_promotes(project):
    from mlflow import MlflowClient

    from anet.mlops.registry.registry import champion_info

    first = _run(WORSE)
    assert first.model_version == "1" and first.champion and first.primary_metric == "eval/val/mAP"
    client = MlflowClient()
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and {"eval/val/mAP", "eval/test/mAP"} <= set(parent.data.metrics)
    assert parent.data.tags["anet.selection"] == "val"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{first.parent_run_id}'")
    assert sorted(r.data.tags["anet.step"] for r in children) == [
        "evaluate", "prepare", "register", "train_stage_one", "train_stage_two"]
    assert parent.data.tags["data.fingerprint"] and parent.data.params["loss.lambda_a"]
    # kfp.local has no PVC: the DAG's /mnt/anet checkpoint root is not used (nor created) on this machine
    assert not Path("/mnt/anet/checkpoints", first.parent_run_id).exists()
    weights = sorted(p.relative_to(first.output_dir).as_posix() for p in Path(first.output_dir).rglob("*.pt"))
    assert [w.rsplit("/", 1)[-1] for w in weights] == ["final.pt", "final.pt"], weights  # one per stage, no last.pt

    from anet.config import RunSettings

    kept = _run(WORSE, settings=RunSettings(promotion_margin=1.0))
    assert kept.model_version == "2" and not kept.champion and kept.decision == "kept-champion"
    assert champion_info("synthetic").version == "1"

    better = _run(BETTER)
    assert better.primary_value > first.primary_value, "the measured better config no longer is: re-pick it"
    assert better.model_version == "3" and better.champion and champion_info("synthetic").version == "3"
    stage_one = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{better.parent_run_id}' "
                                   "and tags.`anet.step` = 'train_stage_one'")[0]
    assert any(k.startswith("train/") for k in stage_one.data.metrics)  # every loss term, per epoch


def test_missing_dataset_fails_fast_with_the_import_hint(project, tmp_path, monkeypatch):
    from anet.errors import UserError
    from pipelines.run import main

    empty = tmp_path / "fresh"
    (empty / "data").mkdir(parents=True)
    monkeypatch.chdir(empty)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"anet data import veri776 <path-or-s3-uri>"):
        from pipelines.run import run_pipeline

        run_pipeline(dataset="veri776", profile="smoke", echo=False)
    assert main(["--dataset", "veri776", "--profile", "smoke"]) == 2
    assert time.monotonic() - started < 20 and not (empty / "local_outputs").exists()


def test_failing_step_stops_the_dag_with_its_reason(project):
    from pipelines.run import run_pipeline

    # the synthetic set has no "model" attribute: stage one refuses it (a config the resolver accepts)
    outcome = run_pipeline(dataset="synthetic", profile="smoke", echo=False,
                           overrides={"stage_one.epochs": 0, "data.attributes": ["color", "model"]})
    assert outcome.status == "failed" and outcome.model_version is None
    assert outcome.error.startswith("training: data.attributes"), outcome.error
    assert "model" in outcome.error and "\n" not in outcome.error
