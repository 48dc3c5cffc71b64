"""What a pipeline step logs to MLflow, as one object; a no-op when the step runs without a parent run.

Steps (``anet.steps``) never import mlflow: they open :func:`step_run` and call the tracker. Each
kfp step is its own process, so the nested step run is found by the parent run's id.

Example:
    >>> with step_run(parent_run_id, "evaluate") as tracker:
    ...     flat = tracker.log_eval({"test": {"mAP": 0.7}}, files=[])
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from anet.mlops.tracking import tracking
from anet.train.callbacks import Callback


class StepTracker:
    """MLflow logging of one step: ``run_id`` is the step's nested run, ``parent_run_id`` the pipeline's."""

    def __init__(self, run_id: str | None = None, parent_run_id: str | None = None):
        self.run_id, self.parent_run_id = run_id, parent_run_id

    def log_prepare(self, descriptor: dict[str, Any], counts: dict[str, int]) -> None:
        """Dataset location, fingerprint, vocabularies and row counts (step and parent run)."""
        if not self.run_id:
            return
        tracking.log_params(self.run_id, {"data.cache_dir": descriptor["cache_dir"],
                                          "data.fingerprint": descriptor["fingerprint"],
                                          "data.vocab": json.dumps(descriptor["vocab"])})
        tracking.log_metrics({"data/images": descriptor["images"], "data/quarantined": descriptor["quarantined"],
                              "data/train_ids": descriptor["num_train_ids"],
                              **{f"data/rows/{k}": v for k, v in counts.items()}}, run_id=self.run_id)
        tracking.log_lineage(self.run_id, descriptor["fingerprint"])
        tracking.log_lineage(str(self.parent_run_id), descriptor["fingerprint"])
        if descriptor.get("dvc_data_hash"):  # only a hash DVC verified for the data this run used
            for run_id in (self.run_id, str(self.parent_run_id)):
                set_tags(run_id, {"dvc.data_hash": descriptor["dvc_data_hash"]})

    def tag_parent(self, tags: dict[str, Any]) -> None:
        """Set tags on the pipeline's parent run (outcome, model version, pruned, failed step)."""
        if self.parent_run_id:
            set_tags(self.parent_run_id, tags)

    def log_params(self, params: dict[str, Any]) -> None:
        """Params of the step run (e.g. the pretrained weights' source and sha256)."""
        if self.run_id:
            tracking.log_params(self.run_id, params)

    def callbacks(self) -> list[Callback]:
        """The engine callbacks that log ``train/<term>`` into this step run."""
        return [tracking.MlflowCallback(self.run_id)] if self.run_id else []

    def log_eval(self, results: dict[str, dict[str, Any]], files: list[str]) -> dict[str, float]:
        """``eval/<split>/<metric>`` into the step run and the parent run (what users and sweeps read)."""
        flat = {f"eval/{s}/{m}": float(v) for s, ms in results.items() for m, v in ms.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.run_id:
            tracking.log_metrics(flat, run_id=self.run_id)
            tracking.log_metrics(flat, run_id=str(self.parent_run_id))
            if files:
                tracking.log_artifacts(files, "evaluation", run_id=self.run_id)
        return flat


@contextlib.contextmanager
def step_run(parent_run_id: str | None, step: str) -> Iterator[StepTracker]:
    """A nested MLflow run for ``step`` under ``parent_run_id``; no tracking when the id is empty."""
    if not parent_run_id:
        yield StepTracker()
        return
    tracking.configure(None)
    with tracking.start_step_run(parent_run_id, step) as run_id:
        yield StepTracker(run_id, parent_run_id)


def record_step_failure(parent_run_id: str | None, step: str, reason: str) -> None:
    """Tag the parent run with the failing step and its one-line reason (the runner reports it).

    Best effort: a tracking outage must not hide the step's own error.
    """
    if not parent_run_id:
        return
    try:
        tracking.configure(None)
        set_tags(parent_run_id, {"anet.failed_step": step, "anet.error": reason[:5000]})
    except Exception:  # noqa: BLE001 - the step is already failing; its own error is what matters
        return


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    """Set string tags on a run (values are stringified; credentials never reach here)."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    client = MlflowClient()
    for key, value in tracking.safe_mapping(tags).items():
        client.set_tag(run_id, key, str(value))


def run_tags(run_id: str) -> dict[str, str]:
    """The tags of a run (e.g. the parent run's ``data.fingerprint``)."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    return dict(MlflowClient().get_run(run_id).data.tags)
