"""Drill: a registration killed (kill -9) right after it moved ``champion``, before it tagged its decision.

Against MLflow's real sqlite store (one file both processes share; no server: it is the registry's
logic across processes that is drilled). The killed registration's version holds the champion
alias with ``promotion.decision=pending``; the next registration takes the lock over and settles
it. It used to tag it ``failed`` while it stayed champion; now it finishes the move with the
decision the version won it with (written as ``promotion.intent`` before the alias moved), so the
champion is a version with a decision and the next comparison runs against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anet.mlops.registry import lock, registry
from anet.mlops.tracking import tracking

ROOT = Path(__file__).resolve().parents[2]
METRIC = "eval/test/mAP"
# register_candidate, killed (SIGKILL) right after its champion alias moved
KILLED_AFTER_MOVE = """
import os, signal, sys
from mlflow import MlflowClient
from anet.mlops.registry import registry
from anet.mlops.tracking import tracking
tracking.configure(sys.argv[1])
real = MlflowClient.set_registered_model_alias
def set_alias(self, name, alias, version):
    real(self, name, alias, version)
    if alias == "champion":
        os.kill(os.getpid(), signal.SIGKILL)
MlflowClient.set_registered_model_alias = set_alias
registry.register_candidate(sys.argv[2], "drill-kill", sys.argv[3], {"eval/test/mAP": 0.7}, "eval/test/mAP")
"""

pytestmark = pytest.mark.slow


def test_kill_between_the_champion_move_and_the_decision(tmp_path, monkeypatch, drill):
    drill("kill -9 a registration right after it moved champion, before it tagged its decision",
          "the next lock holder finishes it: champion's version is tagged promoted (not failed); next compare is sane")
    for name in [n for n in os.environ if n.startswith(("MLFLOW_", "ANET_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(lock.HEARTBEAT_ENV, "1")
    url = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the local artifact store (./mlruns) goes there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # undone afterwards
    tracking.configure()
    parent = tracking.start_parent_run("drill-models", "drill", None, "")
    with tracking.start_step_run(parent, "register") as run_id:
        model_uri = tracking.log_model(torch.nn.Linear(4, 2), input_example=np.zeros((1, 4), np.float32))
    tracking.end_run(parent)
    first = registry.register_candidate(model_uri, "drill-kill", run_id, {METRIC: 0.5}, METRIC)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ANET_"))},
           "PYTHONPATH": str(ROOT), lock.HEARTBEAT_ENV: "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_MOVE, url, model_uri, run_id], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = {v.version: (v.decision, v.aliases) for v in registry.list_versions("drill-kill")}
    assert before["2"][0] == "pending" and "champion" in before["2"][1]  # the kill hit between the two
    third = registry.register_candidate(model_uri, "drill-kill", run_id, {METRIC: 0.6}, METRIC)
    after = {v.version: v for v in registry.list_versions("drill-kill")}
    assert first.decision == "first-champion"
    assert after["2"].decision == "promoted" and "champion" in after["2"].aliases
    assert "decided by the next lock holder" in after["2"].tags["promotion.note"]
    assert after["2"].tags["promotion.champion_version"] == "1"
    assert (third.decision, third.champion_version, third.champion_value) == ("kept-champion", "2", 0.7)
