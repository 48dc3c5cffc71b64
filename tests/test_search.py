"""Using the champion without MLflow: the served predictor, the index, search, filters, the filter study.

A smoke-sized synthetic dataset is prepared once; its model is an untrained ANet whose BatchNorm
statistics were set on the training images (so features are not all alike). The model reference is
made up: nothing here needs a registry (tests/test_serving.py covers that).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from anet.cli import main
from anet.config import ExperimentConfig, resolve_config
from anet.data.augment import TestTransform
from anet.data.cache import PreparedDataset
from anet.data.loader import iter_eval_batches
from anet.errors import UserError
from anet.evaluation.features import extract_features
from anet.evaluation.ranking import rank_metrics
from anet.model import build_model
from anet.search.index import GalleryIndex, build_faiss, gallery_rows, index_folder, index_split
from anet.search.predictor import ReidPredictor
from anet.search.query import Filters, Query, contact_sheet, embed_query, query_from_item, search
from anet.search.served import SERVED_DISTS, ModelRef, png_bytes, write_artifacts
from anet.search.study import filter_study
from anet.steps import prepare_from_config

ROOT = Path(__file__).resolve().parent.parent
REF = ModelRef("anet-synthetic", "1", "run-one")


@dataclass(frozen=True)
class SearchSetup:
    """A prepared smoke dataset, a model's served artifacts, its predictor and an index of the test set."""

    cfg: ExperimentConfig
    prepared: PreparedDataset
    checkpoint: Path
    predictor: ReidPredictor
    index: GalleryIndex


def build_setup(root: Path) -> SearchSetup:
    """Everything the search tests need, in ``root`` (~10 s on a 2-core CPU)."""
    cfg = resolve_config("smoke", data_root=str(root / "data"), cache_root=str(root / "cache"))
    prepared = prepare_from_config(cfg, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, prepared.manifest.num_train_ids(), prepared.manifest.attr_classes())
    with torch.no_grad():  # BatchNorm statistics from the data: an untrained net with spread-out features
        model.train()
        model(TestTransform(cfg.augment)(torch.from_numpy(np.array(prepared.images[:64]))))
    checkpoint = root / "final.pt"
    torch.save({"model": model.state_dict(), "num_ids": prepared.manifest.num_train_ids(),
                "attr_classes": prepared.manifest.attr_classes(), "model_cfg": cfg.model.model_dump(mode="json"),
                "optimizer": {"unused": torch.zeros(1)}}, checkpoint)
    predictor = ReidPredictor.from_artifacts(write_artifacts(checkpoint, cfg, prepared.manifest.vocab,
                                                             root / "artifacts"))
    return SearchSetup(cfg, prepared, checkpoint, predictor, index_split(predictor, REF, prepared, "test", root / "index"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SearchSetup:
    return build_setup(tmp_path_factory.mktemp("search"))


def _query(embedding: np.ndarray) -> Query:
    return Query(np.asarray(embedding, np.float32), REF, {})


def _evaluator_features(setup: SearchSetup, rows: pd.DataFrame) -> np.ndarray:
    model = setup.predictor.embedder.model
    batches = iter_eval_batches(setup.prepared, rows, 16)
    return extract_features(model, batches, setup.cfg.eval.feature, False, "cpu", "fp32", TestTransform(setup.cfg.augment))


def test_served_predictions_equal_the_evaluators_features_whatever_the_input_form(setup):
    rows = setup.prepared.rows("query", "test")
    images = setup.prepared.images[rows["cache_index"].to_numpy()]
    expected = _evaluator_features(setup, rows)
    encoded = [png_bytes(image) for image in images]
    as_bytes = setup.predictor.predict(pd.DataFrame({"image": encoded}))
    as_base64 = setup.predictor.predict([base64.b64encode(b).decode() for b in encoded])
    as_arrays = setup.predictor.predict(pd.DataFrame({"image": list(images)}))
    for frame in (as_bytes, as_base64, as_arrays):
        np.testing.assert_allclose(np.array(frame["embedding"].tolist()), expected, atol=1e-6)
    vocab = setup.prepared.manifest.vocab
    for name, classes in vocab.items():
        probs = pd.DataFrame(as_bytes[f"{name}_probs"].tolist())
        assert list(probs.columns) == classes and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (as_bytes[name] == probs.idxmax(axis=1)).all()
        assert np.allclose(as_bytes[f"{name}_confidence"], probs.max(axis=1))
    # the original JPEG of a test image is decoded and resized the way the cache was built
    original = Path(setup.prepared.manifest.root) / rows["path"].iloc[0]
    first = setup.predictor.predict([original.read_bytes()])
    np.testing.assert_allclose(first["embedding"].iloc[0], expected[0], atol=1e-6)


def test_a_bad_image_is_a_user_error_naming_it(setup):
    with pytest.raises(UserError, match="image 1: not a usable image"):
        setup.predictor.predict([png_bytes(setup.prepared.images[0]), b"not an image"])
    with pytest.raises(UserError, match="column"):
        setup.predictor.predict(pd.DataFrame({"picture": [b""]}))
    with pytest.raises(UserError, match="uint8 H x W x 3"):
        setup.predictor.predict([np.zeros((4, 4), np.uint8)])


def test_the_served_vocabulary_must_fit_the_classifiers(setup, tmp_path):
    vocab = {**setup.prepared.manifest.vocab, "color": ["red", "blue"]}
    with pytest.raises(UserError, match="do not fit"):
        write_artifacts(setup.checkpoint, setup.cfg, vocab, tmp_path)
    slim = torch.load(setup.checkpoint.parent / "artifacts" / "model.pt", weights_only=True)
    assert sorted(slim) == ["attr_classes", "model", "model_cfg", "num_ids"]  # no optimizer state travels


def test_exact_search_ranks_the_gallery_like_the_evaluator(setup):
    queries = setup.prepared.rows("query", "test")
    gallery = gallery_rows(setup.prepared, "test")
    q_feats, g_feats = _evaluator_features(setup, queries), _evaluator_features(setup, gallery)
    np.testing.assert_allclose(setup.index.embeddings(), g_feats, atol=1e-6)
    sims = torch.mm(torch.from_numpy(q_feats), torch.from_numpy(g_feats).t()).numpy()  # as ranking.py does
    n = len(gallery)
    for i, query in enumerate(q_feats):
        hits = search(setup.index, _query(query), k=n)
        expected = np.lexsort((np.arange(n), np.float32(1) - sims[i]))  # (D, gallery index), like ranking.py
        differ = hits["item"].to_numpy() != expected
        # only float ties may swap places (faiss and torch round their dot products differently)
        assert np.all(np.abs(hits["score"].to_numpy()[differ] - sims[i][expected[differ]]) < 1e-6)
        assert differ.mean() < 0.05
    top = search(setup.index, _query(q_feats[0]), k=5)
    assert list(top["rank"]) == [1, 2, 3, 4, 5] and top["score"].is_monotonic_decreasing


def test_the_unfiltered_study_row_is_the_evaluators_metrics(setup):
    table = filter_study(setup.index, setup.predictor, setup.prepared)
    queries = setup.prepared.rows("query", "test")
    gallery = gallery_rows(setup.prepared, "test")
    reference = rank_metrics(_evaluator_features(setup, queries), queries["vid"].astype(str), queries["camid"],
                             _evaluator_features(setup, gallery), gallery["vid"].astype(str), gallery["camid"])
    none = table[table["filter"] == "none"].iloc[0]
    assert none["mAP"] == pytest.approx(reference.mAP, abs=1e-9) and none["R1"] == pytest.approx(reference.r1)
    assert set(table["filter"]) == {"none", "color", "type", "color+type"}
    both = table[(table["filter"] == "color+type") & (table["min_confidence"] == 0.0)].iloc[0]
    assert both["gallery_kept"] <= table[table["filter"] == "color"]["gallery_kept"].max() <= 1.0


def test_filters_keep_matching_items_and_rank_them_as_without_filters(setup):
    query = query_from_item(setup.index, 0)
    everything = search(setup.index, query, k=len(setup.index))
    color = everything["color"].iloc[0]
    kept = search(setup.index, query, k=len(setup.index), filters=Filters({"color": color}))
    assert (kept["color"] == color).all() and len(kept) == int((setup.index.table["color"] == color).sum())
    assert list(kept["item"]) == list(everything.loc[everything["color"] == color, "item"])
    sure = search(setup.index, query, k=3, filters=Filters({"color": color}, min_confidence=0.99))
    assert (sure["color_confidence"] >= 0.99).all()
    cams = search(setup.index, query, k=50, filters=Filters(cameras=("1", "2")))
    assert set(cams["camera"]) <= {"1", "2"} and len(cams) == int(setup.index.table["camera"].isin(["1", "2"]).sum())
    with pytest.raises(UserError, match="not a class of color"):
        search(setup.index, query, filters=Filters({"color": "plaid"}))
    with pytest.raises(UserError, match="predicts color, type"):
        search(setup.index, query, filters=Filters({"wheels": "4"}))


def test_an_index_refuses_a_query_embedded_by_another_model(setup):
    image = png_bytes(setup.prepared.images[0])
    other = embed_query(setup.predictor, ModelRef("anet-synthetic", "2", "run-two"), image)
    with pytest.raises(UserError, match="anet-synthetic v2 .* built by anet-synthetic v1"):
        search(setup.index, other)
    assert len(search(setup.index, embed_query(setup.predictor, REF, image), k=3)) == 3


def test_a_folder_index_takes_cameras_from_the_csv_and_skips_broken_files(setup, tmp_path):
    folder = tmp_path / "clips"
    (folder / "day").mkdir(parents=True)
    for i in range(4):
        (folder / "day" / f"car{i}.png").write_bytes(png_bytes(setup.prepared.images[i]))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    meta = tmp_path / "meta.csv"
    meta.write_text("path,camera,time\nday/car0.png,north,08:00\nday/car2.png,south,09:30\n")
    index = index_folder(setup.predictor, REF, folder, tmp_path / "index", meta)
    assert len(index) == 4 and index.meta["source"]["skipped"] == 1
    assert dict(zip(index.table["path"].map(lambda p: Path(p).name), index.table["camera"], strict=True)) == {
        "car0.png": "north", "car1.png": "", "car2.png": "south", "car3.png": ""}
    hits = search(GalleryIndex.open(tmp_path / "index"), embed_query(setup.predictor, REF, setup.prepared.images[2]), 1)
    assert Path(hits["path"].iloc[0]).name == "car2.png" and hits["time"].iloc[0] == "09:30"
    meta.write_text("path,camera\nday/missing.png,x\n")
    with pytest.raises(UserError, match="not files under"):
        index_folder(setup.predictor, REF, folder, tmp_path / "index2", meta)


def test_the_ann_index_finds_nearly_all_exact_neighbours():
    gen = np.random.default_rng(0)
    vectors = gen.standard_normal((5000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:100] + 0.1 * gen.standard_normal((100, 64)).astype(np.float32)
    _, exact = build_faiss(vectors, ann=False).search(queries, 10)
    _, approx = build_faiss(vectors, ann=True).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.95


def test_the_contact_sheet_shows_the_query_and_every_hit(setup, tmp_path):
    query = query_from_item(setup.index, 3)
    hits = search(setup.index, query, k=7)
    sheet = contact_sheet(setup.index, query, hits, tmp_path / "sheet.png")
    with Image.open(sheet) as img:
        assert img.size == (5 * 128, 2 * (128 + 28))


def test_search_mistakes_are_one_line_with_exit_status_2(setup, tmp_path, capsys):
    image = tmp_path / "q.png"
    image.write_bytes(png_bytes(setup.prepared.images[0]))
    assert main(["search", str(image), "--index", str(tmp_path / "nothing")]) == 2
    assert "not an anet index" in capsys.readouterr().err
    assert main(["search", str(image), "--index", str(setup.index.folder), "--color", "plaid"]) == 2
    assert "not a class of color" in capsys.readouterr().err
    assert main(["search", str(image), "--index", str(setup.index.folder), "--where", "color"]) == 2
    assert "ATTR=CLASS" in capsys.readouterr().err
    assert main(["index", "--model", "models:/x@champion", "--split", "test", "--meta", "m.csv", "--out", "o"]) == 2


def test_the_served_requirements_cover_what_anet_imports_when_the_model_loads():
    """Every third-party distribution that anet's own modules import at load time is pinned."""
    code = (
        "import ast, json, sys, importlib.metadata as md\n"
        "import anet.search.predictor\n"
        "dists = md.packages_distributions()\n"
        "found = set()\n"
        "for name, mod in list(sys.modules.items()):\n"
        "    if name.split('.')[0] != 'anet' or not getattr(mod, '__file__', None):\n"
        "        continue\n"
        "    for node in ast.parse(open(mod.__file__).read()).body:\n"
        "        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \\\n"
        "            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []\n"
        "        found |= {n.split('.')[0] for n in names}\n"
        "third = {d for top in found - set(sys.stdlib_module_names) - {'anet'} for d in dists.get(top, [top])}\n"
        "print(json.dumps(sorted(third)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    imported = {d.lower() for d in json.loads(out.stdout.strip().splitlines()[-1])}
    assert imported <= {d.lower() for d in SERVED_DISTS}, imported - {d.lower() for d in SERVED_DISTS}

