"""One training loop for both stages: stage one (L) and stage two (L', from stage one's weights).

The stages differ only by their :class:`~anet.config.StageCfg` (lr, epochs, ``freeze_f``,
``amelioration``) and by ``init_from``::

    data = build_train_data(prepared, cfg)
    one = train_stage(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, Path("runs/x/one"),
                      config=cfg)
    two = train_stage(model, Criterion(cfg.loss, amelioration=True), cfg.stage_two, data, cfg.runtime,
                      Path("runs/x/two"), init_from=one.checkpoint, config=cfg)

The engine sums the criterion's named terms, logs each by name (epoch mean) through callbacks,
writes ``last.pt`` atomically every ``checkpoint_every`` epochs and ``final.pt`` at the end, and
resumes a killed run from ``last.pt`` so that the result equals an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anet.config import ExperimentConfig, RuntimeCfg, StageCfg
from anet.errors import UserError
from anet.model import freeze_for_amelioration, set_train_mode
from anet.train.callbacks import Callback, ProgressCallback
from anet.train.checkpoint import (
    RunMeta,
    TrainState,
    load_weights,
    restore_state,
    run_meta,
    save_final,
    save_state,
)
from anet.train.data import TrainData, make_optimizer, make_scheduler
from anet.train.diagnostics import EpochDiagnostics
from anet.train.fit import before_first_epoch
from anet.train.runtime import (
    RuntimeContext,
    all_reduce_mean,
    all_true,
    autocast,
    broadcast_flag,
    check_precision,
    current_context,
    grad_scaler,
    resolve_device,
    set_deterministic,
    sync_buffers,
    wrap_ddp,
)

__all__ = ["StageResult", "TrainingDiverged", "to_fp32", "train_stage"]

EvalFn = Callable[[nn.Module], dict[str, float]]
RAW_PREFIX = "raw/"  # logged as train/raw/<term>: the term before its lambda


class TrainingDiverged(UserError):
    """A loss term became NaN or inf; the message names the term, the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class StageResult:
    """Outcome of :func:`train_stage`. ``epochs_run`` counts the stage's completed epochs (incl. resumed)."""

    checkpoint: Path
    epochs_run: int
    last_terms: dict[str, float]
    stopped: str | None = None  # "pruned" when an on_eval callback asked to stop
    last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Loop:
    """Everything one stage's loop touches (keeps the helpers' signatures short)."""

    state: TrainState
    net: nn.Module  # the model, DDP-wrapped under torchrun
    criterion: Callable[..., dict[str, torch.Tensor]]
    stage: StageCfg
    data: TrainData
    runtime: RuntimeCfg
    ctx: RuntimeContext
    callbacks: list[Callback]
    last_path: Path
    saved_epoch: int = -1


def train_stage(model: nn.Module, criterion: Callable[..., dict[str, torch.Tensor]], stage: StageCfg,
                data: TrainData, runtime: RuntimeCfg, out_dir: str | Path, init_from: str | Path | None = None,
                resume: bool = True, callbacks: Sequence[Callback] = (), eval_fn: EvalFn | None = None,
                *, config: ExperimentConfig | None = None, progress: bool = True,
                provenance: dict[str, str] | None = None) -> StageResult:
    """Train ``model`` for one stage; returns where ``final.pt`` is and the last epoch's terms.

    Args:
        init_from: checkpoint whose model weights start this stage (stage two: stage one's final.pt).
        resume: continue ``out_dir/last.pt`` when it holds this stage with the same config digest.
        eval_fn: ``eval_fn(model) -> metrics``, run every ``stage.eval_every`` epochs; feeds ``on_eval``.
        config: the whole experiment config; its digest and model section go into every checkpoint.

    Example:
        >>> result = train_stage(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime,
        ...                      Path("runs/demo/stage_one"), config=cfg)
    """
    loop = _setup(model, criterion, stage, data, runtime, Path(out_dir), init_from, resume, callbacks,
                  progress, run_meta(model, data, stage, runtime, config, provenance))
    start_epoch = loop.state.epoch
    for cb in loop.callbacks:
        cb.on_stage_start(stage.name, start_epoch + 1, stage.epochs, len(data.sampler))
        if loop.state.records:  # resumed: the log may lack what a kill after the checkpoint cut off
            cb.on_resume(stage.name, loop.state.records)
    terms, last_metrics, stopped = {}, {}, None
    for epoch in range(start_epoch, stage.epochs):
        terms = _train_one_epoch(loop, epoch)
        due, metrics = _maybe_eval(loop, epoch, eval_fn)
        last_metrics = metrics if due else last_metrics
        loop.state.keep_record(epoch + 1, terms, metrics if due else {})  # saved with the checkpoint
        if (epoch + 1) % stage.checkpoint_every == 0 or epoch + 1 == stage.epochs:
            _checkpoint(loop, epoch + 1)
        for cb in loop.callbacks:
            cb.on_epoch_end(stage.name, epoch + 1, terms)
        if due and broadcast_flag(any([cb.on_eval(stage.name, epoch + 1, metrics) for cb in loop.callbacks]),
                                  loop.ctx):
            stopped = "pruned"
            break
    _checkpoint(loop, loop.state.epoch)
    final = save_final(loop.last_path, loop.ctx)
    result = StageResult(final, loop.state.epoch, terms, stopped, last_metrics)
    for cb in loop.callbacks:
        cb.on_stage_end(stage.name, result)
    return result


def _setup(model: nn.Module, criterion: Callable[..., dict[str, torch.Tensor]], stage: StageCfg,
           data: TrainData, runtime: RuntimeCfg, out_dir: Path, init_from: str | Path | None, resume: bool,
           callbacks: Sequence[Callback], progress: bool, meta: RunMeta) -> _Loop:
    """Device, weights, freezing, optimiser, resume; returns the ready loop."""
    ctx = current_context(resolve_device(runtime, int(os.environ.get("LOCAL_RANK", "0"))))
    check_precision(ctx.device, runtime.precision)
    set_deterministic(runtime.deterministic)
    if runtime.num_threads > 0:
        torch.set_num_threads(runtime.num_threads)
    model.to(ctx.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    _augment_to(data.augment, ctx.device)
    if init_from is not None:
        load_weights(model, Path(init_from))
    if stage.freeze_f:
        freeze_for_amelioration(model)
    # fit checked on CUDA, precision: auto measured; nothing is written before this passes
    runtime = before_first_epoch(model, criterion, stage, data, runtime, ctx, out_dir, resume, callbacks)
    optimizer = make_optimizer(model, stage)
    state = TrainState(model, optimizer, make_scheduler(optimizer, stage, len(data.sampler)),
                       grad_scaler(ctx.device, runtime.precision), data.sampler, data.generators(), meta)
    restore_state(state, out_dir / "last.pt", resume, runtime.seed + ctx.rank, ctx.rank)
    cbs = ([ProgressCallback()] if progress else []) + list(callbacks) if ctx.is_main else []
    return _Loop(state, wrap_ddp(model, ctx, runtime.sync_bn), criterion, stage, data, runtime, ctx, cbs, out_dir / "last.pt",
                 saved_epoch=state.epoch if state.epoch > 0 else -1)


def _augment_to(augment: nn.Module, device: torch.device) -> None:
    """Move the augmentation's buffers; calls nn.Module._apply directly because BatchAugment defines its
    own ``_apply(images)``, which shadows the one ``Module.to`` relies on."""
    if device.type != "cpu":
        nn.Module._apply(augment, lambda t: t.to(device))


def _train_one_epoch(loop: _Loop, epoch: int) -> dict[str, float]:
    """One pass over the sampler's batches; returns each term's mean over the epoch plus ``lr``."""
    state, stage = loop.state, loop.stage
    set_train_mode(loop.net)
    loop.data.sampler.set_epoch(epoch)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    diagnostics = EpochDiagnostics.begin(loop.net, stage)  # stage two: what AC does (anet.train.diagnostics)
    for step, batch in enumerate(loop.data.batches, start=1):
        terms = _forward_terms(loop, batch)
        values = _checked_values(loop, terms, epoch, step)
        loss = sum(terms.values())
        diagnostics.on_step(step, terms, loss)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        for name, value in {**values, **_raw_values(terms)}.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
        for cb in loop.callbacks:
            cb.on_step_end(stage.name, epoch + 1, step, sum(values.values()))
    sync_buffers(loop.net, loop.ctx)
    means = all_reduce_mean({n: sums[n] / counts[n] for n in sums}, loop.ctx)
    means["loss"] = sum(v for n, v in means.items() if not n.startswith(RAW_PREFIX))
    means["lr"] = state.optimizer.param_groups[0]["lr"]
    means.update(diagnostics.finish(loop.ctx))  # after the loss sum: diagnostics are never summed
    state.epoch = epoch + 1
    return means


def _raw_values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """``raw/<term>``: a criterion's unweighted values (logged beside the weighted ones, never summed)."""
    raw = getattr(terms, "raw", {})
    return {f"{RAW_PREFIX}{name}": float(value) for name, value in raw.items()}


def _forward_terms(loop: _Loop, batch: Any) -> dict[str, torch.Tensor]:
    """Augment on the device, forward under autocast, criterion in fp32."""
    device = loop.ctx.device
    images = loop.data.augment(batch.images.to(device, non_blocking=True))  # B x 3 x H x W float
    if loop.runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    ids = batch.labels.to(device, non_blocking=True)
    attrs = {name: value.to(device, non_blocking=True) for name, value in batch.attrs.items()}
    with autocast(device, loop.runtime.precision):
        out = loop.net(images)
    if loop.runtime.precision != "fp32":
        out = to_fp32(out)
    return loop.criterion(out, ids, attrs)


def to_fp32(value: Any) -> Any:  # public: the benchmark times the same step
    """Cast every floating tensor inside a (frozen) dataclass / dict / tuple to float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_fp32(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_fp32(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: to_fp32(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def _checked_values(loop: _Loop, terms: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
    """Term values as floats; a NaN/inf on any rank stops every rank with TrainingDiverged."""
    if not terms:
        raise UserError(f"{loop.stage.name}: the criterion returned no loss terms")
    packed = torch.stack([t.detach().float().reshape(()) for t in terms.values()])  # n_terms
    values = dict(zip(terms, packed.tolist(), strict=True))
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if all_true(not bad, loop.ctx):
        return values
    last = loop.last_path if loop.saved_epoch > 0 and loop.last_path.is_file() else None
    where = f"{loop.stage.name} epoch {epoch + 1} step {step}"
    what = f"loss term {bad[0]} is {values[bad[0]]}" if bad else "a loss term is not finite on another rank"
    raise TrainingDiverged(f"{where}: {what}; last good checkpoint: {last or 'none (diverged before the first)'}")


def _maybe_eval(loop: _Loop, epoch: int, eval_fn: EvalFn | None) -> tuple[bool, dict[str, float]]:
    """Run ``eval_fn`` on rank 0 every ``eval_every`` epochs; returns (was it due, metrics)."""
    every = loop.stage.eval_every
    if eval_fn is None or not every or (epoch + 1) % every:
        return False, {}
    metrics = eval_fn(loop.state.model) if loop.ctx.is_main else {}
    set_train_mode(loop.net)
    return True, {k: float(v) for k, v in metrics.items()}


def _checkpoint(loop: _Loop, epoch: int) -> None:
    """Write ``last.pt`` for ``epoch`` completed epochs (once per epoch)."""
    if loop.saved_epoch == epoch:
        return
    save_state(loop.state, loop.last_path, loop.ctx)
    loop.saved_epoch = epoch
