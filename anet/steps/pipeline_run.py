"""The pipeline's parent MLflow run: opened by the runner before the DAG starts, closed after it.

Each step opens a nested run under the parent's id (kfp local steps are separate processes, so
nesting by id is the only way); the parent run ends with the pipeline's outcome as tags.
"""

from __future__ import annotations

import time
from typing import Any

from anet.config import ExperimentConfig
from anet.mlops.tracking import tracking
from anet.mlops.tracking.step_tracking import run_tags, set_tags

OPENED_BY = "anet.opened_by"  # "pipeline": the prepare step opened the parent run (no driver), so steps close it


def start_pipeline_run(dataset: str, profile: str, config_json: str, tags: dict[str, str] | None = None,
                       run_name: str | None = None, driver: bool = True) -> str:
    """Create the pipeline's parent MLflow run (experiment ``anet-<dataset>``); returns its id.

    Tagged with what model selection reads: ``anet.selection`` (val, or test for the paper's practice)
    and ``anet.primary_metric``. ``driver=False`` when this process does not outlive the run (the
    prepare step opening it for a UI run): the run is then not tied to this process's liveness.
    """
    tracking.configure(None)
    name = run_name or f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    registry = ExperimentConfig.from_json(config_json).registry
    selection = {"anet.selection": registry.selection, "anet.primary_metric": registry.primary_metric}
    return tracking.start_parent_run(dataset, name, {"anet.profile": profile, **selection, **(tags or {})},
                                     config_json, driver=driver)


END_STATUS = {"succeeded": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def finish_pipeline_run(run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
    """Close the parent run: ``status`` is succeeded | pruned | failed | killed; the summary becomes tags.

    The run is ended even when its tags cannot be written (a tracking outage): a run is never left
    RUNNING by this pipeline.
    """
    tracking.configure(None)
    tags: dict[str, Any] = {"anet.outcome": status}
    for key in ("model_version", "champion", "error"):
        if summary and summary.get(key) not in (None, ""):
            tags[f"anet.{key}"] = str(summary[key])[:5000]
    try:
        set_tags(run_id, tags)
    finally:
        tracking.end_run(run_id, END_STATUS[status])


def pipeline_outcome(run_id: str) -> dict[str, Any]:
    """What the steps recorded on the parent run: metrics, model version, decision, failing step."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    tracking.configure(None)
    run = MlflowClient().get_run(run_id)
    tags = run_tags(run_id)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
    return {"metrics": metrics, "model_version": tags.get("anet.model_version"),
            "champion": tags.get("anet.champion") == "True", "decision": tags.get("anet.decision"),
            "pruned": bool(tags.get("anet.pruned")), "failed_step": tags.get("anet.failed_step"),
            "error": tags.get("anet.error")}


def close_if_opened_by_pipeline(run_id: str | None, status: str, summary: dict[str, Any] | None = None) -> None:
    """End the parent run when the pipeline itself opened it (no driver will): the last step or a failure."""
    if run_id and run_tags(run_id).get(OPENED_BY) == "pipeline":
        finish_pipeline_run(run_id, status, summary)
