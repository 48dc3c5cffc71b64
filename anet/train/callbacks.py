"""Hooks the training engine calls; tracking, pruning and progress plug in here, not in the engine.

Subclass :class:`Callback` and override what you need (every method is a no-op by default)::

    class PrintMAP(Callback):
        def on_eval(self, stage_name, epoch, metrics):
            print(stage_name, epoch, metrics.get("eval/test/mAP"))
            return False                      # True would stop the stage (e.g. pruned by Optuna)

    train_stage(..., callbacks=[PrintMAP(), JsonlLogCallback(out_dir / "log.jsonl")])

Epochs are 1-based in every hook. Callbacks run on rank 0 only under DDP.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from anet.io import atomic_write_text

log = logging.getLogger(__name__)


class Callback:
    """Base class: every hook is optional."""

    def on_stage_start(self, stage_name: str, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called once before the first epoch; ``start_epoch`` > 1 when resuming."""

    def on_resume(self, stage_name: str, records: list[dict[str, Any]]) -> None:
        """Called after ``on_stage_start`` when a stage resumes, with the checkpoint's record of every
        completed epoch (``{"epoch", "terms", "metrics"}``, metrics ``{}`` when none ran): add what you
        lack, so a kill between the checkpoint and ``on_epoch_end`` loses no epoch's record."""

    def on_measured(self, stage_name: str, params: dict[str, str], metrics: dict[str, float]) -> None:
        """Called before the first epoch with what the engine measured to set the run up (e.g. the
        precision ``runtime.precision: auto`` chose, and each format's seconds per step)."""

    def on_step_end(self, stage_name: str, epoch: int, step: int, loss: float) -> None:
        """Called after every optimiser step (``step`` is 1-based within the epoch)."""

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        """Called after each epoch with every loss term's mean over the epoch (and ``lr``)."""

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        """Called after each evaluation; return True to stop the stage early (e.g. pruned)."""
        return False

    def on_stage_end(self, stage_name: str, result: Any) -> None:
        """Called once with the :class:`anet.train.engine.StageResult`."""


class ProgressCallback(Callback):
    """A tqdm bar over the stage's steps; the postfix shows the last epoch's loss terms."""

    def __init__(self, disable: bool | None = None):
        self.disable = disable
        self._bar: Any = None
        self._epoch_terms: dict[str, float] = {}

    def on_stage_start(self, stage_name: str, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        from tqdm.auto import tqdm

        total = epochs * steps_per_epoch
        self._bar = tqdm(total=total, initial=(start_epoch - 1) * steps_per_epoch, desc=stage_name,
                         unit="step", dynamic_ncols=True, disable=self.disable)

    def on_step_end(self, stage_name: str, epoch: int, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            shown = {k: v for k, v in self._epoch_terms.items() if k not in ("epoch", "loss")}
            self._bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", **shown, refresh=False)

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        self._epoch_terms = {name: f"{value:.3g}" for name, value in terms.items()}

    def on_stage_end(self, stage_name: str, result: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class JsonlLogCallback(Callback):
    """One JSON line per epoch (``{"stage", "epoch", "terms"}``) and per evaluation (``"metrics"``).

    Each append rewrites the file atomically, so a crash never leaves a torn line. Lines of the same
    stage at or after the epoch being written are dropped first: a resumed run that repeats epochs
    after its last checkpoint does not log them twice.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        self._append({"stage": stage_name, "epoch": epoch, "terms": _finite(terms)}, replace_from=epoch)

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        self._append({"stage": stage_name, "epoch": epoch, "metrics": _finite(metrics)}, replace_from=None)
        return False

    def on_resume(self, stage_name: str, records: list[dict[str, Any]]) -> None:
        """Write the lines of checkpointed epochs the log lacks (a kill came between the two)."""
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        have = {(rec.get("epoch"), kind) for rec in map(_parsed, lines) if rec.get("stage") == stage_name
                for kind in ("terms", "metrics") if kind in rec}
        for record in records:
            epoch = int(record["epoch"])
            if (epoch, "terms") not in have:
                log.info("%s epoch %d: its log line was lost (killed after the checkpoint); written from "
                         "last.pt", stage_name, epoch)
                self.on_epoch_end(stage_name, epoch, record["terms"])  # drops this epoch's metrics line
                have.discard((epoch, "metrics"))
            if record["metrics"] and (epoch, "metrics") not in have:
                self.on_eval(stage_name, epoch, record["metrics"])

    def _append(self, record: dict[str, Any], replace_from: int | None) -> None:
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        if replace_from is not None:
            lines = [line for line in lines if not _is_stale(line, record["stage"], replace_from)]
        lines.append(json.dumps(record, sort_keys=True))
        atomic_write_text(self.path, "\n".join(lines) + "\n")


def _parsed(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _is_stale(line: str, stage_name: str, epoch: int) -> bool:
    old = _parsed(line)
    return old.get("stage") == stage_name and int(old.get("epoch", -1)) >= epoch


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: non-finite numbers become null."""
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}


class EpochLogCallback(Callback):
    """Plain log lines per epoch with elapsed time and ETA: what a pipe (a step log, CI) shows."""

    def __init__(self) -> None:
        self.epochs, self.start_epoch, self.started = 0, 1, 0.0

    def on_stage_start(self, stage_name: str, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.start_epoch, self.started = epochs, start_epoch, time.monotonic()
        log.info("%s: %d epochs x %d steps (starting at epoch %d)", stage_name, epochs, steps_per_epoch, start_epoch)

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        elapsed = time.monotonic() - self.started
        done = epoch - self.start_epoch + 1
        eta = elapsed / max(done, 1) * (self.epochs - epoch)
        shown = " ".join(f"{k}={v:.4g}" for k, v in terms.items())
        log.info("%s epoch %d/%d [%.0f s, ETA %.0f s] %s", stage_name, epoch, self.epochs, elapsed, eta, shown)

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        log.info("%s epoch %d: %s", stage_name, epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return False
