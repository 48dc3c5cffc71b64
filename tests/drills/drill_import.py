"""Drill: kill -9 ``anet data import`` mid extraction and mid ``dvc add``, then the same command finishes it.

Each row kills the importer's whole process group (tests/drills/kill_import.py) at one point of importing a
small fake VeRi-776 archive (the real layout, one top-level folder, a few hundred files) into a fresh
git + DVC repository with a local remote. The same command again must finish the import: the dataset is
in place with the archive's bytes, data.dvc tracks exactly it, its files are in the DVC cache and the
remote, and no staging folder (``data/.import-veri776-*``) or import marker is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("kill_import.py")
SCHEDULE = [
    ("extract:60", "kill -9 mid extraction (60 files of the archive written)"),
    ("dvc-add:start", "kill -9 as `dvc add` starts (the checked copy is in place, data.dvc unchanged)"),
    ("dvc-add:cache", "kill -9 mid `dvc add` (its first object in the DVC cache)"),
]
EXPECT = "the same command finishes: data.dvc tracks the import, cache + remote complete, no staging left"

pytestmark = pytest.mark.integration


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _dvc(repo: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True,
                          text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    """A fake VeRi-776 (``VeRi/`` with image_train, image_query, image_test, the label files) as .tar.gz."""
    from anet.config import SyntheticCfg
    from anet.synthetic.generator import render_dataset
    from anet.synthetic.layouts import write_veri776

    base = tmp_path_factory.mktemp("import-drill")
    cfg = SyntheticCfg(train_ids=20, test_ids=10, images_per_id=8, cameras=3, render_size=32)
    src = Path(write_veri776(render_dataset(cfg), base / "VeRi"))
    path = base / "VeRi.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname="VeRi")
    return path, src


def _repo(path: Path) -> Path:
    """git init + dvc init + a local default remote."""
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    _dvc(path, "init", "-q")
    (path / ".dvcignore").write_text(".import-*\n")
    with open(path / ".dvc" / "config", "a") as fh:
        fh.write(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {path.parent / 'remote'}\n")
    return path


def _import(repo: Path, archive: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, str(DRIVER), kill, "--"] if kill else [sys.executable, "-m", "anet"]
    argv = [*head, "data", "import", "veri776", str(archive), "--data-dir", "data"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)  # a group of its own: the kill takes the dvc child too


def _staging(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "data").glob(".import-*"))


@pytest.mark.parametrize(("kill", "scenario"), SCHEDULE, ids=[k for k, _ in SCHEDULE])
def test_kill_9_then_the_same_import_finishes(tmp_path, archive, drill, kill, scenario):
    from anet.mlops.storage.dvc import verified_data_hash

    drill(scenario, EXPECT)
    path, src = archive
    repo = _repo(tmp_path / "repo")
    killed = _import(repo, path, kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    if kill.startswith("extract"):
        left = [p for p in (repo / "data").glob(".import-veri776-*") if p.is_dir()]
        assert left and sum(1 for _ in left[0].rglob("*.jpg")) >= 50, "the kill did not hit the extraction"
    else:
        assert (repo / "data" / "veri776").is_dir() and not (repo / "data.dvc").exists(), "the kill missed dvc add"

    again = _import(repo, path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _digests(repo / "data" / "veri776") == _digests(src)
    assert _staging(repo) == [] and not list((repo / ".dvc" / "tmp").glob("anet-import-*"))
    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert verified_data_hash(repo / "data" / "veri776") == md5  # the workspace's own hash is data.dvc's
    assert json.loads(_dvc(repo, "status", "--json") or "{}") == {}  # every file in the cache
    assert json.loads(_dvc(repo, "status", "--cloud", "--json") or "{}") == {}  # and in the remote
    assert md5.endswith(".dir")


def test_staging_leftovers_of_dead_importers_are_removed_live_ones_kept(tmp_path, drill):
    drill("staging folders of dead, live and other hosts' importers at the next import",
          "a dead importer's (and another host's idle 6 h) removed; live ones kept")
    from anet.io import STALE_AFTER_S, host_tag
    from anet.mlops.storage.importer import remove_dead_staging

    dead = subprocess.Popen(["true"])
    dead.wait()
    data = tmp_path / "data"
    names = {"dead": f".import-veri776-{host_tag()}-{dead.pid}-0a1b2c3d", "live": f".import-veri776-{host_tag()}-"
             f"{os.getpid()}-0a1b2c3d", "other_fresh": ".import-veri776-otherhost-12-0a1b2c3d",
             "other_idle": ".import-veri776-otherhost-13-0a1b2c3d", "legacy_idle": ".import-veri776-0a1b2c3d",
             "other_dataset": f".import-vehicleid-{host_tag()}-{dead.pid}-0a1b2c3d"}
    for name in names.values():
        (data / name / "tree" / "VeRi").mkdir(parents=True)
        (data / name / "tree" / "VeRi" / "name_train.txt").write_text("x")
    old = time.time() - STALE_AFTER_S - 60
    for key in ("other_idle", "legacy_idle"):
        for path in [data / names[key], *(data / names[key]).rglob("*")]:
            os.utime(path, (old, old))
    remove_dead_staging(data, "veri776")
    left = {key for key, name in names.items() if (data / name).exists()}
    assert left == {"live", "other_fresh", "other_dataset"}
