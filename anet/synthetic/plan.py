"""The synthetic benchmark's plan: vocabularies, made-up models, identities and cameras (no pixels).

Every identity gets a (colour, type) pair shared with at least one other identity of its split, a model
that implies its type, fixed fine details and an image plan over 2-4 cameras; every camera gets a
viewpoint mix, scene, light cast, blur and scale. All draws come from numpy SeedSequences keyed by
(seed, stream, id), so a plan is a pure function of the config. ``generator`` renders it.

Example:
    >>> from anet.config import SyntheticCfg
    >>> ids = plan_identities(SyntheticCfg())
    >>> len(ids), ids[0].split, ids[-1].split, len(plan_cameras(SyntheticCfg()))
    (180, 'train', 'test', 6)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from anet.config import SyntheticCfg
from anet.synthetic.draw import RGB, Details
from anet.synthetic.scene import CameraSpec

__all__ = [
    "COLOR_NAMES", "TYPE_NAMES", "MODEL_NAMES", "MODELS", "IdentityPlan", "ImagePlan", "plan_identities",
    "plan_cameras",
]

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
    weights = np.outer(COLOR_WEIGHTS, TYPE_WEIGHTS).ravel()
    # a large split (e.g. the ablation's 1,000 test ids) uses every pair, with more identities each
    n_pairs = max(1, min(n // 2, math.ceil(n / per_pair - 1e-9), weights.size))
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
            blur=float(rng.uniform(0.0, 0.4 + 1.2 * d)) * cfg.render_size / 128,
            fill=float(rng.uniform(0.78, 0.95)), noise=float(rng.uniform(1.0, 3.0 + 4.0 * d)),
            sky=tuple(int(x) for x in rng.integers(60, 200, 3)),
            ground=tuple(int(x) for x in rng.integers(60, 110, 1).repeat(3) + rng.integers(-8, 8, 3)),
            horizon=float(rng.uniform(0.2, 0.45)), lane=_lane(rng), lane_slope=float(rng.uniform(-0.6, 0.6)),
        ))
    return specs


def _lane(rng: np.random.Generator) -> RGB:
    return (235, 235, 230) if rng.random() < 0.7 else (235, 200, 40)
