"""Re-ranking a query's top candidates with the gallery's stored neighbour graph.

``anet index --knn K`` stores, next to the faiss index, every gallery item's K nearest gallery items
(``knn.npz``: the exact graph of :func:`anet.evaluation.knn.knn_graph`). ``anet search --rerank``
then takes the query's top ``POOL`` candidates, adds each candidate's own stored neighbours (so that a
candidate's k-reciprocal set is the one it has in the gallery, not one cut by the query's
shortlist), and runs the exact k-reciprocal re-ranking (:func:`anet.evaluation.rerank.rerank_distances`,
k1 20, k2 6, lambda 0.3) on the query and that pool. The candidates come back ordered by the
re-ranked distance; nothing outside the shortlist moves. With a pool holding the whole gallery this
is exactly the offline re-ranking of the query against the gallery (tested).

Example:
    >>> write_graph(folder, embeddings, k=21)
    >>> ids, dist = rerank_candidates(index.faiss_index.reconstruct_batch, graph, query_embedding, candidate_ids)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from anet.errors import UserError
from anet.evaluation.knn import knn_graph
from anet.evaluation.rerank import rerank_distances

GRAPH = "knn.npz"
POOL = 100  # candidates re-ranked per query (the top k are always among them)
K1, K2, LAMBDA = 20, 6, 0.3


def write_graph(folder: str | Path, embeddings: np.ndarray, k: int) -> Path:
    """Store the exact k-nearest-neighbour graph of the gallery (item ids, nearest first) in ``folder``."""
    if k < 2:
        raise UserError(f"--knn {k}: must be at least 2 (re-ranking uses k1 + 1 = {K1 + 1})")
    graph = knn_graph(np.asarray(embeddings, dtype=np.float32), k)
    path = Path(folder) / GRAPH
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, index=graph.index.astype(np.int32))
    tmp.replace(path)
    return path


def load_graph(folder: str | Path) -> np.ndarray:
    """The stored graph (G x K int32); a one-line UserError when the index was built without ``--knn``."""
    path = Path(folder) / GRAPH
    if not path.is_file():
        raise UserError(f"{folder}: no neighbour graph; rebuild the index with `anet index ... --knn {K1 + 1}` "
                        "to re-rank")
    with np.load(path) as npz:
        return np.asarray(npz["index"])


def rerank_candidates(vectors: Callable[[np.ndarray], np.ndarray], graph: np.ndarray, query: np.ndarray,
                      candidates: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates re-ordered, their re-ranked distances)`` for one L2-normalised ``query``.

    ``vectors(ids)`` returns those gallery items' stored embeddings (n x D; only the pool's are read)
    and ``graph`` G x K is the index's; ``allowed`` (G bool) limits the pool to the items a filter
    keeps. Ties in distance keep the lower item id first (the evaluator's rule).
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) == 0:
        return candidates, np.zeros(0, np.float32)
    pool = np.unique(np.concatenate([candidates, graph[candidates].reshape(-1).astype(np.int64)]))
    if allowed is not None:
        pool = pool[allowed[pool]]
    gallery = np.asarray(vectors(pool), dtype=np.float32)  # pool x D
    dist = rerank_distances(np.asarray(query, np.float32)[None], gallery, K1, K2, LAMBDA)[0]
    at = np.searchsorted(pool, candidates)
    order = np.lexsort((candidates, dist[at]))
    return candidates[order], dist[at][order]
