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
import math
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
from anet.data.manifest import build_manifest
from anet.errors import UserError
from anet.io import remove_stale_temps, temp_prefix
from anet.synthetic.draw import RGB, CameraSpec, Details, render_vehicle_image

if TYPE_CHECKING:
    from anet.data.manifest import Manifest

__all__ = [
    "COLOR_NAMES", "TYPE_NAMES", "MODEL_NAMES", "SyntheticSample", "SyntheticSet", "IdentityPlan",
    "ImagePlan", "plan_identities", "plan_cameras", "render_dataset", "iter_samples",
    "synthetic_frame", "generate_synthetic", "image_name", "is_generated",
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


COLOR_NAMES = ("yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black")
TYPE_NAMES = ("sedan", "suv", "van", "hatchback", "mpv", "pickup", "bus", "truck", "estate")
COLOR_RGB: tuple[RGB, ...] = ((228, 200, 36), (232, 118, 28), (36, 128, 58), (128, 128, 130), (188, 28, 34),
                              (34, 68, 168), (236, 236, 232), (192, 160, 92), (108, 68, 40), (30, 30, 33))
COLOR_WEIGHTS = (0.05, 0.05, 0.06, 0.16, 0.12, 0.12, 0.2, 0.06, 0.06, 0.12)  # roughly VeRi's shares
TYPE_WEIGHTS = (0.3, 0.16, 0.1, 0.1, 0.08, 0.06, 0.05, 0.07, 0.08)
# Made-up models: (name, type index, length scale, belt shift, wheel radius). A model implies a type.
MODELS: tuple[tuple[str, int, float, float, float], ...] = (
    ("Aurel S4", 0, 1.00, 0.00, 0.12), ("Corvan GT", 0, 1.06, -0.03, 0.13),
    ("Meridian 3", 0, 0.94, 0.02, 0.11),
    ("Ridgeback", 1, 1.00, 0.00, 0.14), ("Tundra X5", 1, 1.08, 0.03, 0.15),
    ("Atlas Trail", 1, 0.92, -0.02, 0.13),
    ("Cargo One", 2, 1.00, 0.00, 0.11), ("Transita", 2, 1.10, 0.03, 0.12),
    ("Pico", 3, 0.90, 0.02, 0.11), ("Zippa 2", 3, 1.00, -0.02, 0.12), ("Civetta", 3, 1.05, 0.00, 0.12),
    ("Famila", 4, 1.00, 0.00, 0.12), ("Voyo 7", 4, 1.07, 0.03, 0.13),
    ("Rancher", 5, 1.00, 0.00, 0.14), ("Hauler HD", 5, 1.08, 0.03, 0.15),
    ("Metro 12", 6, 1.00, 0.00, 0.10),
    ("Titan Box", 7, 1.00, 0.00, 0.12), ("Loadstar", 7, 1.08, -0.03, 0.13),
    ("Tourer", 8, 1.00, 0.00, 0.12), ("Avant L", 8, 1.06, -0.02, 0.12),
)
MODEL_NAMES = tuple(m[0] for m in MODELS)
ACCENTS: tuple[RGB, ...] = ((245, 245, 245), (20, 20, 20), (230, 40, 40), (250, 200, 0), (30, 90, 220),
                            (0, 170, 90), (250, 130, 0), (150, 40, 170), (0, 190, 200))
_TRAIN, _TEST = 0, 1  # stream tags for numpy SeedSequence entropy


@dataclass(frozen=True)
class ImagePlan:
    """One image to render: which identity, its number within the identity, camera and split."""

    vid: int
    index: int
    camid: int  # 1-based, like VeRi's c001
    split: str  # "train" | "query" | "gallery"


@dataclass(frozen=True)
class IdentityPlan:
    """An identity's labels, fixed details and image plan (no pixels)."""

    vid: int
    split: str  # "train" | "test"
    color: int
    type: int
    model: int
    details: Details
    images: tuple[ImagePlan, ...]


def _pair_plan(n: int, difficulty: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(color, type) for ``n`` identities such that every pair used is shared by >= 2 identities."""
    per_pair = 3.0 + 4.0 * difficulty  # mean identities per pair; sets the attribute-oracle mAP
    n_pairs = max(1, min(n // 2, math.ceil(n / per_pair - 1e-9)))
    weights = np.outer(COLOR_WEIGHTS, TYPE_WEIGHTS).ravel()
    chosen = rng.choice(weights.size, size=n_pairs, replace=False, p=weights / weights.sum())
    share = rng.dirichlet(np.full(n_pairs, 4.0))
    extra = rng.choice(n_pairs, size=n - 2 * n_pairs, p=share)
    slots = np.concatenate([np.repeat(np.arange(n_pairs), 2), extra])
    rng.shuffle(slots)
    return [divmod(int(chosen[s]), len(TYPE_NAMES)) for s in slots]


def _details(seed: int, vid: int, type_index: int, model: int, color: int, difficulty: float) -> Details:
    rng = np.random.default_rng([seed, 10, vid])
    p_none = 0.15 + 0.35 * difficulty

    def pick(options: tuple) -> object:
        return options[int(rng.integers(0, len(options)))]

    def mark(kinds: int) -> int:
        return 0 if rng.random() < p_none else int(rng.integers(1, kinds + 1))

    shade = float(rng.uniform(0.9, 1.06))  # one brightness factor: a shade, never another hue
    body = tuple(int(min(255.0, max(0.0, c * shade + rng.uniform(-4, 4)))) for c in COLOR_RGB[color])
    _, _, length, belt, wheel = MODELS[model]
    blocks = rng.uniform(0.02, 0.06, size=int(rng.integers(4, 7)))
    blocks *= min(1.0, 0.3 / (blocks.sum() + 0.015 * blocks.size))
    stickers = sorted(rng.choice([0.12, 0.25, 0.62, 0.78], size=int(rng.integers(0, 3)), replace=False))
    return Details(
        type_index=type_index, body=body, length_scale=length * float(rng.uniform(0.97, 1.03)),
        belt_shift=belt + float(rng.uniform(-0.01, 0.01)), wheel_r=wheel,
        roof=0 if rng.random() < 0.3 + 0.3 * difficulty else int(rng.integers(1, 4)),
        roof_rgb=pick(ACCENTS[:4] + ((150, 150, 155),)), tint=float(rng.uniform(0, 1)),
        bumper=pick((body, (25, 25, 25), (110, 110, 115), (190, 190, 195))),
        stripe=mark(3), stripe_rgb=pick(ACCENTS), stripe_v=float(rng.uniform(0, 1)),
        decal=mark(3), decal_rgb=pick(ACCENTS), decal_u=float(rng.uniform(0.25, 0.75)),
        rim_spokes=pick((0, 4, 5, 6, 8)), rim_rgb=pick(((200, 200, 205), (30, 30, 30), (200, 170, 60))),
        grille=int(rng.integers(0, 4)), headlight=int(rng.integers(0, 3)),
        stickers=tuple(float(s) for s in stickers), hood_stripe=bool(rng.random() < 0.3),
        plate_rgb=pick(((235, 235, 235), (240, 200, 20), (30, 70, 200), (40, 150, 70))),
        plate_blocks=tuple(float(b) for b in blocks),
        rear_sticker=mark(2), rear_sticker_rgb=pick(ACCENTS), rear_sticker_s=float(rng.uniform(0.2, 0.8)),
        taillight=int(rng.integers(0, 2)), spoiler=bool(rng.random() < 0.25),
    )


def _image_cameras(cfg: SyntheticCfg, vid: int, test: bool) -> list[tuple[int, str]]:
    """(camid, split) per image of one identity: it passes 2-4 cameras; test ids get a query camera."""
    rng = np.random.default_rng([cfg.seed, 11, vid])
    k = min(cfg.cameras, int(rng.integers(2, 5)))
    cams = [int(c) + 1 for c in rng.choice(cfg.cameras, size=k, replace=False)]
    n = cfg.images_per_id
    if not test:
        return [(cams[i % k], "train") for i in range(n)]
    q_cam, others = cams[0], cams[1:]
    n_query = max(1, min(3, n // 6))
    rows = [(q_cam, "query")] * n_query + [(others[0], "gallery")]  # >= 1 gallery image elsewhere
    if n - len(rows) > 0:
        rows.append((q_cam, "gallery"))  # same-camera gallery image: junk for the evaluator
    cycle = others + [q_cam]
    rows += [(cycle[i % len(cycle)], "gallery") for i in range(n - len(rows))]
    return rows[:n]


def plan_identities(cfg: SyntheticCfg) -> list[IdentityPlan]:
    """All identities with labels, details and image plans, without rendering (cheap).

    Train ids are 1..train_ids, test ids follow. Example:
        >>> ids = plan_identities(SyntheticCfg())
        >>> sum(len(i.images) for i in ids)
        2160
    """
    out = []
    for tag, split, first, n in ((_TRAIN, "train", 1, cfg.train_ids), (_TEST, "test", 1 + cfg.train_ids,
                                                                       cfg.test_ids)):
        pairs = _pair_plan(n, cfg.difficulty, np.random.default_rng([cfg.seed, 13, tag]))
        for offset, (color, type_index) in enumerate(pairs):
            vid = first + offset
            models = [i for i, m in enumerate(MODELS) if m[1] == type_index]
            model = models[int(np.random.default_rng([cfg.seed, 14, vid]).integers(0, len(models)))]
            images = tuple(ImagePlan(vid, i, cam, s)
                           for i, (cam, s) in enumerate(_image_cameras(cfg, vid, split == "test")))
            det = _details(cfg.seed, vid, type_index, model, color, cfg.difficulty)
            out.append(IdentityPlan(vid, split, color, type_index, model, det, images))
    return out


def plan_cameras(cfg: SyntheticCfg) -> list[CameraSpec]:
    """One spec per camera (1..cameras): viewpoint mix, scene, light cast, blur, scale."""
    d = cfg.difficulty
    start = float(np.random.default_rng([cfg.seed, 20]).uniform(0, 2 * math.pi))
    specs = []
    for c in range(1, cfg.cameras + 1):
        rng = np.random.default_rng([cfg.seed, 20, c])
        cast = 0.02 + 0.05 * d  # small: moves apparent colour a little, never across classes
        specs.append(CameraSpec(
            camid=c, yaw_center=start + 2 * math.pi * (c - 1) / cfg.cameras + float(rng.uniform(-0.3, 0.3)),
            yaw_spread=0.25 + 0.35 * d, p_opposite=float(rng.uniform(0.1, 0.45)),
            gain=float(rng.uniform(0.8, 1.15)), cast=tuple(float(x) for x in 1 + rng.uniform(-cast, cast, 3)),
            blur=float(rng.uniform(0.0, 0.4 + 1.2 * d)) * cfg.image_size / 128,
            fill=float(rng.uniform(0.78, 0.95)), noise=float(rng.uniform(1.0, 3.0 + 4.0 * d)),
            sky=tuple(int(x) for x in rng.integers(60, 200, 3)),
            ground=tuple(int(x) for x in rng.integers(60, 110, 1).repeat(3) + rng.integers(-8, 8, 3)),
            horizon=float(rng.uniform(0.2, 0.45)), lane=_lane(rng), lane_slope=float(rng.uniform(-0.6, 0.6)),
        ))
    return specs


def _lane(rng: np.random.Generator) -> RGB:
    return (235, 235, 230) if rng.random() < 0.7 else (235, 200, 40)


def iter_samples(cfg: SyntheticCfg, splits: Collection[str] | None = None) -> Iterator[SyntheticSample]:
    """Render samples one by one, ordered by (vid, index); ``splits`` limits which rows are drawn."""
    cams = {cam.camid: cam for cam in plan_cameras(cfg)}
    for ident in plan_identities(cfg):
        for image in ident.images:
            if splits is not None and image.split not in splits:
                continue
            rng = np.random.default_rng([cfg.seed, 12, ident.vid, image.index])
            jpeg = render_vehicle_image(ident.details, cams[image.camid], cfg.image_size, cfg.difficulty,
                                        cfg.seed, rng)
            yield SyntheticSample(ident.vid, image.camid, ident.color, ident.type, ident.model,
                                  image.split, jpeg, image.index)


def render_dataset(cfg: SyntheticCfg, *, splits: Collection[str] | None = None) -> SyntheticSet:
    """Render the whole dataset in memory (deterministic: same cfg -> byte-identical JPEGs).

    Example:
        >>> s = render_dataset(SyntheticCfg(train_ids=4, test_ids=4, images_per_id=4, image_size=48))
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
    return json.dumps({"generator_version": GENERATOR_VERSION, "cfg": cfg.model_dump(mode="json")},
                      sort_keys=True)


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
