"""Dataset protocols, feature extraction and the evaluation commands."""

from __future__ import annotations

import argparse
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from anet.cli import evaluate as commands
from anet.config import EvalCfg
from anet.errors import UserError
from anet.evaluation.features import extract_features
from anet.evaluation.protocols import evaluate_dataset, evaluate_dataset_full, vehicleid_split
from anet.evaluation.ranking import rank_metrics


def _feats(vids: np.ndarray, seed: int = 0, dim: int = 8, noise: float = 0.8) -> np.ndarray:
    gen = np.random.default_rng(seed)
    codes = np.unique(vids, return_inverse=True)[1]
    centers = gen.normal(size=(codes.max() + 1, dim))
    return (centers[codes] + noise * gen.normal(size=(len(vids), dim))).astype(np.float32)


def query_gallery_frame(test_sets=("test",), n_ids=12, per_id=5, seed=0) -> pd.DataFrame:
    gen = np.random.default_rng(seed)
    rows = []
    for ts in test_sets:
        for vid in range(n_ids):
            for k in range(per_id):
                rows.append({"path": f"{ts}/{vid}_{k}.jpg", "vid": f"{vid:04d}", "label": -1,
                             "camid": int(gen.integers(0, 4)), "split": "query" if k == 0 else "gallery",
                             "test_set": ts})
    return pd.DataFrame(rows)


def vehicleid_frame(sets=("800", "1600"), n_ids=10, per_id=4) -> pd.DataFrame:
    rows = [{"path": f"{ts}/{v}_{k}.jpg", "vid": str(v), "label": -1, "camid": -1, "split": "test",
             "test_set": ts} for ts in sets for v in range(n_ids) for k in range(per_id)]
    return pd.DataFrame(rows)


def test_query_gallery_protocol_equals_rank_metrics():
    frame = query_gallery_frame()
    feats = _feats(frame["vid"].to_numpy())
    cfg = EvalCfg(max_rank=10, block_size=4)
    got = evaluate_dataset(frame, feats, "veri776", cfg)
    q, g = frame["split"] == "query", frame["split"] == "gallery"
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    ref = rank_metrics(unit[q], frame["vid"][q], frame["camid"][q], unit[g], frame["vid"][g],
                       frame["camid"][g], max_rank=10, block_size=4)
    assert list(got) == ["test"]
    assert got["test"] == pytest.approx(ref.as_dict())


def test_veriwild_sets_scored_separately_when_present():
    frame = query_gallery_frame(("small", "large"))
    results, curves = evaluate_dataset_full(frame, _feats(frame["vid"].to_numpy()), "veriwild",
                                            EvalCfg(max_rank=5))
    assert list(results) == ["small", "large"] and set(curves) == {"small", "large"}
    assert len(curves["small"]) == 5 and results["small"]["num_valid"] > 0


def test_vehicleid_split_one_gallery_image_per_id():
    vids = np.repeat(np.arange(7), 3).astype(str)
    q, g = vehicleid_split(vids, np.random.default_rng(0))
    assert sorted(vids[g]) == sorted(set(vids)) and len(q) == len(vids) - 7
    assert set(q) | set(g) == set(range(len(vids)))


def test_vehicleid_trials_mean_std_and_no_junk_removal():
    frame = vehicleid_frame()
    feats = _feats(frame["vid"].to_numpy(), noise=1.5)
    cfg = EvalCfg(vehicleid_trials=4, vehicleid_sets=("800", "1600", "2400"), max_rank=10)
    res = evaluate_dataset(frame, feats, "vehicleid", cfg, seed=1)
    assert list(res) == ["800", "1600"]  # 2400 absent
    # camid is -1 everywhere: nothing may be removed, every query is valid
    assert res["800"]["num_valid"] == 30 and res["800"]["num_skipped"] == 0
    assert {"R1_std", "mAP_std", "R5_std", "mINP_std"} <= set(res["800"])
    assert res["800"]["R1_std"] > 0  # trials really differ
    assert evaluate_dataset(frame, feats, "vehicleid", cfg, seed=1) == res  # seeded
    assert evaluate_dataset(frame, feats, "vehicleid", cfg, seed=2) != res


def test_all_queries_skipped_gives_nan_and_logs(caplog):
    frame = query_gallery_frame(n_ids=4, per_id=3)
    frame["camid"] = 0  # every positive is same-camera junk
    with caplog.at_level(logging.WARNING):
        res = evaluate_dataset(frame, _feats(frame["vid"].to_numpy()), "synthetic", EvalCfg())
    assert res["test"]["num_valid"] == 0 and math.isnan(res["test"]["mAP"])
    assert "no query has a valid match" in caplog.text


def test_unknown_dataset_and_missing_test_sets_are_user_errors():
    frame = query_gallery_frame(("small",))
    feats = _feats(frame["vid"].to_numpy())
    with pytest.raises(UserError, match="no evaluation protocol"):
        evaluate_dataset(frame, feats, "market", EvalCfg())
    with pytest.raises(UserError, match="none of the configured test sets"):
        evaluate_dataset(frame, feats, "veriwild", EvalCfg(veriwild_sets=("large",)))


class _ToyModel(torch.nn.Module):
    """embed = normalised per-channel mean of the left half of the image (so flips change it)."""

    def embed(self, x: torch.Tensor, feature: str = "j") -> torch.Tensor:
        assert feature == "f"
        half = x[..., : x.shape[-1] // 2]
        return torch.nn.functional.normalize(torch.cat([half.mean((2, 3)), half.std((2, 3))], 1), dim=1)


def _transform(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float() / 255.0  # B x 3 x H x W


def test_extract_features_flip_average_and_normalised():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 255, (b, 8, 6, 3), dtype=torch.uint8, generator=gen) for b in (3, 2)]
    model = _ToyModel()
    plain = extract_features(model, batches, "f", False, "cpu", "fp32", _transform)
    flipped = extract_features(model, batches, "f", True, "cpu", "fp32", _transform)
    assert plain.shape == (5, 6) and plain.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(flipped, axis=1), 1.0, rtol=1e-5)
    x = _transform(torch.cat(batches))
    expect = torch.nn.functional.normalize(model.embed(x, "f") + model.embed(x.flip(3), "f"), dim=1)
    np.testing.assert_allclose(flipped, expect.numpy(), rtol=1e-5, atol=1e-6)
    bf16 = extract_features(model, batches, "f", False, "cpu", "bf16", _transform)
    np.testing.assert_allclose(bf16, plain, atol=5e-2)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _write_npz(path, **override):
    frame = query_gallery_frame()
    feats = _feats(frame["vid"].to_numpy()) * 3.0  # not normalised: the command does it
    q, g = (frame["split"] == "query").to_numpy(), (frame["split"] == "gallery").to_numpy()
    arrays = {"query_feats": feats[q], "query_ids": frame["vid"].to_numpy()[q].astype(int),
              "query_cams": frame["camid"].to_numpy()[q], "gallery_feats": feats[g],
              "gallery_ids": frame["vid"].to_numpy()[g].astype(int), "gallery_cams": frame["camid"].to_numpy()[g]}
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_evaluate_features_prints_metrics_json(tmp_path, capsys):
    a = _write_npz(tmp_path / "f.npz")
    assert _run_cli(["evaluate-features", str(tmp_path / "f.npz"), "--max-rank", "10", "--block-size", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a["query_feats"], a["gallery_feats"])]
    ref = rank_metrics(unit[0], a["query_ids"], a["query_cams"], unit[1], a["gallery_ids"], a["gallery_cams"],
                       max_rank=10)
    assert out["mAP"] == pytest.approx(ref.mAP) and out["num_valid"] == 12
    assert set(out) == {"mAP", "R1", "R5", "R10", "mINP", "num_valid", "num_skipped"}


@pytest.mark.parametrize(
    ("override", "message"),
    [({"gallery_cams": None}, "missing array 'gallery_cams'"),
     ({"query_ids": np.arange(3)}, "'query_ids' must have shape"),
     ({"gallery_feats": np.zeros((48, 5), np.float32)}, "'gallery_feats' has 5 columns")],
)
def test_evaluate_features_bad_file_names_array(tmp_path, override, message):
    _write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(UserError, match=message) as err:
        _run_cli(["evaluate-features", str(tmp_path / "bad.npz")])
    assert "bad.npz" in str(err.value)


def test_evaluate_features_all_skipped_says_why(tmp_path, capsys):
    a = _write_npz(tmp_path / "cam.npz")
    _write_npz(tmp_path / "cam.npz", query_cams=np.zeros_like(a["query_cams"]),
               gallery_cams=np.zeros_like(a["gallery_cams"]))
    with pytest.raises(UserError, match="no query has a valid match in the gallery: every positive shares"):
        _run_cli(["evaluate-features", str(tmp_path / "cam.npz")])
    assert json.loads(capsys.readouterr().out)["mAP"] is None
    assert _run_cli(["evaluate-features", str(tmp_path / "cam.npz"), "--no-junk-removal"]) == 0


def test_evaluate_checkpoint_end_to_end(tmp_path, capsys):
    """Untrained smoke model on the smoke synthetic cache: metrics, report files, CLI JSON."""
    from anet.config import load_config
    from anet.model import build_model
    from anet.steps.prepare import prepare_from_config

    cfg = load_config("smoke", [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}"])
    prepared = prepare_from_config(cfg, progress=False)
    manifest = prepared.manifest
    model = build_model(cfg.model, num_ids=manifest.num_train_ids(), attr_classes=manifest.attr_classes())
    ckpt = tmp_path / "final.pt"
    torch.save({"model": model.state_dict(), "num_ids": manifest.num_train_ids(),
                "attr_classes": manifest.attr_classes(), "model_cfg": cfg.model.model_dump(mode="json")}, ckpt)
    code = _run_cli(["evaluate", "--checkpoint", str(ckpt), "--cache", str(prepared.cache_dir), "--profile",
                     "smoke", "--flip", "--out", str(tmp_path / "eval"), "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["feature"] == "j" and set(out["results"]) == {"test", "val"}
    assert out["results"]["test"]["num_valid"] > 0 and 0 < out["results"]["test"]["mAP"] <= 1
    names = {p.rsplit("/", 1)[-1] for p in out["files"]}
    assert {"results.md", "results.csv", "cmc.png", "retrieval.png", "activation_maps.png"} <= names
