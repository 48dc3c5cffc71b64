"""Helpers the dataset readers share: layout signatures, one-line ``file:line:`` errors, text decoding,
listed-but-missing images. The readers import them from here, so the package's ``read_dataset``
can import the readers at its top without a cycle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from anet.errors import UserError

# Files (and folders, with a trailing "/") whose presence identifies each layout.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "veri776": ("name_train.txt", "train_label.xml", "image_train/"),
    "veriwild": ("train_test_split/vehicle_info.txt", "train_test_split/train_list.txt", "images/"),
    "vehicleid": ("train_test_split/train_list.txt", "attribute/", "image/"),
}
TITLES = {"veri776": "VeRi-776", "veriwild": "VeRi-Wild", "vehicleid": "VehicleID"}
log = logging.getLogger("anet.data.readers")


def _present(root: Path, entry: str) -> bool:
    path = root / entry.rstrip("/")
    return path.is_dir() if entry.endswith("/") else path.is_file()


def check_root(root: Path, dataset: str) -> None:
    """Fail with one line unless ``root`` holds the signature files of ``dataset``'s layout."""
    expected = SIGNATURES[dataset]
    wanted = f"a {TITLES[dataset]} root with {', '.join(expected)}"
    if not root.is_dir():
        problem = "not a directory" if root.exists() else "no such directory"
        raise UserError(f"{root}: {problem}; expected {wanted}")
    missing = [entry for entry in expected if not _present(root, entry)]
    if not missing:
        return
    hint = ""
    others = [d for d, sig in SIGNATURES.items() if d != dataset and all(_present(root, e) for e in sig)]
    if others:
        hint = f"; it looks like a {TITLES[others[0]]} root: use dataset `{others[0]}`"
    else:
        children = sorted(p for p in root.iterdir() if p.is_dir())[:100]  # a dataset folder one level down?
        nested = [p for p in children if all(_present(p, e) for e in expected)]
        if nested:
            hint = f"; did you mean {nested[0]}?"
    raise UserError(f"{root}: not {wanted} (missing {', '.join(missing)}){hint}")


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` or fail with one line saying which file is missing and what it holds."""
    if not path.is_file():
        raise UserError(f"{path}: missing ({what}); re-extract the archive or check the root")
    return path


def line_error(path: Path, lineno: int, what: str) -> UserError:
    """The ``file:line: what is wrong`` error for a malformed line."""
    return UserError(f"{path}:{lineno}: {what}")


def read_text(path: Path, encodings: tuple[str, ...] = ("utf-8-sig",)) -> str:
    """Decode a text file with the first encoding that works; fail with one ``file:line:`` line otherwise."""
    data = path.read_bytes()
    first_error: UnicodeDecodeError | None = None
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            first_error = first_error or exc
    raise decode_error(path, data, first_error, " or ".join(encodings))


def decode_error(path: Path, data: bytes, exc: UnicodeDecodeError | None, encoding: str) -> UserError:
    """The ``file:line: not <encoding> text`` error, at the line of the first undecodable byte."""
    start = exc.start if exc is not None else 0
    lineno = data[:start].count(b"\n") + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    byte = f"byte 0x{data[start]:02x} " if start < len(data) else ""
    return line_error(path, lineno, f"not {encoding} text ({byte}at column {column}); "
                      "re-extract the archive or re-save the file in that encoding")


def iter_lines(path: Path, encodings: tuple[str, ...] = ("utf-8-sig",)) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, stripped line)`` for the non-blank lines; CRLF and CR are handled."""
    for lineno, line in enumerate(read_text(path, encodings).splitlines(), start=1):
        stripped = line.strip()
        if stripped:
            yield lineno, stripped


def read_id_names(path: Path, name_first: bool, encodings: tuple[str, ...] = ("utf-8-sig",)) -> list[str]:
    """Parse a class-name table into a list indexed by class id.

    ``name_first=False``: ``5 red`` (VeRi, ids 1-based, split on the first space).
    ``name_first=True``: ``<name> 117`` (VehicleID, ids 0-based, split on the LAST space, since names
    contain spaces). Ids must be contiguous.
    """
    table: dict[int, str] = {}
    for lineno, line in iter_lines(path, encodings):
        if name_first:
            name, _, number = line.rpartition(" ")
        else:
            number, _, name = line.partition(" ")
        name, number = name.strip(), number.strip()
        if not name or not number.lstrip("-").isdigit():
            shape = "'<name> <id>'" if name_first else "'<id> <name>'"
            raise line_error(path, lineno, f"expected {shape}, got {line!r}")
        table[int(number)] = name
    base = 0 if name_first else 1
    ids = sorted(table)
    if ids != list(range(base, base + len(ids))):
        raise UserError(f"{path}: class ids must run {base}..{base + len(ids) - 1} without gaps, got {ids[:8]}...")
    return [table[i] for i in ids]


def check_images(root: Path, list_file: Path, image_dir: str, names: Iterable[str],
                 listing: dict[str, set[str]] | None = None) -> int:
    """Count the images named by ``list_file`` that are absent under ``root / image_dir``.

    Missing images are logged (count and samples) and returned, not raised: the prepare step
    quarantines them against ``data.quarantine_max_fraction``. When EVERY image of a non-empty list is
    missing, the root is wrong (or the archive was not extracted): that is one UserError line.
    ``names`` are paths relative to ``image_dir`` (``a.jpg`` or ``00001/000004.jpg``). Each folder is
    listed once (pass the same ``listing`` dict for several lists), which is much faster than one
    ``stat`` per image on a network disk.
    """
    listing = {} if listing is None else listing
    base_dir = os.path.join(root, image_dir)
    names = list(names)
    missing: list[str] = []
    for name in names:
        folder, _, base = name.rpartition("/")
        directory = os.path.join(base_dir, folder) if folder else base_dir
        if directory not in listing:
            try:
                listing[directory] = set(os.listdir(directory))
            except (FileNotFoundError, NotADirectoryError):
                listing[directory] = set()
        if base not in listing[directory]:
            missing.append(name)
    if missing and len(missing) == len(names):
        raise UserError(f"{list_file}: all {len(missing)} listed images are missing under {image_dir}/ "
                        f"(e.g. {', '.join(missing[:3])}); re-extract the archive or check the root")
    if missing:
        log.warning("%s: %d listed image%s missing under %s/ (e.g. %s); they will be quarantined as 'missing'",
                    list_file, len(missing), "" if len(missing) == 1 else "s", image_dir, ", ".join(missing[:3]))
    return len(missing)
