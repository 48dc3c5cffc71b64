"""Safe extraction of .zip / .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz dataset archives.

Every member is checked BEFORE anything is written: absolute paths (``/x``, ``C:\\x``), ``..``
components, links (symbolic or hard) whose target leaves the destination, and device files,
fifos or sockets are refused with a :class:`~anet.errors.UserError` naming the archive and the
member. Tar members are then extracted with Python's ``data`` filter as a second line of defence.

Example:
    >>> extract_archive(Path("VeRi.zip"), Path("/tmp/staging"))
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
import zipfile
from pathlib import Path

from anet.errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DRIVE = re.compile(r"^[A-Za-z]:")


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


def extract_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Check every member, then extract ``archive`` into ``dest`` (created). Returns ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise UserError(f"{archive}: no such archive file")
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        _extract_zip(archive, dest)
    elif is_archive(archive.name):
        _extract_tar(archive, dest)
    else:
        raise UserError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
    return dest


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{archive}: not a readable zip file ({exc})") from None
    with zf:
        for info in zf.infolist():
            check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):  # zip can carry symlinks (Unix external attributes)
                _check_link(archive, info.filename, zf.read(info).decode("utf-8", "replace"))
                raise UserError(f"{archive}: member {info.filename!r} is a symbolic link; dataset archives "
                                "must contain plain files")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # 0 = no type info
                raise UserError(f"{archive}: member {info.filename!r} is not a regular file or folder; "
                                "refusing to extract this archive")
        zf.extractall(dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{archive}: not a readable tar archive ({exc})") from None
    with tf:
        members = tf.getmembers()
        for member in members:
            check_member_name(archive, member.name)
            if member.issym():
                _check_link(archive, member.name, member.linkname)
            elif member.islnk():  # hard-link targets are relative to the archive root
                _check_link(archive, member.name, member.linkname, base="")
            elif not (member.isfile() or member.isdir()):
                raise UserError(f"{archive}: member {member.name!r} is a device, fifo or other special file; "
                                "refusing to extract this archive")
        try:
            tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise UserError(f"{archive}: unsafe member refused ({exc}); refusing to extract this archive") from None
