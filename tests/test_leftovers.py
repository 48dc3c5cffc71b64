"""Leftovers of killed writers (issue 12 item 6) and the permissions of a shared prepared cache.

A kill -9 during a checkpoint write leaves ``.last.pt.tmp-<host>-<pid>-*.tmp`` (as large as the
checkpoint); a killed synthetic generation leaves ``.<root>.tmp-<host>-<pid>-*.tmp`` with its images.
The next start removes them when their writer is dead (or, from another host or before names
carried a pid, when they have not changed for :data:`anet.io.STALE_AFTER_S`), never a live writer's.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anet.config import load_config
from anet.io import STALE_AFTER_S, atomic_path, host_tag, is_stale_temp, remove_stale_temps

ROOT = Path(__file__).resolve().parent.parent
KILLED_WRITE = """
import os, signal, sys
from anet.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as fh:
        fh.write(b"x" * 100_000)
        fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path: Path, seconds: float) -> Path:
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_temp_names_carry_host_and_pid_and_get_umask_permissions(tmp_path):
    old = os.umask(0o002)
    try:
        with atomic_path(tmp_path / "last.pt") as tmp:
            assert tmp.name.startswith(f".last.pt.tmp-{host_tag()}-{os.getpid()}-") and tmp.name.endswith(".tmp")
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o664  # as open() would make it, not mkstemp's 0o600
            tmp.write_bytes(b"ok")
    finally:
        os.umask(old)
    assert (tmp_path / "last.pt").read_bytes() == b"ok" and os.listdir(tmp_path) == ["last.pt"]


def test_a_kill_9_mid_write_leaves_a_temp_file_that_the_next_start_removes(tmp_path):
    target = tmp_path / "stage_one" / "last.pt"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], cwd=ROOT, timeout=120)
    assert done.returncode == -signal.SIGKILL
    (left,) = [p for p in target.parent.iterdir()]
    assert left.name.startswith(".last.pt.tmp-") and left.stat().st_size == 100_000 and not target.exists()
    from anet.train.checkpoint import restore_state

    restore_state(None, target, resume=True, seed=0, rank=0)  # nothing to resume: seeds a fresh start
    assert list(target.parent.iterdir()) == []


def test_only_stale_temps_go(tmp_path):
    host, dead = host_tag(), _dead_pid()
    live = subprocess.Popen(["sleep", "60"])
    try:
        names = {
            f".last.pt.tmp-{host}-{dead}-abcd1234.tmp": True,  # writer dead
            f".last.pt.tmp-{host}-{live.pid}-abcd1234.tmp": False,  # writer alive
            f".last.pt.tmp-{host}-{os.getpid()}-abcd1234.tmp": False,  # ours
            f".last.pt.tmp-otherhost-{dead}-abcd1234.tmp": False,  # another host, recent: maybe writing
            ".last.pt.k3j9x1qa.tmp": False,  # before names carried a pid, recent
            "last.pt": False, ".gitignore": False, "notes.tmp": False, ".notes.tmp": False,
        }
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        old = {f".final.pt.tmp-otherhost-{dead}-abcd1234.tmp": True, ".final.pt.k3j9x1qa.tmp": True,
               f".final.pt.tmp-{host}-{live.pid}-abcd1234.tmp": True}  # untouched for longer than any write
        for name in old:
            (tmp_path / name).write_bytes(b"x")
            _age(tmp_path / name, STALE_AFTER_S + 60)
        removed = remove_stale_temps(tmp_path)
        expected = {n for n, stale in {**names, **old}.items() if stale}
        assert {p.name for p in removed} == expected
        assert {p.name for p in tmp_path.iterdir()} == set(names) - expected
    finally:
        live.kill()
        live.wait()
    assert is_stale_temp(tmp_path / f".last.pt.tmp-{host}-{live.pid}-abcd1234.tmp")  # its writer is gone now


def test_an_interrupted_generation_is_removed_on_the_next_start(tmp_path):
    from anet.synthetic.generator import generate_synthetic

    cfg = load_config("smoke").data.synthetic.model_copy(update={"train_ids": 2, "test_ids": 2, "images_per_id": 2})
    leftover = tmp_path / f".smoke.tmp-{host_tag()}-{_dead_pid()}-abcd1234.tmp"
    (leftover / "images").mkdir(parents=True)
    (leftover / "images" / "0001_c001_0000.jpg").write_bytes(b"\xff" * 5000)
    live = subprocess.Popen(["sleep", "60"])
    try:
        running = tmp_path / f".smoke.tmp-{host_tag()}-{live.pid}-abcd1234.tmp"
        running.mkdir()
        manifest = generate_synthetic(cfg, tmp_path / "smoke")
    finally:
        live.kill()
        live.wait()
    assert len(manifest.frame) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["smoke", running.name])


@pytest.mark.parametrize("umask", [0o077, 0o022], ids=["umask 077", "umask 022"])
def test_a_prepared_cache_is_group_readable_whatever_the_umask(tmp_path, umask):
    from anet.data.cache import prepare_dataset
    from anet.synthetic.generator import generate_synthetic

    cfg = load_config("smoke").data.synthetic.model_copy(update={"train_ids": 2, "test_ids": 2, "images_per_id": 2})
    manifest = generate_synthetic(cfg, tmp_path / "data")
    old = os.umask(umask)
    try:
        prepared = prepare_dataset(manifest, tmp_path / "cache", (32, 32), 0.5, progress=False)
    finally:
        os.umask(old)
    folders = [prepared.cache_dir, tmp_path / "cache" / ".memo"]
    files = [p for f in folders for p in f.iterdir()]
    assert len(files) >= 6 and {p.name for p in files} >= {"images.npy", "manifest.parquet", "meta.json", "COMPLETE"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o664"}
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == {"0o2775"}
