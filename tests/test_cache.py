"""Prepared cache: quarantine, reuse without decoding, atomicity after a killed prepare, batches."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anet.data import cache as cache_mod
from anet.data.cache import COMPLETE, PreparedDataset, prepare_dataset
from anet.data.loader import TrainBatches, iter_eval_batches
from anet.data.manifest import build_manifest
from anet.data.sampler import PKSampler
from anet.errors import UserError
from anet.io import host_tag

VOCAB = {"color": ["red", "blue", "white"], "type": ["sedan", "suv"]}


def _jpeg(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)  # H x W x 3
    img = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def make_dataset(root: Path, ids: int = 6, per_id: int = 4) -> list[tuple]:
    """A tiny dataset: train ids 0..ids-1 and one query/gallery id, all good JPEGs."""
    records = []
    for vid in range(ids):
        for j in range(per_id):
            rel = f"train/{vid:04d}_c{j}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(_jpeg(vid * 100 + j))
            records.append((rel, str(vid), j, "train", "", vid % 3, vid % 2))
    for j, split in enumerate(["query", "gallery", "gallery"]):
        rel = f"test/0100_c{j}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_jpeg(9000 + j))
        records.append((rel, "100", j, split, "test", 1, 0))
    return records


def _entries(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.iterdir() if p.name != ".memo")


@pytest.fixture()
def dataset(tmp_path: Path):
    root = tmp_path / "ds"
    records = make_dataset(root)
    return root, records


def test_prepare_resizes_and_opens(dataset, tmp_path):
    root, records = dataset
    manifest = build_manifest("synthetic", root, records, VOCAB)
    prepared = prepare_dataset(manifest, tmp_path / "cache", (16, 12), 0.0, progress=False)
    assert prepared.images.shape == (len(records), 16, 12, 3) and prepared.images.dtype == np.uint8
    assert (prepared.cache_dir / COMPLETE).is_file() and prepared.cache_dir.name.startswith("synthetic-16x12-")
    again = PreparedDataset.open(prepared.cache_dir)
    assert again.fingerprint == prepared.fingerprint and again.attributes == ("color", "type")
    row = again.manifest.frame.iloc[5]
    with Image.open(root / row["path"]) as img:
        expected = np.asarray(img.convert("RGB").resize((12, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(again.images[row["cache_index"]], expected)
    assert len(again.train_rows()) == 24 and len(again.rows("gallery", "test")) == 2


def test_quarantine_below_and_above_limit(dataset, tmp_path, monkeypatch):
    root, records = dataset
    (root / records[0][0]).write_bytes(b"")  # zero bytes
    (root / records[1][0]).write_bytes(_jpeg(1)[:200])  # truncated
    (root / records[2][0]).write_bytes(b"not an image at all")
    (root / records[3][0]).unlink()  # listed but missing: counts against the limit like the others
    manifest = build_manifest("synthetic", root, records, VOCAB)
    with pytest.raises(UserError) as err:
        prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.1, progress=False)
    message = str(err.value)
    assert "4 of 27 images" in message and "quarantine_max_fraction=0.1" in message
    assert "(missing 1, not an image 1, truncated 1, zero bytes 1)" in message
    report = Path(message.split("see ")[1].split(" ")[0])
    assert report.is_file() and report.parent.name.startswith("synthetic-16x16-")

    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "decode_resize", boom)  # a higher limit reuses the checked cache
    prepared = prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.2, progress=False)
    reasons = dict(zip(prepared.quarantine["path"], prepared.quarantine["reason"], strict=True))
    assert reasons == {records[0][0]: "zero bytes", records[1][0]: "truncated",
                       records[2][0]: "not an image", records[3][0]: "missing"}
    assert not set(reasons) & set(prepared.manifest.frame["path"])
    assert len(prepared.manifest.frame) == len(records) - 4


def test_cache_reused_without_decoding(dataset, tmp_path, monkeypatch):
    root, records = dataset
    manifest = build_manifest("synthetic", root, records, VOCAB)
    first = prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)

    def boom(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(cache_mod, "decode_resize", boom)
    second = prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)
    assert second.cache_dir == first.cache_dir
    monkeypatch.undo()
    os.utime(root / records[0][0], ns=(1, 1))  # same content, new mtime: decoded again, same directory
    assert prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False).cache_dir == first.cache_dir
    monkeypatch.setattr(cache_mod, "decode_resize", boom)
    (root / records[0][0]).write_bytes(_jpeg(12345))  # content change -> new fingerprint -> rebuild
    with pytest.raises(AssertionError, match="decoded on a cache hit"):
        prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)
    assert _entries(tmp_path / "cache") == [first.cache_dir.name]  # no debris


_SLOW_PREPARE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from anet.data import cache
    from anet.data.manifest import Manifest
    real = cache.decode_resize
    def slow(*args, **kwargs):
        print("decoding", flush=True)
        time.sleep(0.2)
        return real(*args, **kwargs)
    cache.decode_resize = slow
    cache.prepare_dataset(Manifest.load(sys.argv[1]), Path(sys.argv[2]), (16, 16), 0.0, progress=False)
""")


def test_killed_prepare_leaves_no_valid_cache(dataset, tmp_path):
    root, records = dataset
    manifest = build_manifest("synthetic", root, records, VOCAB)
    manifest.save(tmp_path / "m.parquet")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(tmp_path / "m.parquet"),
                             str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("decoding")  # two decode threads may print on one line
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = list((tmp_path / "cache").iterdir())
    assert leftovers and all(not (p / COMPLETE).exists() for p in leftovers)
    for partial in leftovers:
        with pytest.raises(UserError, match="no COMPLETE marker"):
            PreparedDataset.open(partial)
    prepared = prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)
    assert _entries(tmp_path / "cache") == [prepared.cache_dir.name]  # stale tmp removed


def test_train_and_eval_batches(dataset, tmp_path):
    root, records = dataset
    prepared = prepare_dataset(build_manifest("synthetic", root, records, VOCAB), tmp_path / "c", (16, 8),
                               0.0, progress=False)
    train = prepared.train_rows()
    sampler = PKSampler(train["label"].to_numpy(), p=3, k=2, seed=0)
    batches = list(TrainBatches(prepared, sampler, ("color", "type")))
    assert len(batches) == len(sampler) == 4  # one pass: 6 ids x 4 images / (3 x 2)
    b = batches[0]
    assert b.images.shape == (6, 16, 8, 3) and b.images.dtype == torch.uint8
    assert b.labels.dtype == torch.int64 and set(b.attrs) == {"color", "type"}
    assert torch.equal(b.images[0], torch.from_numpy(np.array(prepared.images[int(b.index[0])])))
    assert torch.equal(b.attrs["color"], b.labels % 3)  # make_dataset: color = vid % 3, label = vid
    query = prepared.rows("gallery", "test")
    chunks = list(iter_eval_batches(prepared, query, batch_size=1))
    assert [c.shape for c in chunks] == [(1, 16, 8, 3)] * 2


def test_a_cache_found_incomplete_is_refused_in_one_line_and_rebuilt_by_prepare(dataset, tmp_path):
    root, records = dataset
    manifest = build_manifest("synthetic", root, records, VOCAB)
    prepared = prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)
    (prepared.cache_dir / "images.npy").unlink()  # COMPLETE without its images (a build deleted under it)
    with pytest.raises(UserError, match=r"incomplete prepared cache \(no images.npy\); never loaded") as err:
        PreparedDataset.open(prepared.cache_dir)
    assert "\n" not in str(err.value)
    again = prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)
    assert again.cache_dir == prepared.cache_dir and again.images.shape == (len(records), 16, 16, 3)
    assert _entries(tmp_path / "cache") == [again.cache_dir.name]
    np.save(again.cache_dir / "images.npy", np.zeros((3, 16, 16, 3), np.uint8))  # rows missing
    with pytest.raises(UserError, match=r"images.npy is \(3, 16, 16, 3\), meta.json says \(27, 16, 16, 3\)"):
        PreparedDataset.open(again.cache_dir)


def test_a_build_whose_folder_vanished_publishes_nothing(dataset, tmp_path, monkeypatch):
    root, records = dataset
    manifest = build_manifest("synthetic", root, records, VOCAB)
    real_build = cache_mod._build

    def build_then_lose_images(manifest, paths, size, min_side, tmp, progress):
        digests = real_build(manifest, paths, size, min_side, tmp, progress)
        (tmp / "images.npy").unlink()  # another pod's clean-up removed the live build meanwhile
        return digests

    monkeypatch.setattr(cache_mod, "_build", build_then_lose_images)
    with pytest.raises(UserError, match=r"lost files while it ran \(no images.npy; another process"):
        prepare_dataset(manifest, tmp_path / "cache", (16, 16), 0.0, progress=False)
    assert _entries(tmp_path / "cache") == []  # nothing published, the build folder removed


def test_cache_temp_folders_carry_host_namespace_and_pid(dataset, tmp_path, monkeypatch):
    root, records = dataset
    seen = []
    real_build = cache_mod._build
    monkeypatch.setattr(cache_mod, "_build", lambda *args: seen.append(args[4].name) or real_build(*args))
    prepare_dataset(build_manifest("synthetic", root, records, VOCAB), tmp_path / "cache", (16, 16), 0.0,
                    progress=False)
    assert seen[0].startswith(f".synthetic-16x16.tmp-{host_tag()}-{os.getpid()}-") and seen[0].endswith(".tmp")
