"""Image policy of the prepared cache: non-RGB modes converted, tiny and mislabelled files and missing
ones quarantined with their reason, min_image_size part of the fingerprint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cache import VOCAB, make_dataset

from anet.config import DataCfg
from anet.data import cache as cache_mod
from anet.data.cache import prepare_dataset
from anet.data.images import decode_resize
from anet.data.manifest import build_manifest
from anet.errors import UserError

SIZE = (16, 12)  # h, w of the cache


def _encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def _pixels(seed: int, w: int = 40, h: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)  # H x W x 3


def _palette_with_transparency() -> Image.Image:
    img = Image.fromarray(_pixels(4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 3
    return img


VALID = {  # mode -> (image, format)
    "L": (Image.fromarray(_pixels(1)).convert("L"), "JPEG"),
    "1": (Image.fromarray(_pixels(2)).convert("1"), "PNG"),
    "P": (Image.fromarray(_pixels(3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG"),
    "P+transparency": (_palette_with_transparency(), "PNG"),
    "LA": (Image.fromarray(_pixels(5)).convert("LA"), "PNG"),
    "RGBA": (Image.fromarray(_pixels(6)).convert("RGBA"), "PNG"),
    "CMYK": (Image.fromarray(_pixels(7)).convert("CMYK"), "JPEG"),
}


@pytest.mark.parametrize("mode", list(VALID))
def test_non_rgb_modes_are_converted_not_quarantined(mode, recwarn):
    img, fmt = VALID[mode]
    data = _encode(img, fmt)
    pixels, reason = decode_resize(data, SIZE, min_side=16, name="x.jpg" if fmt == "JPEG" else "x.png")
    assert reason == "" and pixels.shape == (16, 12, 3) and pixels.dtype == np.uint8
    with Image.open(io.BytesIO(data)) as ref:
        assert ref.mode == mode.split("+")[0]  # the file really has that mode
        ref = ref.convert("RGBA") if "transparency" in ref.info else ref
        expected = np.asarray(ref.convert("RGB").resize((12, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(pixels, expected)
    assert not [w for w in recwarn if "Palette" in str(w.message)]


@pytest.mark.parametrize(
    ("data", "name", "min_side", "reason"),
    [
        (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "JPEG"), "a.jpg", 16,
         "too small: 1x1, shorter side below data.min_image_size=16"),
        (_encode(Image.fromarray(_pixels(8, w=200, h=15)), "JPEG"), "a.jpg", 16,
         "too small: 200x15, shorter side below data.min_image_size=16"),
        (_encode(Image.fromarray(_pixels(9)), "PNG"), "0001_c001.jpg", 16,
         "wrong format: PNG content, name says .jpg"),
        (_encode(Image.fromarray(_pixels(10)), "JPEG"), "dir.v2/a.PNG", 16,
         "wrong format: JPEG content, name says .png"),
        (_encode(Image.fromarray(_pixels(11)), "BMP"), "a.jpeg", 16, "wrong format: BMP content, name says .jpeg"),
        (_encode(Image.fromarray(np.zeros((20, 20), np.uint16)), "PNG"), "a.png", 16, "mode I;16"),
    ],
    ids=["1x1", "200x15", "png-as-jpg", "jpeg-as-png", "bmp-as-jpeg", "16-bit"],
)
def test_refused_images_say_why(data, name, min_side, reason):
    assert decode_resize(data, SIZE, min_side=min_side, name=name) == (None, reason)


def test_accepted_edge_cases():
    exactly = _encode(Image.fromarray(_pixels(12, w=16, h=40)), "JPEG")
    assert decode_resize(exactly, SIZE, min_side=16, name="a.jpg")[1] == ""  # 16 px is enough
    assert decode_resize(_encode(Image.fromarray(_pixels(13)), "PNG"), SIZE, name="a.dat")[1] == ""  # unknown suffix
    tiny = _encode(Image.new("RGB", (1, 1)), "JPEG")
    assert decode_resize(tiny, SIZE)[1] == ""  # the old two-argument call keeps working (bench/)
    big = _encode(Image.fromarray(_pixels(14, w=400, h=300)), "JPEG")  # the JPEG draft shrinks it before load
    assert decode_resize(big, SIZE, min_side=301, name="a.jpg")[1].startswith("too small: 400x300")


@pytest.fixture()
def policy_set(tmp_path: Path):
    """make_dataset's 27 JPEGs with a grayscale, a CMYK, a 1x1, a PNG named .jpg and a missing file."""
    root = tmp_path / "ds"
    records = make_dataset(root)
    paths = [r[0] for r in records]
    (root / paths[0]).write_bytes(_encode(VALID["L"][0], "JPEG"))
    (root / paths[1]).write_bytes(_encode(VALID["CMYK"][0], "JPEG"))
    (root / paths[2]).write_bytes(_encode(Image.new("RGB", (1, 1)), "JPEG"))
    (root / paths[3]).write_bytes(_encode(Image.fromarray(_pixels(15)), "PNG"))
    (root / paths[4]).unlink()
    return build_manifest("synthetic", root, records, VOCAB), paths


def test_prepare_quarantines_with_reasons_and_counts_missing(policy_set, tmp_path):
    manifest, paths = policy_set
    prepared = prepare_dataset(manifest, tmp_path / "cache", SIZE, 3 / 27, progress=False, min_image_size=16)
    reasons = dict(zip(prepared.quarantine["path"], prepared.quarantine["reason"], strict=True))
    assert reasons == {paths[2]: "too small: 1x1, shorter side below data.min_image_size=16",
                       paths[3]: "wrong format: PNG content, name says .jpg", paths[4]: "missing"}
    kept = set(prepared.manifest.frame["path"])
    assert {paths[0], paths[1]} <= kept and not kept & set(reasons)
    gray = prepared.manifest.frame.set_index("path").loc[paths[0], "cache_index"]
    assert prepared.images[gray].std(axis=2).max() == 0  # grayscale: R = G = B
    meta = (prepared.cache_dir / "meta.json").read_text()
    assert '"min_image_size": 16' in meta and '"missing": 1' in meta
    with pytest.raises(UserError, match=r"3 of 27 images .* \(missing 1, too small 1, wrong format 1\), "
                                        r"above the limit data.quarantine_max_fraction=0.1;"):
        prepare_dataset(manifest, tmp_path / "cache", SIZE, 0.1, progress=False, min_image_size=16)


def test_one_missing_file_is_within_the_limit(tmp_path):
    root = tmp_path / "ds"
    records = make_dataset(root)
    (root / records[7][0]).unlink()
    manifest = build_manifest("synthetic", root, records, VOCAB)
    prepared = prepare_dataset(manifest, tmp_path / "cache", SIZE, 0.05, progress=False)
    assert prepared.quarantine.to_dict("records") == [{"path": records[7][0], "reason": "missing"}]
    with pytest.raises(UserError, match=r"1 of 27 images .*\(missing 1\)"):
        prepare_dataset(manifest, tmp_path / "cache", SIZE, 0.0, progress=False)


def test_min_image_size_changes_the_fingerprint_and_the_kept_images(policy_set, tmp_path):
    manifest, paths = policy_set
    loose = prepare_dataset(manifest, tmp_path / "cache", SIZE, 1.0, progress=False, min_image_size=1)
    default = prepare_dataset(manifest, tmp_path / "cache", SIZE, 1.0, progress=False)
    strict = prepare_dataset(manifest, tmp_path / "cache", SIZE, 1.0, progress=False, min_image_size=31)
    assert len({loose.fingerprint, default.fingerprint, strict.fingerprint}) == 3
    assert len({loose.cache_dir, default.cache_dir, strict.cache_dir}) == 3
    assert paths[2] in set(loose.manifest.frame["path"])  # the 1x1 is kept when the policy allows it
    assert paths[2] not in set(default.manifest.frame["path"])
    assert len(loose.quarantine) == 2 and len(default.quarantine) == 3
    kinds = strict.quarantine["reason"].str.split(":").str[0].value_counts().to_dict()
    assert kinds == {"too small": 25, "wrong format": 1, "missing": 1}  # all 40x30 or less
    assert strict.manifest.frame.empty


def test_default_min_image_size_matches_the_config_and_reuses_the_cache(policy_set, tmp_path, monkeypatch):
    assert DataCfg().min_image_size == 16
    with pytest.raises(ValueError):
        DataCfg(min_image_size=0)
    manifest, _ = policy_set
    first = prepare_dataset(manifest, tmp_path / "cache", SIZE, 0.5, False)  # positional call, as before
    monkeypatch.setattr(cache_mod, "decode_resize", lambda *a, **k: pytest.fail("decoded on a cache hit"))
    again = prepare_dataset(manifest, tmp_path / "cache", SIZE, 0.5, progress=False,
                            min_image_size=DataCfg().min_image_size)
    assert again.cache_dir == first.cache_dir
