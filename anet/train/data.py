"""What a training stage consumes, and how it optimises: the sampler, batches and augmentation of one
rank, the attribute classes, the optimiser and the per-step learning-rate schedule.

Example:
    >>> data = build_train_data(PreparedDataset.open(cache_dir), cfg)
    >>> optimizer = make_optimizer(model, cfg.stage_one)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from anet.config import ExperimentConfig, StageCfg
from anet.data.augment import BatchAugment
from anet.data.fastreid_augment import FastReIDAugment, FastReIDAugmentSettings
from anet.data.loader import TrainBatches
from anet.data.sampler import PKSampler
from anet.errors import UserError
from anet.train import solver

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainData:
    """What the loop consumes: the PK sampler, the batch iterable over it, the device augmentation."""

    sampler: PKSampler
    batches: Iterable[Any]  # anet.data.loader.TrainBatches -> Batch
    augment: nn.Module  # anet.data.augment.BatchAugment: uint8 B x H x W x 3 -> float B x 3 x H x W
    attributes: tuple[str, ...]
    num_ids: int
    attr_classes: dict[str, int]

    def generators(self) -> dict[str, torch.Generator]:
        """Private RNGs whose state a checkpoint must carry (augmentation's, when it has one)."""
        gen = getattr(self.augment, "generator", None)
        return {"augment": gen} if isinstance(gen, torch.Generator) else {}


def build_train_data(prepared: Any, cfg: ExperimentConfig, rank: int = 0, world_size: int = 1) -> TrainData:
    """Sampler + batches + augmentation for ``prepared`` (a PreparedDataset), this rank's share.

    Example:
        >>> data = build_train_data(PreparedDataset.open(cache_dir), cfg)
    """
    train = prepared.train_rows()
    sampler = PKSampler(train["label"].to_numpy(), p=cfg.data.p_ids, k=cfg.data.k_imgs, seed=cfg.runtime.seed,
                        rank=rank, world_size=world_size)
    log.info("train data: %d images of %d ids, P x K = %d x %d per step (global batch): %d steps per epoch",
             len(train), train["label"].nunique(), cfg.data.p_ids, cfg.data.k_imgs, len(sampler))
    attributes = tuple(cfg.data.attributes)
    return TrainData(
        sampler=sampler,
        batches=TrainBatches(prepared, sampler, attributes, pin_memory=torch.cuda.is_available()),
        augment=build_augment(cfg, rank),
        attributes=attributes,
        num_ids=prepared.manifest.num_train_ids(),
        attr_classes=attribute_classes(prepared, attributes),
    )


def build_augment(cfg: ExperimentConfig, rank: int = 0) -> nn.Module:
    """``augment.kind``'s training augmentation: ANet's BatchAugment or FastReID's transforms (seeded per rank)."""
    a = cfg.augment
    if a.kind == "anet":
        return BatchAugment(a, channels_last=cfg.runtime.channels_last)
    settings = FastReIDAugmentSettings(
        autoaug_p=a.autoaug_p, pad=a.pad, flip_p=a.flip_p, cj_p=a.cj_p, cj_brightness=a.cj[0], cj_contrast=a.cj[1],
        cj_saturation=a.cj[2], cj_hue=a.cj[3], erase_p=a.erase_p, erase_area=a.erase_area)
    return FastReIDAugment(settings, a.mean, a.std, generator=torch.Generator().manual_seed(cfg.runtime.seed + rank))


def attribute_classes(prepared: Any, attributes: Sequence[str]) -> dict[str, int]:
    """``{attribute: number of classes}`` for the configured attributes; one line when one is missing."""
    all_classes = prepared.manifest.attr_classes()
    missing = [a for a in attributes if a not in all_classes]
    if missing:
        raise UserError(f"data.attributes: {missing} not in the dataset (it has {', '.join(all_classes) or 'none'})")
    return {a: all_classes[a] for a in attributes}


def make_optimizer(model: nn.Module, stage: StageCfg) -> torch.optim.Optimizer:
    """Adam (AMSGrad per ``stage.amsgrad``) over the parameters that require a gradient.

    The fused implementation: on CPU the default per-tensor loop costs as much as the backward pass of the
    smoke model.
    """
    if stage.solver.kind == "fastreid":
        return _fastreid_optimizer(model, stage)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"{stage.name}: no trainable parameters (everything is frozen)")
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)  # one kernel
    return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay, amsgrad=stage.amsgrad,
                            fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, stage: StageCfg, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup over ``warmup_epochs``, x ``gamma`` at each milestone epoch
    (``solver.kind=fastreid``: FastReID's warmup + delayed cosine / multi-step, :mod:`anet.train.solver`)."""
    sv = stage.solver
    if sv.kind == "fastreid":
        return solver.build_scheduler(optimizer, solver.SolverSchedule(
            sched=sv.sched, max_epoch=stage.epochs, warmup_iters=sv.warmup_iters, warmup_factor=sv.warmup_factor,
            delay_epochs=sv.delay_epochs, eta_min=sv.eta_min, steps=stage.milestones, gamma=stage.gamma),
            steps_per_epoch)
    warmup_steps = stage.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        epoch = step // max(steps_per_epoch, 1)
        decay = stage.gamma ** sum(epoch >= m for m in stage.milestones)
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return decay * warm

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)




def _fastreid_optimizer(model: nn.Module, stage: StageCfg) -> torch.optim.Optimizer:
    """FastReID's parameter groups and SGD/Adam; the backbone frozen for ``solver.freeze_iters`` steps."""
    sv = stage.solver
    wd_norm = stage.weight_decay if sv.weight_decay_norm is None else sv.weight_decay_norm
    frozen = ("backbone",) if sv.freeze_iters > 0 else ()
    try:
        groups = solver.param_groups(model, base_lr=stage.lr, weight_decay=stage.weight_decay, weight_decay_norm=wd_norm,
                                     bias_lr_factor=sv.bias_lr_factor, weight_decay_bias=sv.weight_decay_bias,
                                     freeze_prefixes=frozen)
    except UserError as exc:
        raise UserError(f"{stage.name}: {exc}") from None
    optimizer = solver.build_optimizer("SGD" if sv.optimizer == "sgd" else "Adam", groups, momentum=sv.momentum)
    solver.FreezeFirstIters(model, optimizer, frozen, sv.freeze_iters).follow_forward()
    return optimizer
