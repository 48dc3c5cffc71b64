"""``anet data import``: bring a dataset into the DVC-tracked datasets root and (optionally) push it.

Sources: a local directory, a local archive (.zip, .tar, .tar.gz, ...) or an S3 URI
(``s3://bucket/VeRi.zip`` for an archive, ``s3://bucket/veri776/`` for a prefix). The copy is
checked with the dataset's reader BEFORE it replaces anything: it is assembled in a staging folder
inside ``data_dir`` and renamed to ``data_dir/<dataset>`` only when ``read_dataset`` accepts it.
Archives are extracted safely (anet.data.archive). Then ``dvc add <data_dir>`` updates the root
``data.dvc`` and, when ``push`` is set and a DVC remote is configured, ``dvc push`` uploads it.

No DVC remote is configured in the repository. A user adds one, e.g.::

    dvc remote add -d store /srv/dvc-store                      # a local/NAS folder
    dvc remote add -d store s3://bucket/dvc && dvc remote modify store endpointurl $AWS_ENDPOINT_URL
    # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment (or --local config)

Example:
    >>> import_dataset("veri776", "s3://datasets/VeRi.zip", Path("data"), push=True)
    {'dataset': 'veri776', 'path': '/repo/data/veri776', 'rows': 51035, 'dvc': 'added', 'pushed': True}
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from anet.data.archive import extract_archive, is_archive
from anet.data.readers import read_dataset
from anet.errors import UserError
from anet.mlops.dvc import dvc, dvc_remotes, dvc_root
from anet.mlops.s3 import check_endpoint, download_file, download_prefix

_JUNK = {"__MACOSX", ".DS_Store"}


def import_dataset(dataset: str, source: str, data_dir: str | os.PathLike[str] = "data", push: bool = True,
                   progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Copy/extract ``source`` into ``data_dir/<dataset>`` after checking its layout; dvc add (+ push).

    Returns a small JSON-able summary. See the module docstring for sources and remotes.
    """

    data_dir = Path(data_dir).resolve()
    target = data_dir / dataset
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    if source.startswith("s3://"):

        check_endpoint(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / f".import-{dataset}-{uuid.uuid4().hex[:8]}"
    try:
        tree = _fetch(source, staging, progress)
        root = _dataset_root(tree)
        manifest = read_dataset(dataset, root)
        _swap_in(root, target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary: dict[str, Any] = {"dataset": dataset, "path": str(target), "rows": len(manifest.frame),
                               "dvc": "skipped: not inside a DVC repository", "pushed": False}
    repo = dvc_root(data_dir)
    if repo is not None:
        dvc(repo, "add", str(data_dir))
        summary["dvc"] = "added"
        if push and dvc_remotes(repo):
            dvc(repo, "push", str(data_dir) + ".dvc")
            summary["pushed"] = True
    return summary


def _fetch(source: str, staging: Path, progress: bool) -> Path:
    """Materialise ``source`` as a folder ``staging/tree`` and return it."""
    tree = staging / "tree"
    staging.mkdir(parents=True)
    if source.startswith("s3://"):

        if is_archive(source):
            local = staging / Path(source.rstrip("/")).name
            download_file(source, local, progress)
            return extract_archive(local, tree, label=source)
        download_prefix(source, tree, progress)
        return tree
    path = Path(source).expanduser()
    if path.is_dir():
        _check_local_tree(path)
        shutil.copytree(path, tree, symlinks=False)
        return tree
    if path.is_file() and is_archive(path.name):
        return extract_archive(path, tree)
    if path.exists():
        raise UserError(f"{source}: not a folder or a supported archive (.zip, .tar, .tar.gz, .tgz, ...)")
    raise UserError(f"{source}: no such file or folder (give a folder, an archive or an s3:// URI)")


def _check_local_tree(src: Path) -> None:
    """Refuse special files and symlinks leading outside ``src`` before copying."""
    base = src.resolve()
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                resolved = path.resolve()
                if resolved != base and base not in resolved.parents:
                    raise UserError(f"{path}: symbolic link leads outside {src} (-> {resolved}); "
                                    "copy the real files in")
            elif not (stat.S_ISREG(path.lstat().st_mode) or stat.S_ISDIR(path.lstat().st_mode)):
                raise UserError(f"{path}: not a regular file or folder; remove it from the dataset folder")


def _dataset_root(tree: Path) -> Path:
    """The folder holding the layout: ``tree`` itself, or its only sub-folder (``VeRi/`` in VeRi.zip)."""
    entries = [p for p in tree.iterdir() if p.name not in _JUNK]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return tree


def _swap_in(root: Path, target: Path, staging: Path) -> None:
    """Rename the checked ``root`` onto ``target``; an existing target is moved aside first."""
    if target.exists():
        os.rename(target, staging / "previous")  # removed with the staging folder
    os.rename(root, target)
