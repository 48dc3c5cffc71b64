"""Writing into an MLflow run: params, metrics, artifacts, in batches, with credentials filtered.

Used through :mod:`anet.mlops.tracking.tracking` (which re-exports every public name here)::

    log_params(run_id, {"loss.lambda_a": 1.0, "aws_secret_access_key": "x"})   # the key is dropped
    log_metrics({"train/tri_f": 0.41}, step=3, run_id=run_id)
    log_eval_metrics({"test": {"mAP": 0.71, "R1": 0.9}})                      # eval/test/mAP, ...

Nothing that looks like a credential (key names with secret/password/token/access_key/...) is ever
logged, and user:password parts of URL values are masked.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from anet.mlops.tracking.endpoint import redact_url

MAX_PARAM_VALUE = 6000  # MLflow 3 limit on a param value (characters)
MAX_PARAM_KEY = 250
BATCH = 100  # params/tags/metrics per log_batch request (server-side limit is larger)
_SECRET_KEY = re.compile(r"passw(or)?d|secret|token|access[_-]?key|credential|api[_-]?key|^auth", re.I)


def metric_items(metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> list[Any]:
    """MLflow ``Metric`` entities for the numeric values of ``metrics`` (others skipped)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if is_number(v)]


def send_metrics(run_id: str, items: list[Any]) -> None:
    """Send metric entities in batches; each batch sent is removed from ``items``, so after a
    failure ``items`` holds exactly what is still to send (nothing is sent twice)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    while items:
        client.log_batch(run_id, metrics=items[:BATCH], synchronous=True)
        del items[:BATCH]


def log_metrics(metrics: Mapping[str, float], step: int = 0, run_id: str | None = None) -> None:
    """Log numeric metrics in batches (non-numbers skipped) to ``run_id`` or the active run."""
    send_metrics(run_id or active_run_id(), metric_items(metrics, step))


def log_eval_metrics(results: Mapping[str, Mapping[str, Any]], run_id: str | None = None) -> dict[str, float]:
    """Log ``{test_set: {metric: value}}`` as ``eval/<test_set>/<metric>``; return the flat dict.

    Example:
        >>> log_eval_metrics({"test": {"mAP": 0.71, "R1": 0.9}})      # doctest: +SKIP
        {'eval/test/mAP': 0.71, 'eval/test/R1': 0.9}
    """
    flat = {
        f"eval/{split}/{name}": float(value)
        for split, metrics in results.items()
        for name, value in metrics.items()
        if is_number(value)
    }
    log_metrics(flat, step=0, run_id=run_id)
    return flat


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (credential-looking keys dropped, values cut to MLflow's 6000 characters)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    items: Sequence[Any] = [Param(k[:MAX_PARAM_KEY], param_value(v)) for k, v in safe_mapping(params).items()]
    client = MlflowClient()
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH], synchronous=True)


def log_artifacts(paths: Iterable[str | os.PathLike[str]], artifact_path: str | None = None,
                  run_id: str | None = None) -> None:
    """Upload files (and whole directories, under their own name) to ``artifact_path`` of a run."""
    from mlflow import MlflowClient

    client, run_id = MlflowClient(), run_id or active_run_id()
    for item in map(Path, paths):
        if item.is_dir():
            sub = f"{artifact_path}/{item.name}" if artifact_path else item.name
            client.log_artifacts(run_id, str(item), sub)
        elif item.is_file():
            client.log_artifact(run_id, str(item), artifact_path)
        else:
            raise FileNotFoundError(f"artifact to log does not exist: {item}")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"loss": {"lambda_a": 1.0}}`` -> ``{"loss.lambda_a": "1.0"}``; lists become JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value if isinstance(value, str) else json.dumps(value)
    return flat


def safe_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop entries whose key looks like a credential; mask user:password in URL-like values."""
    return {
        k: (redact_url(v) if isinstance(v, str) else v)
        for k, v in values.items()
        if not _SECRET_KEY.search(str(k).rsplit(".", 1)[-1])
    }


def param_value(value: Any) -> str:
    """A param value as MLflow stores it: JSON for non-strings, cut to 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def str_values(values: Mapping[str, Any]) -> dict[str, str]:
    """Tags as MLflow wants them: string keys and values."""
    return {str(k): str(v) for k, v in values.items()}


def is_number(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def active_run_id() -> str:
    """The id of the run active in this thread (``RuntimeError`` when there is none)."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("no active MLflow run: pass run_id or call inside start_step_run(...)")
    return active.info.run_id
