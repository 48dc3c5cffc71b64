"""Where a run's code and data came from: git commit, DVC data hash, dataset fingerprint.

Every MLflow run and every registered model version carries these, so a number in a results table
can be traced back to the exact code and data that produced it::

    from anet.mlops.tracking.lineage import lineage_tags
    lineage_tags(".", fingerprint=prepared.fingerprint)
    # {'git.commit': '014f7fc...', 'dvc.data_hash': '3b1f...dir', 'data.fingerprint': 'a9c2...'}

Nothing here imports dvc or git libraries: the commit comes from the ``git`` executable and the
data hash from parsing ``data.dvc`` (plain YAML).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from anet.contract import BUILD_DATE_ENV, GIT_COMMIT_ENV, IMAGE_REF_ENV
from anet.errors import UserError

UNKNOWN_COMMIT = "unknown"
NO_DATA_HASH = "none"


def default_repo_dir() -> Path:
    """The project checkout this package runs from (the directory above ``anet/``)."""
    return Path(__file__).resolve().parents[2]


def git_commit(repo_dir: str | os.PathLike[str] | None = None) -> str:
    """Full commit hash of ``repo_dir``'s HEAD, with ``+dirty`` if tracked files have changes.

    Returns ``"unknown"`` outside a git checkout or when git is not installed (a container image
    built without ``.git`` is a normal case, not an error).
    """
    repo = Path(repo_dir) if repo_dir is not None else default_repo_dir()
    head = _git(repo, "rev-parse", "--verify", "HEAD")
    if head is None:  # the image has no .git: its build baked the commit in (docker/Dockerfile)
        return os.environ.get(GIT_COMMIT_ENV) or UNKNOWN_COMMIT
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return f"{head}+dirty" if status else head


def _git(repo: Path, *args: str) -> str | None:
    """Run one git command; None when git is missing or the command fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def dvc_data_hash(repo_dir: str | os.PathLike[str] | None = None, dvc_file: str = "data.dvc") -> str:
    """The md5 DVC recorded for the first output of ``data.dvc`` (``"none"`` if there is no such file).

    A directory output's hash ends in ``.dir``, exactly as DVC writes it.
    """
    path = (Path(repo_dir) if repo_dir is not None else default_repo_dir()) / dvc_file
    if not path.is_file():
        return NO_DATA_HASH
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML; restore it with `git checkout {dvc_file}`") from None
    outs = doc.get("outs") if isinstance(doc, dict) else None
    if not outs or not isinstance(outs[0], dict):
        raise UserError(f"{path}: no 'outs' entry; re-create it with `dvc add data`")
    digest = outs[0].get("md5") or outs[0].get("etag")
    return str(digest) if digest else NO_DATA_HASH


def dataset_fingerprint(cache_dir: str | os.PathLike[str]) -> str:
    """Fingerprint of a prepared dataset cache (see ``anet.data.cache.PreparedDataset``)."""
    from anet.data.cache import PreparedDataset  # lazy: keeps this module free of data deps

    return str(PreparedDataset.open(Path(cache_dir)).fingerprint)


def lineage_tags(repo_dir: str | os.PathLike[str] | None = None, fingerprint: str | None = None) -> dict[str, str]:
    """The lineage tags every run and model version carries: the commit, the image the steps ran in
    (``image.ref`` from ``$ANET_IMAGE_REF``, set on every task by ``pipelines.compile``, and the
    build's date), ``data.fingerprint`` when known. ``dvc.data_hash`` is added by the prepare step
    only once it has checked that the data on disk is what DVC tracks (:func:`anet.mlops.storage.dvc.verified_data_hash`)."""
    tags = {"git.commit": git_commit(repo_dir)}
    for env, tag in ((IMAGE_REF_ENV, "image.ref"), (BUILD_DATE_ENV, "image.build_date")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if fingerprint:
        tags["data.fingerprint"] = fingerprint
    return tags
