"""Drill: a brand-new ``git clone`` with an empty DVC cache runs its data step (``make data``) and is clean.

``make data`` (``anet data regenerate``) is the documented first step of a fresh clone: it renders
data/synthetic from its seed, checks it against ``data.dvc`` and puts it into the DVC cache (and the
default remote). The clone is of this checkout's committed tree; the command runs this checkout's code
(``python -P`` with ``PYTHONPATH``: the working tree under test, not the clone's committed copy) in the
clone's folder, with the venv's python, as ``make data`` does. Afterwards ``dvc status`` and ``dvc pull``
must have nothing to report or fetch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECT = "exit 0 (data matches data.dvc; in the DVC cache); then `dvc status` and `dvc pull` are clean"

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}


def _run(clone: Path, *argv: str) -> subprocess.CompletedProcess:
    # -P: the clone's folder (the cwd) is not put first on sys.path, so `anet` is this checkout's working tree
    return subprocess.run([sys.executable, "-P", *argv], cwd=clone, env=_env(), capture_output=True, text=True,
                          timeout=300)


def test_fresh_clone_make_data_then_dvc_is_clean(tmp_path, drill):
    drill("fresh git clone, empty DVC cache: `make data`", EXPECT)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "data").exists()

    made = _run(clone, "-m", "anet.cli", "data", "regenerate")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "matches data.dvc" in made.stdout
    assert (clone / ".dvc" / "cache").is_dir(), "nothing was committed to the DVC cache"

    status = _run(clone, "-m", "dvc", "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    pulled = _run(clone, "-m", "dvc", "pull")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert "Everything is up to date" in pulled.stdout + pulled.stderr, pulled.stdout + pulled.stderr
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout == "", "the data step changed tracked files of the clone"


MODES = """
import os, stat, sys
from pathlib import Path
os.umask(0o077)  # the strictest a user may have: nothing for the group
from anet.config import load_config
from anet.synthetic.generator import generate_synthetic, render_dataset
from anet.synthetic.layouts import write_layout
cfg = load_config("smoke").data.synthetic
generate_synthetic(cfg, Path(sys.argv[1]) / "data" / "smoke")
write_layout("veri776", render_dataset(cfg), Path(sys.argv[1]) / "fake" / "veri776")
for root in (Path(sys.argv[1]) / "data" / "smoke", Path(sys.argv[1]) / "fake" / "veri776"):
    for path in [root, *root.rglob("*")]:
        print(oct(stat.S_IMODE(path.stat().st_mode)), "d" if path.is_dir() else "f", path)
"""


def test_generated_data_is_group_shareable_whatever_the_umask(tmp_path, drill):
    drill("generate synthetic data (own and fake VeRi layout) under umask 077",
          "folders 2775, files 664: the cache's group-shareable modes")
    done = subprocess.run([sys.executable, "-c", MODES, str(tmp_path)], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" ", 2) for line in done.stdout.splitlines()]
    assert len(rows) > 20
    wrong = [r for r in rows if r[0] != {"d": "0o2775", "f": "0o664"}[r[1]]]
    assert not wrong, wrong[:5]
