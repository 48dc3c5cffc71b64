"""VeRi-Wild reader (layout and quirks: shared/research/reid-anchors.md section 1.2).

Example::

    from anet.data.readers.veriwild import read_veriwild
    manifest = read_veriwild("data/veriwild")    # holds images/ and train_test_split/

Quirks handled:
- ``vehicle_info.txt`` starts with a header line and has 6 ``;``-separated fields; fields are
  stripped (the raw file has ``' small-sized truck'``) and never split on whitespace (``dark gray``);
- camera ids come only from ``vehicle_info.txt`` (kept as the raw integers, e.g. 1..174);
- color / type / model are free text: each vocabulary is the sorted set of stripped values, so class
  ids are stable for a given file. ``others`` is kept as a type class: the file labels those
  vehicles, and mapping it to -1 (as one codebase does) would drop them from the type loss and give
  12 classes instead of the 13 the annotation defines;
- list lines are ``vid/imgid`` (an extension, if any, is dropped); images live in
  ``images/<vid>/<imgid>.jpg``; image ids are globally unique;
- test sets ``small``/``medium``/``large`` come from ``test_{3000,5000,10000}_query.txt`` +
  ``test_{N}.txt`` (only the pairs present); the gallery lists do not contain the queries, and an
  image in several test sets appears in several rows.

Checked (:mod:`anet.data.readers.checks`), each a ``file:line`` UserError: an image id twice in
``vehicle_info.txt`` with different fields (a different vid = an image under two vehicle ids), a
colour outside the 12 published ones (it would silently become a new class; empty = unlabelled), an
image or vehicle id of ``train_list.txt`` in a test list. Exact repeats are dropped and counted.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from anet.data.manifest import Manifest, build_manifest
from anet.data.readers.checks import Row, check_disjoint, dedupe, first_lines
from anet.data.readers.common import check_images, check_root, iter_lines, line_error, require_file
from anet.errors import UserError

TEST_SETS = (("3000", "small"), ("5000", "medium"), ("10000", "large"))
INFO_FIELDS = "id/image;Camera ID;Time;Model;Type;Color"
_KEY_RE = re.compile(r"^(\d+)/(\d+)$")
# The published colour values (two independent codebases agree; reid-anchors.md section 1.2).
COLORS = ("black", "blue", "brown", "cyan", "dark gray", "golden", "gray", "green", "purple", "red", "white",
          "yellow")

Info = tuple[int, str, str, str]  # camera, model, type, color (stripped)


def read_veriwild(root: str | os.PathLike[str]) -> Manifest:
    """Parse a VeRi-Wild root into a manifest with attributes ``color``, ``type`` and ``model``."""
    root = Path(root)
    check_root(root, "veriwild")
    split_dir = root / "train_test_split"
    notes: Counter[str] = Counter()
    info = read_vehicle_info(split_dir / "vehicle_info.txt", notes)
    vocab = {
        "color": sorted({v[3] for v in info.values()} - {""}),
        "type": sorted({v[2] for v in info.values()} - {""}),
        "model": sorted({v[1] for v in info.values()} - {""}),
    }
    index = {name: {c: i for i, c in enumerate(classes)} for name, classes in vocab.items()}
    records, listing = [], {}
    lists: list[tuple[Path, list[tuple[int, str]]]] = []
    for list_file, split, test_set in _list_files(split_dir):
        keys = read_key_list(require_file(list_file, "one vid/imageid per line"), info, split_dir, notes)
        lists.append((list_file, keys))
        notes["images_missing"] += check_images(root, list_file, "images", [f"{k}.jpg" for _, k in keys], listing)
        for _, key in keys:
            camera, model, type_, color = info[key]
            records.append((f"images/{key}.jpg", key.split("/")[0], camera, split, test_set,
                            index["color"].get(color, -1), index["type"].get(type_, -1),
                            index["model"].get(model, -1)))
    check_train_test(lists)
    return build_manifest("veriwild", root, records, vocab, notes=notes)


def _list_files(split_dir: Path) -> list[tuple[Path, str, str]]:
    """``(list file, split, test set)``: ``train_list.txt``, then the query/gallery pair of each test set."""
    parts = [(split_dir / "train_list.txt", "train", "")]
    for size, test_set in TEST_SETS:
        query, gallery = split_dir / f"test_{size}_query.txt", split_dir / f"test_{size}.txt"
        if query.is_file() != gallery.is_file():
            present, absent = (query, gallery) if query.is_file() else (gallery, query)
            raise UserError(f"{absent}: missing although {present.name} is there; the {test_set} test set "
                            "needs both files")
        if query.is_file():
            parts += [(query, "query", test_set), (gallery, "gallery", test_set)]
    if len(parts) == 1:
        raise UserError(f"{split_dir}: no test set found; expected test_3000_query.txt + test_3000.txt "
                        "(and/or the 5000 / 10000 pairs)")
    return parts


def check_train_test(lists: list[tuple[Path, list[tuple[int, str]]]]) -> None:
    """No image and no vehicle id of the first list (``train_list.txt``) may appear in the others."""
    (train_file, train), tests = lists[0], lists[1:]
    test_images: dict[str, tuple[Path, int]] = {}
    test_ids: dict[str, tuple[Path, int]] = {}
    for path, keys in tests:
        first_lines(path, keys, test_images)
        first_lines(path, [(line, key.split("/")[0]) for line, key in keys], test_ids)
    check_disjoint("image", first_lines(train_file, train), test_images)
    check_disjoint("vehicle id", first_lines(train_file, [(line, key.split("/")[0]) for line, key in train]),
                   test_ids)


def read_vehicle_info(path: Path, notes: Counter[str] | None = None) -> dict[str, Info]:
    """``vehicle_info.txt`` -> ``{"03152/042871": (camera, model, type, color)}``; the header is skipped.

    Image ids are globally unique: one listed twice with different fields (or vids) is a UserError,
    an exact repeat is dropped (and counted in ``notes``).
    """
    require_file(path, f"per-image metadata lines '{INFO_FIELDS}'")
    rows: list[Row] = []
    for count, (lineno, line) in enumerate(iter_lines(path)):
        # strip(): the raw file has ' small-sized truck'; never split on whitespace ('dark gray')
        fields = [field.strip() for field in line.split(";")]
        key = _strip_ext(fields[0])
        if count == 0 and not _KEY_RE.match(key):
            continue  # the header line: id/image;Camera ID;Time;Model;Type;Color
        if len(fields) != 6:
            raise line_error(path, lineno, f"expected 6 ';'-separated fields ({INFO_FIELDS}), got {len(fields)}")
        if not _KEY_RE.match(key):
            raise line_error(path, lineno, f"first field must be <vid>/<imageid>, got {fields[0]!r}")
        if not fields[1].isdigit():
            raise line_error(path, lineno, f"Camera ID {fields[1]!r} is not an integer")
        if fields[5] and fields[5] not in COLORS:
            raise line_error(path, lineno, f"Color {fields[5]!r} is not a VeRi-Wild colour ({', '.join(COLORS)}); "
                             "fix the line (an unknown colour would become a new class)")
        vid, imgid = key.split("/")
        rows.append((lineno, imgid, dict(zip(("vid", "Camera ID", "Time", "Model", "Type", "Color"),
                                             [vid, *fields[1:]], strict=True))))
    info: dict[str, Info] = {}
    for _, imgid, f in dedupe(path, rows, "image", Counter() if notes is None else notes):
        info[f"{f['vid']}/{imgid}"] = (int(f["Camera ID"]), f["Model"], f["Type"], f["Color"])
    return info


def read_key_list(path: Path, info: dict[str, Info], split_dir: Path,
                  notes: Counter[str] | None = None) -> list[tuple[int, str]]:
    """A ``vid/imgid`` list file -> ``[(line, key)]``; every key must have a ``vehicle_info.txt`` entry.

    A repeated line is dropped (and counted in ``notes``).
    """
    rows: list[Row] = []
    unknown: list[tuple[int, str]] = []
    for lineno, line in iter_lines(path):
        key = _strip_ext(line.split()[0])
        if len(line.split()) != 1 or not _KEY_RE.match(key):
            raise line_error(path, lineno, f"expected <vid>/<imageid> like 03152/042871, got {line!r}")
        if key not in info:
            unknown.append((lineno, key))
        rows.append((lineno, key, {}))
    if unknown:
        lineno, key = unknown[0]
        more = f" (and {len(unknown) - 1} more lines)" if len(unknown) > 1 else ""
        raise line_error(path, lineno, f"{key} has no entry in {split_dir / 'vehicle_info.txt'}{more}; "
                         "the list and the metadata come from different releases?")
    return [(lineno, key) for lineno, key, _ in dedupe(path, rows, "image", Counter() if notes is None else notes)]


def _strip_ext(text: str) -> str:
    stem, dot, ext = text.rpartition(".")
    return stem if dot and "/" not in ext else text
