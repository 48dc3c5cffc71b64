"""Evaluate a checkpoint on a prepared cache: features, protocol metrics, report files.

The reusable body of ``anet evaluate`` and of the pipeline's evaluate step::

    from anet.evaluation import evaluate_checkpoint
    out = evaluate_checkpoint("runs/x/stage_two/final.pt", ".cache/anet/veri776-...", cfg, "runs/x/eval")
    out["results"]["test"]["mAP"], out["files"]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anet.config import EvalCfg, ExperimentConfig
from anet.data.augment import TestTransform
from anet.data.cache import PreparedDataset
from anet.data.loader import iter_eval_batches
from anet.evaluation import report
from anet.evaluation.features import extract_features
from anet.evaluation.protocols import evaluate_dataset_full, rerank_dataset, vehicleid_split
from anet.model.checkpoint_io import load_model_from_checkpoint
from anet.train.runtime import resolve_device

log = logging.getLogger(__name__)

_PREFERRED = ("j", "fa", "f")


def pick_feature(requested: str, available: tuple[str, ...]) -> str:
    """``requested`` when the model has it, else the richest available one (logged)."""
    if requested in available:
        return requested
    chosen = next(f for f in _PREFERRED if f in available)
    log.warning("eval.feature=%r is not available for this model (%s); using %r", requested, available, chosen)
    return chosen


def evaluate_checkpoint(
    checkpoint: str | Path,
    cache_dir: str | Path,
    cfg: ExperimentConfig | EvalCfg,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Rebuild the model, extract features of every test row, score by protocol, write reports.

    ``cfg`` may be the whole experiment config (its eval / augment / runtime sections are used) or
    just an :class:`EvalCfg`. ``device`` / ``precision`` default to the runtime section ("auto" /
    "bf16"). Returns ``{"results": {test_set: {metric: value}}, "files": [paths], "feature": str,
    "num_images": int, "warnings": [str]}``.
    """

    full = cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig(eval=cfg)

    device = torch.device(device) if device is not None else resolve_device(full.runtime)
    precision = precision or full.runtime.precision
    model = load_model_from_checkpoint(checkpoint).to(device).eval()
    prepared = PreparedDataset.open(cache_dir)
    frame = prepared.manifest.frame
    rows = frame[frame["split"] != "train"].reset_index(drop=True)
    feature = pick_feature(full.eval.feature, tuple(model.available_features))
    # an image in several test sets (VeRi-Wild) is embedded once
    unique_idx, inverse = np.unique(rows["cache_index"].to_numpy(np.int64), return_inverse=True)
    unique_rows = pd.DataFrame({"cache_index": unique_idx})
    batches = iter_eval_batches(prepared, unique_rows, full.eval.batch_size)
    transform = TestTransform(full.augment)
    feats = extract_features(model, batches, feature, full.eval.flip, device, precision, transform)
    feats = feats[inverse.reshape(-1)]
    dataset = prepared.manifest.dataset
    results, curves = evaluate_dataset_full(rows, feats, dataset, full.eval, seed=full.runtime.seed)
    if full.eval.rerank.enabled:  # beside the plain metrics as "rerank/<metric>", never instead of them
        extra, extra_curves = rerank_dataset(rows, feats, dataset, full.eval, full.runtime.seed)
        results = {s: {**m, **extra[s]} for s, m in results.items()}
        curves.update({f"{s} (re-ranked)": c for s, c in extra_curves.items()})
    files = write_reports(results, curves, rows, feats, prepared.images, dataset, full.eval, Path(out_dir),
                          model=model, transform=transform, device=device, seed=full.runtime.seed)
    warnings = [f"test set {ts!r}: no query has a valid match in the gallery: every positive shares the "
                "query's camera (junk) or the query id is absent from the gallery"
                for ts, m in results.items() if m.get("num_valid", 1) == 0]
    return {"results": results, "files": [str(p) for p in files], "feature": feature,
            "num_images": len(unique_idx), "warnings": warnings}


def write_reports(
    results: dict[str, dict[str, float]],
    curves: dict[str, np.ndarray],
    rows: pd.DataFrame,
    feats: np.ndarray,
    images: np.ndarray,
    dataset: str,
    cfg: EvalCfg,
    out_dir: Path,
    model: torch.nn.Module | None = None,
    transform: Any = None,
    device: torch.device | None = None,
    seed: int = 0,
    n_show: int = 6,
    top_k: int = 5,
) -> list[Path]:
    """Results table (md, csv), CMC plot, retrieval grid of the first test set, G / G_reid maps."""
    files = report.results_table(results, out_dir)
    files.append(report.plot_cmc(curves, out_dir))
    if not results:
        return files
    q, g = first_split(rows, dataset, next(iter(results)), seed)
    if len(q) and len(g):
        q, idx = q[:n_show], rows["cache_index"].to_numpy(np.int64)
        sims = feats[q] @ feats[g].T  # n_show x G
        ranked = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
        vids = rows["vid"].astype(str).to_numpy()
        files.append(report.retrieval_grid(images[idx[q]], images[idx[g]], ranked, vids[q], vids[g], out_dir))
        if model is not None and transform is not None:
            path = _maps_figure(model, transform, images[idx[q]], device or torch.device("cpu"), out_dir)
            files += [path] if path else []
    return files


def first_split(rows: pd.DataFrame, dataset: str, test_set: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Query / gallery row positions of ``test_set`` (VehicleID: its first seeded trial)."""
    in_set = rows["test_set"] == test_set
    if dataset == "vehicleid":
        pos = np.flatnonzero(in_set & (rows["split"] == "test"))
        rng = np.random.default_rng([seed, int(test_set) if test_set.isdigit() else 0, 0])
        q, g = vehicleid_split(rows["vid"].astype(str).to_numpy()[pos], rng)
        return pos[q], pos[g]
    return (np.flatnonzero(in_set & (rows["split"] == "query")),
            np.flatnonzero(in_set & (rows["split"] == "gallery")))


@torch.no_grad()
def _maps_figure(model: torch.nn.Module, transform: Any, images: np.ndarray, device: torch.device,
                 out_dir: Path) -> Path | None:
    x = transform(torch.from_numpy(np.ascontiguousarray(images)).to(device))  # B x 3 x H x W
    maps = model(x, return_maps=True).maps or {}
    if "g_map" not in maps:
        return None  # baseline / van: no G
    return report.activation_maps(np.asarray(images), maps, out_dir)
