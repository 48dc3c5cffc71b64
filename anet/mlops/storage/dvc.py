"""DVC from Python: find the repository, run ``dvc`` with this interpreter, pull one dataset folder.

Used by ``anet data import`` (add + push) and by the prepare step (pull when a dataset is absent).

Example:
    >>> repo = dvc_root(Path("data/veri776"))
    >>> dvc_pull(Path("data/veri776"))          # granular: only that folder
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from anet.errors import UserError

log = logging.getLogger(__name__)


def dvc_root(start: Path, or_cwd: bool = False) -> Path | None:
    """The nearest folder at or above ``start`` (then, with ``or_cwd``, the cwd) holding ``.dvc/``."""
    bases = (Path(start).resolve(), Path.cwd().resolve()) if or_cwd else (Path(start).resolve(),)
    for base in bases:
        for folder in (base, *base.parents):
            if (folder / ".dvc").is_dir():
                return folder
    return None


def dvc(repo: Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``repo`` with this interpreter; a failure is a UserError with DVC's message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
        raise UserError(f"{repo}: `dvc {' '.join(args)}` failed: {' / '.join(errors)[:400]}")
    return proc.stdout


def dvc_remotes(repo: Path) -> list[str]:
    """Names of the configured DVC remotes (empty when none: push is skipped)."""
    return [line.split()[0] for line in dvc(repo, "remote", "list").splitlines() if line.strip()]


def default_remote(repo: Path | None) -> str | None:
    """Name of the default DVC remote of ``repo`` (None when there is no repo or no default remote)."""
    if repo is None:
        return None
    try:
        name = dvc(repo, "remote", "default").strip()
    except UserError:
        return None
    return name or None


def dvc_tracks(repo: Path, root: Path) -> bool | None:
    """Whether ``root`` is part of the DVC-tracked tree (None: cannot tell, e.g. remote unreachable)."""
    try:
        from dvc.api import DVCFileSystem  # lazy: dvc's API is heavy and only needed here

        return bool(DVCFileSystem(str(repo)).exists(Path(os.path.relpath(root.resolve(), repo)).as_posix()))
    except Exception:  # noqa: BLE001 - an unreachable remote is reported by the pull itself
        return None


def dvc_pull(root: Path) -> None:
    """``dvc pull`` one dataset folder (granular: only ``root``); a failure names the remote problem."""
    repo = dvc_root(root.parent if root.parent.exists() else Path.cwd(), or_cwd=True)
    if repo is None or not default_remote(repo):
        return
    target = os.path.relpath(root.resolve(), repo)
    log.info("pulling %s from the DVC remote ...", root)
    try:
        dvc(repo, "pull", target)
    except UserError as exc:
        raise UserError(f"{exc}; check the remote and credentials (AWS_*), or import the data with "
                        "`anet data import ...`") from None


def verified_data_hash(root: Path) -> str | None:
    """The md5 DVC tracks for the data under ``root``, only if what is on disk is exactly that.

    The workspace's own hash is compared with the tracked one (``dvc data status``: "unchanged"), so
    a fresh clone whose DVC cache is still empty verifies too (``dvc status`` would report "not in
    cache"). None when ``root`` is not inside a DVC-tracked output, or when the data on disk differs
    (generated or edited data that was never added): MLflow then records no hash rather than one for
    data DVC never saw.
    """
    repo = dvc_root(root.parent if root.parent.exists() else Path.cwd(), or_cwd=True)
    if repo is None or not root.exists():
        return None
    for dvc_file in sorted(p for p in repo.glob("*.dvc") if p.is_file()):
        out = _tracked_output(dvc_file)
        if out is None or not _inside(root.resolve(), (repo / out[0]).resolve()):
            continue
        return out[1] if _workspace_matches(repo, out[0]) else None
    return None


def _workspace_matches(repo: Path, out_path: str) -> bool:
    """Whether the workspace's hash of the tracked output ``out_path`` equals the one its .dvc file records."""
    try:
        status = json.loads(dvc(repo, "data", "status", "--json", "--unchanged") or "{}")
    except (UserError, ValueError):
        return False
    names = {out_path.rstrip("/"), out_path.rstrip("/") + "/"}

    def listed(entry: object) -> bool:  # a list of paths, or {"modified": [...], "added": [...], ...}
        values = entry.values() if isinstance(entry, dict) else [entry]
        return any(names & set(v if isinstance(v, list) else [v]) for v in values)

    changed = listed(status.get("uncommitted", {}))  # added / modified / deleted / unknown
    # "committed": data.dvc differs from git's HEAD (an import not yet committed to git), the files match it
    return not changed and (listed(status.get("unchanged", [])) or listed(status.get("committed", {})))


def _tracked_output(dvc_file: Path) -> tuple[str, str] | None:
    """``(path, md5)`` of a .dvc file's first output."""
    try:
        doc = yaml.safe_load(dvc_file.read_text())
        out = doc["outs"][0]
        return str(out["path"]), str(out["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
