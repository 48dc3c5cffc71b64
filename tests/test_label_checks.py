"""Labels are checked, not trusted: conflicting duplicates, train/test leaks, unknown colours and bad
bytes are one ``file:line`` UserError; exact duplicates are dropped, logged and counted."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from test_readers import make_fake_set

from anet.data.readers import read_dataset
from anet.data.readers.checks import check_disjoint, dedupe
from anet.errors import UserError
from anet.synthetic.layouts import write_vehicleid, write_veri776, write_veriwild

WRITERS = {"veri776": write_veri776, "veriwild": write_veriwild, "vehicleid": write_vehicleid}


@pytest.fixture(scope="module")
def fake_set():
    return make_fake_set()


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return path.read_bytes().decode(encoding).splitlines()


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def _insert(path: Path, lineno: int, text: str, encoding: str = "utf-8") -> None:
    """Insert ``text`` so that it becomes line ``lineno`` (1-based)."""
    lines = _lines(path, encoding)
    _write(path, lines[: lineno - 1] + [text] + lines[lineno - 1:], encoding)


def _xml_item(root: Path, name: str, lineno: int) -> str:
    return _lines(root / name, "gb2312")[lineno - 1]


# --------------------------------------------------------------------- edits that must be refused
def veri_conflicting_xml(root: Path) -> None:  # line 5 is the first <Item>; its copy becomes line 8
    item = _xml_item(root, "train_label.xml", 5)
    color = int(re.search(r'colorID="(\d+)"', item).group(1))
    _insert(root / "train_label.xml", 8, item.replace(f'colorID="{color}"', f'colorID="{color % 10 + 1}"'),
            "gb2312")


def veri_test_image_in_train(root: Path) -> None:
    name = _lines(root / "name_test.txt")[4]
    _insert(root / "name_train.txt", 3, name)


def veri_test_id_in_train(root: Path) -> None:
    _insert(root / "name_train.txt", 6, "0030_c001_99999999_0.jpg")  # vehicle 0030 is a test vehicle


def veri_bad_byte(root: Path) -> None:
    lines = (root / "name_train.txt").read_bytes().split(b"\n")
    lines[3] = lines[3][:5] + b"\xff" + lines[3][5:]
    (root / "name_train.txt").write_bytes(b"\n".join(lines))


def veri_bad_xml_byte(root: Path) -> None:
    lines = (root / "test_label.xml").read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b"/>", b"\xff/>")  # 0xff starts no GB18030 character
    (root / "test_label.xml").write_bytes(b"\n".join(lines))


def wild_conflicting_color(root: Path) -> None:
    info = root / "train_test_split" / "vehicle_info.txt"
    line = _lines(info)[2]
    other = "purple" if not line.endswith(";purple") else "cyan"
    _insert(info, 30, line.rsplit(";", 1)[0] + ";" + other)


def wild_image_under_two_vids(root: Path) -> None:
    info = root / "train_test_split" / "vehicle_info.txt"
    key, rest = _lines(info)[2].split(";", 1)
    _insert(info, 40, f"00099/{key.split('/')[1]};{rest}")


def wild_unknown_color(root: Path) -> None:
    info = root / "train_test_split" / "vehicle_info.txt"
    lines = _lines(info)
    lines[4] = lines[4].rsplit(";", 1)[0] + ";pink"
    _write(info, lines)


def wild_test_image_in_train(root: Path) -> None:
    split_dir = root / "train_test_split"
    _insert(split_dir / "train_list.txt", 2, _lines(split_dir / "test_10000.txt")[3])


def wild_test_id_in_train(root: Path) -> None:
    split_dir = root / "train_test_split"
    test_vid = _lines(split_dir / "test_10000_query.txt")[0].split("/")[0]
    _insert(split_dir / "vehicle_info.txt", 2, f"{test_vid}/999999;3;2018-03-11 01:01:01;Alpha;sedan;red")
    _insert(split_dir / "train_list.txt", 5, f"{test_vid}/999999")


def vid_image_under_two_vids(root: Path) -> None:
    split_dir = root / "train_test_split"
    name, vid = _lines(split_dir / "train_list.txt")[1].split()
    _insert(split_dir / "train_list.txt", 7, f"{name} {int(vid) + 1}")


def vid_image_under_two_vids_across_lists(root: Path) -> None:
    split_dir = root / "train_test_split"
    name, vid = _lines(split_dir / "train_list.txt")[1].split()
    _insert(split_dir / "test_list_800.txt", 4, f"{name} 99999")


def vid_test_image_in_train(root: Path) -> None:
    split_dir = root / "train_test_split"
    _insert(split_dir / "train_list.txt", 3, _lines(split_dir / "test_list_2400.txt")[-1])


def vid_test_id_in_train(root: Path) -> None:
    split_dir = root / "train_test_split"
    _, vid = _lines(split_dir / "test_list_800.txt")[0].split()
    _insert(split_dir / "train_list.txt", 9, f"9999999 {vid}")


def vid_conflicting_color(root: Path) -> None:
    attr = root / "attribute" / "color_attr.txt"
    vid, color = _lines(attr)[0].split()
    _insert(attr, 2, f"{vid} {(int(color) + 1) % 7}")


REFUSED: list[tuple[str, Callable[[Path], None], str]] = [
    ("veri776", veri_conflicting_xml,
     r"train_label\.xml:8: image \S+\.jpg is listed twice with different labels: colorID=\d+ here, "
     r"colorID=\d+ at train_label\.xml:5; fix or delete"),
    ("veri776", veri_test_image_in_train,
     r"name_(query|test)\.txt:\d+: image \S+ is also in the training list \S*name_train\.txt:3 \(1 image shared"),
    ("veri776", veri_test_id_in_train,
     r"name_query\.txt:\d+: vehicle id 0030 is also in the training list \S*name_train\.txt:6 \(1 vehicle id "
     r"shared between train and test, e\.g\. 0030\); shared ones inflate every metric"),
    ("veri776", veri_bad_byte, r"name_train\.txt:4: not utf-8-sig text \(byte 0xff at column 6\)"),
    ("veri776", veri_bad_xml_byte, r"test_label\.xml:7: not the declared gb2312 text \(byte 0xff"),
    ("veriwild", wild_conflicting_color,
     r"vehicle_info\.txt:30: image \d{6} is listed twice with different labels: Color=\S+ here, "
     r"Color=.+ at vehicle_info\.txt:3;"),
    ("veriwild", wild_image_under_two_vids,
     r"vehicle_info\.txt:40: image \d{6} is listed twice with different labels: vid=00099 here, "
     r"vid=00001 at vehicle_info\.txt:3;"),
    ("veriwild", wild_unknown_color, r"vehicle_info\.txt:5: Color 'pink' is not a VeRi-Wild colour \(black, "),
    ("veriwild", wild_test_image_in_train,
     r"test_\d+(_query)?\.txt:\d+: image \d{5}/\d{6} is also in the training list \S*train_list\.txt:2 \(1 image"),
    ("veriwild", wild_test_id_in_train,
     r"test_\d+_query\.txt:1: vehicle id \d{5} is also in the training list \S*train_list\.txt:5 \(1 vehicle id"),
    ("vehicleid", vid_image_under_two_vids,
     r"train_list\.txt:7: image \d{7} is listed twice with different labels: vehicle id=\d+ here, "
     r"vehicle id=\d+ at train_list\.txt:2;"),
    ("vehicleid", vid_image_under_two_vids_across_lists,
     r"test_list_800\.txt:4: image \d{7} is listed twice with different labels: vehicle id=99999 here, "
     r"vehicle id=\d+ at train_list\.txt:2;"),
    ("vehicleid", vid_test_image_in_train,
     r"test_list_\d+\.txt:\d+: image \d{7} is also in the training list \S*train_list\.txt:3 \(1 image"),
    ("vehicleid", vid_test_id_in_train,
     r"test_list_\d+\.txt:1: vehicle id \d+ is also in the training list \S*train_list\.txt:9 \(1 vehicle id"),
    ("vehicleid", vid_conflicting_color,
     r"color_attr\.txt:2: vehicle \d+ is listed twice with different labels: class id=\d here, "
     r"class id=\d at color_attr\.txt:1;"),
]


@pytest.mark.parametrize(("layout", "edit", "expect"), REFUSED, ids=[e.__name__ for _, e, _ in REFUSED])
def test_bad_labels_are_one_line_user_errors(fake_set, tmp_path, layout, edit, expect):
    root = WRITERS[layout](fake_set, tmp_path / layout)
    read_dataset(layout, root)  # the untouched copy is fine
    edit(root)
    with pytest.raises(UserError) as err:
        read_dataset(layout, root)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(expect, message), message


# ------------------------------------------------------------ exact duplicates: dropped and counted
def _duplicate_line(path: Path, lineno: int, at: int, encoding: str = "utf-8") -> None:
    _insert(path, at, _lines(path, encoding)[lineno - 1], encoding)


EXACT = [
    ("veri776", "train_label.xml", 5, 9, "gb2312"),
    ("veri776", "name_train.txt", 2, 5, "utf-8"),
    ("veri776", "name_test.txt", 1, 3, "utf-8"),
    ("veriwild", "train_test_split/vehicle_info.txt", 3, 10, "utf-8"),
    ("veriwild", "train_test_split/test_3000.txt", 2, 4, "utf-8"),
    ("vehicleid", "train_test_split/train_list.txt", 1, 6, "utf-8"),
    ("vehicleid", "attribute/model_attr.txt", 1, 3, "utf-8"),
]


@pytest.mark.parametrize(("layout", "file", "lineno", "at", "encoding"), EXACT)
def test_exact_duplicates_are_dropped_and_counted(fake_set, tmp_path, caplog, layout, file, lineno, at,
                                                   encoding):
    root = WRITERS[layout](fake_set, tmp_path / layout)
    before = read_dataset(layout, root)
    assert before.notes == {}
    _duplicate_line(root / file, lineno, at, encoding)
    with caplog.at_level(logging.WARNING, logger="anet.data.readers"):
        after = read_dataset(layout, root)
    assert after.notes == {"duplicates_dropped": 1}
    assert after.frame.equals(before.frame)
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message.endswith("dropped 1 exact duplicate " + ("vehicle line" if "attr" in file else "image line"))
    assert Path(file).name in message


def test_notes_survive_save_and_load(fake_set, tmp_path):
    root = write_vehicleid(fake_set, tmp_path / "vid")
    _duplicate_line(root / "train_test_split" / "train_list.txt", 1, 2)
    _duplicate_line(root / "train_test_split" / "train_list.txt", 1, 2)
    manifest = read_dataset("vehicleid", root)
    assert manifest.notes == {"duplicates_dropped": 2}
    loaded = type(manifest).load(manifest.save(tmp_path / "m.parquet"))
    assert loaded.notes == {"duplicates_dropped": 2}


def test_nested_test_lists_repeat_lines_without_being_duplicates(fake_set, tmp_path):
    root = write_vehicleid(fake_set, tmp_path / "vid")
    small = set(_lines(root / "train_test_split" / "test_list_800.txt"))
    assert small < set(_lines(root / "train_test_split" / "test_list_2400.txt"))  # by design
    assert read_dataset("vehicleid", root).notes == {}


# --------------------------------------------------------------------------------- the helpers
def test_dedupe_and_check_disjoint_directly(tmp_path):
    path = tmp_path / "list.txt"
    notes: Counter[str] = Counter()
    rows = [(1, "a", {"c": 1}), (2, "b", {"c": 2}), (3, "a", {"c": 1}), (4, "a", {"c": 1})]
    assert dedupe(path, rows, "image", notes) == rows[:2] and notes == {"duplicates_dropped": 2}
    with pytest.raises(UserError, match=r"list\.txt:3: image a is listed twice with different labels: "
                                        r"c=2 here, c=1 at list\.txt:1"):
        dedupe(path, [(1, "a", {"c": 1}), (3, "a", {"c": 2})], "image", Counter())
    check_disjoint("image", {"a": (path, 1)}, {"b": (path, 2)})
    with pytest.raises(UserError, match=r"t\.txt:7: vehicle id 5 is also in the training list .*list\.txt:2 "
                                        r"\(2 vehicle ids shared between train and test, e\.g\. 5, 6\)"):
        check_disjoint("vehicle id", {"5": (path, 2), "6": (path, 3)},
                       {"6": (tmp_path / "t.txt", 9), "5": (tmp_path / "t.txt", 7), "7": (tmp_path / "t.txt", 8)})
