"""Conventions shared by the pipeline steps: failure reporting, descriptors, train-step outputs.

A step is a plain function: typed values and paths in, a small JSON-able dict out. Its config
arrives as the resolved config's JSON (``ExperimentConfig.from_json``); nothing here resolves a
config again.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from anet.contract import DESCRIPTOR, PRUNED_MARKER, RESULT_FILE
from anet.errors import UserError
from anet.io import atomic_write_text
from anet.logs import setup_logging
from anet.mlops.tracking.step_tracking import record_step_failure
from anet.steps.pipeline_run import close_if_opened_by_pipeline

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


def reported_step(step: str) -> Callable[[F], F]:
    """Log a failing step's reason as one ``error: <step>: ...`` line, tag the parent run with it
    (``anet.failed_step``, ``anet.error``: what the runner reports), and re-raise."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            setup_logging()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                text = str(exc).splitlines()[0] if str(exc) else ""
                reason = text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"
                log.error("error: %s: %s", step, reason)
                bound = signature.bind_partial(*args, **kwargs).arguments
                record_step_failure(bound.get("parent_run_id"), step, reason)
                _close_quietly(bound.get("parent_run_id"), f"{step}: {reason}")
                raise

        return inner  # type: ignore[return-value]

    return wrap


def _close_quietly(parent_run_id: str | None, error: str) -> None:
    """A failing step ends a parent run the pipeline opened itself (best effort: the step's error wins)."""
    try:
        close_if_opened_by_pipeline(parent_run_id, "failed", {"error": error})
    except Exception:  # noqa: BLE001 - a tracking outage must not hide the step's own error
        log.warning("could not close the MLflow parent run %s", parent_run_id)


def read_descriptor(dataset_descriptor: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Dataset artifact's descriptor (the artifact directory or the JSON file itself)."""
    path = Path(dataset_descriptor)
    path = path / DESCRIPTOR if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no dataset descriptor; run the prepare step first")
    return json.loads(path.read_text())


def progress_enabled() -> bool:
    """Progress bars in steps (``ANET_PROGRESS=0`` turns them off)."""
    return os.environ.get("ANET_PROGRESS", "1") != "0"


def write_report(path: str, text: str) -> None:
    """Write a Markdown report artifact atomically."""
    atomic_write_text(path, text)


def is_pruned(model_dir: str | os.PathLike[str] | None) -> bool:
    """True when a train step's output (directory or checkpoint file) is marked pruned."""
    if not model_dir:
        return False
    path = Path(model_dir)
    folder = path if path.is_dir() else path.parent
    return (folder / PRUNED_MARKER).is_file()


def checkpoint_in(model_dir: str | os.PathLike[str]) -> Path:
    """The final checkpoint of a train step's output: the file itself, ``result.json``'s, or ``final.pt``.

    ``last.pt`` is never used in its place: it may be a mid-stage state of a run that did not finish.
    """
    path = Path(model_dir)
    if path.is_file():
        return path
    result = path / RESULT_FILE
    if result.is_file():
        ckpt = json.loads(result.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    if (path / "final.pt").is_file():
        return path / "final.pt"
    raise UserError(f"{path}: no final checkpoint (final.pt) from a finished train step; run or resume training")
