"""The synthetic benchmark's own calibration check (design section 5).

It measures, on the rendered test split, what a model gets for free: ranking the gallery by
(colour, type) agreement alone (a perfect attribute oracle) and by raw 16 x 16 pixels. A trained model
must beat both clearly. It also reports how many identities share each (colour, type) pair.

Example::

    python -m anet.synthetic.calibrate --profile synthetic
    python -m anet.synthetic.calibrate --profile synthetic data.synthetic.difficulty=0.8

    from anet.synthetic.calibrate import calibrate
    report = calibrate(load_config("synthetic").data.synthetic)
    report["oracle"]["mAP"], report["raw_pixel"]["mAP"]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from anet.config import ConfigError, SyntheticCfg, load_config
from anet.evaluation.ranking import rank_metrics
from anet.synthetic.generator import SyntheticSample, render_dataset
from anet.synthetic.plan import COLOR_NAMES, TYPE_NAMES, plan_identities


def _metrics(q: np.ndarray, g: np.ndarray, qs: list[SyntheticSample], gs: list[SyntheticSample]) -> dict:
    """mAP / R1 from the project's evaluator (the same ranking every trained model is scored with)."""
    q_ids, q_cams = np.array([s.vid for s in qs]), np.array([s.camid for s in qs])
    g_ids, g_cams = np.array([s.vid for s in gs]), np.array([s.camid for s in gs])
    result = rank_metrics(q, q_ids, q_cams, g, g_ids, g_cams, max_rank=min(50, len(gs)))
    return {"mAP": result.mAP, "R1": result.r1, "num_valid": result.num_valid,
            "evaluator": "anet.evaluation.ranking"}


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def oracle_features(samples: list[SyntheticSample], seed: int) -> np.ndarray:
    """One-hot (colour, type) plus tiny seeded noise, so ties among agreeing items break randomly."""
    onehot = np.zeros((len(samples), len(COLOR_NAMES) + len(TYPE_NAMES)), dtype=np.float64)
    for row, s in enumerate(samples):
        onehot[row, s.color] = 1.0
        onehot[row, len(COLOR_NAMES) + s.type] = 1.0
    noise = np.random.default_rng([seed, 99]).normal(0.0, 1e-4, size=onehot.shape)
    return _normalise(onehot + noise)


def pixel_features(samples: list[SyntheticSample], side: int = 16) -> np.ndarray:
    """Images downscaled to side x side, flattened and L2-normalised (an untrained-eye baseline)."""
    rows = [np.asarray(Image.open(io.BytesIO(s.jpeg)).convert("RGB").resize((side, side), Image.BOX),
                       dtype=np.float32).ravel() for s in samples]
    return _normalise(np.stack(rows))


def label_stats(cfg: SyntheticCfg) -> dict[str, Any]:
    """Identities per (colour, type) pair, per split, from the plan alone (no rendering)."""
    out: dict[str, Any] = {}
    idents = plan_identities(cfg)
    for split in ("train", "test"):
        counts = Counter((i.color, i.type) for i in idents if i.split == split)
        sizes = np.array(sorted(counts.values()))
        out[split] = {"ids": int(sizes.sum()), "pairs": len(counts), "ids_per_pair_min": int(sizes.min()),
                      "ids_per_pair_median": float(np.median(sizes)), "ids_per_pair_max": int(sizes.max()),
                      "unique_pairs": int((sizes == 1).sum())}
    train_pairs = {(i.color, i.type) for i in idents if i.split == "train"}
    unseen = [i for i in idents if i.split == "test" and (i.color, i.type) not in train_pairs]
    # a (colour, type) pair no training identity has: each attribute is known, the combination is new
    out["test"]["pairs_not_in_train"] = len({(i.color, i.type) for i in unseen})
    out["test"]["ids_with_pair_not_in_train"] = len(unseen)
    total = Counter((i.color, i.type) for i in idents)
    out["all"] = {"pairs": len(total), "unique_pairs": sum(v == 1 for v in total.values()),
                  "colors_used": len({c for c, _ in total}), "types_used": len({t for _, t in total}),
                  "models_used": len({i.model for i in idents})}
    out["no_unique_pair"] = out["train"]["unique_pairs"] == 0 and out["test"]["unique_pairs"] == 0
    return out


def calibrate(cfg: SyntheticCfg) -> dict[str, Any]:
    """Render the test split and report oracle / raw-pixel / random mAP plus label statistics.

    Example:
        >>> r = calibrate(SyntheticCfg(train_ids=6, test_ids=6, images_per_id=6, render_size=48))
        >>> 0.0 <= r["oracle"]["mAP"] <= 1.0
        True
    """
    start = time.perf_counter()
    test = render_dataset(cfg, splits=("query", "gallery")).samples
    render_s = time.perf_counter() - start
    qs = [s for s in test if s.split == "query"]
    gs = [s for s in test if s.split == "gallery"]
    feats = {
        "oracle": oracle_features(test, cfg.seed),
        "raw_pixel": pixel_features(test),
        "random": _normalise(np.random.default_rng([cfg.seed, 98]).normal(size=(len(test), 64))),
    }
    is_q = np.array([s.split == "query" for s in test])
    report: dict[str, Any] = {"cfg": cfg.model_dump(mode="json"), "num_query": len(qs),
                              "num_gallery": len(gs)}
    for name, f in feats.items():
        report[name] = _metrics(f[is_q], f[~is_q], qs, gs)
    report["labels"] = label_stats(cfg)
    report["render_images_per_s"] = round(len(test) / max(render_s, 1e-9), 1)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m anet.synthetic.calibrate [--profile NAME] [key=value ...]``: print the JSON report."""

    parser = argparse.ArgumentParser(prog="python -m anet.synthetic.calibrate",
                                     description="Calibration report of the synthetic benchmark (JSON).")
    parser.add_argument("--profile", default="synthetic", help="config profile (default: synthetic)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.synthetic.seed=1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.profile, args.overrides).data.synthetic
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(calibrate(cfg), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
