"""Drill: kill -9 right after ``last.pt`` is renamed into place, before the epoch reaches the run log.

The checkpoint of an epoch and its record (the line in ``log.jsonl``, the MLflow metrics) are two
writes; a kill between them used to lose that epoch's record for good (the rerun resumes after it).
Now the checkpoint carries every completed epoch's terms and metrics and a resume hands them to the
callbacks, which add what they lack. The killed-and-rerun run's log must equal an uninterrupted
run's, line for line; the MLflow callback (MLflow's sqlite store) fills the same gap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from anet.mlops.tracking import tracking

ROOT = Path(__file__).resolve().parents[2]

# anet train, killed (SIGKILL: no cleanup at all) right after save_state renamed <stage>/last.pt into place
KILL_AFTER_RENAME = """
import os, signal, sys
import anet.train.engine as engine
stage, epoch = sys.argv[1], int(sys.argv[2])
real = engine.save_state
def save_state(state, path, ctx):
    real(state, path, ctx)
    if (state.meta.stage, state.epoch) == (stage, epoch):
        os.kill(os.getpid(), signal.SIGKILL)
engine.save_state = save_state
from anet.cli import main
sys.exit(main(sys.argv[3:]))
"""
KILLS = [("stage_one", 1), ("stage_one", 2), ("stage_two", 2)]
EXPECT = "the rerun's log.jsonl equals an uninterrupted run's, line for line (no epoch lost)"

pytestmark = pytest.mark.slow


def _train(workdir: Path, out: Path, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """``anet train`` on the smoke profile (2 + 2 epochs, evaluated every epoch), optionally killed."""
    head = [sys.executable, "-c", KILL_AFTER_RENAME, kill[0], str(kill[1])] if kill else [sys.executable, "-m",
                                                                                          "anet"]
    argv = [*head, "train", "--config", "smoke", f"data.root={workdir / 'data'}",
            f"data.cache_dir={workdir / 'cache'}", "stage_one.epochs=2", "stage_two.epochs=2",
            "stage_one.eval_every=1", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("epoch-record-drill")


@pytest.fixture(scope="module")
def straight(workdir) -> Path:
    out = workdir / "straight"
    done = _train(workdir, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("kill", KILLS, ids=[f"{s}-{e}" for s, e in KILLS])
def test_kill_after_the_checkpoint_rename_loses_no_log_line(workdir, straight, drill, kill):
    drill(f"kill -9 right after {kill[0]}'s last.pt of epoch {kill[1]} is renamed, before its log line", EXPECT)
    out = workdir / f"killed-{kill[0]}-{kill[1]}"
    killed = _train(workdir, out, kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _train(workdir, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _log(straight), _log(out)
    assert [(r["stage"], r["epoch"], sorted(r)) for r in got] == [(r["stage"], r["epoch"], sorted(r)) for r in want]
    assert got == want


def test_mlflow_run_gets_the_epochs_it_lacks_once(tmp_path, monkeypatch, drill):
    drill("MLflow run lacks the epoch a kill cut off (resume with the checkpoint's records)",
          "each epoch's train/* and val/* logged exactly once, with the checkpoint's values")
    records = [{"epoch": e, "terms": {"loss": 1.0 / e, "tri_f": 0.5 / e}, "metrics": {"val/mAP": 0.1 * e}}
               for e in (1, 2, 3)]
    monkeypatch.chdir(tmp_path)  # the local artifact store (./mlruns) goes there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # undone afterwards
    tracking.configure()
    with mlflow.start_run() as run:
        callback = tracking.MlflowCallback(run.info.run_id)
        callback.on_epoch_end("stage_one", 1, records[0]["terms"])  # epoch 1 made it; 2 and 3 did not
        callback.on_eval("stage_one", 1, records[0]["metrics"])
        callback.on_epoch_end("stage_one", 2, records[1]["terms"])  # epoch 2's metrics did not
        callback.on_resume("stage_one", records)
        callback.on_resume("stage_one", records)  # a second resume adds nothing
        client = mlflow.MlflowClient()
        history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                   for key in ("train/loss", "train/tri_f", "val/mAP")}
    assert history["train/loss"] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert history["train/tri_f"] == [(1, 0.5), (2, 0.25), (3, 0.5 / 3)]
    assert history["val/mAP"] == [(e, pytest.approx(0.1 * e)) for e in (1, 2, 3)]
