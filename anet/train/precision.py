"""``runtime.precision: auto``: time fp32 and bf16 on the real model and batch at start, keep the faster.

Which one wins depends on the CPU (bf16 autocast was 2.4-2.9x fp32 on an AMX machine and 0.7-0.9x on
an AVX2 one), so it is measured, not guessed: ``WARMUP_STEPS`` untimed then ``TIMED_STEPS`` timed probe
steps per format (:mod:`anet.train.probe`: forward + backward, no optimiser step, nothing changed). The
choice and both timings go to the log and, through the callbacks' ``on_measured``, to the step's MLflow
run. Under DDP every rank measures and rank 0's choice is used by all. A resumed stage keeps the
choice it started with (``precision.json`` beside ``last.pt``), so a resume trains like an
uninterrupted run::

    choice = choose_precision(model, criterion, data, runtime, ctx, out_dir, resume=True)
    choice.precision            # "fp32" or "bf16"; the configured value when it is not "auto"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from anet.config import RuntimeCfg
from anet.io import atomic_write_text
from anet.train.data import TrainData
from anet.train.probe import Criterion, first_batch, probe_step, untouched
from anet.train.runtime import RuntimeContext, broadcast_flag

log = logging.getLogger(__name__)

AUTO = "auto"
CANDIDATES = ("fp32", "bf16")
WARMUP_STEPS = 1
TIMED_STEPS = 3
CHOICE_FILE = "precision.json"


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """The precision a stage trains in, and how it was decided (``measured``, ``resumed``, ``configured``)."""

    precision: str
    source: str
    seconds_per_step: dict[str, float] = dataclasses.field(default_factory=dict)  # per candidate; inf: OOM

    def params(self) -> dict[str, str]:
        """MLflow params of the step run."""
        return {"runtime.precision_used": self.precision, "runtime.precision_source": self.source}

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: seconds per probe step of each measured format (finite ones only)."""
        return {f"runtime/precision_auto/{name}_s_per_step": value
                for name, value in self.seconds_per_step.items() if math.isfinite(value)}


def choose_precision(model: nn.Module, criterion: Criterion, data: TrainData, runtime: RuntimeCfg,
                     ctx: RuntimeContext, out_dir: Path, resume: bool) -> PrecisionChoice:
    """The configured precision, or for ``auto`` the faster of fp32 and bf16 (rank 0's measurement)."""
    if runtime.precision != AUTO:
        return PrecisionChoice(runtime.precision, "configured")
    saved = _saved_choice(out_dir) if resume and (out_dir / "last.pt").is_file() else None
    if saved is not None:
        choice = PrecisionChoice(saved, "resumed")
    else:
        timings = {name: time_precision(model, criterion, data, ctx.device, name, runtime.channels_last)
                   for name in CANDIDATES}
        if not any(math.isfinite(t) for t in timings.values()):
            raise RuntimeError("runtime.precision=auto: neither fp32 nor bf16 could run one step")
        choice = PrecisionChoice(min(timings, key=lambda n: timings[n]), "measured", timings)
    bf16 = broadcast_flag(choice.precision == "bf16", ctx)  # every rank trains in rank 0's format
    choice = dataclasses.replace(choice, precision="bf16" if bf16 else "fp32")
    _log_choice(choice)
    return choice


def time_precision(model: nn.Module, criterion: Criterion, data: TrainData, device: torch.device,
                   precision: str, channels_last: bool, warmup: int = WARMUP_STEPS,
                   steps: int = TIMED_STEPS) -> float:
    """Median seconds of ``steps`` probe steps on the first batch after ``warmup``; inf when it does not fit."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return math.inf
    seconds = []
    try:
        with untouched(model, data):
            batch = first_batch(data)
            for i in range(warmup + steps):
                start = time.perf_counter()
                probe_step(model, criterion, data, batch, device, precision, channels_last)
                if i >= warmup:
                    seconds.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError:
        log.warning("runtime.precision=auto: one %s step does not fit the GPU; not a candidate", precision)
        return math.inf
    return sorted(seconds)[len(seconds) // 2]


def save_choice(choice: PrecisionChoice, out_dir: Path, ctx: RuntimeContext) -> None:
    """Keep a measured choice beside ``last.pt`` (rank 0) so a resumed stage trains in the same format."""
    if choice.source == "measured" and ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CHOICE_FILE, json.dumps({"precision": choice.precision,
                                                             "seconds_per_step": choice.seconds_per_step}))


def _saved_choice(out_dir: Path) -> str | None:
    try:
        value = json.loads((out_dir / CHOICE_FILE).read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    return value if value in CANDIDATES else None


def _log_choice(choice: PrecisionChoice) -> None:
    if choice.source == "measured":
        shown = ", ".join(f"{n} {v * 1000:.1f} ms" if math.isfinite(v) else f"{n} does not fit"
                          for n, v in choice.seconds_per_step.items())
        log.info("runtime.precision=auto: training in %s (one step: %s; median of %d after %d warm-up)",
                 choice.precision, shown, TIMED_STEPS, WARMUP_STEPS)
    elif choice.source == "resumed":
        log.info("runtime.precision=auto: resuming in %s, the format this stage started with", choice.precision)
