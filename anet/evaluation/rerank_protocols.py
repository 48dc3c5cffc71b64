"""The dataset protocols of :mod:`anet.evaluation.protocols`, scored after k-reciprocal re-ranking.

Same query / gallery splits, junk rule and VehicleID trials (same seeds) as the plain scores; the
metrics come back prefixed ``rerank/`` so that they sit beside the plain ones and never replace them::

    results, curves = evaluate_dataset_full(rows, feats, "veri776", cfg.eval)
    extra, extra_curves = rerank_dataset(rows, feats, "veri776", cfg.eval, sets=list(results))
    extra["test"]["rerank/mAP"]
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from anet.config import EvalCfg
from anet.evaluation.protocols import METRICS, vehicleid_split
from anet.evaluation.ranking import RankResult
from anet.evaluation.rerank import rerank_metrics

log = logging.getLogger(__name__)

PREFIX = "rerank/"


def rerank_dataset(
    frame: pd.DataFrame, feats: np.ndarray, dataset: str, cfg: EvalCfg, sets: list[str], seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """``({test_set: {"rerank/<metric>": v}}, {test_set: CMC})`` for ``sets`` (already validated by
    :func:`anet.evaluation.protocols.evaluate_dataset_full`), with ``cfg.rerank``'s k1, k2, lambda.

    Example:
        >>> extra, _ = rerank_dataset(rows, feats, "vehicleid", EvalCfg(vehicleid_trials=2), ["800"])
        >>> extra["800"]["rerank/mAP"], extra["800"]["rerank/mAP_std"]
    """
    x = np.asarray(feats, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    frame = frame.reset_index(drop=True)
    out: dict[str, dict[str, float]] = {}
    curves: dict[str, np.ndarray] = {}
    for test_set in sets:
        if dataset == "vehicleid":
            metrics, curves[test_set] = _vehicleid(frame, x, test_set, cfg, seed)
        else:
            in_set = frame["test_set"] == test_set
            q = np.flatnonzero(in_set & (frame["split"] == "query"))
            g = np.flatnonzero(in_set & (frame["split"] == "gallery"))
            result = _rank(frame, x, q, g, cfg, junk=True)
            metrics, curves[test_set] = result.as_dict(), result.cmc
        out[test_set] = {PREFIX + k: v for k, v in metrics.items()}
        log.info("test set %r re-ranked (k1=%d k2=%d lambda=%g): mAP %.4f", test_set, cfg.rerank.k1,
                 cfg.rerank.k2, cfg.rerank.lambda_value, metrics["mAP"])
    return out, curves


def _rank(frame: pd.DataFrame, x: np.ndarray, q: np.ndarray, g: np.ndarray, cfg: EvalCfg, junk: bool,
          q_cams: np.ndarray | None = None, g_cams: np.ndarray | None = None) -> RankResult:
    ids = frame["vid"].astype(str).to_numpy()
    cams = frame["camid"].to_numpy(np.int64)
    rr = cfg.rerank
    return rerank_metrics(
        x[q], ids[q], cams[q] if q_cams is None else q_cams, x[g], ids[g], cams[g] if g_cams is None else g_cams,
        k1=rr.k1, k2=rr.k2, lambda_value=rr.lambda_value, max_rank=cfg.max_rank,
        junk_same_camera=junk, block_size=cfg.block_size,
    )


def _vehicleid(frame: pd.DataFrame, x: np.ndarray, test_set: str, cfg: EvalCfg,
               seed: int) -> tuple[dict[str, float], np.ndarray]:
    """The trials of ``protocols._vehicleid`` (same seeds, so the same splits), re-ranked."""
    rows = np.flatnonzero((frame["test_set"] == test_set) & (frame["split"] == "test"))
    vids = frame["vid"].astype(str).to_numpy()[rows]
    trials, curves = [], []
    for trial in range(cfg.vehicleid_trials):
        rng = np.random.default_rng([seed, int(test_set) if test_set.isdigit() else 0, trial])
        q, g = vehicleid_split(vids, rng)
        result = _rank(frame, x, rows[q], rows[g], cfg, junk=False,
                       q_cams=np.zeros(len(q), np.int64), g_cams=np.ones(len(g), np.int64))
        trials.append(result.as_dict())
        curves.append(result.cmc)
    table = pd.DataFrame(trials)
    out = {name: float(table[name].mean()) for name in (*METRICS, "num_valid", "num_skipped")}
    out.update({f"{name}_std": float(table[name].std(ddof=0)) for name in METRICS})
    return out, np.mean(curves, axis=0)
