"""The blockwise evaluator equals a plain FastReID-style reference, number for number."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anet.evaluation.ranking import NO_VALID_QUERY, rank_metrics


def reference_metrics(distmat, q_ids, q_cams, g_ids, g_cams, max_rank, junk=True):
    """FastReID ``eval_market1501`` in plain Python: full stable argsort per query, delete junk."""
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(len(q_ids)):
        order = np.argsort(distmat[i], kind="stable")
        remove = (g_ids[order] == q_ids[i]) & (g_cams[order] == q_cams[i]) if junk else np.zeros(len(order), bool)
        raw = (g_ids[order] == q_ids[i]).astype(np.int64)[~remove]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        pos_idx = np.where(raw == 1)[0]
        all_inp.append(cmc[pos_idx[-1]] / (pos_idx[-1] + 1.0))
        cmc = np.minimum(cmc, 1)
        cmc = np.pad(cmc[:max_rank], (0, max(0, max_rank - len(cmc))), mode="edge")  # repeat last value
        all_cmc.append(cmc)
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0)
        all_ap.append((tmp * raw).sum() / raw.sum())
    if not all_ap:
        return None
    cmc = np.mean(np.asarray(all_cmc, dtype=np.float64), axis=0)
    return {"mAP": np.mean(all_ap), "mINP": np.mean(all_inp), "cmc": cmc, "num_valid": len(all_ap)}


def random_case(seed, nq, ng, n_ids, n_cams, dim=16, noise=1.0):
    gen = np.random.default_rng(seed)
    centers = gen.normal(size=(n_ids, dim))
    q_ids, g_ids = gen.integers(0, n_ids, nq), gen.integers(0, n_ids, ng)
    q_cams, g_cams = gen.integers(0, n_cams, nq), gen.integers(0, n_cams, ng)

    def feats(ids):
        x = torch.as_tensor(centers[ids] + noise * gen.normal(size=(len(ids), dim)), dtype=torch.float32)
        return torch.nn.functional.normalize(x, dim=1)

    return feats(q_ids), q_ids, q_cams, feats(g_ids), g_ids, g_cams


def check_equal(case, max_rank=10, block_size=7, junk=True):
    qf, qi, qc, gf, gi, gc = case
    distmat = (1 - torch.mm(qf, gf.t())).numpy()
    ref = reference_metrics(distmat, qi, qc, gi, gc, max_rank, junk)
    got = rank_metrics(qf, qi, qc, gf, gi, gc, max_rank=max_rank, junk_same_camera=junk, block_size=block_size)
    if ref is None:  # every query skipped (e.g. a single camera)
        assert got.num_valid == 0 and math.isnan(got.mAP)
        return got
    assert got.num_valid == ref["num_valid"]
    assert got.num_valid + got.num_skipped == len(qi)
    assert got.mAP == pytest.approx(ref["mAP"], abs=1e-6)
    assert got.mINP == pytest.approx(ref["mINP"], abs=1e-6)
    np.testing.assert_allclose(got.cmc, ref["cmc"], atol=1e-6)
    assert (got.r1, got.r5, got.r10) == pytest.approx(tuple(ref["cmc"][[0, 4, 9]]), abs=1e-6)
    return got


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_reference(seed):
    gen = np.random.default_rng(100 + seed)
    nq, ng = int(gen.integers(5, 60)), int(gen.integers(20, 300))
    case = random_case(seed, nq, ng, n_ids=int(gen.integers(3, 25)), n_cams=int(gen.integers(2, 5)))
    check_equal(case, max_rank=int(gen.integers(10, 60)), block_size=int(gen.integers(1, 17)))


def test_without_junk_removal_matches_reference():
    check_equal(random_case(11, 30, 120, n_ids=8, n_cams=3), junk=False, block_size=4)


def test_gallery_shorter_than_max_rank_after_junk():
    # 25 gallery items, half of them junk for most queries; max_rank 50 > any kept list
    case = random_case(3, 13, 25, n_ids=3, n_cams=2)
    got = check_equal(case, max_rank=50, block_size=5)
    assert got.cmc[-1] == 1.0


def test_queries_without_valid_match_are_skipped_and_counted():
    qf, qi, qc, gf, gi, gc = random_case(5, 20, 80, n_ids=6, n_cams=3)
    qi = qi.copy()
    qi[:4] = 99  # id absent from the gallery
    gc = gc.copy()
    gc[gi == qi[5]] = qc[5]  # every positive of query 5 is same-camera junk
    got = check_equal((qf, qi, qc, gf, gi, gc), block_size=3)
    assert got.num_skipped >= 5


def test_all_queries_skipped_gives_nan_and_warning():
    qf, qi, qc, gf, gi, gc = random_case(6, 5, 30, n_ids=4, n_cams=2)
    got = rank_metrics(qf, np.full(5, 7), qc, gf, gi, gc, max_rank=5)
    assert got.num_valid == 0 and got.num_skipped == 5
    assert math.isnan(got.mAP) and math.isnan(got.r1) and got.warning == NO_VALID_QUERY
    assert math.isnan(got.as_dict()["mINP"])


def test_block_size_does_not_change_numbers():
    case = random_case(8, 37, 150, n_ids=10, n_cams=3)
    a = rank_metrics(*case, max_rank=20, block_size=5).as_dict()
    b = rank_metrics(*case, max_rank=20, block_size=1024).as_dict()
    assert a == pytest.approx(b, abs=1e-12)


def test_string_ids_and_numpy_inputs():
    qf, qi, qc, gf, gi, gc = random_case(9, 15, 60, n_ids=5, n_cams=3)
    a = rank_metrics(qf.numpy(), qi.astype(str), qc, gf.numpy(), gi.astype(str), gc, max_rank=10)
    b = rank_metrics(qf, qi, qc, gf, gi, gc, max_rank=10)
    assert a.as_dict() == b.as_dict()


def test_tied_distances_lower_gallery_index_first():
    """Equal distances rank by gallery index, like a stable argsort (exact dot products here)."""
    e = torch.eye(4)
    q = e[:1]  # query along axis 0
    # gallery 0, 1 (wrong id) and 2 (right id) are identical, 3 is orthogonal
    g = torch.stack([e[0], e[0], e[0], e[1]])
    q_ids, g_ids = np.array([1]), np.array([0, 0, 1, 1])
    q_cams, g_cams = np.array([0]), np.array([1, 1, 1, 1])
    got = rank_metrics(q, q_ids, q_cams, g, g_ids, g_cams, max_rank=4)
    # positives at ranks 2 (index 2, after the tied 0 and 1) and 3
    assert got.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert got.r1 == 0.0 and got.cmc.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert got.mINP == pytest.approx(2 / 4)
    distmat = (1 - torch.mm(q, g.t())).numpy()
    ref = reference_metrics(distmat, q_ids, q_cams, g_ids, g_cams, 4)
    assert got.mAP == pytest.approx(ref["mAP"]) and got.mINP == pytest.approx(ref["mINP"])
    # moved to the front of the gallery, the positive wins the tie
    g2, g_ids2 = g[[2, 0, 1, 3]], g_ids[[2, 0, 1, 3]]
    assert rank_metrics(q, q_ids, q_cams, g2, g_ids2, g_cams, max_rank=4).r1 == 1.0


def test_large_gallery_is_chunked_exactly(monkeypatch):
    import anet.evaluation.ranking as ranking

    monkeypatch.setattr(ranking, "_CANDIDATE_BUDGET", 64)  # forces many tiny candidate chunks
    check_equal(random_case(12, 25, 200, n_ids=6, n_cams=3, noise=3.0), max_rank=30, block_size=9)


def test_huge_block_size_is_capped_exactly():
    """A huge block_size is capped so (row, D, col) still fits an int64 key; numbers unchanged."""
    case = random_case(13, 40, 90, n_ids=7, n_cams=3)
    a = rank_metrics(*case, max_rank=10, block_size=10**9)
    b = rank_metrics(*case, max_rank=10, block_size=3)
    assert a.as_dict() == pytest.approx(b.as_dict(), abs=1e-12)


def test_unknown_camera_never_makes_junk():
    qf, qi, _, gf, gi, _ = random_case(14, 20, 70, n_ids=5, n_cams=2)
    unknown = rank_metrics(qf, qi, np.full(20, -1), gf, gi, np.full(70, -1), max_rank=10)
    no_junk = rank_metrics(qf, qi, np.zeros(20), gf, gi, np.ones(70), max_rank=10)
    assert unknown.as_dict() == no_junk.as_dict() and unknown.num_skipped == 0


def test_duplicated_images_with_similarity_rounding_above_one():
    """VeRi copies every query into the gallery: q.g of an image with itself can round above 1,
    giving a slightly negative distance; the exact keys must still stay in their query's row."""
    gen = np.random.default_rng(5)
    qf, qi, qc, gf, gi, gc = random_case(21, 40, 200, n_ids=10, n_cams=3, dim=64)
    gf = torch.cat([gf, qf])  # duplicates of the queries, other camera so they count as matches
    gi, gc = np.concatenate([gi, qi]), np.concatenate([gc, (qc + 1) % 3])
    assert (torch.mm(qf, gf.t()) > 1).any()  # the case this test is about
    got = check_equal((qf, qi, qc, gf, gi, gc), max_rank=20, block_size=int(gen.integers(3, 9)))
    assert got.num_valid == len(qi) and got.r1 == pytest.approx(1.0)
