"""In-training evaluation: the ``eval_fn`` the engine calls every ``<stage>.eval_every`` epochs.

The engine only knows ``eval_fn(model) -> {name: value}``; this module builds one from a config and
a prepared cache, so training never imports evaluation (the caller passes the function in).

Example:
    >>> eval_fn = make_eval_fn(cfg, PreparedDataset.open(cache_dir))
    >>> run_stage(cfg, cache_dir, "stage_one", out, eval_fn=eval_fn)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from anet.config import ExperimentConfig
from anet.data.augment import TestTransform
from anet.data.cache import PreparedDataset
from anet.data.loader import iter_eval_batches
from anet.evaluation.features import extract_features
from anet.evaluation.protocols import evaluate_dataset


def extract_split(model: nn.Module, prepared: PreparedDataset, rows: pd.DataFrame, cfg: ExperimentConfig,
                  device: torch.device) -> np.ndarray:
    """L2-normalised ``cfg.eval.feature`` vectors (N x D, float32) for ``rows`` of the prepared cache."""
    transform = TestTransform(cfg.augment, channels_last=cfg.runtime.channels_last)
    batches = iter_eval_batches(prepared, rows, cfg.eval.batch_size)
    return extract_features(model, batches, cfg.eval.feature, cfg.eval.flip, device, cfg.runtime.precision,
                            transform)


def make_eval_fn(cfg: ExperimentConfig, prepared: PreparedDataset) -> Callable[[nn.Module], dict[str, float]]:
    """``eval_fn(model) -> {"eval/<test_set>/<metric>": value}`` for ``run_stage`` / ``train_stage``.

    Only the split model selection reads is scored (the one ``registry.primary_metric`` names:
    ``val`` by default), so pruning never sees the test split and the epoch stays cheap.
    """
    split = cfg.registry.primary_metric.split("/")[1]

    def eval_fn(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        frame = prepared.manifest.frame
        rows = frame[(frame["split"] != "train") & (frame["test_set"] == split)].reset_index(drop=True)
        feats = extract_split(model, prepared, rows, cfg, device)  # restores the model's mode
        results: dict[str, Any] = evaluate_dataset(rows, feats, dataset=prepared.manifest.dataset, cfg=cfg.eval)
        return {f"eval/{split}/{name}": float(v) for split, metrics in results.items() for name, v in metrics.items()}

    return eval_fn
