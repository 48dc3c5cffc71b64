"""Re-ranking where users meet it: `anet evaluate --rerank`, `anet search --rerank`, search-study, the page.

Shares tests/test_search.py's smoke setup (prepared cache, untrained model, served predictor) and adds an
index of its test set built with ``--knn 21``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from anet.cli import evaluate as commands
from anet.errors import UserError
from anet.evaluation.rerank import rerank_distances, rerank_metrics
from anet.mlops.tracking.step_tracking import StepTracker


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def search_setup(tmp_path_factory: pytest.TempPathFactory):
    """test_search's smoke setup plus an index of its test set built with --knn 21."""
    from test_search import REF, build_setup  # tests/ is on the path (pyproject pythonpath)

    from anet.search.index import index_split

    root = tmp_path_factory.mktemp("search_rerank")
    base = build_setup(root)
    return base, index_split(base.predictor, REF, base.prepared, "test", root / "knn_index", knn=21)


def test_search_rerank_with_a_whole_gallery_pool_is_the_offline_reranking(search_setup, monkeypatch):
    from anet.search import query as query_module
    from anet.search.query import Query, search
    from anet.search.rerank import GRAPH

    base, index = search_setup
    assert (index.folder / GRAPH).is_file() and index.meta["knn"] == 21
    monkeypatch.setattr(query_module, "POOL", len(index))  # the pool is the whole gallery: exact
    rows = base.prepared.rows("query", "test")
    q = base.predictor.embed_arrays(base.prepared.images[rows["cache_index"].to_numpy(np.int64)[:3]]).embeddings
    gallery = index.embeddings()
    for emb in q:
        hits = search(index, Query(emb, index.model, {}), k=10, rerank=True)
        want = rerank_distances(emb[None], gallery)[0]
        order = np.lexsort((np.arange(len(want)), want))[:10]
        assert hits["item"].tolist() == order.tolist()
        np.testing.assert_allclose(hits["rerank_distance"], want[order], atol=1e-6)
        np.testing.assert_allclose(hits["score"], gallery[order] @ emb, atol=1e-5)  # the cosine stays
    monkeypatch.setattr(query_module, "POOL", 5)  # a shortlist: re-ordered, nothing from outside moves in
    plain = search(index, Query(q[0], index.model, {}), k=5)
    short = search(index, Query(q[0], index.model, {}), k=5, rerank=True)
    assert sorted(short["item"]) == sorted(plain["item"]) and short["rerank_distance"].is_monotonic_increasing
    with pytest.raises(UserError, match="--knn"):
        search(base.index, Query(q[0], base.index.model, {}), k=5, rerank=True)  # built without a graph


def test_search_rerank_mistakes_are_one_line_before_any_model_loads(search_setup, tmp_path, capsys):
    from anet.cli import main
    from anet.search.served import png_bytes

    base, _ = search_setup
    image = tmp_path / "q.png"
    image.write_bytes(png_bytes(base.prepared.images[0]))
    assert main(["search", str(image), "--index", str(base.index.folder), "--rerank"]) == 2
    assert "no neighbour graph" in capsys.readouterr().err
    assert main(["index", "--model", "models:/x@champion", "--split", "test", "--out", str(tmp_path / "o"),
                 "--knn", "1"]) == 2
    assert "--knn 1: must be at least 2" in capsys.readouterr().err


def test_search_study_rerank_row_is_the_offline_reranked_map(search_setup, monkeypatch):
    from anet.search import study as study_module
    from anet.search.study import filter_study

    base, index = search_setup
    monkeypatch.setattr(study_module, "POOL", len(index))
    table = filter_study(index, base.predictor, base.prepared, confidences=(0.0,), rerank=True)
    row = table[table["filter"] == "rerank"].iloc[0]
    queries, gallery = base.prepared.rows("query", "test"), base.prepared.rows("gallery", "test")
    q = base.predictor.embed_arrays(base.prepared.images[queries["cache_index"].to_numpy(np.int64)]).embeddings
    ids, cams = queries["vid"].astype(str).to_numpy(), queries["camid"].to_numpy()
    # search re-ranks one query against the gallery: the offline re-ranking of each query on its own
    each = [rerank_metrics(q[i : i + 1], ids[i : i + 1], cams[i : i + 1], index.embeddings(),
                           gallery["vid"].astype(str), gallery["camid"]) for i in range(len(q))]
    valid = [r for r in each if r.num_valid]
    assert row["queries"] == len(valid) > 0
    assert row["mAP"] == pytest.approx(np.mean([r.mAP for r in valid]), abs=1e-6)
    assert row["R1"] == pytest.approx(np.mean([r.r1 for r in valid]), abs=1e-6)


def test_the_page_api_reranks_with_the_checkbox_field(search_setup):
    """POST /api/search with "rerank": true on a real uvicorn server; /api/info says when it can."""
    from test_search_page import _get, _post, running

    from anet.search.web import create_app

    base, index = search_setup
    with running(create_app(index, base.predictor)) as url:
        assert json.loads(_get(f"{url}/api/info")[1])["rerank"] is True
        code, out = _post(f"{url}/api/search", {"item": 0, "k": 5, "rerank": True})
        assert code == 200 and len(out["hits"]) == 5 and 0 not in [h["item"] for h in out["hits"]]
        dist = [h["rerank_distance"] for h in out["hits"]]
        assert dist == sorted(dist) and [h["rank"] for h in out["hits"]] == [1, 2, 3, 4, 5]
        code, plain = _post(f"{url}/api/search", {"item": 0, "k": 5})
        assert code == 200 and "rerank_distance" not in plain["hits"][0]
    with running(create_app(base.index, base.predictor)) as url:  # an index built without --knn
        assert json.loads(_get(f"{url}/api/info")[1])["rerank"] is False
        code, out = _post(f"{url}/api/search", {"item": 0, "k": 5, "rerank": True})
        assert code == 400 and "no neighbour graph" in out["error"]


def test_evaluate_checkpoint_rerank_beside_plain_metrics(search_setup, tmp_path, capsys):
    """`anet evaluate --rerank` on the smoke cache: rerank/<metric> beside the plain ones in the results,
    the table and the step's eval/<set>/rerank/<metric> names; the plain numbers are unchanged."""
    setup, _ = search_setup
    ckpt, prepared = setup.checkpoint, setup.prepared
    base = ["evaluate", "--checkpoint", str(ckpt), "--cache", str(prepared.cache_dir), "--profile", "smoke",
            "--device", "cpu", "--precision", "fp32"]
    assert _run_cli([*base, "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads(capsys.readouterr().out)["results"]
    assert _run_cli([*base, "--rerank", "--out", str(tmp_path / "rr")]) == 0
    got = json.loads(capsys.readouterr().out)["results"]
    for test_set, metrics in got.items():
        assert {k: v for k, v in metrics.items() if not k.startswith("rerank/")} == plain[test_set]
        assert 0 < metrics["rerank/mAP"] <= 1 and metrics["rerank/num_valid"] == metrics["num_valid"]
    assert "rerank/mAP" in (tmp_path / "rr" / "results.csv").read_text().splitlines()[0]
    flat = StepTracker().log_eval(got, [])
    assert flat["eval/test/rerank/mAP"] == got["test"]["rerank/mAP"] and "eval/test/mAP" in flat
