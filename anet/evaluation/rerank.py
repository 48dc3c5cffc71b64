"""Exact k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory.

The same distances as FastReID 1.4.0's ``re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` fed with
cosine distances ``1 - x.y`` of L2-normalised features, without any (Q+G) x (Q+G) matrix::

    from anet.evaluation.rerank import rerank_metrics, rerank_distances
    r = rerank_metrics(qf, q_ids, q_cams, gf, g_ids, g_cams, k1=20, k2=6, lambda_value=0.3)
    d = rerank_distances(qf, gf)         # dense Q x G, small cases only

Steps, each sparse or blockwise: (1) the exact k-nearest-neighbour graph of all N = Q + G points
(:func:`anet.evaluation.knn.knn_graph`, symmetric tiles); (2) per point its k1-reciprocal set,
grown by the half-size reciprocal sets of its members that overlap it by more than 2/3, weighted
``exp(-R)`` and normalised: the sparse rows V; (3) query expansion: V_qe[i] = mean of V over i's k2
nearest; (4) per query block, the Jaccard overlap ``sum_k min(V_qe[i,k], V_qe[j,k])`` through an
inverted index of V_qe's gallery rows, then ``(1 - lambda) * jaccard + lambda * R`` for the whole
b x G block, which streams into the exact evaluator (:func:`rank_distance_blocks`). Sums run in
the reference's order and float32 steps; what differs is the rounding of the dot products (max
difference ~4e-7 in the tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from anet.evaluation.knn import KnnGraph, knn_graph, normalised
from anet.evaluation.ranking import RankResult, max_block_rows, rank_distance_blocks

_CHUNK = 2048  # rows per step of the reciprocal / expansion passes
_PAIR_BUDGET = 1 << 21  # entries expanded at once in the Jaccard pass (bounds its temporaries)


@dataclass(frozen=True)
class _Rows:
    """Sparse rows (CSR): row r holds ``col[ptr[r]:ptr[r+1]]`` (ascending) with values ``val[...]``."""

    ptr: np.ndarray
    col: np.ndarray
    val: np.ndarray


def rerank_metrics(
    q_feats: torch.Tensor | np.ndarray, q_ids: np.ndarray, q_cams: np.ndarray,
    g_feats: torch.Tensor | np.ndarray, g_ids: np.ndarray, g_cams: np.ndarray,
    k1: int = 20, k2: int = 6, lambda_value: float = 0.3, max_rank: int = 50,
    junk_same_camera: bool = True, block_size: int = 1024,
) -> RankResult:
    """Exact mAP / CMC / mINP after re-ranking L2-normalised features (cosine distance).

    Example:
        >>> r = rerank_metrics(qf, qid, qcam, gf, gid, gcam, k1=20, k2=6, lambda_value=0.3)
        >>> r.mAP, r.r1
    """
    q, g = _feats(q_feats), _feats(g_feats)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature sizes differ: query {q.shape[1]} vs gallery {g.shape[1]}")
    block = max(1, min(block_size, max_block_rows(len(g))))
    # nothing to rank: every query is counted as skipped, as the plain evaluator does
    blocks = rerank_blocks(q, g, k1, k2, lambda_value, block) if len(q) and len(g) else iter(())
    return rank_distance_blocks(blocks, q_ids, q_cams, g_ids, g_cams, max_rank, junk_same_camera)


def rerank_distances(q_feats: torch.Tensor | np.ndarray, g_feats: torch.Tensor | np.ndarray,
                     k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """The dense Q x G re-ranked distances (float32); for small sets (search, tests)."""
    q, g = _feats(q_feats), _feats(g_feats)
    out = np.empty((len(q), len(g)), dtype=np.float32)
    for start, neg in rerank_blocks(q, g, k1, k2, lambda_value, block=1024):
        np.negative(neg, out=out[start : start + len(neg)])
    return out


def rerank_blocks(q: torch.Tensor, g: torch.Tensor, k1: int, k2: int, lambda_value: float,
                  block: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first query row, -final distances)`` per block of ``block`` queries (b x G float32)."""
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1, 0 <= lambda <= 1; got {k1}, {k2}, {lambda_value}")
    n_q = len(q)
    x = torch.cat([q, g])  # N x D, queries first like the reference's concatenation
    graph = knn_graph(x, max(k1 + 1, k2))
    v = _reciprocal_rows(x, graph, k1)
    if k2 != 1:
        v = _expand(v, graph.index[:, : min(k2, graph.index.shape[1])])
    cols = _gallery_columns(v, n_q)
    buf = torch.empty(min(block, max(n_q, 1)), len(g), dtype=torch.float32)  # b x G, reused
    for start in range(0, n_q, block):
        stop = min(start + block, n_q)
        out = torch.mm(q[start:stop], g.t(), out=buf[: stop - start])
        yield start, _final_block(out, graph.row_max[start:stop], v, cols, start, lambda_value)


def _feats(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous()
    if t.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {tuple(t.shape)}")
    return t


def _reciprocal_rows(x: torch.Tensor, graph: KnnGraph, k1: int) -> _Rows:
    """V: per point, ``exp(-R)`` over its expanded k1-reciprocal set, normalised to sum 1."""
    nbr = graph.index
    n = len(nbr)
    w1 = min(k1 + 1, nbr.shape[1])
    half = min(int(np.around(k1 / 2.0)) + 1, w1)
    fwd, fwd_h = nbr[:, :w1], nbr[:, :half]
    recip_h = np.concatenate([_reciprocal(fwd_h, a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)])
    ptrs, cols, vals = [np.zeros(1, np.int64)], [], []
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        own = np.where(_reciprocal(fwd, a, b), fwd[a:b], -1)  # c x w1: the k1-reciprocal set
        cand = fwd[a:b]
        sets = np.where(recip_h[cand], fwd_h[cand], -2)  # c x w1 x half: candidates' half-size sets
        overlap = (sets[..., None] == own[:, None, None, :]).any(-1).sum(-1)  # c x w1
        take = (own >= 0) & (overlap > 2.0 / 3 * recip_h[cand].sum(-1))  # the reference's 2/3 rule
        grown = np.concatenate([own, np.where(take[..., None], sets, -1).reshape(b - a, -1)], axis=1)
        grown.sort(axis=1)
        keep = grown >= 0
        keep[:, 1:] &= grown[:, 1:] != grown[:, :-1]  # np.unique per row
        row, pos = np.nonzero(keep)
        j = grown[row, pos]
        weight = np.exp(-_pair_dist(x, graph, row + a, j))
        counts = keep.sum(1)
        total = np.bincount(row, weights=weight, minlength=b - a).astype(np.float32)
        ptrs.append(ptrs[-1][-1] + np.cumsum(counts))
        cols.append(j.astype(np.int32))
        vals.append(np.divide(weight, total[row], dtype=np.float32))
    return _Rows(np.concatenate(ptrs), np.concatenate(cols), np.concatenate(vals))


def _reciprocal(fwd: np.ndarray, a: int, b: int) -> np.ndarray:
    """``out[i - a, m]``: is point i among the first ``fwd.shape[1]`` neighbours of ``fwd[i, m]``?"""
    rows = np.arange(a, b)
    return (fwd[fwd[a:b]] == rows[:, None, None]).any(-1)


def _pair_dist(x: torch.Tensor, graph: KnnGraph, i: np.ndarray, j: np.ndarray, step: int = 1 << 14) -> np.ndarray:
    """R[i, j] per pair: the graph's value where j is among i's nearest (most pairs), else from
    ``x[i] . x[j]`` (float32, in steps of ``step`` pairs: bounded gathers)."""
    hit = graph.index[i] == j[:, None]  # pairs x k
    found = hit.any(1)
    out = np.where(found, graph.dist[i, hit.argmax(1)], np.float32(0))
    rest = np.flatnonzero(~found)
    for s in range(0, len(rest), step):
        at = rest[s : s + step]
        xi, xj = x[torch.from_numpy(i[at])], x[torch.from_numpy(j[at])]
        dots = torch.bmm(xi[:, None, :], xj[:, :, None]).reshape(-1).numpy()
        out[at] = normalised(dots, graph.row_max[i[at]])
    return out


def _expand(v: _Rows, nbr: np.ndarray, chunk: int = _CHUNK) -> _Rows:
    """Query expansion: row i becomes the float32 mean of V's rows ``nbr[i]`` (summed in that order)."""
    n, k2 = nbr.shape
    ptrs, cols, vals = [np.zeros(1, np.int64)], [], []
    for a in range(0, n, chunk):
        src = nbr[a : a + chunk].reshape(-1)
        lens = v.ptr[src + 1] - v.ptr[src]
        flat = _ranges(v.ptr[src], lens)
        owner = np.repeat(np.arange(len(src)) // k2, lens)
        key, order = _stable_sort(owner * n + v.col[flat])  # equal keys keep the reference's summation order
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        sums = np.add.reduceat(v.val[flat][order], first)
        row_of, col_of = np.divmod(key[first], n)
        ptrs.append(ptrs[-1][-1] + np.cumsum(np.bincount(row_of, minlength=len(src) // k2)))
        cols.append(col_of.astype(np.int32))
        vals.append(np.divide(sums, np.float32(k2), dtype=np.float32))
    return _Rows(np.concatenate(ptrs), np.concatenate(cols), np.concatenate(vals))


def _stable_sort(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted key, np.argsort(key, kind="stable"))`` by one SIMD sort of (key, position) in int64."""
    bits = max(1, (len(key) - 1).bit_length())
    if len(key) == 0 or int(key.max()).bit_length() + bits > 62:
        order = np.argsort(key, kind="stable")
        return key[order], order
    packed = np.sort((key.astype(np.int64) << bits) | np.arange(len(key), dtype=np.int64))
    return packed >> bits, packed & ((1 << bits) - 1)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each start / length."""
    offsets = np.cumsum(lens) - lens
    return np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()))


def _gallery_columns(v: _Rows, n_query: int) -> _Rows:
    """Inverted index of V's gallery rows: column k lists (gallery position, value), ascending."""
    n = len(v.ptr) - 1
    first = int(v.ptr[n_query])
    row = (np.repeat(np.arange(n_query, n, dtype=np.int64), np.diff(v.ptr[n_query:])) - n_query).astype(np.int32)
    col = v.col[first:]
    order = _stable_sort(col)[1]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(col, minlength=n), out=ptr[1:])
    return _Rows(ptr, row[order], v.val[first:][order])


def _final_block(s: torch.Tensor, row_max: np.ndarray, v: _Rows, cols: _Rows, start: int,
                 lambda_value: float) -> np.ndarray:
    """Turn similarities ``s`` (b x G, in place) into ``-((1 - lambda) * jaccard + lambda * R)``."""
    lam, rest = np.float32(lambda_value), np.float32(1 - lambda_value)
    s.neg_().add_(1)  # d = 1 - S, as the reference's float32 rounding
    s.mul_(s).div_(torch.from_numpy(row_max)[:, None])  # R = d^2 / row max
    s.mul_(torch.tensor(-lam))  # -(lambda * R)
    flat, overlap = _overlaps(v, cols, start, len(s), s.shape[1])
    neg = s.numpy().reshape(-1)
    lam_r = neg[flat]
    s.sub_(torch.tensor(rest))  # no overlap: jaccard = 1 exactly
    jaccard = np.float32(1) - overlap / (np.float32(2) - overlap)
    neg[flat] = lam_r - jaccard * rest
    return s.numpy()


def _overlaps(v: _Rows, cols: _Rows, start: int, n_rows: int, n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions (in the b x G block) with a non-zero ``sum_k min(V[i,k], V[j,k])``, and the sums.

    Summed in float32 over ascending k, the reference's order; rows go in groups whose expansion
    stays within ``_PAIR_BUDGET`` entries.
    """
    flats, sums = [], []
    row_ptr = v.ptr[start : start + n_rows + 1]
    ks_all = v.col[row_ptr[0] : row_ptr[-1]]
    spread = np.r_[0, np.cumsum(cols.ptr[ks_all + 1] - cols.ptr[ks_all])][row_ptr[1:] - row_ptr[0]]  # per row end
    a = 0
    while a < n_rows:
        limit = (spread[a - 1] if a else 0) + _PAIR_BUDGET
        b = min(max(int(np.searchsorted(spread, limit, side="right")), a + 1), n_rows)
        lo, hi = row_ptr[a], row_ptr[b]
        ks, vi = v.col[lo:hi], v.val[lo:hi]
        lens = cols.ptr[ks + 1] - cols.ptr[ks]
        at = _ranges(cols.ptr[ks], lens)
        owner = np.repeat(np.repeat(np.arange(a, b), np.diff(row_ptr[a : b + 1])), lens)
        key, order = _stable_sort(owner * n_gallery + cols.col[at])
        mins = np.minimum(np.repeat(vi, lens), cols.val[at])
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
        flats.append(key[first])
        sums.append(np.add.reduceat(mins[order], first) if len(first) else np.zeros(0, np.float32))
        a = b
    return np.concatenate(flats), np.concatenate(sums).astype(np.float32)
