"""Fit before run: a stage that cannot train on this GPU fails before its first epoch, in one line.

:func:`before_first_epoch` is what the engine calls once the model sits on its device: on CUDA it
probes one step at this rank's share of the global batch (:mod:`anet.train.probe`, nothing changed)
and, when that step plus Adam's state would not fit, raises :class:`DoesNotFit` naming the memory the
step needs, what the GPU has, and the GPU count or precision that would fit. It then settles
``runtime.precision: auto`` (:mod:`anet.train.precision`). :func:`check_divides` refuses a global
batch that does not split over the ranks, before any work::

    check_divides(cfg.data.p_ids, cfg.data.k_imgs, world_size=2 * 4, where="2 nodes x 4 GPUs")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anet.config import RuntimeCfg, StageCfg
from anet.errors import UserError
from anet.train.callbacks import Callback
from anet.train.data import TrainData
from anet.train.precision import choose_precision, save_choice
from anet.train.probe import Criterion, first_batch, probe_step, shrink, untouched
from anet.train.runtime import RuntimeContext, all_true

log = logging.getLogger(__name__)

GIB = 1024**3
HEADROOM = 0.92  # share of the GPU's memory one step may plan on (CUDA context, allocator fragmentation)


class DoesNotFit(UserError):
    """A stage's step does not fit the GPU (or its global batch does not divide over the ranks)."""


def check_divides(p_ids: int, k_imgs: int, world_size: int, where: str) -> None:
    """Every rank takes ``p_ids / world_size`` whole identities of each global batch: refuse the rest."""
    if world_size > 1 and p_ids % world_size:
        fits = [n for n in range(1, p_ids + 1) if p_ids % n == 0]
        raise DoesNotFit(f"data.p_ids={p_ids} x data.k_imgs={k_imgs} (the global batch) does not divide over "
                         f"{world_size} ranks ({where}): each rank takes whole identities; run on "
                         f"{', '.join(map(str, fits))} ranks or set data.p_ids to a multiple of {world_size}")


def before_first_epoch(model: nn.Module, criterion: Criterion, stage: StageCfg, data: TrainData,
                       runtime: RuntimeCfg, ctx: RuntimeContext, out_dir: Path, resume: bool,
                       callbacks: Sequence[Callback]) -> RuntimeCfg:
    """The runtime the stage trains with: fit checked (CUDA), ``precision: auto`` resolved and recorded."""
    check_divides(data.sampler.p, data.sampler.k, ctx.world_size, f"{ctx.world_size} processes")
    if _probes_memory(ctx.device):
        check_fit(model, criterion, stage, data, runtime, ctx)
    choice = choose_precision(model, criterion, data, runtime, ctx, out_dir, resume)
    save_choice(choice, out_dir, ctx)
    if ctx.is_main and runtime.precision != choice.precision:
        for cb in callbacks:
            cb.on_measured(stage.name, choice.params(), choice.metrics())
    return runtime.model_copy(update={"precision": choice.precision})


def _probes_memory(device: torch.device) -> bool:
    """Only a CUDA device has a memory ceiling worth probing (a CPU run swaps or is killed by the OS)."""
    return device.type == "cuda"


def check_fit(model: nn.Module, criterion: Criterion, stage: StageCfg, data: TrainData, runtime: RuntimeCfg,
              ctx: RuntimeContext) -> None:
    """One probe step at this rank's share; :class:`DoesNotFit` on every rank when it fails on any."""
    precision = "bf16" if runtime.precision == "auto" else runtime.precision  # auto may fall back to bf16
    with untouched(model, data):
        batch = first_batch(data)
    probe = _Probe(model, criterion, data, ctx.device, runtime.channels_last, _optimizer_bytes(model, stage))
    peak = probe.peak(batch, precision)
    message = None if peak is not None and peak <= probe.budget else _advice(probe, batch, precision, peak, ctx)
    message = message and f"{stage.name}: {message}"
    if not all_true(message is None, ctx):
        raise DoesNotFit(message or f"{stage.name}: one training step does not fit the GPU of another rank")
    log.info("%s: one step of %d images/GPU (%s) fits: ~%.1f GiB of %.1f GiB", stage.name, len(batch.labels),
             precision, (peak or 0) / GIB, probe.total / GIB)


class _Probe:
    """Peak memory of one step (plus Adam's state) at a given batch and precision; None when it OOMs."""

    def __init__(self, model: nn.Module, criterion: Criterion, data: TrainData, device: torch.device,
                 channels_last: bool, optimizer_bytes: int):
        self.model, self.criterion, self.data, self.device = model, criterion, data, device
        self.channels_last, self.optimizer_bytes = channels_last, optimizer_bytes
        self.total = int(torch.cuda.mem_get_info(device)[1])
        self.budget = int(self.total * HEADROOM)
        self.base = int(torch.cuda.memory_allocated(device))  # the weights, already on the GPU

    def peak(self, batch: Any, precision: str) -> int | None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with untouched(self.model, self.data):
                probe_step(self.model, self.criterion, self.data, batch, self.device, precision, self.channels_last)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None
        return int(torch.cuda.max_memory_allocated(self.device)) + self.optimizer_bytes

    def per_image(self, batch: Any, precision: str) -> float | None:
        """Bytes each image of the share adds, from the largest halved share that fits (None: not even 2)."""
        images = len(batch.labels) // 2
        while images >= 2:
            peak = self.peak(shrink(batch, images), precision)
            if peak is not None and peak <= self.budget:
                return max(peak - self.base - self.optimizer_bytes, 0) / images
            images //= 2
        return None

    def need(self, per_image: float, images: int) -> float:
        return self.base + self.optimizer_bytes + per_image * images


def _advice(probe: _Probe, batch: Any, precision: str, peak: int | None, ctx: RuntimeContext) -> str:
    """The one line: what the step needs, what the GPU has, what would fit."""
    p, k, share = probe.data.sampler.p, probe.data.sampler.k, len(batch.labels)
    name = torch.cuda.get_device_name(probe.device)
    head = (f"one training step does not fit the GPU: {share} images per GPU (data.p_ids={p} x data.k_imgs={k} "
            f"over {ctx.world_size} GPU(s), {precision})")
    per_image = probe.per_image(batch, precision)
    if per_image is None:
        return (f"{head} does not fit even at 2 images; the model and Adam's state take ~"
                f"{(probe.base + probe.optimizer_bytes) / GIB:.1f} GiB of the {name}'s {probe.total / GIB:.1f} GiB; "
                "use a GPU with more memory or a smaller model.depth")
    need = peak if peak is not None else probe.need(per_image, share)
    ways = []
    gpus = next((n for n in range(ctx.world_size + 1, p + 1)
                 if p % n == 0 and probe.need(per_image, p * k // n) <= probe.budget), None)
    if gpus:
        ways.append(f"on {gpus} GPUs in all ({p * k // gpus} images each; nodes x GPUs per node = {gpus})")
    if precision == "fp32":
        bf16 = probe.peak(batch, "bf16")
        if bf16 is not None and bf16 <= probe.budget:
            ways.append(f"with runtime.precision=bf16 (~{bf16 / GIB:.1f} GiB)")
    fix = " or ".join(ways) or "lower data.p_ids (a multiple of the GPU count) or data.image_size"
    return (f"{head} needs ~{need / GIB:.1f} GiB, the {name} has {probe.total / GIB:.1f} GiB "
            f"({HEADROOM:.0%} usable); it fits {fix}" if ways else
            f"{head} needs ~{need / GIB:.1f} GiB, the {name} has {probe.total / GIB:.1f} GiB; {fix}")


def _optimizer_bytes(model: nn.Module, stage: StageCfg) -> int:
    """Adam's state: exp_avg and exp_avg_sq (plus max_exp_avg_sq with AMSGrad) per trainable parameter."""
    slots = 3 if stage.amsgrad else 2
    return slots * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
