"""The built-in synthetic vehicle dataset: procedurally drawn, labelled, deterministic.

Every identity has a colour and type (VeRi's vocabularies), a model (which implies the type) and fixed
fine details, most of them visible from one side only (design section 5). Many identities share a
(colour, type) pair -- within each split no pair is unique -- so only the details separate them. Each
camera has its own viewpoint mix, background, lighting, blur and scale; test identities have query
images from one camera and gallery images from that camera (junk for the evaluator) and from others.

Example:
    >>> from anet.config import load_config
    >>> from anet.synthetic.generator import generate_synthetic, render_dataset
    >>> cfg = load_config("synthetic").data.synthetic
    >>> manifest = generate_synthetic(cfg, "data/synthetic")   # reused when already there
    >>> manifest.frame.groupby("split").size()      # train 1440, query 120, gallery 600
    >>> in_memory = render_dataset(cfg)             # SyntheticSet for the fake-layout writers
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from anet.config import SyntheticCfg
from anet.data.cache import share_with_group
from anet.data.manifest import build_manifest
from anet.errors import UserError
from anet.io import remove_stale_temps, temp_prefix
from anet.synthetic.plan import COLOR_NAMES, MODEL_NAMES, TYPE_NAMES, plan_cameras, plan_identities
from anet.synthetic.scene import render_vehicle_image

if TYPE_CHECKING:
    from anet.data.manifest import Manifest

__all__ = [
    "SyntheticSample", "SyntheticSet", "render_dataset", "iter_samples", "synthetic_frame", "generate_synthetic",
    "image_name", "is_generated",
]

GENERATOR_VERSION = 1
DONE_MARKER = ".done"
STAMP_FILE = "synthetic.json"
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image with its labels (``index`` = image number within its identity)."""

    vid: int
    camid: int
    color: int
    type: int
    model: int
    split: str  # "train" | "query" | "gallery"
    jpeg: bytes
    index: int = 0


@dataclass(frozen=True)
class SyntheticSet:
    """All rendered samples plus the class names (index = class id)."""

    samples: list[SyntheticSample]
    color_names: list[str]
    type_names: list[str]
    model_names: list[str]


def image_name(vid: int, camid: int, index: int) -> str:
    """File name of an image, VeRi-like: ``<vid:04d>_c<cam:03d>_<n:04d>.jpg``."""
    return f"{vid:04d}_c{camid:03d}_{index:04d}.jpg"


def iter_samples(cfg: SyntheticCfg, splits: Collection[str] | None = None) -> Iterator[SyntheticSample]:
    """Render samples one by one, ordered by (vid, index); ``splits`` limits which rows are drawn."""
    cams = {cam.camid: cam for cam in plan_cameras(cfg)}
    for ident in plan_identities(cfg):
        for image in ident.images:
            if splits is not None and image.split not in splits:
                continue
            rng = np.random.default_rng([cfg.seed, 12, ident.vid, image.index])
            jpeg = render_vehicle_image(ident.details, cams[image.camid], cfg.render_size, cfg.difficulty,
                                        cfg.seed, rng)
            yield SyntheticSample(ident.vid, image.camid, ident.color, ident.type, ident.model,
                                  image.split, jpeg, image.index)


def render_dataset(cfg: SyntheticCfg, *, splits: Collection[str] | None = None) -> SyntheticSet:
    """Render the whole dataset in memory (deterministic: same cfg -> byte-identical JPEGs).

    Example:
        >>> s = render_dataset(SyntheticCfg(train_ids=4, test_ids=4, images_per_id=4, render_size=48))
        >>> len(s.samples), s.color_names[0]
        (32, 'yellow')
    """
    return SyntheticSet(list(iter_samples(cfg, splits)), list(COLOR_NAMES), list(TYPE_NAMES),
                        list(MODEL_NAMES))


def synthetic_frame(samples: SyntheticSet | list[SyntheticSample]) -> pd.DataFrame:
    """The manifest frame (contract columns) plus ``model`` for a set of samples; paths under images/."""
    rows = samples.samples if isinstance(samples, SyntheticSet) else samples
    train_vids = sorted({s.vid for s in rows if s.split == "train"})
    label_of = {vid: i for i, vid in enumerate(train_vids)}
    frame = pd.DataFrame({
        "path": [f"images/{image_name(s.vid, s.camid, s.index)}" for s in rows],
        "vid": [f"{s.vid:04d}" for s in rows],
        "label": [label_of.get(s.vid, -1) if s.split == "train" else -1 for s in rows],
        "camid": [s.camid for s in rows],
        "split": [s.split for s in rows],
        "test_set": ["" if s.split == "train" else "test" for s in rows],
        "attr_color": [s.color for s in rows],
        "attr_type": [s.type for s in rows],
        "model": [s.model for s in rows],
    })
    for col in ("label", "camid", "attr_color", "attr_type", "model"):
        frame[col] = frame[col].astype("int64")
    return frame


def _stamp(cfg: SyntheticCfg) -> str:
    fields = cfg.model_dump(mode="json")
    # the stamp keeps the field's first name, so the DVC-tracked data/synthetic stays byte-identical
    fields["image_size"] = fields.pop("render_size")
    return json.dumps({"generator_version": GENERATOR_VERSION, "cfg": fields}, sort_keys=True)


def _digest(cfg: SyntheticCfg) -> str:
    return hashlib.sha256(_stamp(cfg).encode()).hexdigest()


def _is_complete(out: Path, cfg: SyntheticCfg) -> bool:
    """True when ``out`` holds a finished generation of exactly this cfg (marker, labels, all images)."""
    marker = out / DONE_MARKER
    if not (marker.is_file() and marker.read_text().strip() == _digest(cfg)):
        return False
    expected = (cfg.train_ids + cfg.test_ids) * cfg.images_per_id
    images = out / "images"
    return (out / LABELS_FILE).is_file() and images.is_dir() and len(os.listdir(images)) == expected


def is_generated(cfg: SyntheticCfg, out_dir: str | os.PathLike[str]) -> bool:
    """True when ``out_dir`` already holds this generation (then nothing is written there)."""
    return _is_complete(Path(out_dir), cfg)


def _manifest(out: Path) -> Manifest:

    labels = pd.read_csv(out / LABELS_FILE, dtype={"vid": str, "test_set": str}, keep_default_na=False)
    records = labels[["path", "vid", "camid", "split", "test_set", "attr_color", "attr_type"]]
    vocab = {"color": list(COLOR_NAMES), "type": list(TYPE_NAMES)}
    return build_manifest("synthetic", out, records.itertuples(index=False, name=None), vocab)


def _write_generation(cfg: SyntheticCfg, tmp: Path) -> None:
    """Render into ``tmp`` (a fresh directory); the done marker is written last."""
    (tmp / "images").mkdir()
    rows = []
    for sample in iter_samples(cfg):
        (tmp / "images" / image_name(sample.vid, sample.camid, sample.index)).write_bytes(sample.jpeg)
        rows.append(SyntheticSample(sample.vid, sample.camid, sample.color, sample.type, sample.model,
                                    sample.split, b"", sample.index))
    frame = synthetic_frame(rows)
    frame["color_name"] = [COLOR_NAMES[i] for i in frame["attr_color"]]
    frame["type_name"] = [TYPE_NAMES[i] for i in frame["attr_type"]]
    frame["model_name"] = [MODEL_NAMES[i] for i in frame["model"]]
    frame.to_csv(tmp / LABELS_FILE, index=False)
    (tmp / STAMP_FILE).write_text(_stamp(cfg) + "\n")
    (tmp / DONE_MARKER).write_text(_digest(cfg) + "\n")


def _check_replaceable(out: Path) -> None:
    ours = {"images", LABELS_FILE, STAMP_FILE, DONE_MARKER}
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another data.root or remove it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if foreign:
        raise UserError(f"{out}: not a synthetic dataset directory (contains {foreign[0]!r}); "
                        f"choose another data.root or empty it")


def generate_synthetic(cfg: SyntheticCfg, out_dir: str | os.PathLike[str]) -> Manifest:
    """Write ``out_dir/images/*.jpg`` + ``labels.csv`` and return the manifest (idempotent, atomic).

    A complete generation for the same cfg is reused without rendering. Otherwise everything is
    written into a temporary sibling directory that replaces ``out_dir`` by rename, so an interrupted
    run never leaves an ``out_dir`` that looks complete; what an interrupted run left next to it
    (its temporary folders, named with its pid) is deleted on the next start.

    Example:
        >>> m = generate_synthetic(load_config("smoke").data.synthetic, "data/smoke")
        >>> m.num_train_ids()
        8
    """
    out = Path(out_dir)
    remove_stale_temps(out.parent, name=out.name)  # a killed generation's folders (every image again)
    if _is_complete(out, cfg):
        return _manifest(out)
    if out.exists():
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent))
    try:
        _write_generation(cfg, tmp)
        share_with_group(tmp)  # the cache's modes: a teammate (same group) reuses it, whatever the umask
        _swap_into_place(tmp, out, cfg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return _manifest(out)


def _swap_into_place(tmp: Path, out: Path, cfg: SyntheticCfg) -> None:
    old = None
    if _is_complete(out, cfg):  # a concurrent run of the same cfg finished first: keep its files
        return
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".old", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if not _is_complete(out, cfg):  # lost a race to a concurrent writer of the same cfg
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
