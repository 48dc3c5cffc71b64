"""The promotion lock survives crashes: kill -9 or freeze its holder and another process takes over.

ONE real ``mlflow server`` per module (sqlite store). Holders are separate processes, killed with
SIGKILL (no cleanup runs) or frozen with SIGSTOP (alive, but silent: only the lease can tell).
Heartbeats are 1 s here (2 s by default), so a silent holder is taken over after 3 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anet.errors import UserError
from anet.mlops.registry import doctor, lock, registry
from anet.mlops.tracking import tracking

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_S = 1.0  # a beat may take up to 2 s to land on this busy 2-core machine
METRIC = "eval/test/mAP"


@pytest.fixture
def uri(mlflow_uri, monkeypatch):
    """The module's server (conftest.py), with a short lock heartbeat and no ``ANET_*`` from the shell."""
    for name in [n for n in os.environ if n.startswith("ANET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(lock.HEARTBEAT_ENV, str(HEARTBEAT_S))
    return mlflow_uri


@pytest.fixture(scope="module")
def logged(mlflow_url):
    """One logged model to register again and again."""
    tracking.configure(mlflow_url)
    parent = tracking.start_parent_run("lock-models", "lock-test", None, "")
    with tracking.start_step_run(parent, "register") as run_id:
        model_uri = tracking.log_model(torch.nn.Linear(4, 2), input_example=np.zeros((1, 4), np.float32))
    tracking.end_run(parent)
    return model_uri, run_id


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _entries(name: str) -> list[str]:
    return sorted(k for k in _client().get_registered_model(name).tags if k.startswith(lock.PREFIX))


def _spawn(script: str, uri: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ANET_"))}
    env.update(PYTHONPATH=str(ROOT), **{lock.HEARTBEAT_ENV: str(HEARTBEAT_S)})
    return subprocess.Popen([sys.executable, "-c", script, uri, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _await_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()[-3000:]
    return line


HOLDER = """
import sys, time
from mlflow import MlflowClient
from anet.mlops.registry import lock, registry
from anet.mlops.tracking import tracking
tracking.configure(sys.argv[1])
registry._ensure_model(MlflowClient(), sys.argv[2])
held = lock.PromotionLock(MlflowClient(), sys.argv[2])
held.acquire()
print(held.key, flush=True)
try:
    while True:
        time.sleep(0.05)
        held.check()
except lock.LockLost as exc:
    print("lost:", exc, flush=True)
    held.release()
    sys.exit(3)
"""


def test_killed_holder_is_taken_over_within_seconds(uri, caplog):
    name = "anet-lock-killed"
    holder = _spawn(HOLDER, uri, name)
    key = _await_line(holder)
    assert _entries(name) == [key]
    with pytest.raises(UserError, match=r"promotion lock of anet-lock-killed still busy after 1 s \(ahead: pid"):
        lock.PromotionLock(_client(), name, wait_s=1).acquire()  # it is really held
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    start = time.monotonic()
    with lock.PromotionLock(_client(), name, wait_s=30) as taker:
        waited = time.monotonic() - start
        assert taker.taken_over == [key] and _entries(name) == [taker.key]
    assert waited < 10.0
    # same host: taken over because the pid is dead, not after the lease ran out
    assert f"(process {holder.pid} on " in caplog.text and "is gone)" in caplog.text
    assert _entries(name) == []
    holder.stdout.close()
    holder.stderr.close()


def test_frozen_holder_loses_the_lock_by_its_lease_and_never_writes_again(uri):
    name = "anet-lock-frozen"
    holder = _spawn(HOLDER, uri, name)
    key = _await_line(holder)
    os.kill(holder.pid, signal.SIGSTOP)  # alive (pid check says so), but no more heartbeats
    try:
        start = time.monotonic()
        with lock.PromotionLock(_client(), name, wait_s=30) as taker:
            waited = time.monotonic() - start
            assert taker.taken_over == [key]
            os.kill(holder.pid, signal.SIGCONT)
            assert holder.wait(timeout=20) == 3  # it noticed by its own clock, before writing anything
            assert "lost the promotion lock of anet-lock-frozen" in holder.stdout.read()
            taker.check()  # the woken holder did not revive its entry
            assert _entries(name) == [taker.key]
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
        holder.wait(timeout=10)
    assert lock.STALE_BEATS * HEARTBEAT_S <= waited < 10.0
    holder.stdout.close()
    holder.stderr.close()


STUCK_REGISTRATION = """
import sys, time
from anet.mlops.registry import registry
from anet.mlops.tracking import tracking

def stuck(*args, **kwargs):
    print("registered", flush=True)
    time.sleep(600)

tracking.configure(sys.argv[1])
registry._decide_and_move = stuck
registry.register_candidate(sys.argv[2], "lock-crash", sys.argv[3], {"eval/test/mAP": 0.9}, "eval/test/mAP")
"""


def test_crash_inside_the_guarded_unit_leaves_no_undecided_version(uri, logged):
    model_uri, run_id = logged
    first = registry.register_candidate(model_uri, "lock-crash", run_id, {METRIC: 0.5}, METRIC)
    holder = _spawn(STUCK_REGISTRATION, uri, model_uri, run_id)
    assert _await_line(holder) == "registered"
    pending = [v for v in registry.list_versions("lock-crash") if v.decision == "pending"]
    assert [v.version for v in pending] == ["2"]  # registered inside the lock, decision not taken yet
    holder.kill()
    holder.wait(timeout=10)
    start = time.monotonic()
    third = registry.register_candidate(model_uri, "lock-crash", run_id, {METRIC: 0.6}, METRIC)
    assert time.monotonic() - start < 10
    assert (third.version, third.decision, third.champion_version) == ("3", "promoted", first.version)
    decisions = {v.version: (v.decision, v.tags.get("promotion.note", "")) for v in registry.list_versions("lock-crash")}
    assert decisions["2"][0] == "failed" and "died before deciding" in decisions["2"][1]
    assert [d for d, _ in decisions.values()] == ["first-champion", "failed", "promoted"]
    assert _entries("anet-lock-crash") == []
    assert doctor.fail_orphaned_versions("lock-crash") == []  # nothing left for the doctor
    holder.stdout.close()
    holder.stderr.close()


def test_a_failure_inside_the_unit_tags_the_version_failed(uri, logged, monkeypatch):
    model_uri, run_id = logged

    def broken(*args, **kwargs):
        raise RuntimeError("comparison exploded")

    monkeypatch.setattr(registry, "_decide_and_move", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        registry.register_candidate(model_uri, "lock-fail", run_id, {METRIC: 0.5}, METRIC)
    [version] = registry.list_versions("lock-fail")
    assert version.decision == "failed" and "RuntimeError: comparison exploded" in version.tags["promotion.note"]
    assert version.aliases == ("challenger",) and _entries("anet-lock-fail") == []
    monkeypatch.undo()
    assert registry.register_candidate(model_uri, "lock-fail", run_id, {METRIC: 0.4}, METRIC).decision == "first-champion"
