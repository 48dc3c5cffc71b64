"""DVC for real: data.dvc tracks exactly what `anet data regenerate` renders from the synthetic seed, and
a run records a DVC hash only for data DVC verified."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anet.config import load_config
from anet.mlops.storage.dvc import verified_data_hash
from anet.synthetic.generator import generate_synthetic

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def _dvc(repo: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def _repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    return repo


def test_data_dvc_tracks_what_the_synthetic_seed_regenerates(tmp_path):
    repo = _repo(tmp_path)
    generate_synthetic(load_config("synthetic").data.synthetic, repo / "data" / "synthetic")
    _dvc(repo, "add", "data")
    ours = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    tracked = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert (ours["md5"], ours["nfiles"]) == (tracked["md5"], tracked["nfiles"]), (
        "the renderer's output changed: run `anet data regenerate` fails until `dvc add data` records it")


def test_a_hash_is_reported_only_for_data_dvc_verified(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    small = load_config("smoke").data.synthetic
    generate_synthetic(small, repo / "data" / "smoke")
    _dvc(repo, "add", "data")
    monkeypatch.chdir(repo)
    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert verified_data_hash(repo / "data" / "smoke") == md5
    shutil.rmtree(repo / ".dvc" / "cache")  # a fresh clone: the workspace's own hash is what counts
    assert verified_data_hash(repo / "data" / "smoke") == md5
    generate_synthetic(small, tmp_path / "elsewhere")
    assert verified_data_hash(tmp_path / "elsewhere") is None  # not under a tracked output
    image = next((repo / "data" / "smoke").rglob("*.jpg"))
    image.write_bytes(image.read_bytes()[:-10])  # generated or edited data that was never added
    assert verified_data_hash(repo / "data" / "smoke") is None
    shutil.rmtree(repo / "data")
    assert verified_data_hash(repo / "data" / "smoke") is None
