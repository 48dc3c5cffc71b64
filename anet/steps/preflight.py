"""Up-front checks: every folder a run will write to is writable, before any work starts.

Without them a read-only cache folder, data folder or output folder surfaced as a PermissionError
traceback, and an unwritable ``anet train --out`` only after a full epoch (at the first checkpoint).
Each problem is one :class:`~anet.errors.UserError` line naming the folder, the setting it comes from
and what is wrong. Writability is tested by creating (and removing) a probe file, not with
``os.access``, which answers from this host's view of the mode bits: root passes it on any mode, also
on an NFS share that squashes root, and a FUSE or object-store mount may refuse what it allowed. The
probe meets what the run itself will meet.

The values themselves (image size range, finite learning rates and loss weights) are checked by the
config (:mod:`anet.config`); S3 endpoints by :func:`anet.mlops.storage.s3.check_endpoint`.

Example:
    >>> check_run_paths(cfg, outputs={"--out": Path("runs/demo")})
    >>> check_writable(Path("data"), "--data-dir")
"""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import Mapping
from pathlib import Path

from anet.config import ExperimentConfig
from anet.errors import UserError
from anet.synthetic.generator import is_generated

PROBE_PREFIX = ".anet-write-probe-"


def check_run_paths(cfg: ExperimentConfig, outputs: Mapping[str, str | os.PathLike[str]] | None = None) -> None:
    """Fail at once when a folder this run writes to is not writable.

    Checked: ``data.cache_dir``; the folder ``data.root`` is written in when this run writes the
    dataset (synthetic generation that is not already there writes a sibling and renames it; a DVC
    pull fills an absent or empty root); every ``outputs`` folder, keyed by the setting that names
    it (``"--out"``, ``"--pipeline-root"``).
    """
    check_writable(Path(cfg.data.cache_dir), "data.cache_dir")
    root = Path(cfg.data.root)
    if cfg.data.dataset == "synthetic":
        if not is_generated(cfg.data.synthetic, root):
            check_writable(root.parent, f"data.root={root} (synthetic generation writes it from there)")
    elif not (root.is_dir() and any(root.iterdir())):
        check_writable(root, "data.root (a DVC pull writes the dataset there)")
    for setting, folder in (outputs or {}).items():
        check_writable(Path(folder), setting)


def check_writable(folder: str | os.PathLike[str], setting: str) -> None:
    """UserError unless ``folder`` can be created (if absent) and written to by this user.

    Example:
        >>> check_writable(Path("/etc/passwd/runs"), "--out")
        UserError: /etc/passwd/runs: cannot be a folder, /etc/passwd is a file; --out: choose another ...
    """
    folder = Path(folder).expanduser()
    existing = _nearest_existing(folder)
    hint = f"{setting}: choose another folder or fix its permissions"
    if not existing.is_dir():
        raise UserError(f"{folder}: cannot be a folder, {existing} is a file; {hint}")
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=existing)
    except OSError as exc:
        where = "" if existing == folder else f" in {existing}"
        raise UserError(f"{folder}: not writable ({exc.strerror}{where}, user {_user()}); {hint}") from None
    os.close(fd)
    os.unlink(probe)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what ``mkdir(parents=True)`` would start from)."""
    current = path
    while not os.path.lexists(current) and current != current.parent:
        current = current.parent
    return current


def _user() -> str:
    """This process's effective user name (or uid), as the error line shows it."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
