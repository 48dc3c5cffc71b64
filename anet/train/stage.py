"""Config + prepared cache -> model -> one trained stage: the plain entry point of the CLI and the steps.

Example:
    >>> cfg = load_config("smoke")
    >>> prepared = prepare_from_config(cfg)                       # anet.steps.prepare
    >>> one = run_stage(cfg, prepared.cache_dir, "stage_one", Path("runs/demo/stage_one"))
    >>> two = run_stage(cfg, prepared.cache_dir, "stage_two", Path("runs/demo/stage_two"),
    ...                 init_from=one.checkpoint)

Under ``torchrun --nproc_per_node N`` the same calls train with DDP (one share of batches per rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import nn

from anet.config import ExperimentConfig, StageCfg
from anet.data.cache import PreparedDataset
from anet.errors import UserError
from anet.losses.fastreid import build_criterion
from anet.model import build_model
from anet.train.callbacks import Callback
from anet.train.data import attribute_classes, build_train_data
from anet.train.engine import EvalFn, StageResult, train_stage
from anet.train.runtime import setup_runtime

StageName = Literal["stage_one", "stage_two"]
STAGES: tuple[str, ...] = ("stage_one", "stage_two")


def stage_cfg(cfg: ExperimentConfig, stage_name: str) -> StageCfg:
    """``cfg.stage_one`` or ``cfg.stage_two`` by name."""
    if stage_name not in STAGES:
        raise UserError(f"unknown stage {stage_name!r}; expected one of {', '.join(STAGES)}")
    return getattr(cfg, stage_name)


def build_model_for(cfg: ExperimentConfig, prepared: Any, pretrained: str | Path | None = None) -> nn.Module:
    """The configured ANet variant sized for ``prepared`` (train identities, configured attributes).

    ``pretrained`` is a local weight file for the backbone (resolved beforehand from
    ``model.pretrained``); None builds from scratch (or loads weights from a checkpoint afterwards).
    """
    classes = attribute_classes(prepared, cfg.data.attributes)
    return build_model(cfg.model, prepared.manifest.num_train_ids(), classes, pretrained=pretrained)


def check_pretrained_given(cfg: ExperimentConfig, init_from: str | Path | None, pretrained: str | Path | None
                           ) -> None:
    """Refuse a stage that would start from weights other than the ones ``cfg.model.pretrained`` names."""
    if init_from is not None:
        return  # the checkpoint provides every weight
    if cfg.model.pretrained is not None and pretrained is None:
        raise UserError(f"model.pretrained={cfg.model.pretrained} names backbone weights but none were passed: "
                        "resolve them first (anet.mlops.storage.pretrained.resolve_model_weights(cfg.model)) and pass "
                        "pretrained=weights.path, or set model.pretrained=none to train from scratch")
    if cfg.model.pretrained is None and pretrained is not None:
        raise UserError(f"pretrained={pretrained} was passed but model.pretrained is none: set model.pretrained "
                        "to that file, so that the config (and its digest) says what the run starts from")


def run_stage(cfg: ExperimentConfig, prepared_dir: str | Path, stage_name: str, out_dir: str | Path,
              init_from: str | Path | None = None, callbacks: Sequence[Callback] = (),
              eval_fn: EvalFn | None = None, resume: bool = True, progress: bool = True,
              pretrained: str | Path | None = None, provenance: dict[str, str] | None = None) -> StageResult:
    """Train one stage of ``cfg`` on the prepared cache in ``prepared_dir``; checkpoints go to ``out_dir``.

    ``init_from`` (stage two: stage one's ``final.pt``) provides the starting weights, else
    ``pretrained`` (a local backbone weight file); a stage that freezes the f branch with neither
    is refused. ``provenance`` (e.g. the weights' source and sha256) is stored in every checkpoint.
    Without ``init_from``, ``pretrained`` must be given exactly when ``cfg.model.pretrained`` names
    weights: this room cannot download or hash-check them (``anet.mlops.storage.pretrained`` sits above it), so
    a config that names weights never trains from random ones silently.
    """
    stage = stage_cfg(cfg, stage_name)
    check_pretrained_given(cfg, init_from, pretrained)
    if stage.freeze_f and init_from is None and pretrained is None:
        raise UserError(f"{stage_name}.freeze_f=true freezes a randomly initialised backbone; pass the stage-one "
                        "checkpoint as init_from (anet train --stage two --init-from runs/NAME/stage_one/final.pt)")
    ctx = setup_runtime(cfg.runtime)
    prepared = PreparedDataset.open(prepared_dir)
    data = build_train_data(prepared, cfg, ctx.rank, ctx.world_size)
    model = build_model_for(cfg, prepared, pretrained=pretrained if init_from is None else None)
    criterion = build_criterion(cfg.loss, cfg.model, amelioration=stage.amelioration)
    return train_stage(model, criterion, stage, data, cfg.runtime, Path(out_dir), init_from=init_from,
                       resume=resume, callbacks=callbacks, eval_fn=eval_fn, config=cfg, progress=progress,
                       provenance=provenance)
