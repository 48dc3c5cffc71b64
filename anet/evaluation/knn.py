"""Exact k-nearest-neighbour graph of all points under cosine distance, blockwise and symmetric.

Re-ranking (:mod:`anet.evaluation.rerank`) needs, for every one of the N = Q + G points, its nearest
neighbours in the order of Zhong et al.'s normalised distance ``R[i, j] = d(i, j)^2 / max_j d(i, j)^2``
with ``d = 1 - x_i . x_j`` (float32, as the reference computes it), and that row maximum. Nothing of
size N x N is ever held or sorted::

    from anet.evaluation.knn import knn_graph
    graph = knn_graph(feats, k=21)         # feats: N x D float32, L2-normalised
    graph.index[i], graph.dist[i]          # i's k nearest (i itself first), their R values

Method: tiles ``S = X_I @ X_J^T`` for J >= I only (the Gram matrix is symmetric, so each product
serves the rows of I and, transposed, the rows of J: half the flops of a plain N x N search). Each
row keeps its best ``k + margin`` similarities: the diagonal tiles go first (``torch.topk``), then a
tile only passes what beats a row's current worst kept value (one compare pass per direction, the
two directions in parallel). The kept
candidates are finally ordered by ``(R, index)`` (R is what the reference sorts; the index breaks
its rare ties like a stable argsort) and cut to k.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

_MARGIN = 8  # extra candidates by similarity, so ties created by R's rounding cannot drop a neighbour


@dataclass(frozen=True)
class KnnGraph:
    """``index`` N x k int64 nearest points (ascending R, then index); ``dist`` N x k float32 their R;
    ``row_max`` N float32: ``max_j d(i, j)^2``, the reference's normaliser of row i."""

    index: np.ndarray
    dist: np.ndarray
    row_max: np.ndarray


def knn_graph(feats: torch.Tensor | np.ndarray, k: int, block: int = 4096) -> KnnGraph:
    """Exact k nearest neighbours of every row of ``feats`` among all rows (itself included).

    ``feats`` must be L2-normalised float32 N x D. Memory: two ``block x block`` float32 tiles plus
    O(N k); the features are not copied when already float32.

    Example:
        >>> g = knn_graph(np.eye(4, dtype=np.float32), k=2)
        >>> g.index[:, 0].tolist()
        [0, 1, 2, 3]
    """
    x = torch.as_tensor(feats).detach().to("cpu", torch.float32).contiguous()
    n = len(x)
    if k < 1 or n == 0:
        raise ValueError(f"need k >= 1 and at least one point, got k={k}, n={n}")
    k = min(k, n)
    kept = min(k + _MARGIN, n)
    best_s = np.full((n, kept), -np.inf, dtype=np.float32)  # N x k' best similarities so far
    best_i = np.full((n, kept), -1, dtype=np.int64)
    s_min = np.full(n, np.inf, dtype=np.float32)
    tile = torch.empty(min(block, n), min(block, n), dtype=torch.float32)
    masks = np.empty((2, *tile.shape), dtype=bool)
    for r0 in range(0, n, block):  # diagonal tiles first: every row starts with a threshold to filter by
        r1 = min(r0 + block, n)
        s = torch.mm(x[r0:r1], x[r0:r1].t(), out=tile[: r1 - r0, : r1 - r0]).numpy()  # b x b
        _merge(best_s, best_i, s_min, r0, s, r0, masks[0], False)
    with ThreadPoolExecutor(2) as pool:  # the two directions of a tile in parallel (numpy frees the GIL)
        for r0 in range(0, n, block):
            r1 = min(r0 + block, n)
            for c0 in range(r0 + block, n, block):
                c1 = min(c0 + block, n)
                s = torch.mm(x[r0:r1], x[c0:c1].t(), out=tile[: r1 - r0, : c1 - c0]).numpy()  # b x b'
                cols = pool.submit(_merge, best_s, best_i, s_min, c0, s, r0, masks[1], True)
                _merge(best_s, best_i, s_min, r0, s, c0, masks[0], False)
                cols.result()
    return _finish(best_s, best_i, s_min, k)


def _merge(best_s: np.ndarray, best_i: np.ndarray, s_min: np.ndarray, row0: int, s: np.ndarray, col0: int,
           mask: np.ndarray, transposed: bool) -> None:
    """Fold tile ``s`` into the kept candidates of its rows: points ``row0 + r`` against ``col0 + c``
    for ``s[r, c]``, or, ``transposed``, points ``row0 + c`` against ``col0 + r``."""
    n_rows, n_cols = s.shape[::-1] if transposed else s.shape
    kept = best_s.shape[1]
    mine = slice(row0, row0 + n_rows)
    np.minimum(s_min[mine], s.min(0) if transposed else s.min(1), out=s_min[mine])
    cur_s, cur_i = best_s[mine], best_i[mine]
    tau = cur_s[:, -1]
    if np.isneginf(tau).any():  # a row's first tile: nothing to filter against yet
        v, c = torch.topk(torch.from_numpy(s.T if transposed else s), min(kept, n_cols), dim=1)
        _keep_best(cur_s, cur_i, v.numpy(), c.numpy() + col0)
        return
    # one compare pass in the tile's memory order; the transposed direction then regroups by column
    hit = np.greater_equal(s, tau[None, :] if transposed else tau[:, None], out=mask[: len(s), : s.shape[1]])
    rows, cols = np.divmod(np.flatnonzero(hit), s.shape[1])
    if transposed:
        order = np.argsort(cols, kind="stable")
        rows, cols = cols[order], rows[order]
    if len(rows) == 0:
        return
    vals = s[cols, rows] if transposed else s[rows, cols]
    counts = np.bincount(rows, minlength=n_rows)
    touched = np.flatnonzero(counts)
    slot = np.zeros(n_rows, dtype=np.int64)
    slot[touched] = np.arange(len(touched))
    pos = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    width = int(counts.max())
    pad_s = np.full((len(touched), width), -np.inf, dtype=np.float32)  # touched rows x survivors
    pad_i = np.full((len(touched), width), -1, dtype=np.int64)
    pad_s[slot[rows], pos] = vals
    pad_i[slot[rows], pos] = cols + col0
    sub_s, sub_i = cur_s[touched], cur_i[touched]
    _keep_best(sub_s, sub_i, pad_s, pad_i)
    cur_s[touched], cur_i[touched] = sub_s, sub_i


def _keep_best(cur_s: np.ndarray, cur_i: np.ndarray, new_s: np.ndarray, new_i: np.ndarray) -> None:
    """In place: each row of ``cur_*`` becomes the best ``cur_s.shape[1]`` of itself and ``new_*``."""
    both_s = torch.from_numpy(np.concatenate([cur_s, new_s], axis=1))
    both_i = np.concatenate([cur_i, new_i], axis=1)
    v, pos = torch.topk(both_s, cur_s.shape[1], dim=1)
    cur_s[:] = v.numpy()
    cur_i[:] = np.take_along_axis(both_i, pos.numpy(), axis=1)


def _finish(best_s: np.ndarray, best_i: np.ndarray, s_min: np.ndarray, k: int) -> KnnGraph:
    """Candidates -> R values exactly as the reference rounds them, ordered by (R, index), cut to k."""
    row_max = _square(np.float32(1) - s_min)  # f32(max d)^2 == max f32(d^2): rounding is monotone
    r = normalised(best_s, row_max[:, None])
    order = np.lexsort((best_i, r), axis=1)[:, :k]
    return KnnGraph(np.take_along_axis(best_i, order, 1), np.take_along_axis(r, order, 1), row_max)


def _square(d: np.ndarray) -> np.ndarray:
    return np.multiply(d, d, dtype=np.float32)


def normalised(sims: np.ndarray, row_max: np.ndarray) -> np.ndarray:
    """Zhong et al.'s ``R = d^2 / row_max`` with ``d = 1 - sims``, in the reference's float32 steps."""
    d = np.float32(1) - np.asarray(sims, dtype=np.float32)
    return np.divide(_square(d), row_max, dtype=np.float32)
