"""``anet data import``: bring a dataset into the DVC-tracked datasets root and (optionally) push it.

Sources: a local directory, a local archive (.zip, .tar, .tar.gz, ...) or an S3 URI
(``s3://bucket/VeRi.zip`` for an archive, ``s3://bucket/veri776/`` for a prefix). The copy is
checked with the dataset's reader BEFORE it replaces anything: it is assembled in a staging folder
inside ``data_dir`` (``.import-<dataset>-<host>-<pid>-<random>``: a later import removes those of dead
importers) and renamed to ``data_dir/<dataset>`` only when ``read_dataset`` accepts it; a marker in
``.dvc/tmp`` names that copy until it is versioned, so the same command rerun after a kill finishes it.
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

import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from anet.data.archive import extract_archive, is_archive
from anet.data.readers import read_dataset
from anet.errors import UserError
from anet.io import STALE_AFTER_S, atomic_write_text, host_tag, pid_alive
from anet.mlops.storage.dvc import dvc, dvc_remotes, dvc_root
from anet.mlops.storage.s3 import check_endpoint, download_file, download_prefix

_JUNK = {"__MACOSX", ".DS_Store"}
# .import-<dataset>-<host>-<pid>-<random>; before names carried the writer: .import-<dataset>-<random>
_STAGING = re.compile(r"^\.import-(?P<dataset>[a-z0-9]+)-(?:(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-)?[0-9a-f]+$")
log = logging.getLogger(__name__)


def import_dataset(dataset: str, source: str, data_dir: str | os.PathLike[str] = "data", push: bool = True,
                   progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Copy/extract ``source`` into ``data_dir/<dataset>`` after checking its layout; dvc add (+ push).

    Returns a small JSON-able summary. See the module docstring for sources and remotes. Rerun after a
    kill at any point, the same command finishes the import: staging folders of dead importers are
    removed, and a checked copy already moved into place but not yet versioned is versioned.
    """
    data_dir = Path(data_dir).resolve()
    target = data_dir / dataset
    if data_dir.is_dir():  # created only once the source answers (a failed import leaves no folder)
        remove_dead_staging(data_dir, dataset)
    repo = dvc_root(data_dir)
    marker = None if repo is None else repo / ".dvc" / "tmp" / f"anet-import-{dataset}.json"
    if marker is not None and _interrupted(marker, target, _source_key(source), overwrite):
        log.info("%s: finishing the interrupted import of %s (the checked copy is in place)", target, source)
        rows = len(read_dataset(dataset, target).frame)
    else:
        rows = _copy_in(dataset, source, target, marker, progress, overwrite)
    summary: dict[str, Any] = {"dataset": dataset, "path": str(target), "rows": rows,
                               "dvc": "skipped: not inside a DVC repository", "pushed": False}
    if repo is not None:
        dvc(repo, "add", str(data_dir))
        summary["dvc"] = "added"
        if push and dvc_remotes(repo):
            dvc(repo, "push", str(data_dir) + ".dvc")
            summary["pushed"] = True
        marker.unlink(missing_ok=True)  # the import is complete only now
    return summary


def _copy_in(dataset: str, source: str, target: Path, marker: Path | None, progress: bool,
             overwrite: bool) -> int:
    """Fetch ``source`` into a staging folder, check its layout, move it onto ``target``; its row count.

    ``marker`` (when versioning follows) records the checked copy before it moves, so that a rerun
    after a kill can tell that copy from an older one and finish (:func:`_interrupted`).
    """
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    if source.startswith("s3://"):
        check_endpoint(source)
    staging = target.parent / f".import-{dataset}-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tree = _fetch(source, staging, progress)
        root = _dataset_root(tree)
        manifest = read_dataset(dataset, root)
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            ident = root.stat()
            atomic_write_text(marker, json.dumps({"source": _source_key(source), "target": str(target),
                                                  "inode": ident.st_ino, "device": ident.st_dev}))
        _swap_in(root, target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(manifest.frame)


def _interrupted(marker: Path, target: Path, source: str, overwrite: bool) -> bool:
    """True when an import of ``source`` moved its checked copy onto ``target`` and was killed before
    versioning it. The same copy (same inode: a rename keeps it) of another source is refused unless
    ``overwrite``; a marker whose copy never moved into place is dropped."""
    try:
        record = json.loads(marker.read_text())
        ident = target.stat()
        same = (record["target"], record["inode"], record["device"]) == (str(target), ident.st_ino, ident.st_dev)
    except (OSError, ValueError, KeyError, TypeError):
        same, record = False, {}
    if not same:
        marker.unlink(missing_ok=True)
        return False
    if record["source"] == source:
        return True
    if not overwrite:
        raise UserError(f"{target}: an interrupted import of {record['source']} left it in place but not "
                        f"versioned; rerun `anet data import {target.name} {record['source']}` to finish it, or "
                        "pass --overwrite to replace it")
    return False


def _source_key(source: str) -> str:
    """``source`` as an import marker records it: an S3 URI as given, a local path absolute."""
    return source if source.startswith("s3://") else str(Path(source).expanduser().resolve())


def remove_dead_staging(data_dir: Path, dataset: str, max_idle_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``data_dir/.import-<dataset>-*`` staging folders whose importer is gone; returns them.

    Gone: its pid is dead on this host; or it was made on another host (a pod sharing the volume) or
    before names carried a pid, and nothing in it changed for ``max_idle_s``. Live importers' folders stay.
    """
    removed: list[Path] = []
    for path in sorted(data_dir.glob(f".import-{dataset}-*")):
        match = _STAGING.match(path.name)
        if match is None or match["dataset"] != dataset or not path.is_dir() or path.is_symlink():
            continue
        if match["pid"] is not None and match["host"] == host_tag():
            pid = int(match["pid"])
            gone = pid != os.getpid() and not pid_alive(pid)
        else:
            gone = time.time() - _newest_mtime(path) > max_idle_s
        if gone:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s: the staging folder of an import that was killed", path)
            removed.append(path)
    return removed


def _newest_mtime(folder: Path) -> float:
    """The latest change under ``folder`` (folders change when an entry is added; files when written)."""
    newest = folder.lstat().st_mtime
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in [".", *filenames]:
            try:
                newest = max(newest, (Path(dirpath) / name).lstat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


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
