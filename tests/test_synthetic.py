"""The synthetic vehicle generator: determinism, split structure, label sharing, atomic reuse, calibration."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anet.config import SyntheticCfg, load_config
from anet.errors import UserError
from anet.synthetic import generator as synthetic
from anet.synthetic.calibrate import calibrate
from anet.synthetic.generator import generate_synthetic, render_dataset
from anet.synthetic.plan import COLOR_NAMES, MODELS, TYPE_NAMES, plan_identities

SMALL = SyntheticCfg(train_ids=6, test_ids=6, images_per_id=6, cameras=3, render_size=48, seed=0)


@pytest.fixture(scope="module")
def small_set() -> synthetic.SyntheticSet:
    return render_dataset(SMALL)


def test_render_is_deterministic_and_seeded(small_set: synthetic.SyntheticSet) -> None:
    again = render_dataset(SMALL)
    assert [s.jpeg for s in again.samples] == [s.jpeg for s in small_set.samples]
    other = render_dataset(SMALL.model_copy(update={"seed": 1}))
    assert [s.jpeg for s in other.samples] != [s.jpeg for s in small_set.samples]


def test_rendering_does_not_depend_on_what_else_is_rendered(small_set: synthetic.SyntheticSet) -> None:
    test_only = render_dataset(SMALL, splits=("query", "gallery")).samples
    full = [s for s in small_set.samples if s.split != "train"]
    assert [s.jpeg for s in test_only] == [s.jpeg for s in full]


def test_images_and_vocabularies(small_set: synthetic.SyntheticSet) -> None:
    img = Image.open(io.BytesIO(small_set.samples[0].jpeg))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (48, 48)
    assert small_set.color_names == list(COLOR_NAMES) and len(COLOR_NAMES) == 10
    assert small_set.type_names == list(TYPE_NAMES) and len(TYPE_NAMES) == 9
    assert 18 <= len(small_set.model_names) <= 22
    for s in small_set.samples:  # a model implies the type
        assert MODELS[s.model][1] == s.type


def test_split_counts(small_set: synthetic.SyntheticSet) -> None:
    counts = Counter(s.split for s in small_set.samples)
    assert counts == {"train": 36, "query": 6, "gallery": 30}
    train_vids = {s.vid for s in small_set.samples if s.split == "train"}
    test_vids = {s.vid for s in small_set.samples if s.split != "train"}
    assert len(train_vids) == 6 and len(test_vids) == 6 and not train_vids & test_vids


@pytest.mark.parametrize("cfg", [SMALL, SyntheticCfg(), SyntheticCfg(images_per_id=3, cameras=2, seed=5)])
def test_query_and_gallery_cameras(cfg: SyntheticCfg) -> None:
    same_camera_gallery = 0
    for ident in plan_identities(cfg):
        assert len(ident.images) == cfg.images_per_id
        assert all(1 <= im.camid <= cfg.cameras for im in ident.images)
        if ident.split == "train":
            assert {im.split for im in ident.images} == {"train"}
            continue
        q_cams = {im.camid for im in ident.images if im.split == "query"}
        g_cams = [im.camid for im in ident.images if im.split == "gallery"]
        assert len(q_cams) == 1, "queries of one id come from one camera"
        assert any(c not in q_cams for c in g_cams), "a gallery image from another camera"
        same_camera_gallery += sum(c in q_cams for c in g_cams)
    assert same_camera_gallery > 0, "same-camera gallery images (junk) must exist"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_no_color_type_pair_is_unique_at_default_sizes(seed: int, difficulty: float) -> None:
    cfg = SyntheticCfg(seed=seed, difficulty=difficulty)
    idents = plan_identities(cfg)
    for split in ("train", "test"):
        pairs = Counter((i.color, i.type) for i in idents if i.split == split)
        assert min(pairs.values()) >= 2, f"unique (color, type) pair in {split}"
    assert len({i.vid for i in idents}) == cfg.train_ids + cfg.test_ids


def test_default_profile_labels_are_shared() -> None:
    cfg = load_config("synthetic").data.synthetic
    test = Counter((i.color, i.type) for i in plan_identities(cfg) if i.split == "test")
    assert np.median(list(test.values())) >= 3


def test_generate_writes_manifest_and_reuses(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    manifest = generate_synthetic(SMALL, out)
    frame = manifest.frame
    assert manifest.dataset == "synthetic" and manifest.root == str(out.resolve())
    assert manifest.attr_classes() == {"color": 10, "type": 9}
    assert manifest.num_train_ids() == 6
    assert sorted(frame.loc[frame["split"] == "train", "label"].unique()) == list(range(6))
    assert (frame.loc[frame["split"] != "train", "label"] == -1).all()
    assert set(frame.loc[frame["split"] != "train", "test_set"]) == {"test"}
    assert all((out / p).is_file() for p in frame["path"])
    assert frame["path"].iloc[0].startswith("images/0001_c00") and (out / "labels.csv").is_file()
    first = out / frame["path"].iloc[0]
    mtime = first.stat().st_mtime_ns
    again = generate_synthetic(SMALL, out)
    assert first.stat().st_mtime_ns == mtime, "second call must reuse, not re-render"
    assert again.frame.equals(frame)
    changed = generate_synthetic(SMALL.model_copy(update={"seed": 3}), out)
    assert len(changed.frame) == len(frame) and not changed.frame.equals(frame)
    assert '"seed": 3' in (out / "synthetic.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["synth"], "no temp dirs left behind"


def test_generate_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "synth"
    calls = {"n": 0}
    real = synthetic.render_vehicle_image

    def flaky(*args: object, **kwargs: object) -> bytes:
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_vehicle_image", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic(SMALL, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "render_vehicle_image", real)
    generate_synthetic(SMALL, out)
    monkeypatch.setattr(synthetic, "render_vehicle_image", flaky)
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        generate_synthetic(SMALL.model_copy(update={"seed": 9}), out)
    monkeypatch.setattr(synthetic, "render_vehicle_image", real)
    assert synthetic._is_complete(out, SMALL), "the old complete generation is left intact"


def test_generate_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a synthetic dataset directory"):
        generate_synthetic(SMALL, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_calibrate_small() -> None:
    report = calibrate(SMALL)
    for name in ("oracle", "raw_pixel", "random"):
        assert 0.0 <= report[name]["mAP"] <= 1.0
    assert report["num_query"] == 6 and report["num_gallery"] == 30
    assert report["labels"]["no_unique_pair"] is True
