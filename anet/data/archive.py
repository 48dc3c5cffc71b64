"""Safe extraction of .zip / .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz dataset archives.

Every member is checked BEFORE anything is written: absolute paths (``/x``, ``C:\\x``), ``..``
components, links (symbolic or hard) whose target leaves the destination, and device files,
fifos or sockets are refused with a :class:`~anet.errors.UserError` naming the archive and the
member. Tar members are then extracted with Python's ``data`` filter as a second line of defence.

A corrupt or truncated archive (a bad CRC, compressed data cut short, a damaged header in the middle of
a tar, which ``tarfile`` would otherwise take for the end) is one UserError line naming the archive,
the member and what is wrong; a failing write names the destination instead.

Example:
    >>> extract_archive(Path("VeRi.zip"), Path("/tmp/staging"))
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from anet.errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_COMPRESSION = (((".tar.gz", ".tgz"), "gz"), ((".tar.bz2", ".tbz2"), "bz2"), ((".tar.xz", ".txz"), "xz"))
# what damaged archive data raises (bz2 raises OSError without an errno; with one it is a write failure)
_DATA_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
                NotImplementedError)


def _failure(archive: Path, dest: Path, exc: BaseException, member: str | None) -> UserError:
    """One line for an extraction that broke off: a damaged archive, or the destination refusing a write."""
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, _DATA_ERRORS):
        return UserError(f"{archive}: extracting into {dest} failed ({exc.strerror}: {exc.filename or dest})")
    what = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
    at = f" at member {member!r}" if member else ""
    return UserError(f"{archive}: corrupt or truncated archive{at} ({what}); download it again")


def is_archive(name: str | os.PathLike[str]) -> bool:
    """True when the file name ends with a supported archive suffix."""
    return str(name).lower().endswith(ARCHIVE_SUFFIXES)


def check_member_name(archive: Path, name: str) -> str:
    """Normalised relative member path, or UserError for absolute paths and ``..``."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise UserError(f"{archive}: member {name!r} has an absolute path; refusing to extract this archive")
    if ".." in unified.split("/"):
        raise UserError(f"{archive}: member {name!r} contains '..'; refusing to extract this archive")
    return posixpath.normpath(unified)


def _check_link(archive: Path, name: str, target: str, base: str | None = None) -> None:
    """A link target must stay inside the destination (relative to the link's folder by default)."""
    unified = target.replace("\\", "/")
    folder = posixpath.dirname(name) if base is None else base
    resolved = posixpath.normpath(posixpath.join(folder, unified))
    if unified.startswith("/") or _DRIVE.match(unified) or resolved == ".." or resolved.startswith("../"):
        raise UserError(f"{archive}: member {name!r} links outside the archive (-> {target!r}); "
                        "refusing to extract this archive")


def extract_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str], label: str | None = None) -> Path:
    """Check every member, then extract ``archive`` into ``dest`` (created). Returns ``dest``.

    ``label`` names the archive in error lines instead of its local path (``s3://bucket/VeRi.zip`` for
    a downloaded copy in a staging folder that is gone when the user reads the line).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        if not archive.is_file():
            raise UserError(f"{archive}: no such archive file")
        dest.mkdir(parents=True, exist_ok=True)
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest)
        elif is_archive(archive.name):
            _extract_tar(archive, dest)
        else:
            raise UserError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
    except UserError as exc:
        text = str(exc)
        if label and text.startswith(f"{archive}: "):
            raise UserError(f"{label}: {text[len(str(archive)) + 2:]}") from None
        raise
    return dest


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{archive}: not a readable zip file ({exc}); is it complete? download it again") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):  # zip can carry symlinks (Unix external attributes)
                _check_link(archive, info.filename, zf.read(info).decode("utf-8", "replace"))
                raise UserError(f"{archive}: member {info.filename!r} is a symbolic link; dataset archives "
                                "must contain plain files")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # 0 = no type info
                raise UserError(f"{archive}: member {info.filename!r} is not a regular file or folder; "
                                "refusing to extract this archive")
        for info in infos:
            try:
                zf.extract(info, dest)
            except (*_DATA_ERRORS, RuntimeError, OSError) as exc:  # RuntimeError: encrypted member
                raise _failure(archive, dest, exc, info.filename) from None


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UserError(f"{archive}: not a readable tar archive ({_open_reason(archive, exc)}); is it complete? "
                        "download it again") from None
    with tf:
        try:
            members = tf.getmembers()
            _check_tar_end(tf, archive)
        except (*_DATA_ERRORS, OSError) as exc:
            raise _failure(archive, dest, exc, None) from None
        for member in members:
            check_member_name(archive, member.name)
            if member.issym():
                _check_link(archive, member.name, member.linkname)
            elif member.islnk():  # hard-link targets are relative to the archive root
                _check_link(archive, member.name, member.linkname, base="")
            elif not (member.isfile() or member.isdir()):
                raise UserError(f"{archive}: member {member.name!r} is a device, fifo or other special file; "
                                "refusing to extract this archive")
        _extract_tar_members(tf, members, archive, dest)


def _check_tar_end(tf: tarfile.TarFile, archive: Path) -> None:
    """After the last member only end-of-archive zeros may follow: tarfile stops quietly at a damaged
    header that is not the first, which would drop every member after it without a word."""
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE).strip(b"\0"):
        after = f" after member {tf.members[-1].name!r}" if tf.members else ""
        raise UserError(f"{archive}: corrupt or truncated archive (damaged header at byte {tf.offset}{after}); "
                        "download it again")
    while tf.fileobj.read(1 << 20):  # to the end: gzip and xz check their CRC only there
        pass


def _open_reason(archive: Path, exc: BaseException) -> str:
    """One line: tarfile lists every method it tried; keep the one the file name promises."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = archive.name.lower()
    method = next((m for suffixes, m in _COMPRESSION if name.endswith(suffixes)), "tar")
    tried = [line for line in lines if line.startswith(f"- method {method}:")]
    return (tried[0].removeprefix("- method ") if tried else (lines or [type(exc).__name__])[0])[:200]


def _extract_tar_members(tf: tarfile.TarFile, members: list[tarfile.TarInfo], archive: Path, dest: Path) -> None:
    """Extract with the ``data`` filter, remembering the member at hand to name it when it breaks off."""
    current: list[str] = []

    def data_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        current[:] = [member.name]
        return tarfile.data_filter(member, path)

    try:
        tf.extractall(dest, members=members, filter=data_filter)
    except tarfile.FilterError as exc:
        raise UserError(f"{archive}: unsafe member refused ({exc}); refusing to extract this archive") from None
    except (*_DATA_ERRORS, OSError) as exc:
        raise _failure(archive, dest, exc, current[0] if current else None) from None
