"""Shared plumbing of the pipeline steps: config and descriptor helpers, markers and MLflow glue.

Every step module builds on this one: the ``error: <step>: ...`` reporting decorator, the merge of
the DAG's typed parameters into config overrides, the resolved-config and dataset-descriptor
readers, the pruned/checkpoint conventions of a train step's output directory, and the per-step
MLflow tracker (:func:`_step_run`, a no-op without a parent run id). MLflow is imported lazily.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from anet.config import ExperimentConfig, load_config
from anet.errors import UserError
from anet.io import atomic_write_text

DESCRIPTOR = "descriptor.json"
PRUNED_MARKER = "PRUNED"
RESULT_FILE = "result.json"
F = TypeVar("F", bound=Callable[..., Any])


def _reported(step: str) -> Callable[[F], F]:
    """Print a failing step's reason as one ``error: <step>: ...`` line (the runner shows it), re-raise."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                print(f"error: {step}: {exc}", flush=True)
                raise
            except Exception as exc:
                print(f"error: {step}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      flush=True)
                raise

        return inner  # type: ignore[return-value]

    return wrap


# --------------------------------------------------------------------------- config
def pipeline_overrides(overrides_json: str, lambda_a: float = -1.0, lambda_g: float = -1.0,
                       lambda_van: float = -1.0, epochs: int = 0, seed: int = -1,
                       promotion_margin: float = -1.0) -> str:
    """Merge the DAG's typed parameters into the JSON list of overrides (negative/0 = profile value).

    Example:
        >>> pipeline_overrides('["stage_two.epochs=0"]', lambda_a=0.5)
        '["stage_two.epochs=0", "loss.lambda_a=0.5"]'
    """
    try:
        items = json.loads(overrides_json or "[]")
    except ValueError:
        raise UserError(f"overrides: not a JSON list of key=value strings: {overrides_json!r}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UserError(f"overrides: expected a JSON list of key=value strings, got {overrides_json!r}")
    for key, value in (("loss.lambda_a", lambda_a), ("loss.lambda_g", lambda_g), ("loss.lambda_van", lambda_van),
                       ("registry.promotion_margin", promotion_margin)):
        if value is not None and value >= 0:
            items.append(f"{key}={value!r}")
    if epochs and epochs > 0:
        items.append(f"stage_one.epochs={int(epochs)}")
    if seed is not None and seed >= 0:
        items.append(f"runtime.seed={int(seed)}")
    return json.dumps(items)


def resolve_config(dataset: str, profile: str, overrides: list[str] | str, data_root: str = "",
                   cache_root: str = "") -> ExperimentConfig:
    """Profile + overrides (+ the dataset name and the data/cache locations when given)."""
    items = json.loads(overrides) if isinstance(overrides, str) else list(overrides)
    base = load_config(profile, items)
    extra = []
    if dataset and dataset != base.data.dataset:
        extra += [f"data.dataset={dataset}", f"data.root=data/{dataset}"]
    if data_root:
        extra.append(f"data.root={data_root}")
    if cache_root:
        extra.append(f"data.cache_dir={cache_root}")
    return load_config(profile, items + extra) if extra else base


def _config(config_json: str) -> ExperimentConfig:
    return ExperimentConfig.from_json(config_json)



# --------------------------------------------------------------------------- descriptors + outputs
def read_descriptor(dataset_descriptor: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Dataset artifact's descriptor (the artifact directory or the JSON file itself)."""
    path = Path(dataset_descriptor)
    path = path / DESCRIPTOR if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no dataset descriptor; run the prepare step first")
    return json.loads(path.read_text())



def _progress() -> bool:
    return os.environ.get("ANET_PROGRESS", "1") != "0"


def write_report(path: str, text: str) -> None:
    """Write a Markdown report artifact atomically."""
    atomic_write_text(path, text)



def is_pruned(model_dir: str | os.PathLike[str]) -> bool:
    """True when a train step's output (directory or checkpoint file) is marked pruned."""
    path = Path(model_dir) if model_dir else None
    if path is None:
        return False
    folder = path if path.is_dir() else path.parent
    return (folder / PRUNED_MARKER).is_file()


def checkpoint_in(model_dir: str | os.PathLike[str]) -> Path:
    """The final checkpoint inside a train step's output directory (or the file itself)."""
    path = Path(model_dir)
    if path.is_file():
        return path
    result = path / RESULT_FILE
    if result.is_file():
        ckpt = json.loads(result.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    for name in ("final.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: no checkpoint (final.pt) from a train step; run training first")



# --------------------------------------------------------------------------- tracking glue
class _Tracker:
    """What a step logs; every method is a no-op when the step runs without MLflow (no parent id)."""

    def __init__(self, run_id: str | None = None, parent_run_id: str | None = None):
        self.run_id, self.parent_run_id = run_id, parent_run_id

    def log_prepare(self, descriptor: dict[str, Any], counts: dict[str, int]) -> None:
        if not self.run_id:
            return
        from anet.mlops import tracking

        tracking.log_params(self.run_id, {"data.cache_dir": descriptor["cache_dir"],
                                          "data.fingerprint": descriptor["fingerprint"],
                                          "data.vocab": json.dumps(descriptor["vocab"])})
        tracking.log_metrics({"data/images": descriptor["images"], "data/quarantined": descriptor["quarantined"],
                              "data/train_ids": descriptor["num_train_ids"],
                              **{f"data/rows/{k}": v for k, v in counts.items()}}, run_id=self.run_id)
        tracking.log_lineage(self.run_id, descriptor["fingerprint"])
        tracking.log_lineage(str(self.parent_run_id), descriptor["fingerprint"])

    def tag_parent(self, tags: dict[str, Any]) -> None:
        if self.parent_run_id:
            from mlflow import MlflowClient

            for key, value in tags.items():
                MlflowClient().set_tag(self.parent_run_id, key, str(value))

    def callbacks(self) -> list[Any]:
        if not self.run_id:
            return []
        from anet.mlops.tracking import MlflowCallback

        return [MlflowCallback(self.run_id)]

    def log_eval(self, results: dict[str, dict[str, Any]], files: list[str]) -> dict[str, float]:
        flat = {f"eval/{s}/{m}": float(v) for s, ms in results.items() for m, v in ms.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.run_id:
            from anet.mlops import tracking

            tracking.log_metrics(flat, run_id=self.run_id)
            tracking.log_metrics(flat, run_id=str(self.parent_run_id))  # the run a user (and a sweep) reads
            if files:
                tracking.log_artifacts(files, "evaluation", run_id=self.run_id)
        return flat


@contextlib.contextmanager
def _step_run(parent_run_id: str, step: str) -> Iterator[_Tracker]:
    """A nested MLflow run for ``step`` under ``parent_run_id`` (no tracking when the id is empty)."""
    if not parent_run_id:
        yield _Tracker()
        return
    from anet.mlops import tracking

    tracking.configure(None)
    with tracking.start_step_run(parent_run_id, step) as run_id:
        yield _Tracker(run_id, parent_run_id)
