"""Readers on fake copies of the real layouts, written with every known quirk by anet.synthetic.layouts."""

from __future__ import annotations

import argparse
import io
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from anet.cli import data as commands
from anet.data.readers import read_dataset
from anet.errors import UserError
from anet.synthetic.layouts import write_vehicleid, write_veri776, write_veriwild

VERI_COLORS = ["yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black"]
VERI_TYPES = ["sedan", "suv", "van", "hatchback", "mpv", "pickup", "bus", "truck", "estate"]
MODELS = ["Alpha", "Beta GT", "Gamma"]
N_TRAIN, N_TEST = 24, 16  # 3 images per id: train all "train"; test 1 query (cam 0) + 2 gallery (cams 0, 1)


@dataclass(frozen=True)
class Sample:  # the fields of anet.synthetic.generator.SyntheticSample the writers use
    vid: int
    camid: int
    color: int
    type: int
    model: int
    split: str
    jpeg: bytes


@dataclass(frozen=True)
class FakeSet:  # shaped like anet.synthetic.generator.SyntheticSet
    samples: list[Sample]
    color_names: list[str]
    type_names: list[str]
    model_names: list[str]


def _jpeg(color: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (25 * color, 128, 255 - 25 * color)).save(buf, format="JPEG")
    return buf.getvalue()


def make_fake_set() -> FakeSet:
    """40 vehicles; colors/types chosen so every VeRi-Wild color and type appears."""
    jpegs = [_jpeg(c) for c in range(10)]
    samples = []
    for vid in range(N_TRAIN + N_TEST):
        color, type_ = (vid + vid // 10) % 10, vid % 9
        splits = ["train"] * 3 if vid < N_TRAIN else ["query", "gallery", "gallery"]
        for k, split in enumerate(splits):
            camid = k % 3 if vid < N_TRAIN else (0, 0, 1)[k]
            samples.append(Sample(vid, camid, color, type_, vid % 3, split, jpegs[color]))
    return FakeSet(samples, VERI_COLORS, VERI_TYPES, MODELS)


@pytest.fixture(scope="module")
def fake_set() -> FakeSet:
    return make_fake_set()


def _counts(manifest) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(r.split, r.test_set): (r.images, r.ids, r.cameras) for r in manifest.summary().itertuples()}


# ------------------------------------------------------------------------------------------ VeRi-776
def test_veri776_counts_erratum_and_query_labels(fake_set, tmp_path):
    root = write_veri776(fake_set, tmp_path / "9999_c123_copy" / "VeRi")  # ids come from basenames only
    head = (root / "train_label.xml").read_bytes()[:60]
    assert b'encoding="gb2312"' in head
    with pytest.raises((ValueError, ET.ParseError)):  # the pitfall the reader must avoid
        ET.parse(root / "train_label.xml")
    assert b'vehicleID="0003"' in (root / "train_label.xml").read_bytes()
    assert 'typeID="0"' in (root / "train_label.xml").read_bytes().decode("gb2312")

    m = read_dataset("veri776", root)
    assert _counts(m) == {("train", ""): (72, 24, 3), ("query", "test"): (16, 16, 1),
                          ("gallery", "test"): (47, 16, 2)}  # last vehicle: same-camera gallery only
    assert m.attr_classes() == {"color": 10, "type": 9} and m.num_train_ids() == 24
    f = m.frame
    assert (f.loc[f.vid == "0003", "attr_type"] == VERI_TYPES.index("suv")).all()  # erratum fixed
    assert (m.summary().filter(like="cov_") == 1.0).all().all()  # query labels from test_label.xml
    assert set(f.camid) == {0, 1, 2}
    assert sorted(set(f.loc[f.split == "train", "label"])) == list(range(24))
    assert (f.loc[f.split != "train", "label"] == -1).all()
    queries = set(f.loc[f.split == "query", "path"].str.replace("image_query/", ""))
    assert queries <= set(f.loc[f.split == "gallery", "path"].str.replace("image_test/", ""))


def test_veri776_other_type_zero_is_missing(fake_set, tmp_path):
    root = write_veri776(fake_set, tmp_path / "VeRi")
    text = (root / "train_label.xml").read_bytes().decode("gb2312")
    line = next(x for x in text.splitlines() if 'vehicleID="0005"' in x)
    text = text.replace(line, line.replace(line[line.index("typeID="):], 'typeID="0" />'))
    (root / "train_label.xml").write_bytes(text.encode("gb2312"))
    f = read_dataset("veri776", root).frame
    name = line.split('"')[1]
    assert f.loc[f.path == f"image_train/{name}", "attr_type"].tolist() == [-1]
    assert (f.loc[f.vid == "0003", "attr_type"] == 1).all()


def test_veri776_gt_jk_index_match_the_junk_rule(fake_set, tmp_path):
    root = write_veri776(fake_set, tmp_path / "VeRi")
    m = read_dataset("veri776", root)
    q, g = m.split_frame("query"), m.split_frame("gallery").reset_index(drop=True)
    gt = (root / "gt_index.txt").read_text().splitlines()
    jk = (root / "jk_index.txt").read_text().splitlines()
    for i, row in enumerate(q.itertuples()):
        same = g[g.vid == row.vid]
        assert [int(x) - 1 for x in gt[i].split()] == same.index[same.camid != row.camid].tolist()
        assert [int(x) - 1 for x in jk[i].split()] == same.index[same.camid == row.camid].tolist()
    assert gt[-1] == "" and jk[-1] != ""  # a query with only junk matches (the evaluator skips it)


# ----------------------------------------------------------------------------------------- VeRi-Wild
def test_veriwild_counts_vocab_and_quirks(fake_set, tmp_path):
    root = write_veriwild(fake_set, tmp_path / "VERI-Wild")
    info = (root / "train_test_split" / "vehicle_info.txt").read_text()
    assert info.startswith("id/image;Camera ID;Time;Model;Type;Color\n")
    assert "; small-sized truck;" in info and ";small-sized truck;" in info and ";dark gray\n" in info

    m = read_dataset("veriwild", root)
    assert _counts(m) == {("train", ""): (72, 24, 3), ("query", "small"): (5, 5, 1),
                          ("gallery", "small"): (10, 5, 2), ("query", "medium"): (8, 8, 1),
                          ("gallery", "medium"): (16, 8, 2), ("query", "large"): (16, 16, 1),
                          ("gallery", "large"): (32, 16, 2)}
    assert len(m.vocab["type"]) == 13 and "small-sized truck" in m.vocab["type"] and "others" in m.vocab["type"]
    assert len(m.vocab["color"]) == 12 and "dark gray" in m.vocab["color"]
    assert all(v == sorted(v) for v in m.vocab.values()) and m.vocab["model"] == sorted(MODELS)
    f = m.frame
    assert set(f.camid) == {3, 10, 17}  # raw camera numbers from vehicle_info.txt
    for test_set in ("small", "medium", "large"):
        q, g = m.split_frame("query", test_set), m.split_frame("gallery", test_set)
        assert not set(q.path) & set(g.path)
    assert set(m.split_frame("query", "small").path) < set(m.split_frame("query", "large").path)
    assert f.path.str.fullmatch(r"images/\d{5}/\d{6}\.jpg").all()
    assert (f.filter(like="attr_") >= 0).all().all()


# ----------------------------------------------------------------------------------------- VehicleID
def test_vehicleid_counts_names_and_missing_attributes(fake_set, tmp_path):
    root = write_vehicleid(fake_set, tmp_path / "VehicleID_V1.0")
    assert b"\r\n" in (root / "attribute" / "color_names.txt").read_bytes()

    m = read_dataset("vehicleid", root)
    assert _counts(m) == {("train", ""): (72, 24, 0), ("test", "800"): (18, 6, 0),
                          ("test", "1600"): (33, 11, 0), ("test", "2400"): (48, 16, 0)}
    assert m.vocab["color"] == ["black", "blue", "gray", "red", "sliver", "white", "yellow"]
    assert m.vocab["model"][1] == "丰田-Beta GT 2011款"  # split on the last space, UTF-8
    f = m.frame
    assert (f.camid == -1).all() and f.path.str.fullmatch(r"image/\d{7}\.jpg").all()
    vids = sorted({int(v) for v in f.vid})
    assert vids != list(range(vids[0], vids[0] + len(vids)))  # non-contiguous, relabelled below
    train = f[f.split == "train"]
    assert sorted(set(train.label)) == list(range(24))
    assert train.groupby("vid").label.nunique().eq(1).all()
    cov = m.summary().set_index(["split", "test_set"])
    assert 0 < cov.loc[("train", ""), "cov_color"] < cov.loc[("train", ""), "cov_model"] < 1
    assert cov.loc[("train", ""), "cov_model"] == pytest.approx(16 / 24)
    assert ((f.attr_color == -1) | (f.attr_model >= 0)).all()  # color vehicles are a subset


# ------------------------------------------------------------------------------------------- errors
def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("layout", "file", "lineno", "text", "expect"),
    [
        ("veriwild", "train_test_split/vehicle_info.txt", 4, "00001/000011;3;2018-03-11 01:01:01;A;sedan",
         "expected 6 ';'-separated fields"),
        ("veriwild", "train_test_split/train_list.txt", 2, "00001-000011", "expected <vid>/<imageid>"),
        ("veriwild", "train_test_split/vehicle_info.txt", 3, "00001/000011;c3;2018-03-11 01:01:01;A;sedan;red",
         "Camera ID 'c3' is not an integer"),
        ("vehicleid", "train_test_split/train_list.txt", 5, "0000014", "expected '<image name> <vehicle id>'"),
        ("vehicleid", "train_test_split/test_list_800.txt", 2, "0000014 x9", "vehicle id 'x9' is not"),
        ("vehicleid", "attribute/model_names.txt", 2, "丰田-Beta", "expected '<name> <id>'"),
        ("veri776", "name_query.txt", 3, "0042-c007.jpg", "expected a name like"),
    ],
)
def test_malformed_line_names_file_and_line(fake_set, tmp_path, layout, file, lineno, text, expect):
    writer = {"veri776": write_veri776, "veriwild": write_veriwild, "vehicleid": write_vehicleid}[layout]
    root = writer(fake_set, tmp_path / layout)
    _replace_line(root / file, lineno, text)
    with pytest.raises(UserError) as err:
        read_dataset(layout, root)
    assert f"{Path(file).name}:{lineno}: " in str(err.value) and expect in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_xml_names_file_and_line(fake_set, tmp_path):
    root = write_veri776(fake_set, tmp_path / "VeRi")
    text = (root / "test_label.xml").read_bytes().decode("gb2312").replace("/>", ">", 3)
    (root / "test_label.xml").write_bytes(text.encode("gb2312"))
    with pytest.raises(UserError, match=r"test_label\.xml:\d+: not well-formed XML"):
        read_dataset("veri776", root)


@pytest.mark.parametrize(
    ("layout", "writer", "folder", "list_file"),
    [("veri776", write_veri776, "image_train", "name_train.txt"),
     ("veriwild", write_veriwild, "images", "train_list.txt"),
     ("vehicleid", write_vehicleid, "image", "train_list.txt")],
)
def test_absent_images_logged_counted_and_kept(fake_set, tmp_path, caplog, layout, writer, folder, list_file):
    root = writer(fake_set, tmp_path / layout)
    gone = sorted((root / folder).rglob("*.jpg"))[:4]
    for path in gone:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="anet.data.readers"):
        m = read_dataset(layout, root)  # the prepare step quarantines them against the limit
    assert m.notes["images_missing"] == 4
    assert set(m.frame.path.str.rsplit("/", n=1).str[-1]) >= {p.name for p in gone}  # rows kept
    [message] = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert f"{list_file}: 4 listed images missing under {folder}/" in message and gone[0].name in message
    for path in (root / folder).rglob("*.jpg"):  # every image of the list gone: the wrong root
        path.unlink()
    with pytest.raises(UserError, match=rf"{list_file}: all \d+ listed images are missing under {folder}/ "
                       r".*re-extract the archive or check the root"):
        read_dataset(layout, root)


def test_root_errors_say_what_was_expected(fake_set, tmp_path):
    with pytest.raises(UserError, match="no such directory; expected a VeRi-776 root with name_train.txt"):
        read_dataset("veri776", tmp_path / "nowhere")
    wild = write_veriwild(fake_set, tmp_path / "wild")
    with pytest.raises(UserError, match="looks like a VeRi-Wild root: use dataset `veriwild`"):
        read_dataset("veri776", wild)
    with pytest.raises(UserError, match=r"did you mean .*wild\?"):
        read_dataset("veriwild", tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'market'"):
        read_dataset("market", wild)


# ---------------------------------------------------------------------------------------------- CLI
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anet")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_data_inspect_prints_table_and_writes_manifest(fake_set, tmp_path, capsys):
    root = write_veriwild(fake_set, tmp_path / "VERI-Wild")
    out = tmp_path / "m" / "veriwild.parquet"
    args = _parse(["data", "inspect", "veriwild", str(root), "--manifest", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "veriwild at" in text and "24 train ids" in text
    assert any(line.split()[:5] == ["query", "medium", "8", "8", "1"] for line in text.splitlines())
    assert "100.0%" in text and out.is_file()


def test_data_import_passes_arguments_to_the_importer(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(commands, "import_dataset", lambda *a, **k: calls.append((a, k)) or {"rows": 3})
    args = _parse(["data", "import", "veri776", "s3://b/VeRi.zip", "--no-push"])
    assert args.func(args) == 0
    args = _parse(["data", "import", "vehicleid", str(tmp_path), "--data-dir", "d", "--overwrite"])
    assert args.func(args) == 0
    assert calls == [(("veri776", "s3://b/VeRi.zip"), {"data_dir": Path("data"), "push": False}),
                     (("vehicleid", str(tmp_path)), {"data_dir": Path("d"), "push": True, "overwrite": True})]
    assert "rows: 3" in capsys.readouterr().out


TINY = ["train_ids=3", "test_ids=3", "images_per_id=4", "cameras=3", "render_size=32"]


@pytest.mark.parametrize("layout", ["veri776", "veriwild", "vehicleid"])
def test_data_synth_fake_layout_round_trip(layout, tmp_path, capsys):
    pytest.importorskip("anet.synthetic.generator")
    args = _parse(["data", "synth", "--profile", "smoke", "--layout", layout, "--out", str(tmp_path / "x"), *TINY])
    assert args.func(args) == 0
    m = read_dataset(layout, tmp_path / "x")
    assert m.num_train_ids() == 3 and len(m.split_frame("train")) == 12
    assert f"fake {layout} layout written" in capsys.readouterr().out
    with pytest.raises(UserError, match="not an empty folder"):
        args.func(args)


def test_veriwild_optional_header_partial_test_sets_and_unknown_keys(fake_set, tmp_path):
    root = write_veriwild(fake_set, tmp_path / "VERI-Wild")
    split_dir = root / "train_test_split"
    info = split_dir / "vehicle_info.txt"
    info.write_text(info.read_text().split("\n", 1)[1])  # header-less copies parse too
    for size in ("3000", "5000"):
        (split_dir / f"test_{size}_query.txt").unlink()
        (split_dir / f"test_{size}.txt").unlink()
    assert read_dataset("veriwild", root).test_sets() == ["large"]
    (split_dir / "test_10000.txt").unlink()
    with pytest.raises(UserError, match=r"test_10000\.txt: missing although test_10000_query\.txt is there"):
        read_dataset("veriwild", root)
    (split_dir / "test_10000_query.txt").unlink()
    with pytest.raises(UserError, match="no test set found; expected test_3000_query.txt"):
        read_dataset("veriwild", root)
    write_veriwild(fake_set, root)
    _replace_line(split_dir / "train_list.txt", 3, "99999/999999")
    with pytest.raises(UserError, match=r"train_list\.txt:3: 99999/999999 has no entry in .*vehicle_info\.txt"):
        read_dataset("veriwild", root)


def test_vehicleid_names_with_crlf_and_bom(fake_set, tmp_path):
    root = write_vehicleid(fake_set, tmp_path / "VehicleID_V1.0")
    names = root / "attribute" / "model_names.txt"
    names.write_bytes(b"\xef\xbb\xbf" + names.read_bytes().replace(b"\n", b"\r\n"))
    m = read_dataset("vehicleid", root)
    assert m.vocab["model"] == ["大众-Alpha 2010款", "丰田-Beta GT 2011款", "本田-Gamma 2012款"]
