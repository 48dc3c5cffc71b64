"""Config -> prepared data -> model -> one trained stage, as plain functions (CLI and pipeline steps).

Example:
    >>> cfg = load_config("smoke")
    >>> prepared = prepare_from_config(cfg)
    >>> one = run_stage(cfg, prepared.cache_dir, "stage_one", Path("runs/demo/stage_one"))
    >>> two = run_stage(cfg, prepared.cache_dir, "stage_two", Path("runs/demo/stage_two"),
    ...                 init_from=one.checkpoint)
    >>> model = load_model_from_checkpoint(two.checkpoint)

Under ``torchrun --nproc_per_node N`` the same calls train with DDP (one share of batches per rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from anet.callbacks import Callback
from anet.config import ExperimentConfig, StageCfg
from anet.engine import EvalFn, StageResult, build_train_data, train_stage
from anet.errors import UserError
from anet.runtime import main_first, setup_runtime

StageName = Literal["stage_one", "stage_two"]
STAGES: tuple[str, ...] = ("stage_one", "stage_two")


def stage_cfg(cfg: ExperimentConfig, stage_name: str) -> StageCfg:
    """``cfg.stage_one`` or ``cfg.stage_two`` by name."""
    if stage_name not in STAGES:
        raise UserError(f"unknown stage {stage_name!r}; expected one of {', '.join(STAGES)}")
    return getattr(cfg, stage_name)


def prepare_from_config(cfg: ExperimentConfig, progress: bool = True) -> Any:
    """Generate (synthetic) or read the dataset named by ``cfg.data`` and prepare its cache.

    Returns an ``anet.data.cache.PreparedDataset``; a rerun on unchanged data reuses the cache.
    Under DDP rank 0 prepares first and the others then find the finished cache.
    """
    from anet.data.cache import prepare_dataset

    ctx = setup_runtime(cfg.runtime)
    with main_first(ctx):
        if cfg.data.dataset == "synthetic":
            from anet.data.synthetic import generate_synthetic

            manifest = generate_synthetic(cfg.data.synthetic, Path(cfg.data.root))
        else:
            from anet.data.readers import read_dataset

            manifest = read_dataset(cfg.data.dataset, cfg.data.root)
        return prepare_dataset(manifest, Path(cfg.data.cache_dir), tuple(cfg.data.image_size),
                               cfg.data.quarantine_max_fraction, progress=progress and ctx.is_main)


def build_model_for(cfg: ExperimentConfig, prepared: Any, with_pretrained: bool = True) -> nn.Module:
    """The configured ANet variant sized for ``prepared`` (train identities, configured attributes)."""
    from anet.model import build_model

    classes = prepared.manifest.attr_classes()
    missing = [a for a in cfg.data.attributes if a not in classes]
    if missing:
        raise UserError(f"data.attributes: {missing} not in the dataset (it has {', '.join(classes) or 'none'})")
    model_cfg = cfg.model if with_pretrained else cfg.model.model_copy(update={"pretrained": None})
    return build_model(model_cfg, prepared.manifest.num_train_ids(), {a: classes[a] for a in cfg.data.attributes})


def run_stage(cfg: ExperimentConfig, prepared_dir: str | Path, stage_name: str, out_dir: str | Path,
              init_from: str | Path | None = None, callbacks: Sequence[Callback] = (),
              eval_fn: EvalFn | None = None, resume: bool = True, progress: bool = True) -> StageResult:
    """Train one stage of ``cfg`` on the prepared cache in ``prepared_dir``; checkpoints go to ``out_dir``.

    ``init_from`` (stage two: stage one's ``final.pt``) provides the starting weights; a stage that
    freezes the f branch without it (and without ``model.pretrained``) is refused.
    """
    from anet.data.cache import PreparedDataset
    from anet.losses import Criterion

    stage = stage_cfg(cfg, stage_name)
    if stage.freeze_f and init_from is None and not cfg.model.pretrained:
        raise UserError(f"{stage_name}.freeze_f=true freezes a randomly initialised backbone; pass the stage-one "
                        "checkpoint as init_from (anet train --stage two --init-from runs/NAME/stage_one/final.pt)")
    ctx = setup_runtime(cfg.runtime)
    prepared = PreparedDataset.open(prepared_dir)
    data = build_train_data(prepared, cfg, ctx.rank, ctx.world_size)
    model = build_model_for(cfg, prepared, with_pretrained=init_from is None)
    criterion = Criterion(cfg.loss, amelioration=stage.amelioration)
    return train_stage(model, criterion, stage, data, cfg.runtime, Path(out_dir), init_from=init_from,
                       resume=resume, callbacks=callbacks, eval_fn=eval_fn, config=cfg, progress=progress)


def extract_split(model: nn.Module, prepared: Any, rows: Any, cfg: ExperimentConfig, device: torch.device
                  ) -> np.ndarray:
    """L2-normalised ``cfg.eval.feature`` vectors (N x D, float32) for ``rows`` of the prepared cache."""
    from anet.data.augment import TestTransform
    from anet.data.loader import iter_eval_batches
    from anet.evaluation.features import extract_features

    transform = TestTransform(cfg.augment, channels_last=cfg.runtime.channels_last)
    batches = iter_eval_batches(prepared, rows, cfg.eval.batch_size)
    return extract_features(model, batches, cfg.eval.feature, cfg.eval.flip, device, cfg.runtime.precision,
                            transform)


def make_eval_fn(cfg: ExperimentConfig, prepared: Any) -> Callable[[nn.Module], dict[str, float]]:
    """``eval_fn(model) -> {"eval/<test_set>/<metric>": value}`` for :func:`run_stage` / ``train_stage``.

    Features of every non-train row are extracted once per call and scored with the dataset's
    protocol (``anet.evaluation.protocols.evaluate_dataset``).
    """

    def eval_fn(model: nn.Module) -> dict[str, float]:
        from anet.evaluation.protocols import evaluate_dataset

        device = next(model.parameters()).device
        frame = prepared.manifest.frame
        rows = frame[frame["split"] != "train"].reset_index(drop=True)
        feats = extract_split(model, prepared, rows, cfg, device)  # restores the model's mode
        results = evaluate_dataset(rows, feats, dataset=prepared.manifest.dataset, cfg=cfg.eval)
        return {f"eval/{split}/{name}": float(v) for split, metrics in results.items() for name, v in metrics.items()}

    return eval_fn
