"""Write a synthetic set as a fake copy of a REAL dataset layout, with every known quirk.

The readers are tested on these copies, and users can try the readers without the licensed data::

    anet data synth --layout veriwild --out /tmp/fake_veriwild
    anet data inspect veriwild /tmp/fake_veriwild

or from Python::

    from anet.synthetic.generator import render_dataset
    write_veri776(render_dataset(cfg.data.synthetic), "/tmp/fake_veri")

Quirks reproduced (shared/research/reid-anchors.md sections 1 and 6):
- VeRi-776: 4-digit vids (the first train vehicles are 0001..; an SUV is placed at 0003 when one
  exists), gb2312-declared and gb2312-encoded label XML, ``typeID="0"`` for vehicle 0003 (the
  erratum), query images duplicated into ``image_test`` / ``name_test.txt``, gt/jk index files,
  one query (of the last test vehicle) whose only gallery matches share its camera (all junk);
- VeRi-Wild: header line in ``vehicle_info.txt``, ``dark gray``, ``' small-sized truck'`` with a
  leading space (on every other image of such vehicles), 5-digit vid folders, 6-digit globally
  unique image ids, raw non-contiguous camera numbers, small ⊂ medium ⊂ large test sets (30% / 50%
  / 100% of the test ids), one query per test id and queries absent from the gallery lists;
- VehicleID: 7-digit image names, un-padded non-contiguous vids, model labels for 2/3 of the
  vehicles and color labels for 1/3 (a subset), CRLF ``color_names.txt``, UTF-8 Chinese model names
  containing spaces, ``test_list_800/1600/2400`` (1/3, 2/3, all test ids), no cameras.
Synthetic colors / types (VeRi's names) map onto each vocabulary through the fixed tables below;
where a table offers several names, the vehicle number picks one (so every class appears).
Text files are written atomically after the images.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from anet.data.cache import share_with_group
from anet.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from anet.synthetic.generator import SyntheticSample, SyntheticSet

VERIWILD_COLORS: dict[str, tuple[str, ...]] = {
    "yellow": ("yellow",), "orange": ("yellow", "golden"), "green": ("green",),
    "gray": ("gray", "dark gray"), "red": ("red", "purple"), "blue": ("blue", "cyan"), "white": ("white",),
    "golden": ("golden",), "brown": ("brown",), "black": ("black",),
}
VERIWILD_TYPES: dict[str, tuple[str, ...]] = {
    "sedan": ("sedan",), "suv": ("SUV",), "van": ("minivan", "light passenger vehicle"),
    "hatchback": ("others",), "mpv": ("business purpose vehicle/MPV",), "pickup": ("pickup truck",),
    "bus": ("large-sized bus", "minibus"), "estate": ("sedan",),
    "truck": ("HGV/large truck", "small-sized truck", "bulk lorry/fence truck", "tank car/tanker"),
}
VEHICLEID_COLORS = ("black", "blue", "gray", "red", "sliver", "white", "yellow")  # 'sliver' sic
VEHICLEID_COLOR_MAP: dict[str, tuple[str, ...]] = {  # () = no color label for such a vehicle
    "yellow": ("yellow",), "orange": ("red",), "green": (), "gray": ("gray", "sliver"), "red": ("red",),
    "blue": ("blue",), "white": ("white", "sliver"), "golden": ("yellow",), "brown": (), "black": ("black",),
}
_BRANDS = ("大众", "丰田", "本田", "别克", "日产", "现代", "奥迪", "福特")
_VERI_DECL = '<?xml version="1.0" encoding="gb2312"?>\n<!-- 车辆标注 -->\n'


def _pick(table: dict[str, tuple[str, ...]], name: str, number: int) -> str | None:
    choices = table.get(name, ())
    return choices[number % len(choices)] if choices else None


def _by_vid(samples: list[SyntheticSample]) -> dict[int, list[SyntheticSample]]:
    groups: dict[int, list[SyntheticSample]] = defaultdict(list)
    for sample in samples:
        groups[sample.vid].append(sample)
    return groups


def _train_test_vids(sset: SyntheticSet) -> tuple[list[int], list[int]]:
    train = sorted({s.vid for s in sset.samples if s.split == "train"})
    test = sorted({s.vid for s in sset.samples if s.split != "train"} - set(train))
    return train, test


def _camera_numbers(sset: SyntheticSet) -> dict[int, int]:
    """Synthetic camera ids (whatever their base) -> 1, 2, ... as the real files number them."""
    return {cam: i + 1 for i, cam in enumerate(sorted({s.camid for s in sset.samples}))}


def _query_gallery(group: list[SyntheticSample]) -> tuple[SyntheticSample, list[SyntheticSample]]:
    """One query per test id (VeRi-Wild style): its first query sample; the rest is gallery."""
    query = next((s for s in group if s.split == "query"), group[0])
    return query, [s for s in group if s is not query]


def _prefix_sets(vids: list[int], fractions: dict[str, float]) -> dict[str, list[int]]:
    """Nested test sets: the first ceil(f * n) ids (at least 2) for each fraction."""
    n = len(vids)
    return {name: vids[: min(n, max(2, math.ceil(f * n)))] for name, f in fractions.items()}


def _write(path: Path, text: str, newline: str = "\n") -> None:
    atomic_write_text(path, text.replace("\n", newline))


# ----------------------------------------------------------------------------------------- VeRi-776
def write_veri776(sset: SyntheticSet, root: str | os.PathLike[str]) -> Path:
    """Write ``sset`` as a VeRi-776 root (see the module docstring for the quirks)."""
    root = Path(root)
    train_vids, test_vids, groups = _veri_vehicles(sset)
    number = {vid: f"{i + 1:04d}" for i, vid in enumerate(train_vids + test_vids)}
    cam = _camera_numbers(sset)
    names = {id(s): f"{number[s.vid]}_c{cam[s.camid]:03d}_{10000 + 25 * i:08d}_{i % 2}.jpg"
             for i, s in enumerate(sset.samples)}
    train = [s for v in train_vids for s in groups[v]]
    query = [s for v in test_vids for s in groups[v] if s.split == "query"]
    test = sorted((s for v in test_vids for s in groups[v]), key=lambda s: names[id(s)])  # incl. queries
    for folder, part in (("image_train", train), ("image_query", query), ("image_test", test)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for sample in part:
            (root / folder / names[id(sample)]).write_bytes(sample.jpeg)
    for list_name, part in (("name_train.txt", train), ("name_query.txt", query), ("name_test.txt", test)):
        _write(root / list_name, "".join(f"{names[id(s)]}\n" for s in part))
    for xml_name, part, tag in (("train_label.xml", train, "TrainingImages"), ("test_label.xml", test, "TestImages")):
        items = "".join(_veri_item(names[id(s)], number[s.vid], cam[s.camid], s) for s in part)
        body = f'{_VERI_DECL}<{tag} Version="1.0">\n<Items number="{len(part)}">\n{items}</Items>\n</{tag}>\n'
        atomic_write_bytes(root / xml_name, body.encode("gb2312"))
    _write(root / "list_color.txt", "".join(f"{i + 1} {c}\n" for i, c in enumerate(sset.color_names)))
    _write(root / "list_type.txt", "".join(f"{i + 1} {t}\n" for i, t in enumerate(sset.type_names)))
    _write_veri_index(root, query, test)
    return root


def _veri_vehicles(sset: SyntheticSet) -> tuple[list[int], list[int], dict[int, list[SyntheticSample]]]:
    """Vehicle order (0003 = an SUV, for the erratum) and samples; the last test vehicle keeps only
    gallery images from its query camera, so one query has nothing but junk and must be skipped."""
    train_vids, test_vids = _train_test_vids(sset)
    groups = _by_vid(sset.samples)
    suv = sset.type_names.index("suv") if "suv" in sset.type_names else -1
    suvs = [v for v in train_vids if groups[v][0].type == suv]
    if len(train_vids) >= 3 and suvs:  # vehicle 0003 carries the typeID="0" erratum: make it a real SUV
        train_vids.remove(suvs[0])
        train_vids.insert(2, suvs[0])
    if len(test_vids) >= 2:
        last = groups[test_vids[-1]]
        query_cams = {s.camid for s in last if s.split == "query"}
        groups[test_vids[-1]] = [s for s in last if s.split == "query" or s.camid in query_cams]
    return train_vids, test_vids, groups


def _veri_item(name: str, vid: str, cam: int, s: SyntheticSample) -> str:
    type_id = 0 if vid == "0003" else s.type + 1  # the published erratum row
    return (f'<Item imageName="{name}" vehicleID="{vid}" cameraID="c{cam:03d}" '
            f'colorID="{s.color + 1}" typeID="{type_id}" />\n')


def _write_veri_index(root: Path, query: list[SyntheticSample], test: list[SyntheticSample]) -> None:
    """gt_index / jk_index: per query, 1-based positions in name_test.txt (gt: other camera; jk: same)."""
    gt, jk = [], []
    for q in query:
        same = [(i + 1, g.camid == q.camid) for i, g in enumerate(test) if g.vid == q.vid]
        gt.append(" ".join(str(i) for i, cam in same if not cam))
        jk.append(" ".join(str(i) for i, cam in same if cam))
    _write(root / "gt_index.txt", "".join(f"{line}\n" for line in gt))
    _write(root / "jk_index.txt", "".join(f"{line}\n" for line in jk))


# ---------------------------------------------------------------------------------------- VeRi-Wild
def write_veriwild(sset: SyntheticSet, root: str | os.PathLike[str]) -> Path:
    """Write ``sset`` as a VeRi-Wild root (see the module docstring for the quirks)."""
    root, split_dir = Path(root), Path(root) / "train_test_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    train_vids, test_vids = _train_test_vids(sset)
    groups = _by_vid(sset.samples)
    number = {vid: i + 1 for i, vid in enumerate(train_vids + test_vids)}
    cam = _camera_numbers(sset)
    keys = {id(s): f"{number[s.vid]:05d}/{7 * i + 4:06d}" for i, s in enumerate(sset.samples)}
    info = ["id/image;Camera ID;Time;Model;Type;Color\n"]
    for i, s in enumerate(sset.samples):
        (root / "images" / keys[id(s)]).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{keys[id(s)]}.jpg").write_bytes(s.jpeg)
        type_ = _pick(VERIWILD_TYPES, sset.type_names[s.type], number[s.vid]) or "others"
        if type_ == "small-sized truck" and i % 2:
            type_ = " small-sized truck"  # the raw file's leading space
        color = _pick(VERIWILD_COLORS, sset.color_names[s.color], number[s.vid]) or "black"
        stamp = f"2018-03-{11 + i % 18:02d} {i % 24:02d}:{i % 60:02d}:{(7 * i) % 60:02d}"
        info.append(f"{keys[id(s)]};{7 * cam[s.camid] - 4};{stamp};{sset.model_names[s.model]};{type_};{color}\n")
    _write(split_dir / "vehicle_info.txt", "".join(info))
    _write(split_dir / "train_list.txt", "".join(f"{keys[id(s)]}\n" for v in train_vids for s in groups[v]))
    sets = _prefix_sets(test_vids, {"3000": 0.3, "5000": 0.5, "10000": 1.0})
    for size, vids in sets.items():
        pairs = [_query_gallery(groups[v]) for v in vids]
        _write(split_dir / f"test_{size}_query.txt", "".join(f"{keys[id(q)]}\n" for q, _ in pairs))
        _write(split_dir / f"test_{size}.txt", "".join(f"{keys[id(g)]}\n" for _, gal in pairs for g in gal))
    return root


# ---------------------------------------------------------------------------------------- VehicleID
def write_vehicleid(sset: SyntheticSet, root: str | os.PathLike[str]) -> Path:
    """Write ``sset`` as a VehicleID root (see the module docstring for the quirks)."""
    root = Path(root)
    for sub in ("image", "train_test_split", "attribute"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    train_vids, test_vids = _train_test_vids(sset)
    groups = _by_vid(sset.samples)
    number = {vid: 5 + 3 * i + i % 2 for i, vid in enumerate(train_vids + test_vids)}  # gaps, un-padded
    image = {id(s): f"{2 + 3 * i:07d}" for i, s in enumerate(sset.samples)}
    for s in sset.samples:
        (root / "image" / f"{image[id(s)]}.jpg").write_bytes(s.jpeg)

    def lines(vids: list[int]) -> str:
        return "".join(f"{image[id(s)]} {number[v]}\n" for v in vids for s in groups[v])

    _write(root / "train_test_split" / "train_list.txt", lines(train_vids))
    for size, vids in _prefix_sets(test_vids, {"800": 1 / 3, "1600": 2 / 3, "2400": 1.0}).items():
        _write(root / "train_test_split" / f"test_list_{size}.txt", lines(vids))
    _write(root / "attribute" / "img2vid.txt", lines(train_vids + test_vids))
    model_lines, color_lines = [], []
    for i, vid in enumerate(train_vids + test_vids):
        first = groups[vid][0]
        if i % 3:  # model labels for 2/3 of the vehicles, color labels for a subset of those
            model_lines.append(f"{number[vid]} {first.model}\n")
        color = _pick(VEHICLEID_COLOR_MAP, sset.color_names[first.color], number[vid])
        if i % 3 == 1 and color is not None:
            color_lines.append(f"{number[vid]} {VEHICLEID_COLORS.index(color)}\n")
    _write(root / "attribute" / "model_attr.txt", "".join(model_lines))
    _write(root / "attribute" / "color_attr.txt", "".join(color_lines))
    _write(root / "attribute" / "color_names.txt",
           "".join(f"{c} {i}\n" for i, c in enumerate(VEHICLEID_COLORS)), newline="\r\n")
    models = [f"{_BRANDS[m % len(_BRANDS)]}-{name} {2010 + m % 9}款" for m, name in enumerate(sset.model_names)]
    _write(root / "attribute" / "model_names.txt", "".join(f"{n} {m}\n" for m, n in enumerate(models)))
    return root


def write_layout(layout: str, sset: SyntheticSet, root: str | os.PathLike[str]) -> Path:
    """Dispatch to the writer of ``layout`` ("veri776" | "veriwild" | "vehicleid"); the folder gets the
    cache's group-shareable modes (files 0o664, folders 0o2775) whatever the umask."""
    match layout:
        case "veri776":
            out = write_veri776(sset, root)
        case "veriwild":
            out = write_veriwild(sset, root)
        case "vehicleid":
            out = write_vehicleid(sset, root)
        case _:
            raise ValueError(f"unknown layout {layout!r}")
    share_with_group(Path(out))
    return Path(out)
