"""Sweeps as a cluster runs them: MLflow on the real PostgreSQL, the Optuna journal on the real Redis,
two workers in parallel; credentials never travel in a run parameter; file stores refused on a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from anet.errors import UserError
from anet.mlops.sweeps.optuna_bridge import TrialRef, public_storage, storage_for
from pipelines.sweep import parse_args

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = "redis://127.0.0.1:6379/11"  # a database index of its own: the test empties it


def test_a_trial_reference_never_carries_the_storage_password(monkeypatch):
    real = "postgresql://optuna:s3cret@db.internal:5432/sweeps"
    ref = TrialRef("study", public_storage(real), 3, 1)
    assert "s3cret" not in ref.to_json() and ref.storage == "postgresql://optuna:***@db.internal:5432/sweeps"
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    with pytest.raises(UserError, match="anet-optuna"):
        storage_for(ref)
    monkeypatch.setenv("OPTUNA_STORAGE", real)
    assert storage_for(ref) == real
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://optuna:x@other:5432/sweeps")
    with pytest.raises(UserError, match="is not the sweep's storage"):
        storage_for(ref)


def test_a_cluster_sweep_refuses_a_file_store(monkeypatch, tmp_path):
    monkeypatch.setenv("KFP_HOST", "https://kfp.example.org")
    for storage in (None, str(tmp_path / "journal.log"), f"sqlite:///{tmp_path / 'o.db'}"):
        with pytest.raises(UserError, match="pods on the cluster cannot reach"):
            parse_args(["--out", str(tmp_path)] + (["--storage", storage] if storage else []))
    assert parse_args(["--storage", REDIS_DB, "--out", str(tmp_path)]).storage == REDIS_DB


@pytest.fixture()
def postgres_database():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"anet_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"{PG}/test")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG}/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture()
def redis_journal():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_DB)
    client.flushdb()
    yield REDIS_DB
    client.flushdb()


@pytest.mark.integration
@pytest.mark.slow
def test_parallel_sweep_on_postgres_mlflow_and_redis_journal(tmp_path, postgres_database, redis_journal):
    import optuna
    from mlflow_server import mlflow_server

    from anet.mlops.sweeps.optuna_bridge import open_storage

    with mlflow_server(tmp_path / "mlflow", backend_store_uri=postgres_database) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPTUNA_", "KFP_"))}
        env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=url, OPTUNA_STORAGE=redis_journal, ANET_PROGRESS="0",
                   ANET_MLFLOW_HTTP_TIMEOUT_S="300")  # a busy 2-core machine: time, not a timeout test
        cmd = [sys.executable, "-m", "pipelines.sweep", "--dataset", "synthetic", "--profile", "smoke",
               "--trials", "2", "--parallel", "2", "--pruner", "none", "--out", str(tmp_path / "sweeps")]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        study = optuna.load_study(study_name="anet-synthetic-lambdas", storage=open_storage(redis_journal))
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        assert {t.user_attrs["worker_pid"] for t in trials}.__len__() == 2  # two workers, one trial each
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(url)
        for t in trials:
            run = MlflowClient().get_run(t.user_attrs["mlflow_run_id"])
            assert run.info.status == "FINISHED" and "eval/val/mAP" in run.data.metrics
            assert "redis://" not in str(run.data.params) + str(run.data.tags)
