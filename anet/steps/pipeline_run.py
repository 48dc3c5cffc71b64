"""The pipeline's parent MLflow run: opened by the runner before the DAG starts, closed after it.

Each step opens a nested run under the parent's id (kfp local steps are separate processes, so
nesting by id is the only way); the parent run ends with the pipeline's outcome as tags.
"""

from __future__ import annotations

import time
from typing import Any


def start_pipeline_run(dataset: str, profile: str, config_json: str, tags: dict[str, str] | None = None,
                       run_name: str | None = None) -> str:
    """Create the pipeline's parent MLflow run (experiment ``anet-<dataset>``); returns its id."""
    from anet.mlops import tracking

    tracking.configure(None)
    name = run_name or f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    return tracking.start_parent_run(dataset, name, {"anet.profile": profile, **(tags or {})}, config_json)


def finish_pipeline_run(run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
    """Close the parent run: ``status`` is succeeded | pruned | failed; the summary becomes tags."""
    from mlflow import MlflowClient

    from anet.mlops import tracking

    tracking.configure(None)
    client = MlflowClient()
    client.set_tag(run_id, "anet.outcome", status)
    for key in ("model_version", "champion", "error"):
        if summary and summary.get(key) not in (None, ""):
            client.set_tag(run_id, f"anet.{key}", str(summary[key])[:5000])
    tracking.end_run(run_id, "FAILED" if status == "failed" else "FINISHED")
