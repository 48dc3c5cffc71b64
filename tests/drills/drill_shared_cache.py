"""Drill: two "pods" prepare the same cache on one shared volume, each in its own PID namespace.

The second pod is ``unshare --pid --fork --mount-proc`` (same host name, as hostNetwork pods have):
it cannot see the first one's pids. Each prepare is held on its first image until the drill lets it
go, so the second one starts while the first one's build is live. Temp folders used to carry only
the pid, and the second pod's clean-up took the first one's live build for a dead one and deleted it;
the first then published a cache marked COMPLETE without ``images.npy`` and every later run failed
with a traceback. Now both finish, the published cache is complete, and one found incomplete is
rebuilt by the next prepare.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anet.config import load_config
from anet.data.cache import incomplete
from anet.steps.prepare import prepare_from_config

ROOT = Path(__file__).resolve().parents[2]
# A prepare that waits, on its first image, until the file argv[1] exists (argv[2] says it is waiting)
HELD_PREPARE = """
import sys, time
from pathlib import Path
import anet.data.cache as cache
from anet.config import load_config
from anet.steps.prepare import prepare_from_config
go, waiting = Path(sys.argv[1]), Path(sys.argv[2])
real = cache.decode_resize
def decode_resize(*args, **kwargs):
    waiting.touch()
    while not go.exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
cache.decode_resize = decode_resize
prepared = prepare_from_config(load_config("smoke", sys.argv[3:]), progress=False)
print(prepared.cache_dir, prepared.images.shape)
"""
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_works() -> str:
    """Why a second PID namespace cannot be made here ("" when it can)."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"unshare --pid refused: {probe.stderr.strip()[:120]}"


def _await(path: Path, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"{what} ended early: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{what} never reached its first image"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_two_pods_in_two_pid_namespaces_build_one_complete_cache(tmp_path, drill):
    drill("two pods (two PID namespaces, unshare) prepare the same cache on one volume at once",
          "neither deletes the other's live build; both end 0; the published cache is complete and loads")
    if reason := _unshare_works():
        pytest.skip(reason)
    overrides = [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}"]
    prepare_from_config(load_config("smoke", [*overrides[:1], f"data.cache_dir={tmp_path / 'warm'}"]),
                        progress=False)  # generates the data; the shared cache stays empty
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    marks = {name: tmp_path / name for name in ("go-a", "at-a", "go-b", "at-b")}

    def held(head: list[str], pod: str) -> subprocess.Popen:
        return subprocess.Popen([*head, sys.executable, "-c", HELD_PREPARE, str(marks[f"go-{pod}"]),
                                 str(marks[f"at-{pod}"]), *overrides], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    pod_a = held([], "a")
    _await(marks["at-a"], pod_a, "pod A")  # A's build folder is live and holds images.npy
    pod_b = held(UNSHARE, "b")
    _await(marks["at-b"], pod_b, "pod B (second PID namespace)")  # B has run its clean-up
    marks["go-a"].touch()
    code_a, _, err_a = _finish(pod_a)
    marks["go-b"].touch()
    code_b, _, err_b = _finish(pod_b)
    assert (code_a, code_b) == (0, 0), f"pod A: {err_a[-2000:]}\npod B: {err_b[-2000:]}"
    [cache_dir] = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert incomplete(cache_dir) == ""
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]
    assert leftovers == []

    (cache_dir / "images.npy").unlink()  # what the old race published: COMPLETE without images.npy
    again = prepare_from_config(load_config("smoke", overrides), progress=False)  # rebuilt, not loaded
    assert again.cache_dir == cache_dir and incomplete(cache_dir) == ""
    assert again.images.max() > 0  # the images are back
