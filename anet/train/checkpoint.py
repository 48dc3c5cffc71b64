"""Training checkpoints: what a stage writes, how a killed run resumes, how evaluation rebuilds a model.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True``::

    {"model", "optimizer", "scheduler", "scaler", "sampler", "rng" (one entry per DDP rank), "epoch",
     "config_digest", "stage", "num_ids", "attr_classes", "model_cfg",
     "records" (every completed epoch's {"epoch", "terms", "metrics"}: what the run log must hold)}

The records travel with the weights: a kill after ``last.pt`` is renamed into place but before the
epoch reaches ``log.jsonl`` (or MLflow) loses nothing, because the resume hands them to the
callbacks (:meth:`~anet.train.callbacks.Callback.on_resume`), which add what they lack.

Reading a checkpoint back into a model (evaluation, registration) lives in
:mod:`anet.model.checkpoint_io`, below this package, so that evaluation never imports training.

Example:
    >>> save_state(state, Path("runs/demo/stage_one/last.pt"), ctx)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anet.config import RuntimeCfg, StageCfg
from anet.errors import UserError
from anet.io import atomic_path, remove_stale_temps
from anet.model.checkpoint_io import read_checkpoint
from anet.train.runtime import (
    RuntimeContext,
    gather_objects,
    rng_state,
    seed_everything,
    set_rng_state,
    unwrap,
)


@dataclasses.dataclass(frozen=True)
class RunMeta:
    """Identity of a run: what must match for a resume, and what evaluation needs to rebuild the model."""

    digest: str
    stage: str
    num_ids: int
    attr_classes: dict[str, int]
    model_cfg: dict[str, Any]
    provenance: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. pretrained.source/.sha256


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint saves and restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: Any  # PKSampler
    generators: dict[str, torch.Generator]
    meta: RunMeta
    epoch: int = 0  # completed epochs of this stage
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per epoch: terms, metrics

    def keep_record(self, epoch: int, terms: dict[str, float], metrics: dict[str, float]) -> None:
        """Remember epoch ``epoch``'s terms and metrics (a repeated epoch replaces its record)."""
        self.records = [r for r in self.records if int(r["epoch"]) < epoch]
        self.records.append({"epoch": epoch, "terms": dict(terms), "metrics": dict(metrics)})


def run_meta(model: nn.Module, data: Any, stage: StageCfg, runtime: RuntimeCfg, config: Any | None,
             provenance: dict[str, str] | None = None) -> RunMeta:
    """The run's identity: the whole config's digest when given, else a digest of stage + runtime."""
    if config is not None:
        digest, model_cfg = config.digest(), config.model.model_dump(mode="json")
    else:
        text = json.dumps([stage.model_dump(mode="json"), runtime.model_dump(mode="json")], sort_keys=True)
        digest, model_cfg = hashlib.sha256(text.encode()).hexdigest()[:16], {}
    return RunMeta(digest, stage.name, int(data.num_ids), dict(data.attr_classes), model_cfg,
                   dict(provenance or {}))


def save_state(state: TrainState, path: Path, ctx: RuntimeContext) -> None:
    """Write ``path`` atomically (rank 0 only; every rank contributes its RNG state)."""
    rng = gather_objects(rng_state(state.generators), ctx)
    if not ctx.is_main:
        return
    meta = state.meta
    payload = {
        "model": unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "sampler": state.sampler.state_dict(),
        "rng": rng,
        "epoch": state.epoch,
        "config_digest": meta.digest,
        "provenance": meta.provenance,
        "stage": meta.stage,
        "num_ids": meta.num_ids,
        "attr_classes": meta.attr_classes,
        "model_cfg": meta.model_cfg,
        "records": [r for r in state.records if int(r["epoch"]) <= state.epoch],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def restore_state(state: TrainState, path: Path, resume: bool, seed: int, rank: int) -> None:
    """Continue from ``path`` when resuming a matching run; otherwise seed a fresh start.

    First, rank 0 deletes what killed writers left next to ``path`` (a kill -9 during a checkpoint
    write leaves a temp file as large as the checkpoint); a live writer's temp file is kept.
    """
    if rank == 0:
        remove_stale_temps(path.parent)
    if not (resume and path.is_file()):
        seed_everything(seed)
        return
    ckpt = read_checkpoint(path)
    if ckpt.get("stage") != state.meta.stage or ckpt.get("config_digest") != state.meta.digest:
        raise UserError(
            f"{path.parent}: holds a different run (stage {ckpt.get('stage')}, config {ckpt.get('config_digest')}) "
            f"than this one (stage {state.meta.stage}, config {state.meta.digest}); use another output "
            "directory, delete it, or start over (resume=False, `anet train --no-resume`)")
    unwrap(state.model).load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.sampler.load_state_dict(ckpt["sampler"])
    rngs = ckpt["rng"]
    if rank < len(rngs):
        set_rng_state(rngs[rank], state.generators)
    else:  # more ranks than when saved: a fresh, rank-specific stream
        seed_everything(seed + 1000 * int(ckpt["epoch"]))
    state.epoch = int(ckpt["epoch"])
    state.records = [r for r in ckpt.get("records", []) if int(r["epoch"]) <= state.epoch]  # older: none


def save_final(last_path: Path, ctx: RuntimeContext) -> Path:
    """Copy ``last.pt`` to ``final.pt`` atomically (rank 0) and return the final path."""
    final = last_path.with_name("final.pt")
    if ctx.is_main:
        with atomic_path(final) as tmp:
            shutil.copyfile(last_path, tmp)
    if ctx.distributed:
        torch.distributed.barrier()
    return final


def load_weights(model: nn.Module, path: Path) -> None:
    """Load only the model weights of a checkpoint (stage two's ``init_from``); strict key match."""
    ckpt = read_checkpoint(path)
    result = unwrap(model).load_state_dict(ckpt["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{path}: weights do not fit this model (missing {result.missing_keys[:3]}, unexpected "
                        f"{result.unexpected_keys[:3]}); was it trained with another model config?")
