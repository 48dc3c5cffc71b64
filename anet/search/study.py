"""Does filtering by the query's own predicted attributes help retrieval? mAP and R1 with and without.

For every query of the index's test set, the gallery is filtered the way ``anet search IMAGE
--color <the query's predicted colour> --min-confidence c`` would (items predicted that class with
at least ``c``), then ranked like the evaluator (``1 - q.g``, lower index first, same-id
same-camera junk removed). A true match the filter drops counts as never retrieved, so a wrong
attribute prediction costs recall. The unfiltered row equals the evaluator's numbers
(:func:`anet.evaluation.ranking.rank_metrics`); that is checked in the tests.

Example:
    >>> table = filter_study(GalleryIndex.open("runs/index"), predictor, PreparedDataset.open(cache_dir))
    >>> table[["filter", "min_confidence", "mAP", "R1", "gallery_kept"]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from anet.data.cache import PreparedDataset
from anet.errors import UserError
from anet.search.index import GalleryIndex, gallery_rows
from anet.search.predictor import ReidPredictor
from anet.search.rerank import POOL, load_graph, rerank_candidates

CONFIDENCES = (0.0, 0.5)


def filter_study(index: GalleryIndex, predictor: ReidPredictor, prepared: PreparedDataset,
                 confidences: Sequence[float] = CONFIDENCES, rerank: bool = False) -> pd.DataFrame:
    """One row per (filter, min_confidence): mAP, R1, mean fraction of the gallery and of the true matches kept.

    Filters: none, each attribute alone, all attributes together. ``index`` must be built from
    ``prepared``'s test set (``anet index --split``) by the model ``predictor`` is. ``rerank`` adds
    a row "rerank": no filter, each query's top candidates re-ranked as ``anet search --rerank`` does.
    """
    source = index.meta["source"]
    if source.get("kind") != "split":
        raise UserError(f"{index.folder}: built from a folder; the study needs an index of a test set (--split)")
    test_set = source["test_set"]
    gallery = gallery_rows(prepared, test_set)
    if len(gallery) != len(index) or (gallery["cache_index"].to_numpy() != index.table["cache_index"].to_numpy()).any():
        raise UserError(f"{index.folder}: its items are not the gallery of {prepared.cache_dir} test set {test_set!r}")
    queries = prepared.rows("query", test_set)
    predicted = predictor.embed_arrays(prepared.images[queries["cache_index"].to_numpy(np.int64)])
    sims = torch.mm(torch.from_numpy(predicted.embeddings), torch.from_numpy(index.embeddings()).t()).numpy()  # Q x G
    relevant, junk = _relevance(queries, gallery)
    q_class = {n: p.argmax(axis=1) for n, p in predicted.probs.items()}  # Q, class index per attribute
    g_class = {n: index.table[n].map({c: i for i, c in enumerate(v)}).to_numpy(np.int64) for n, v in index.vocab.items()}
    names = list(index.vocab)
    variants = [("none", [])] + [(n, [n]) for n in names] + ([("+".join(names), names)] if len(names) > 1 else [])
    rows = []
    for label, attrs in variants:
        for conf in (confidences if attrs else (0.0,)):
            keep = np.ones_like(relevant)
            for n in attrs:
                sure = index.table[f"{n}_confidence"].to_numpy() >= conf  # G
                keep &= (g_class[n][None, :] == q_class[n][:, None]) & sure[None, :]
            rows.append({"filter": label, "min_confidence": conf, **_scores(sims, relevant, junk, keep)})
    if rerank:
        reranked = _reranked_sims(index, predicted.embeddings, sims)
        rows.append({"filter": "rerank", "min_confidence": 0.0,
                     **_scores(reranked, relevant, junk, np.ones_like(relevant))})
    return pd.DataFrame(rows)


def _reranked_sims(index: GalleryIndex, queries: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Q x G scores whose ranking is the search's: the top POOL re-ranked, then the rest as before.

    Returned as ``1 - D`` with D = rank position / G (distinct, so ties never reorder them).
    """
    graph, gallery = load_graph(index.folder), index.embeddings()
    out = np.empty_like(sims)
    ranks = np.arange(sims.shape[1], dtype=np.float64)
    for row, (q, s) in enumerate(zip(queries, sims, strict=True)):
        order = np.lexsort((np.arange(len(s)), np.float32(1) - s))
        head, _ = rerank_candidates(gallery.__getitem__, graph, q, order[:POOL])
        order[: len(head)] = head
        out[row, order] = 1.0 - ranks / len(s)
    return out


def _relevance(queries: pd.DataFrame, gallery: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Q x G masks: true matches (same id, not junk) and junk (same id and camera; camera -1 never junk)."""
    same = queries["vid"].astype(str).to_numpy()[:, None] == gallery["vid"].astype(str).to_numpy()[None, :]
    q_cam, g_cam = queries["camid"].to_numpy(np.int64), gallery["camid"].to_numpy(np.int64)
    junk = same & (q_cam[:, None] == g_cam[None, :]) & (q_cam[:, None] >= 0)
    return same & ~junk, junk


def _scores(sims: np.ndarray, relevant: np.ndarray, junk: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """mAP / R1 over queries with a true match; dropped matches count as never retrieved."""
    aps, r1s, kept_items, kept_matches = [], [], [], []
    for s, rel, bad, ok in zip(sims, relevant, junk, keep, strict=True):
        n_good = int(rel.sum())
        if n_good == 0:
            continue
        cols = np.flatnonzero(ok & ~bad)
        order = cols[np.lexsort((cols, np.float32(1) - s[cols]))]  # the evaluator's ranking key
        hits = rel[order]
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the retrieved true matches
        aps.append(float((np.arange(1, len(ranks) + 1) / ranks).sum() / n_good))
        r1s.append(float(len(hits) > 0 and hits[0]))
        kept_items.append(len(cols) / max(1, int((~bad).sum())))
        kept_matches.append(len(ranks) / n_good)
    if not aps:
        raise UserError("no query has a true match in the gallery; nothing to measure")
    return {"mAP": float(np.mean(aps)), "R1": float(np.mean(r1s)), "gallery_kept": float(np.mean(kept_items)),
            "matches_kept": float(np.mean(kept_matches)), "queries": len(aps)}

