"""Manifest: label assignment, queries, summary, parquet round trip and its failure messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anet.data.manifest import Manifest, build_manifest
from anet.errors import UserError

VOCAB = {"color": ["black", "白色", "dark gray"], "model": ["大众-朗逸 2013款", "b"]}


@pytest.fixture
def manifest(tmp_path) -> Manifest:
    records = [
        ("image/0000010.jpg", "10", -1, "train", "", 0, -1),
        ("image/0000011.jpg", "2", -1, "train", "", 1, 1),
        ("image/0000012.jpg", "9", -1, "train", "", -1, -1),
        ("image/0000013.jpg", "2", -1, "train", "", 2, 0),
        ("image/0000020.jpg", "30", 4, "query", "small", 0, 0),
        ("image/0000021.jpg", "30", 5, "gallery", "small", -1, 1),
        ("image/0000021.jpg", "30", 5, "gallery", "large", -1, 1),
        ("image/0000022.jpg", "31", 4, "gallery", "large", 1, -1),
    ]
    return build_manifest("vehicleid", tmp_path, records, VOCAB)


def test_labels_contiguous_in_numeric_vid_order(manifest):
    f = manifest.frame
    assert list(f.columns) == ["path", "vid", "label", "camid", "split", "test_set", "attr_color", "attr_model"]
    assert dict(zip(f.vid[:4], f.label[:4], strict=True)) == {"10": 2, "2": 0, "9": 1}
    assert (f.label[4:] == -1).all()
    assert {f[c].dtype for c in ("label", "camid", "attr_color", "attr_model")} == {np.dtype("int64")}
    assert manifest.num_train_ids() == 3
    assert manifest.attr_classes() == {"color": 3, "model": 2}


def test_split_frame_keeps_frame_row_numbers(manifest):
    assert manifest.split_frame("gallery").index.tolist() == [5, 6, 7]
    assert manifest.split_frame("gallery", "large").index.tolist() == [6, 7]
    assert manifest.split_frame("query", "large").empty
    assert manifest.test_sets() == ["small", "large"]


def test_summary_counts_and_coverage(manifest):
    s = manifest.summary().set_index(["split", "test_set"])
    assert s.loc[("train", "")].to_dict() == {"images": 4, "ids": 3, "cameras": 0, "cov_color": 0.75,
                                               "cov_model": 0.5}
    assert s.loc[("gallery", "large"), "cameras"] == 2
    assert s.loc[("gallery", "small"), "cov_color"] == 0.0
    assert list(s.index.get_level_values(0)) == ["train", "query", "gallery", "gallery"]


def test_parquet_round_trip(manifest, tmp_path):
    path = manifest.save(tmp_path / "out" / "m.parquet")
    meta = pq.read_schema(path).metadata
    assert b"anet.manifest" in meta
    back = Manifest.load(path)
    pd.testing.assert_frame_equal(back.frame, manifest.frame)
    assert back.vocab == VOCAB and back.dataset == "vehicleid" and back.root == manifest.root
    assert list((tmp_path / "out").iterdir()) == [path]  # no temp file left behind


def test_failed_save_keeps_the_old_file(manifest, tmp_path, monkeypatch):
    path = manifest.save(tmp_path / "m.parquet")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        manifest.save(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match=r"nowhere\.parquet: no such manifest file"):
        Manifest.load(tmp_path / "nowhere.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match=r"bad\.parquet: not a readable manifest"):
        Manifest.load(bad)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), foreign)
    with pytest.raises(UserError, match=r"foreign\.parquet: a parquet file but not an anet manifest"):
        Manifest.load(foreign)


def test_validation_split_holds_out_training_identities_like_the_test_protocol():
    from anet.data.validation import VAL, hold_out_validation

    records = [(f"{v}_{c}_{i}.jpg", str(v), c, "train", "", 0) for v in range(10) for c in range(3) for i in range(2)]
    records += [(f"t{v}.jpg", str(100 + v), 0, "query", "test", 0) for v in range(2)]
    base = build_manifest("synthetic", "/data", records, {"color": ["a"]})
    held = hold_out_validation(base, val_ids=3, seed=0).frame
    val = held[held["test_set"] == VAL]
    assert val["vid"].nunique() == 3 and set(val["split"]) == {"query", "gallery"}
    assert (val.groupby(["vid", "camid"])["split"].apply(lambda s: (s == "query").sum()) == 1).all()
    train = held[held["split"] == "train"]
    assert not set(train["vid"]) & set(val["vid"]) and sorted(train["label"].unique()) == list(range(7))
    assert (held.loc[held["split"] != "train", "label"] == -1).all()
    assert hold_out_validation(base, val_ids=3, seed=0).frame.equals(held)  # a fixed split
    assert not hold_out_validation(base, val_ids=3, seed=1).frame.equals(held)
