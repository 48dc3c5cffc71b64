"""VehicleID reader (layout and quirks: shared/research/reid-anchors.md section 1.3).

Example::

    from anet.data.readers.vehicleid import read_vehicleid
    manifest = read_vehicleid("data/vehicleid")   # holds image/, train_test_split/, attribute/

Quirks handled:
- images are ``image/<7-digit>.jpg``; list lines are ``<image name> <vid>`` with un-padded,
  non-contiguous vids (train labels are relabelled 0..n-1 in numeric vid order);
- every ``test_list_<N>.txt`` present becomes test set ``"<N>"`` with split ``"test"`` (query and
  gallery are drawn per trial by the evaluator);
- ``color_attr.txt`` / ``model_attr.txt`` label VEHICLES, not images: labels are propagated to every
  image of the vehicle, -1 where the vehicle has none (about 60% of images);
- ``color_names.txt`` / ``model_names.txt`` are ``<name> <id>`` (name first), CRLF line endings, and
  UTF-8 Chinese model names that contain spaces, so each line is split on its LAST space;
- there are no cameras: ``camid`` is -1.

Checked (:mod:`anet.data.readers.checks`), each a ``file:line`` UserError: an image listed under two
vehicle ids (in one list or across lists), a vehicle twice in an ``*_attr.txt`` file with different
classes, an image or vehicle id of ``train_list.txt`` in a test list. Exact repeats in one file are
dropped and counted; the nested test lists repeat each other's lines by design.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from anet.data.manifest import Manifest, build_manifest
from anet.data.readers.checks import Row, check_disjoint, dedupe, first_lines
from anet.data.readers.common import (
    check_images,
    check_root,
    iter_lines,
    line_error,
    read_id_names,
    require_file,
)
from anet.errors import UserError

_TEST_LIST_RE = re.compile(r"^test_list_(\d+)\.txt$")
_NAME_ENCODINGS = ("utf-8-sig", "gb18030")  # official files are UTF-8; some re-packs are GBK


def read_vehicleid(root: str | os.PathLike[str]) -> Manifest:
    """Parse a VehicleID root into a manifest with attributes ``color`` (7) and ``model`` (250)."""
    root = Path(root)
    check_root(root, "vehicleid")
    split_dir, attr_dir = root / "train_test_split", root / "attribute"
    vocab = {
        "color": read_id_names(require_file(attr_dir / "color_names.txt", "'<color name> <id>' lines"),
                               name_first=True, encodings=_NAME_ENCODINGS),
        "model": read_id_names(require_file(attr_dir / "model_names.txt", "'<model name> <id>' lines"),
                               name_first=True, encodings=_NAME_ENCODINGS),
    }
    notes: Counter[str] = Counter()
    per_vehicle = {
        name: read_vehicle_attr(require_file(attr_dir / f"{name}_attr.txt", f"'<vid> <{name} id>' lines"),
                                len(vocab[name]), notes)
        for name in vocab
    }
    parts = [(split_dir / "train_list.txt", "train", "")]
    tests = sorted((int(m.group(1)), p) for p in split_dir.iterdir() if (m := _TEST_LIST_RE.match(p.name)))
    if not tests:
        raise UserError(f"{split_dir}: no test_list_<N>.txt found; expected test_list_800.txt, "
                        "test_list_1600.txt, test_list_2400.txt")
    parts += [(path, "test", str(size)) for size, path in tests]
    records, listing, seen = [], {}, {}
    lists: list[tuple[Path, list[tuple[int, str, int]]]] = []
    for list_file, split, test_set in parts:
        pairs = read_image_list(list_file, notes, seen)
        lists.append((list_file, pairs))
        notes["images_missing"] += check_images(root, list_file, "image", [f"{n}.jpg" for _, n, _ in pairs], listing)
        for _, name, vid in pairs:
            attrs = [per_vehicle[attr].get(vid, -1) for attr in vocab]
            records.append((f"image/{name}.jpg", str(vid), -1, split, test_set, *attrs))
    check_train_test(lists)
    return build_manifest("vehicleid", root, records, vocab, notes=notes)


def check_train_test(lists: list[tuple[Path, list[tuple[int, str, int]]]]) -> None:
    """No image and no vehicle id of the first list (``train_list.txt``) may appear in the test lists."""
    (train_file, train), tests = lists[0], lists[1:]
    test_images: dict[str, tuple[Path, int]] = {}
    test_ids: dict[str, tuple[Path, int]] = {}
    for path, pairs in tests:
        first_lines(path, [(line, name) for line, name, _ in pairs], test_images)
        first_lines(path, [(line, str(vid)) for line, _, vid in pairs], test_ids)
    check_disjoint("image", first_lines(train_file, [(line, name) for line, name, _ in train]), test_images)
    check_disjoint("vehicle id", first_lines(train_file, [(line, str(vid)) for line, _, vid in train]), test_ids)


def read_image_list(path: Path, notes: Counter[str] | None = None,
                    seen: dict | None = None) -> list[tuple[int, str, int]]:
    """``train_list.txt`` / ``test_list_*.txt`` lines ``0103452 8841`` -> ``[(line, "0103452", 8841)]``.

    An image listed under two vehicle ids is a UserError (across every list sharing ``seen``); a
    repeated line is dropped (and counted in ``notes``).
    """
    rows: list[Row] = []
    for lineno, line in iter_lines(path):
        tokens = line.split()
        if len(tokens) != 2:
            raise line_error(path, lineno, f"expected '<image name> <vehicle id>', got {line!r}")
        name, vid = tokens
        if not name.isdigit():
            raise line_error(path, lineno, f"image name {name!r} is not a number like 0103452")
        if not vid.isdigit():
            raise line_error(path, lineno, f"vehicle id {vid!r} is not a non-negative integer")
        rows.append((lineno, name, {"vehicle id": int(vid)}))
    kept = dedupe(path, rows, "image", Counter() if notes is None else notes, seen)
    return [(lineno, name, labels["vehicle id"]) for lineno, name, labels in kept]


def read_vehicle_attr(path: Path, n_classes: int, notes: Counter[str] | None = None) -> dict[int, int]:
    """``color_attr.txt`` / ``model_attr.txt`` lines ``8841 5`` -> ``{vid: class id}``.

    A vehicle twice with different classes is a UserError; an exact repeat is dropped (counted in ``notes``).
    """
    rows: list[Row] = []
    for lineno, line in iter_lines(path):
        tokens = line.split()
        if len(tokens) != 2 or not all(t.isdigit() for t in tokens):
            raise line_error(path, lineno, f"expected '<vehicle id> <class id>' (two integers), got {line!r}")
        vid, class_id = int(tokens[0]), int(tokens[1])
        if class_id >= n_classes:
            raise line_error(path, lineno, f"class id {class_id} is not in the names file (0..{n_classes - 1})")
        rows.append((lineno, str(vid), {"class id": class_id}))
    kept = dedupe(path, rows, "vehicle", Counter() if notes is None else notes)
    return {int(vid): labels["class id"] for _, vid, labels in kept}
