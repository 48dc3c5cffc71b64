"""Exact retrieval metrics (mAP, CMC, mINP) without a full Q x G sort.

Same numbers as FastReID's ``evaluate_rank`` (non-interpolated AP, same-id same-camera junk removed,
queries without a valid match skipped), computed blockwise over queries so memory stays bounded
whatever the gallery size::

    from anet.evaluation.ranking import rank_metrics
    r = rank_metrics(q_feats, q_ids, q_cams, g_feats, g_ids, g_cams, max_rank=50)
    r.mAP, r.r1, r.as_dict()

Method ("count2" in /work/shared/research/cpu-perf-notes.md, section 3): for a block of queries,
``S = Q_blk @ G^T`` (float32). The rank of a positive is the number of kept gallery items that come
before it, so only items at least as close as the query's *farthest* good positive matter. Those
candidates are picked with one compare pass over ``S`` (a threshold a few ulps below that positive's
similarity, so rounding in ``D = 1 - S`` can never drop one). Each candidate gets the exact int64 key
(row, D, gallery index) and is bucketed (binary search) among the sorted keys of the query's good
positives; a histogram then gives, per positive, how many items precede it, and the same search over
the junk items' keys gives how many of those to subtract. Nothing of size G is ever sorted.
Ties in ``D`` are broken by the lower gallery index first, which is what a stable argsort of ``D`` does.
numpy does the compare / nonzero passes: single-threaded it beat torch's bool kernels ~3-4x here.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

# Candidates handled at once (elements of the compare mask): bounds memory for a poor model,
# where most of the gallery lies before the last positive.
_CANDIDATE_BUDGET = 1 << 21
_MAX_WORKERS = 4
_EPS32 = float(np.finfo(np.float32).eps)

NO_VALID_QUERY = (
    "no query has a valid match in the gallery: every positive shares the query's camera "
    "(junk) or the query id is absent from the gallery; metrics are NaN"
)


@dataclass(frozen=True)
class RankResult:
    """Retrieval metrics over the valid queries; ``cmc[k]`` = fraction with a match in the top k+1."""

    mAP: float
    mINP: float
    cmc: np.ndarray = field(repr=False)
    r1: float
    r5: float
    r10: float
    num_valid: int
    num_skipped: int
    warning: str | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat metrics dict: mAP, R1, R5, R10, mINP, num_valid, num_skipped."""
        return {
            "mAP": self.mAP,
            "R1": self.r1,
            "R5": self.r5,
            "R10": self.r10,
            "mINP": self.mINP,
            "num_valid": float(self.num_valid),
            "num_skipped": float(self.num_skipped),
        }


def rank_metrics(
    q_feats: torch.Tensor | np.ndarray,
    q_ids: torch.Tensor | np.ndarray,
    q_cams: torch.Tensor | np.ndarray,
    g_feats: torch.Tensor | np.ndarray,
    g_ids: torch.Tensor | np.ndarray,
    g_cams: torch.Tensor | np.ndarray,
    max_rank: int = 50,
    junk_same_camera: bool = True,
    block_size: int = 1024,
) -> RankResult:
    """Exact mAP / CMC / mINP of L2-normalised features with cosine distance ``1 - q.g``.

    ids may be any comparable values (ints or strings); cams are ints. With ``junk_same_camera``
    gallery items with the query's id AND camera are removed from that query's ranking; a camid of
    -1 means unknown and never makes an item junk.

    Example:
        >>> r = rank_metrics(qf, qid, qcam, gf, gid, gcam, max_rank=50, block_size=1024)
        >>> print(r.mAP, r.r1, r.num_skipped)
    """
    if max_rank < 1 or block_size < 1:
        raise ValueError(f"max_rank and block_size must be >= 1, got {max_rank}, {block_size}")
    q = _as_feats(q_feats, "q_feats")
    g = _as_feats(g_feats, "g_feats")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature sizes differ: query {q.shape[1]} vs gallery {g.shape[1]}")
    q_code, g_code = _factorize(q_ids, g_ids)
    q_cam, g_cam = _as_long(q_cams), _as_long(g_cams)
    if not (len(q_code) == len(q_cam) == len(q)) or not (len(g_code) == len(g_cam) == len(g)):
        raise ValueError("ids/cams/feats lengths differ")
    acc = _Accumulator(max_rank)
    if len(q) and len(g):
        index = _GalleryIndex(g_code, g_cam)
        # int64 keys hold (row, D bits, col): rows of a block must fit in the bits the gallery leaves
        block = min(block_size, len(q), (1 << (31 - index.col_bits)) - 1)
        sims = torch.empty(block, len(g), dtype=torch.float32)  # B x G, reused for every block
        for start in range(0, len(q), block):
            stop = min(start + block, len(q))
            s_blk = torch.mm(q[start:stop], g.t(), out=sims[: stop - start])  # b x G float32
            _score_block(s_blk.numpy(), q_code[start:stop], q_cam[start:stop], index, junk_same_camera, acc)
    else:
        acc.skipped += len(q)
    return acc.result()


def rank_distance_blocks(
    blocks: Iterable[tuple[int, np.ndarray]],
    q_ids: torch.Tensor | np.ndarray,
    q_cams: torch.Tensor | np.ndarray,
    g_ids: torch.Tensor | np.ndarray,
    g_cams: torch.Tensor | np.ndarray,
    max_rank: int = 50,
    junk_same_camera: bool = True,
) -> RankResult:
    """:func:`rank_metrics` for distances computed elsewhere (re-ranking), streamed block by block.

    ``blocks`` yields ``(first query row, -D)``: the NEGATED float32 distances of consecutive query
    rows (b x G, at most :func:`max_block_rows` rows), so that ranks follow ``D`` exactly (negation
    is exact; ``1 - S`` would round). The arrays may be overwritten.
    """
    q_code, g_code = _factorize(q_ids, g_ids)
    q_cam, g_cam = _as_long(q_cams), _as_long(g_cams)
    acc = _Accumulator(max_rank)
    index = _GalleryIndex(g_code, g_cam)
    done = 0
    for start, neg_dist in blocks:
        stop = start + len(neg_dist)
        if start != done or neg_dist.shape[1] != len(g_code) or len(neg_dist) > max_block_rows(len(g_code)):
            raise ValueError(f"distance block at row {start} of shape {neg_dist.shape} does not follow row {done}")
        _score_block(neg_dist, q_code[start:stop], q_cam[start:stop], index, junk_same_camera, acc, negated=True)
        done = stop
    acc.skipped += len(q_code) - done
    return acc.result()


def max_block_rows(n_gallery: int) -> int:
    """Most query rows one block may have: int64 keys hold (row, D bits, gallery index)."""
    return (1 << (31 - max(1, (n_gallery - 1).bit_length()))) - 1


def _as_feats(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous()
    if t.ndim != 2:
        raise ValueError(f"{name} must be N x D, got shape {tuple(t.shape)}")
    return t


def _as_long(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
    return np.asarray(x).astype(np.int64).reshape(-1)


def _factorize(q_ids: object, g_ids: object) -> tuple[np.ndarray, np.ndarray]:
    """Map query and gallery ids (any dtype) onto shared int64 codes."""
    qa = np.asarray(q_ids.cpu() if isinstance(q_ids, torch.Tensor) else q_ids).reshape(-1)
    ga = np.asarray(g_ids.cpu() if isinstance(g_ids, torch.Tensor) else g_ids).reshape(-1)
    _, codes = np.unique(np.concatenate([qa, ga]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(qa)], codes[len(qa) :]


class _GalleryIndex:
    """Gallery items grouped by id (CSR): ``order[start[c]:start[c] + count[c]]`` have code c."""

    def __init__(self, g_code: np.ndarray, g_cam: np.ndarray) -> None:
        self.code, self.cam = g_code, g_cam
        self.order = np.argsort(g_code, kind="stable")
        self.count = np.bincount(g_code)
        self.start = np.cumsum(self.count) - self.count
        self.col_bits = max(1, (len(g_code) - 1).bit_length())
        if self.col_bits > 30:
            raise ValueError(f"gallery of {len(g_code)} items is too large (at most 2**30)")

    def same_id(self, q_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat (row, gallery col) pairs of same-id gallery items for a block of query codes."""
        inside = q_code < len(self.count)
        safe = np.where(inside, q_code, 0)
        counts = np.where(inside, self.count[safe], 0)
        rows = np.repeat(np.arange(len(q_code)), counts)
        offs = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts) + self.start[safe][rows]
        return rows, self.order[offs]


def _score_block(
    sims: np.ndarray,
    q_code: np.ndarray,
    q_cam: np.ndarray,
    index: _GalleryIndex,
    junk: bool,
    acc: _Accumulator,
    negated: bool = False,
) -> None:
    """Accumulate the metrics of one query block from its similarity rows ``sims`` (B x G float32).

    rank(positive) = #candidates with a smaller (row, D, col) key - #junk with a smaller key, both
    minus what earlier rows contribute; candidates are never sorted, only bucketed by positive keys.
    """
    n_rows, n_gal = sims.shape
    rows, cols = index.same_id(q_code)
    # camid -1 means "unknown" (manifest contract): it never makes an item junk
    is_junk = (index.cam[cols] == q_cam[rows]) & (q_cam[rows] >= 0) if junk else np.zeros(len(rows), bool)
    s_same = sims[rows, cols]
    key_same = _sort_key(rows, -s_same if negated else np.float32(1) - s_same, cols, index.col_bits)
    pos_key = np.sort(key_same[~is_junk])  # P, grouped by row, each row in ranked order
    junk_key = np.sort(key_same[is_junk])
    n_good = np.bincount(rows[~is_junk], minlength=n_rows)
    acc.skipped += int((n_good == 0).sum())
    if len(pos_key) == 0:
        return
    s_min = np.full(n_rows, np.inf, dtype=np.float32)
    np.minimum.at(s_min, rows[~is_junk], s_same[~is_junk])
    # A few ulps of slack: items whose D = 1 - S rounds onto the last positive's D must stay in.
    has = n_good > 0
    s_fin = np.where(has, s_min, 0)
    thresh = np.where(has, s_fin - 4 * _EPS32 * (1 + np.abs(s_fin)), np.inf).astype(np.float32)  # B
    # Row sentinels (smallest key of each row) let one histogram also count candidates per row.
    row_first = np.arange(n_rows, dtype=np.int64) << (32 + index.col_bits)
    both = np.concatenate([row_first, pos_key])
    where = np.argsort(both, kind="stable")
    bounds = both[where]  # sentinels sort first in their row
    hist = _bucket_candidates(sims, thresh, bounds, index.col_bits, negated)
    below = np.empty_like(bounds)
    below[where] = np.cumsum(hist)[:-1]  # candidates with a smaller key, per sentinel / positive
    pos_row = pos_key >> (32 + index.col_bits)
    rank = below[n_rows:] - below[:n_rows][pos_row]
    junk_rows = np.bincount(junk_key >> (32 + index.col_bits), minlength=n_rows)
    junk_before = np.searchsorted(junk_key, pos_key) - (np.cumsum(junk_rows) - junk_rows)[pos_row]
    ordinal = np.arange(1, len(pos_key) + 1) - (np.cumsum(n_good) - n_good)[pos_row]
    acc.add(rank - junk_before, ordinal, pos_row, n_good)


def _bucket_candidates(sims: np.ndarray, thresh: np.ndarray, bounds: np.ndarray, col_bits: int,
                       negated: bool = False) -> np.ndarray:
    """Histogram over ``bounds`` buckets of the keys of every candidate (S >= its row's threshold).

    Row chunks of ~_CANDIDATE_BUDGET elements keep memory bounded; numpy releases the GIL in these
    loops, so the chunks are shared by as many threads as torch uses for the matmul.
    """
    n_rows, n_gal = sims.shape
    step = max(1, min(_CANDIDATE_BUDGET // max(n_gal, 1), n_rows))
    starts = list(range(0, n_rows, step))
    workers = max(1, min(torch.get_num_threads(), _MAX_WORKERS, len(starts)))

    def run(part: list[int]) -> np.ndarray:
        hist = np.zeros(len(bounds) + 1, dtype=np.int64)
        mask = np.empty((step, n_gal), dtype=bool)  # reused: no page faults per chunk
        for lo in part:
            hi = min(lo + step, n_rows)
            flat = np.flatnonzero(np.greater_equal(sims[lo:hi], thresh[lo:hi, None], out=mask[: hi - lo]))
            rr, cc = np.divmod(flat, n_gal)
            picked = sims[lo:hi].reshape(-1)[flat]
            dist = -picked if negated else np.float32(1) - picked  # exactly the float32 D = 1 - S
            key = _sort_key(rr + lo, dist, cc, col_bits)
            hist += np.bincount(np.searchsorted(bounds, key, side="right"), minlength=len(hist))
        return hist

    if workers == 1:
        return run(starts)
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(run, [starts[i::workers] for i in range(workers)]))


def _sort_key(rows: np.ndarray, dist: np.ndarray, cols: np.ndarray, col_bits: int) -> np.ndarray:
    """int64 key ordered like (row, dist, col): float bits made monotone (negative floats flipped)."""
    bits = np.ascontiguousarray(dist, dtype=np.float32).view(np.int32)
    bits = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)  # signed, monotone in dist
    # shifted to [0, 2^32) so a negative D (S rounding above 1 for duplicate images) never borrows
    # from the row field: the row is always key >> (32 + col_bits)
    bits += 1 << 31
    return ((rows.astype(np.int64) << 32) + bits << col_bits) + cols


class _Accumulator:
    """float64 running sums of AP, INP and first-hit ranks over valid queries."""

    def __init__(self, max_rank: int) -> None:
        self.max_rank = max_rank
        self.ap_sum = 0.0
        self.inp_sum = 0.0
        self.valid = 0
        self.skipped = 0
        self.first_hist = np.zeros(max_rank + 1, dtype=np.int64)  # last bin: first hit >= max_rank

    def add(self, rank: np.ndarray, ordinal: np.ndarray, row: np.ndarray, n_good: np.ndarray) -> None:
        """Add rows given each good positive's rank, its 1-based order in the row, and its row."""
        n_rows = len(n_good)
        ap = np.bincount(row, weights=ordinal / (rank + 1.0), minlength=n_rows)
        first = np.full(n_rows, self.max_rank, dtype=np.int64)
        np.minimum.at(first, row, np.minimum(rank, self.max_rank))
        last = np.zeros(n_rows, dtype=np.int64)
        np.maximum.at(last, row, rank)
        has = n_good > 0
        self.ap_sum += float((ap[has] / n_good[has]).sum())
        self.inp_sum += float((n_good[has] / (last[has] + 1.0)).sum())
        self.valid += int(has.sum())
        self.first_hist += np.bincount(first[has], minlength=self.max_rank + 1)

    def result(self) -> RankResult:
        """Final means; NaN metrics and a warning when no query was valid."""
        if self.valid == 0:
            nan = float("nan")
            cmc = np.full(self.max_rank, nan)
            return RankResult(nan, nan, cmc, nan, nan, nan, 0, self.skipped, NO_VALID_QUERY)
        cmc = np.cumsum(self.first_hist[: self.max_rank]) / self.valid
        at = [float(cmc[min(k, self.max_rank) - 1]) for k in (1, 5, 10)]
        return RankResult(
            self.ap_sum / self.valid, self.inp_sum / self.valid, cmc, *at, self.valid, self.skipped
        )
