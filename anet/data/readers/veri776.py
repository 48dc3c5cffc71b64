"""VeRi-776 reader (layout and quirks: shared/research/reid-anchors.md section 1.1).

Example::

    from anet.data.readers.veri776 import read_veri776
    manifest = read_veri776("data/veri776")      # the folder holding image_train/, name_train.txt, ...

Quirks handled:
- the label XML declares ``gb2312``, which ElementTree refuses on a path or bytes: the file is decoded
  as GB18030 text (a superset of gb2312/gbk) and parsed from the string; items are found at any depth;
- the ``typeID="0"`` erratum: vehicles 0003, 0007 and 0041 are SUVs; any other 0 becomes -1 (missing);
- query images have no label file: their labels come from ``test_label.xml`` (each query image is
  also in ``image_test``); the query's copy in the gallery is removed later by the same-camera rule;
- vehicle and camera ids come from the file NAME only (``0042_c007_...``), never from the directory.
Cameras are stored 0-based (c001 -> 0), colors and types 0-based (list ids are 1-based).

Checked (:mod:`anet.data.readers.checks`): an image twice in a label XML with different labels, or an
image / vehicle id in both ``name_train.txt`` and the query/test lists, is a ``file:line`` UserError;
exact repeats (XML items, list lines) are dropped and counted.
"""

from __future__ import annotations

import os
import re
import xml.parsers.expat as expat
from collections import Counter
from pathlib import Path

from anet.data.manifest import Manifest, build_manifest
from anet.data.readers.checks import Row, check_disjoint, dedupe, first_lines
from anet.data.readers.common import (
    check_images,
    check_root,
    decode_error,
    iter_lines,
    line_error,
    read_id_names,
    require_file,
)
from anet.errors import UserError

VERI_COLORS = ("yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black")
VERI_TYPES = ("sedan", "suv", "van", "hatchback", "mpv", "pickup", "bus", "truck", "estate")
ERRATUM_SUV_VIDS = frozenset({"0003", "0007", "0041"})
NAME_RE = re.compile(r"^(\d+)_c(\d+)_\w*\.jpg$", re.IGNORECASE)
_DECL_RE = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9_.-]+)["']""")

# (list file, image folder, split, test_set, label file)
_PARTS = (
    ("name_train.txt", "image_train", "train", "", "train_label.xml"),
    ("name_query.txt", "image_query", "query", "test", "test_label.xml"),
    ("name_test.txt", "image_test", "gallery", "test", "test_label.xml"),
)
NameRow = tuple[int, str, str, int]  # (line, file name, vid, 0-based camid)


def read_veri776(root: str | os.PathLike[str]) -> Manifest:
    """Parse a VeRi-776 root into a manifest with attributes ``color`` (10) and ``type`` (9)."""
    root = Path(root)
    check_root(root, "veri776")
    colors = _class_names(root / "list_color.txt", VERI_COLORS)
    types = _class_names(root / "list_type.txt", VERI_TYPES)
    suv = types.index("suv") if "suv" in types else -1
    labels: dict[str, dict[str, tuple[int, int]]] = {}
    lists: dict[str, list[NameRow]] = {}
    notes: Counter[str] = Counter()
    records = []
    for list_name, image_dir, split, test_set, label_name in _PARTS:
        if label_name not in labels:
            label_file = require_file(root / label_name, "per-image vehicleID/cameraID/colorID/typeID XML")
            labels[label_name] = read_label_xml(label_file, len(colors), len(types), suv, notes)
        list_file = require_file(root / list_name, f"one {image_dir}/ file name per line")
        names = lists[list_name] = read_name_list(list_file, notes)
        notes["images_missing"] += check_images(root, list_file, image_dir, [name for _, name, _, _ in names])
        table = labels[label_name]
        for _, name, vid, camid in names:
            color, type_ = table.get(name, (-1, -1))
            records.append((f"{image_dir}/{name}", vid, camid, split, test_set, color, type_))
    check_train_test(root, lists)
    return build_manifest("veri776", root, records, {"color": colors, "type": types}, notes=notes)


def check_train_test(root: Path, lists: dict[str, list[NameRow]]) -> None:
    """No image and no vehicle of ``name_train.txt`` may appear in ``name_query.txt`` / ``name_test.txt``."""
    train_file = root / "name_train.txt"
    train = lists["name_train.txt"]
    test_images: dict[str, tuple[Path, int]] = {}
    test_ids: dict[str, tuple[Path, int]] = {}
    for list_name in ("name_query.txt", "name_test.txt"):
        rows = lists[list_name]
        first_lines(root / list_name, [(line, name) for line, name, _, _ in rows], test_images)
        first_lines(root / list_name, [(line, vid) for line, _, vid, _ in rows], test_ids)
    check_disjoint("image", first_lines(train_file, [(line, name) for line, name, _, _ in train]), test_images)
    check_disjoint("vehicle id", first_lines(train_file, [(line, vid) for line, _, vid, _ in train]), test_ids)


def _class_names(path: Path, default: tuple[str, ...]) -> list[str]:
    """``list_color.txt`` / ``list_type.txt`` (``5 red``, 1-based); the published names if absent."""
    return read_id_names(path, name_first=False) if path.is_file() else list(default)


def read_name_list(path: Path, notes: Counter[str] | None = None) -> list[NameRow]:
    """``name_*.txt`` -> ``[(line, file name, vid, 0-based camid)]``; ids parsed from the basename only.

    A repeated line is dropped (and counted in ``notes``).
    """
    rows: list[Row] = []
    for lineno, line in iter_lines(path):
        base = line.replace("\\", "/").rsplit("/", 1)[-1]
        if NAME_RE.match(base) is None:
            raise line_error(path, lineno, f"expected a name like 0042_c007_00061550_1.jpg, got {line!r}")
        rows.append((lineno, base, {}))
    out = []
    for lineno, base, _ in dedupe(path, rows, "image", Counter() if notes is None else notes):
        match = NAME_RE.match(base)
        out.append((lineno, base, match.group(1), int(match.group(2)) - 1))
    return out


def decode_xml(path: Path) -> str:
    """Decode an XML file by its declared encoding (gb2312 -> GB18030, a superset); UTF-8 if undeclared."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # some re-saved copies carry a UTF-8 BOM
    declared = _DECL_RE.match(data)
    name = declared.group(1).decode("ascii").lower() if declared else "utf-8"
    encoding = "gb18030" if name in {"gb2312", "gbk", "gb18030"} else name
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        what = f"the declared {name}" if declared else "UTF-8"
        raise decode_error(path, data, exc, what) from None
    except LookupError:
        raise UserError(f"{path}: declares the unknown encoding {name!r}; re-save it as UTF-8") from None


def read_label_xml(path: Path, n_colors: int, n_types: int, suv: int,
                   notes: Counter[str] | None = None) -> dict[str, tuple[int, int]]:
    """Parse ``<Item imageName vehicleID cameraID colorID typeID/>`` elements -> name: (color, type).

    An image twice with different attributes is a ``file:line`` UserError; an exact repeat is
    dropped (and counted in ``notes``).
    """
    parser = expat.ParserCreate()
    rows: list[Row] = []
    table: dict[str, tuple[int, int]] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag == "Item":
            lineno = parser.CurrentLineNumber
            name, labels, color, type_ = _parse_item(path, lineno, attrs, n_colors, n_types, suv)
            rows.append((lineno, name, labels))
            table.setdefault(name, (color, type_))

    parser.StartElementHandler = start
    try:
        parser.Parse(decode_xml(path), True)
    except expat.ExpatError as exc:
        raise line_error(path, exc.lineno, f"not well-formed XML ({expat.ErrorString(exc.code)})") from None
    dedupe(path, rows, "image", Counter() if notes is None else notes)  # raises on conflicting items
    return table


def _parse_item(path: Path, lineno: int, attrs: dict[str, str], n_colors: int, n_types: int,
                suv: int) -> tuple[str, dict[str, str], int, int]:
    """-> (imageName, the item's attributes as compared between repeats, 0-based color, type)."""
    for key in ("imageName", "vehicleID", "colorID", "typeID"):
        if key not in attrs:
            raise line_error(path, lineno, f"<Item> without {key}=")
    name = attrs["imageName"]
    match = NAME_RE.match(name)
    if match is None:
        raise line_error(path, lineno, f"imageName {name!r} is not like 0042_c007_00061550_1.jpg")
    vid = match.group(1)
    if attrs["vehicleID"].strip() != vid:
        raise line_error(path, lineno, f"vehicleID={attrs['vehicleID']!r} disagrees with imageName {name!r}")
    color = _class_id(path, lineno, "colorID", attrs["colorID"], n_colors)
    type_ = _class_id(path, lineno, "typeID", attrs["typeID"], n_types)
    labels = {"vehicleID": vid, "cameraID": attrs.get("cameraID", "").strip(), "colorID": str(color + 1),
              "typeID": str(type_ + 1)}  # as in the file (ids 1-based), leading zeros ignored
    if type_ == -1 and vid in ERRATUM_SUV_VIDS:
        type_ = suv  # published erratum: these three vehicles are SUVs but carry typeID 0
    return name, labels, color, type_


def _class_id(path: Path, lineno: int, key: str, text: str, n_classes: int) -> int:
    """1-based id -> 0-based class; 0 means unlabelled (-1)."""
    text = text.strip()
    if not text.isdigit() or int(text) > n_classes:
        raise line_error(path, lineno, f"{key}={text!r} is not an integer in 0..{n_classes}")
    return int(text) - 1
