"""Drill: kill -9 a smoke training at points of both stages, rerun it, compare with an uninterrupted run.

Each row of :data:`SCHEDULE` kills ``anet train`` (tests/drills/kill_train.py) at one point -- mid
epoch, halfway through writing ``last.pt``, halfway through copying ``final.pt`` -- then reruns the
same command, which resumes. The weights of both stages' ``final.pt`` must equal those of an
uninterrupted run bit for bit, the run log must hold the same epochs with the same loss values, and
no temp file may be left (the half-written one is removed by the rerun). Both stages run two epochs
of four steps (smoke profile), with a milestone and a warm-up epoch so the scheduler state matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("kill_train.py")
SCHEDULE = [
    ("step:stage_one:1:2", "kill -9 in stage one, epoch 1 step 2 (no checkpoint yet)"),
    ("save:stage_one:1", "kill -9 halfway through writing stage one's last.pt (epoch 1)"),
    ("step:stage_one:2:3", "kill -9 in stage one, epoch 2 step 3"),
    ("copy:stage_one", "kill -9 halfway through copying stage one's final.pt"),
    ("step:stage_two:1:1", "kill -9 in stage two, epoch 1 step 1"),
    ("save:stage_two:1", "kill -9 halfway through writing stage two's last.pt (epoch 1)"),
    ("step:stage_two:2:2", "kill -9 in stage two, epoch 2 step 2"),
]
EXPECT = "the rerun resumes; both final.pt equal an uninterrupted run bit for bit; same log; no temp file left"

pytestmark = pytest.mark.slow


def _train(workdir: Path, out: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    """``anet train`` on the smoke profile (2 + 2 epochs) in a subprocess, optionally with a kill point."""
    head = [sys.executable, str(DRIVER), kill, "--"] if kill else [sys.executable, "-m", "anet"]
    argv = [*head, "train", "--config", "smoke", f"data.root={workdir / 'data'}",
            f"data.cache_dir={workdir / 'cache'}", "stage_one.epochs=2", "stage_one.milestones=[1]",
            "stage_one.warmup_epochs=1", "stage_two.epochs=2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _temps(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if ".tmp-" in p.name)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["model"]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume-drill")


@pytest.fixture(scope="module")
def straight(workdir) -> Path:
    """The uninterrupted run (it also generates and prepares the data every drill then reuses)."""
    out = workdir / "straight"
    done = _train(workdir, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize(("kill", "scenario"), SCHEDULE, ids=[kill for kill, _ in SCHEDULE])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(workdir, straight, drill, kill, scenario):
    drill(scenario, EXPECT)
    out = workdir / kill.replace(":", "-")
    killed = _train(workdir, out, kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    if kill.startswith(("save", "copy")):
        assert _temps(out), "the kill left no half-written temp file: the drill did not hit the write"
    resumed = _train(workdir, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _temps(out) == []
    for stage in ("stage_one", "stage_two"):
        want, got = _weights(straight / stage / "final.pt"), _weights(out / stage / "final.pt")
        assert want.keys() == got.keys()
        differ = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differ, f"{stage}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    assert _log(out) == _log(straight)
