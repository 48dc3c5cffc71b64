"""Small file helpers: nothing is ever left half-written, and what a killed writer left is found again.

Temporary siblings are named ``.<target name>.tmp-<host>-<pid>-<random>[suffix].tmp`` (directories may
end in ``.old``), so a later start can tell a live writer's file from the leftover of a killed one
(:func:`remove_stale_temps`): the owner is dead on this host, or (another host, a reused pid) the
file has not changed for longer than any write takes. ``<host>`` is the host name plus the PID
namespace (``vm_4026531836``): two pods on one shared volume, even with one host name (hostNetwork,
``unshare --pid``), each see only their own pids, so a pid is only checked where it means something.

Example:
    >>> with atomic_path("runs/x/stage_one/last.pt") as tmp:   # .last.pt.tmp-host-4242-k3j9x1qa.tmp
    ...     torch.save(state, tmp)
    >>> remove_stale_temps(Path("runs/x/stage_one"))           # on the next start: what a kill -9 left
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
STALE_AFTER_S = 6 * 3600.0  # a temp file untouched this long is no live write (a 30 GB download included)
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-[A-Za-z0-9_]+.*\.(tmp|old)$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?\.(tmp|old)$")  # before the pid was in the name


def host_tag() -> str:
    """Where this process's pids mean something, as temp names carry it: the host name and the PID
    namespace's inode (letters, digits and ``_`` only, at most 32): ``vm_4026531836``."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())
    try:  # "pid:[4026531836]"; another container or `unshare --pid` has another one
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        namespace = ""
    return f"{host[:21]}_{namespace}" if namespace else host[:32]


def temp_prefix(name: str) -> str:
    """Prefix of a temporary sibling of ``name`` that records its writer: ``.<name>.tmp-<host>-<pid>-``."""
    return f".{name}.tmp-{host_tag()}-{os.getpid()}-"


def _file_mode() -> int:
    """What ``open(..., "w")`` would give a new file under this process's umask (mkstemp gives 0o600)."""
    try:  # Linux: read it without setting it (os.umask both sets and gets, racing other threads)
        status = Path("/proc/self/status").read_text()
        mask = next(int(line.split()[1], 8) for line in status.splitlines() if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Example:
        >>> with atomic_path("out/manifest.parquet") as tmp:
        ...     frame.to_parquet(tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=suffix + ".tmp", dir=target.parent)
    os.fchmod(fd, _file_mode())  # the same permissions a plain write would give, not mkstemp's 0o600
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file and rename (fsynced)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (used to spot leftovers of killed runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(path: Path, now: float | None = None, max_age_s: float = STALE_AFTER_S) -> bool:
    """True for a temp sibling (see the module docstring) whose writer is gone.

    Gone: its pid is dead on this host; or it was written on another host, or before names carried a
    pid, and it has not changed for ``max_age_s``. Our own temp files are never stale.
    """
    match = _TEMP.match(path.name)
    if match is None and _LEGACY.match(path.name) is None:
        return False
    try:
        idle = (time.time() if now is None else now) - _last_change(path)
    except FileNotFoundError:
        return False
    if match is None or match["host"] != host_tag():
        return idle > max_age_s
    pid = int(match["pid"])
    return pid != os.getpid() and (not pid_alive(pid) or idle > max_age_s)


def remove_stale_temps(folder: str | os.PathLike[str], name: str | None = None,
                       max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temp files and folders a killed writer left in ``folder``; returns what was removed.

    ``name`` limits it to temp siblings of that one entry (``.last.pt.tmp-...``). Live writers' files
    stay (see :func:`is_stale_temp`). Each removal is logged with its size.

    Example:
        >>> remove_stale_temps(Path("runs/demo/stage_one"))
        [PosixPath('runs/demo/stage_one/.last.pt.tmp-host-4242-k3j9x1qa.tmp')]
    """
    removed: list[Path] = []
    try:
        entries = [p for p in Path(folder).iterdir() if p.name.startswith(f".{name}." if name else ".")]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for path in entries:
        if not is_stale_temp(path, now, max_age_s):
            continue
        try:
            size = _size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another starter removed it first
            continue
        except OSError as exc:  # not ours to delete, say so and go on: a leftover never stops a run
            log.warning("could not remove %s, left by an interrupted write: %s", path, exc)
            continue
        removed.append(path)
        log.info("removed %s (%.1f MB), left by an interrupted write", path, size / 1e6)
    return removed


def _last_change(path: Path) -> float:
    """mtime of a file; of a folder, the newest of it and its entries (a build writes into its files)."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(path)]
    return max(times)


def _size(path: Path) -> int:
    """Bytes in a file, or in everything under a folder."""
    if not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
