"""Dataset evaluation protocols on top of :func:`anet.evaluation.ranking.rank_metrics`.

* VeRi-776 and synthetic: query vs gallery of test set "test", same-id same-camera junk removed.
* VeRi-Wild: small / medium / large scored separately (those in ``cfg.veriwild_sets`` that are present).
* VehicleID: per test size (``cfg.vehicleid_sets`` present), ``cfg.vehicleid_trials`` seeded trials of
  "one random gallery image per id, the rest are queries"; mean and ``_std`` over trials. There are no
  cameras, so junk removal is switched off and queries/gallery get distinct pseudo-cameras (0 / 1).

The same splits scored after k-reciprocal re-ranking (:func:`rerank_dataset`) come back prefixed
``rerank/`` so that they sit beside the plain metrics and never replace them.

Example::

    results = evaluate_dataset(rows, feats, dataset="veri776", cfg=cfg.eval)
    results["test"]["mAP"]
    rerank_dataset(rows, feats, "veri776", cfg.eval)[0]["test"]["rerank/mAP"]
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from anet.config import EvalCfg
from anet.data.validation import VAL
from anet.errors import UserError
from anet.evaluation.ranking import RankResult, rank_metrics
from anet.evaluation.rerank import rerank_metrics

log = logging.getLogger(__name__)

METRICS = ("mAP", "R1", "R5", "R10", "mINP")
RERANK_PREFIX = "rerank/"
Scorer = Callable[..., RankResult]  # rank_metrics' arguments -> RankResult


def evaluate_dataset(
    frame: pd.DataFrame, feats: np.ndarray, dataset: str, cfg: EvalCfg, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Score features of ``frame``'s rows (``feats[i]`` belongs to ``frame.iloc[i]``) by protocol.

    Returns ``{test_set: {"mAP", "R1", "R5", "R10", "mINP", "num_valid", "num_skipped"}}`` (plus
    ``"<metric>_std"`` for VehicleID). A test set where no query has a valid match gets NaN metrics
    and ``num_valid`` 0, and a warning is logged.

    Example:
        >>> evaluate_dataset(rows, feats, dataset="vehicleid", cfg=EvalCfg(vehicleid_trials=10))["800"]["R1"]
    """
    return evaluate_dataset_full(frame, feats, dataset, cfg, seed)[0]


def rerank_dataset(
    frame: pd.DataFrame, feats: np.ndarray, dataset: str, cfg: EvalCfg, seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """:func:`evaluate_dataset_full` after re-ranking with ``cfg.rerank``'s k1, k2, lambda: the same test
    sets, splits and VehicleID trials (same seeds), metrics prefixed ``rerank/``.

    Example:
        >>> extra, _ = rerank_dataset(rows, feats, "vehicleid", EvalCfg(vehicleid_trials=2))
        >>> extra["800"]["rerank/mAP"], extra["800"]["rerank/mAP_std"]
    """
    rr = cfg.rerank
    scorer = functools.partial(rerank_metrics, k1=rr.k1, k2=rr.k2, lambda_value=rr.lambda_value)
    results, curves = evaluate_dataset_full(frame, feats, dataset, cfg, seed, scorer=scorer)
    for test_set, metrics in results.items():
        log.info("test set %r re-ranked (k1=%d k2=%d lambda=%g): mAP %.4f", test_set, rr.k1, rr.k2,
                 rr.lambda_value, metrics["mAP"])
    return {s: {RERANK_PREFIX + k: v for k, v in m.items()} for s, m in results.items()}, curves


def evaluate_dataset_full(
    frame: pd.DataFrame, feats: np.ndarray, dataset: str, cfg: EvalCfg, seed: int = 0,
    scorer: Scorer = rank_metrics,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """:func:`evaluate_dataset` plus the CMC curve of each test set (VehicleID: mean over trials);
    ``scorer`` ranks one query / gallery split (:func:`rerank_dataset` passes the re-ranking one)."""
    feats = np.asarray(feats, dtype=np.float32)
    if len(feats) != len(frame):
        raise ValueError(f"feats has {len(feats)} rows but the frame has {len(frame)}")
    feats = _normalise(feats)
    frame = frame.reset_index(drop=True)
    match dataset:
        case "veri776" | "synthetic":
            sets, score = ["test"], _query_gallery
        case "veriwild":
            sets, score = list(cfg.veriwild_sets), _query_gallery
        case "vehicleid":
            sets, score = list(cfg.vehicleid_sets), _vehicleid
        case _:
            raise UserError(f"dataset {dataset!r}: no evaluation protocol (known: synthetic, veri776, "
                            "veriwild, vehicleid)")
    present = set(frame["test_set"]) - {""}
    sets = [s for s in (VAL, *sets) if s in present]  # the validation split is scored like the test sets
    if not sets:
        raise UserError(f"dataset {dataset!r}: none of the configured test sets has rows in the manifest "
                        f"(present: {sorted(set(frame['test_set']) - {''})})")
    scored = {s: score(frame, feats, s, cfg, seed, scorer) for s in sets}
    return {s: m for s, (m, _) in scored.items()}, {s: c for s, (_, c) in scored.items()}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _query_gallery(
    frame: pd.DataFrame, feats: np.ndarray, test_set: str, cfg: EvalCfg, seed: int, scorer: Scorer
) -> tuple[dict[str, float], np.ndarray]:
    in_set = frame["test_set"] == test_set
    q = np.flatnonzero(in_set & (frame["split"] == "query"))
    g = np.flatnonzero(in_set & (frame["split"] == "gallery"))
    if len(q) == 0 or len(g) == 0:
        raise UserError(f"test set {test_set!r}: {len(q)} query and {len(g)} gallery rows; both are needed")
    result = _rank(scorer, frame, feats, q, g, cfg, junk=True)
    _warn_if_empty(result, test_set)
    return result.as_dict(), result.cmc


def _rank(scorer: Scorer, frame: pd.DataFrame, feats: np.ndarray, q: np.ndarray, g: np.ndarray, cfg: EvalCfg,
          junk: bool, q_cams: np.ndarray | None = None, g_cams: np.ndarray | None = None) -> RankResult:
    ids = frame["vid"].astype(str).to_numpy()
    cams = frame["camid"].to_numpy(np.int64)
    return scorer(
        feats[q], ids[q], cams[q] if q_cams is None else q_cams,
        feats[g], ids[g], cams[g] if g_cams is None else g_cams,
        max_rank=cfg.max_rank, junk_same_camera=junk, block_size=cfg.block_size,
    )


def vehicleid_split(vids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One trial: positions of queries and gallery (one random image per id) among ``vids``."""
    order = rng.permutation(len(vids))
    _, first = np.unique(vids[order], return_index=True)
    is_gallery = np.zeros(len(vids), dtype=bool)
    is_gallery[order[first]] = True
    return np.flatnonzero(~is_gallery), np.flatnonzero(is_gallery)


def _vehicleid(
    frame: pd.DataFrame, feats: np.ndarray, test_set: str, cfg: EvalCfg, seed: int, scorer: Scorer
) -> tuple[dict[str, float], np.ndarray]:
    rows = np.flatnonzero((frame["test_set"] == test_set) & (frame["split"] == "test"))
    vids = frame["vid"].astype(str).to_numpy()[rows]
    trials, curves = [], []
    for trial in range(cfg.vehicleid_trials):
        rng = np.random.default_rng([seed, int(test_set) if test_set.isdigit() else 0, trial])
        q, g = vehicleid_split(vids, rng)
        # no cameras: distinct pseudo-cameras and no junk rule, so nothing same-id is ever removed
        result = _rank(scorer, frame, feats, rows[q], rows[g], cfg, junk=False,
                       q_cams=np.zeros(len(q), np.int64), g_cams=np.ones(len(g), np.int64))
        _warn_if_empty(result, test_set)
        trials.append(result.as_dict())
        curves.append(result.cmc)
    table = pd.DataFrame(trials)
    out = {name: float(table[name].mean()) for name in (*METRICS, "num_valid", "num_skipped")}
    out.update({f"{name}_std": float(table[name].std(ddof=0)) for name in METRICS})
    return out, np.mean(curves, axis=0)


def _warn_if_empty(result: RankResult, test_set: str) -> None:
    if result.num_valid == 0:
        log.warning("test set %r: %s", test_set, result.warning)
