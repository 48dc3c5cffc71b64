"""Re-ranking equals FastReID 1.4.0's ``re_ranking`` + ``evaluate_rank``, in bounded memory."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from anet.cli import evaluate as commands
from anet.config import EvalCfg, load_config
from anet.config.schema import RerankCfg
from anet.errors import UserError
from anet.evaluation.knn import knn_graph
from anet.evaluation.protocols import evaluate_dataset_full, rerank_dataset, vehicleid_split
from anet.evaluation.rerank import rerank_distances, rerank_metrics
from anet.steps.evaluate_step import _eval_report


def _fastreid_file(rel: str) -> ModuleType:
    """One module file of the installed FastReID, loaded alone (its package __init__ fails on 3.11)."""
    spec = importlib.util.find_spec("fastreid")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fastreid is not installed (make setup installs 1.4.0 with --no-deps as the reference)")
    path = Path(spec.submodule_search_locations[0]) / rel
    mod_spec = importlib.util.spec_from_file_location(f"fastreid_ref_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    with pytest.warns(UserWarning, match="Cython") if path.stem == "rank" else _nothing():
        mod_spec.loader.exec_module(module)  # rank.py: its Cython extension is absent -> pure-python path
    return module


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="module")
def ref() -> tuple[ModuleType, ModuleType]:
    return _fastreid_file("evaluation/rerank.py"), _fastreid_file("evaluation/rank.py")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _case(seed: int, nq: int, ng: int, n_ids: int, n_cams: int, dim: int = 16, noise: float = 0.9):
    gen = np.random.default_rng(seed)
    centers = gen.normal(size=(n_ids, dim))
    q_ids, g_ids = gen.integers(0, n_ids, nq), gen.integers(0, n_ids, ng)
    feats = [_unit(centers[i] + noise * gen.normal(size=(len(i), dim))) for i in (q_ids, g_ids)]
    return feats[0], q_ids, gen.integers(0, n_cams, nq), feats[1], g_ids, gen.integers(0, n_cams, ng)


def _reference_dist(ref, q: np.ndarray, g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """The reference fed with the evaluator's own float32 cosine distances ``1 - x.y``."""
    one = np.float32(1)
    return ref[0].re_ranking(one - q @ g.T, one - q @ q.T, one - g @ g.T, k1, k2, lam)


def _reference_metrics(ref, dist, q_ids, g_ids, q_cams, g_cams, max_rank=10) -> dict[str, object]:
    cmc, aps, inps = ref[1].evaluate_rank(dist, q_ids, g_ids, q_cams, g_cams, max_rank, use_cython=False)
    return {"mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)), "cmc": np.asarray(cmc, np.float64)}


def _assert_same(got, want: dict[str, object]) -> None:
    assert got.mAP == pytest.approx(want["mAP"], abs=1e-5)
    assert got.mINP == pytest.approx(want["mINP"], abs=1e-5)
    np.testing.assert_allclose(got.cmc, want["cmc"], atol=1e-5)


def test_knn_graph_is_the_exact_sorted_prefix_with_symmetric_tiles():
    x = _unit(np.random.default_rng(3).normal(size=(700, 12)))
    d = np.float32(1) - x @ x.T
    m = d * d
    r = (m / m.max(axis=0)).T  # the reference's normalised distances
    want = np.argsort(r, axis=1, kind="stable")[:, :21]
    for block in (64, 333, 4096):  # many tiles (transposed merges, thresholds), ragged, a single tile
        g = knn_graph(x, 21, block=block)
        np.testing.assert_array_equal(g.index, want)
        np.testing.assert_allclose(g.dist, np.take_along_axis(r, want, 1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g.row_max, m.max(axis=0), rtol=1e-6)


@pytest.mark.parametrize(("seed", "k1", "k2", "lam"), [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 5, 1, 0.1),
                                                       (3, 7, 3, 0.0), (4, 4, 8, 1.0)])
def test_distances_equal_reference(ref, seed, k1, k2, lam):
    q, _, _, g, _, _ = _case(seed, nq=40, ng=260, n_ids=30, n_cams=4)
    want = _reference_dist(ref, q, g, k1, k2, lam)
    got = rerank_distances(q, g, k1, k2, lam)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_veri776_style_metrics_equal_reference(ref, seed):
    """Same-id same-camera junk removed; blocks of 7 queries stream into the evaluator."""
    qf, qi, qc, gf, gi, gc = _case(seed, nq=50, ng=300, n_ids=40, n_cams=5)
    want = _reference_metrics(ref, _reference_dist(ref, qf, gf, 20, 6, 0.3), qi, gi, qc, gc)
    got = rerank_metrics(qf, qi, qc, gf, gi, gc, max_rank=10, block_size=7)
    assert got.num_valid + got.num_skipped == 50
    _assert_same(got, want)


def _qg_frame(sets: tuple[str, ...], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    gen = np.random.default_rng(seed)
    rows = [{"vid": f"{v:03d}", "camid": int(gen.integers(0, 6)), "split": "query" if k == 0 else "gallery",
             "test_set": ts} for ts in sets for v in range(30 if ts == "small" else 45) for k in range(6)]
    frame = pd.DataFrame(rows)
    centers = gen.normal(size=(45, 16))
    feats = centers[frame["vid"].astype(int)] + 1.1 * gen.normal(size=(len(frame), 16))
    return frame, (feats * 4).astype(np.float32)  # not unit length: the protocol normalises


def test_veriwild_style_sets_equal_reference(ref):
    frame, feats = _qg_frame(("small", "large"))
    cfg = EvalCfg(max_rank=10, block_size=16, veriwild_sets=("small", "large"))
    plain, _ = evaluate_dataset_full(frame, feats, "veriwild", cfg)
    got, curves = rerank_dataset(frame, feats, "veriwild", cfg)
    assert list(got) == ["small", "large"] and len(curves["large"]) == 10
    x = _unit(feats)
    for ts in ("small", "large"):
        q = ((frame["test_set"] == ts) & (frame["split"] == "query")).to_numpy()
        g = ((frame["test_set"] == ts) & (frame["split"] == "gallery")).to_numpy()
        ids, cams = frame["vid"].to_numpy(), frame["camid"].to_numpy()
        want = _reference_metrics(ref, _reference_dist(ref, x[q], x[g], 20, 6, 0.3), ids[q], ids[g], cams[q], cams[g])
        assert got[ts]["rerank/mAP"] == pytest.approx(want["mAP"], abs=1e-5)
        assert got[ts]["rerank/mINP"] == pytest.approx(want["mINP"], abs=1e-5)
        assert got[ts]["rerank/R5"] == pytest.approx(want["cmc"][4], abs=1e-5)
        assert got[ts]["rerank/mAP"] != pytest.approx(plain[ts]["mAP"], abs=1e-4)  # it really re-ranked


def test_vehicleid_style_trials_equal_reference(ref):
    """Seeded trials (one gallery image per id), no cameras so no junk: as the plain protocol."""
    gen = np.random.default_rng(5)
    frame = pd.DataFrame([{"vid": str(v), "camid": -1, "split": "test", "test_set": "800"}
                          for v in range(40) for _ in range(5)])
    feats = (gen.normal(size=(40, 16))[frame["vid"].astype(int)] + 1.3 * gen.normal(size=(200, 16))).astype(np.float32)
    cfg = EvalCfg(vehicleid_trials=3, vehicleid_sets=("800",), max_rank=10)
    got, _ = rerank_dataset(frame, feats, "vehicleid", cfg, seed=7)
    x, vids = _unit(feats), frame["vid"].to_numpy()
    maps, r1s = [], []
    for trial in range(3):
        q, g = vehicleid_split(vids, np.random.default_rng([7, 800, trial]))
        dist = _reference_dist(ref, x[q], x[g], 20, 6, 0.3)
        want = _reference_metrics(ref, dist, vids[q], vids[g], np.zeros(len(q)), np.ones(len(g)))
        maps.append(want["mAP"])
        r1s.append(want["cmc"][0])
    assert got["800"]["rerank/mAP"] == pytest.approx(np.mean(maps), abs=1e-5)
    assert got["800"]["rerank/R1"] == pytest.approx(np.mean(r1s), abs=1e-5)
    assert got["800"]["rerank/mAP_std"] == pytest.approx(np.std(maps), abs=1e-5)
    assert got["800"]["rerank/num_valid"] == 160


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_evaluate_features_rerank_prints_both_and_checks_flags(tmp_path, capsys):
    qf, qi, qc, gf, gi, gc = _case(20, nq=30, ng=150, n_ids=25, n_cams=4)
    np.savez(tmp_path / "f.npz", query_feats=qf * 2, query_ids=qi, query_cams=qc, gallery_feats=gf,
             gallery_ids=gi, gallery_cams=gc)
    argv = ["evaluate-features", str(tmp_path / "f.npz"), "--max-rank", "10"]
    assert _run_cli([*argv, "--rerank", "--k1", "9", "--k2", "3", "--lambda", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = rerank_metrics(qf, qi, qc, gf, gi, gc, k1=9, k2=3, lambda_value=0.2, max_rank=10)
    assert out["rerank/mAP"] == pytest.approx(want.mAP, abs=1e-7) and out["rerank/num_valid"] == want.num_valid
    assert {"mAP", "R1", "mINP", "rerank/R1", "rerank/mINP"} <= set(out)
    with pytest.raises(UserError, match="--lambda within"):
        _run_cli([*argv, "--rerank", "--lambda", "1.5"])


def test_config_defaults_and_selection_on_reranked_metric_needs_it_enabled():
    assert RerankCfg() == RerankCfg(enabled=False, k1=20, k2=6, lambda_value=0.3)
    cfg = load_config("synthetic", ["eval.rerank.enabled=true", "registry.primary_metric=eval/val/rerank/mAP"])
    assert cfg.eval.rerank.enabled and cfg.registry.primary_metric == "eval/val/rerank/mAP"
    with pytest.raises(Exception, match="primary_metric"):
        load_config("synthetic", ["registry.primary_metric=eval/val/rerank/mAP"])
    with pytest.raises(Exception, match="lambda_value"):
        load_config("synthetic", ["eval.rerank.lambda_value=2"])


def test_step_report_shows_reranked_rows_beside_plain_ones():
    results = {"test": {"mAP": 0.5, "R1": 0.6, "R5": 0.7, "R10": 0.8, "mINP": 0.2,
                        "rerank/mAP": 0.55, "rerank/R1": 0.61, "rerank/R5": 0.71, "rerank/R10": 0.81,
                        "rerank/mINP": 0.3}}
    md = _eval_report(results, "eval/test/mAP", 0.5)
    assert "| test | 0.5000 | 0.6000" in md and "| test re-ranked | 0.5500 | 0.6100" in md


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from anet.evaluation.rerank import rerank_metrics
    torch.set_num_threads(1)
    nq, ng, dim = 1000, 17000, 32
    gen = np.random.default_rng(0)
    centers = gen.standard_normal((3000, dim), dtype=np.float32)
    ids = gen.integers(0, 3000, nq + ng)
    x = centers[ids] + 1.2 * gen.standard_normal((nq + ng, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cams = gen.integers(0, 20, nq + ng)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = rerank_metrics(x[:nq], ids[:nq], cams[:nq], x[nq:], ids[nq:], cams[nq:], block_size=256)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base_mb": base, "peak_mb": peak, "mAP": r.mAP, "valid": r.num_valid}))
""")


def test_memory_stays_bounded_where_dense_matrices_would_not_fit():
    """18,000 points: one dense (Q+G)^2 float32 matrix alone is 1.3 GB (the reference holds three)."""
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["valid"] > 500 and 0 < out["mAP"] < 1
    assert out["peak_mb"] - out["base_mb"] < 300, out  # 1.3 GB for a single dense matrix


def test_empty_sides_are_skipped_and_mismatched_features_refused():
    qf, qi, qc, gf, gi, gc = _case(30, nq=5, ng=40, n_ids=10, n_cams=3)
    empty = rerank_metrics(qf, qi, qc, gf[:0], gi[:0], gc[:0])
    assert empty.num_valid == 0 and empty.num_skipped == 5 and empty.warning
    with pytest.raises(ValueError, match="feature sizes differ"):
        rerank_metrics(qf, qi, qc, gf[:, :8], gi, gc)
