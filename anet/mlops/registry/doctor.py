"""Clean up after drivers that died without a word: runs left RUNNING, versions left ``pending``.

A run whose driver was killed (``kill -9``, OOM killer, a closed laptop) stays RUNNING forever in
MLflow. Every run this pipeline opens is tagged with its driver (``anet.driver_pid``,
``anet.driver_host``, ``anet.driver_started``: see :mod:`anet.mlops.tracking.liveness`), so::

    report = close_orphaned_runs("synthetic")       # a dataset, or experiment ids
    report.closed                                   # run ids now KILLED
    print(report.describe())

ends as KILLED every RUNNING run whose driver ran on this host and is gone. Runs of live drivers,
runs from other hosts (their pid means nothing here) and runs without driver tags (older code, or
other tools) are left alone and counted. Meant for the start of each pipeline run and for
``anet runs doctor``. :func:`fail_orphaned_versions` tags ``failed`` the registered versions whose
registration died before deciding (the next registration does that too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from anet.mlops.registry import registry
from anet.mlops.registry.lock import PromotionLock
from anet.mlops.tracking import liveness, retry
from anet.mlops.tracking.tracking import experiment_name

logger = logging.getLogger(__name__)
CLOSED_BY_TAG = "anet.closed_by"


@dataclass
class DoctorReport:
    """What :func:`close_orphaned_runs` found among the RUNNING runs."""

    closed: list[str] = field(default_factory=list)  # driver gone: now KILLED
    alive: list[str] = field(default_factory=list)  # driver still running here
    other_host: list[str] = field(default_factory=list)  # driver on another host: cannot tell
    untagged: list[str] = field(default_factory=list)  # no driver tags

    def describe(self) -> str:
        """One line: ``closed 2 orphaned runs (KILLED); left 1 live, 0 on other hosts, 0 untagged``."""
        return (f"closed {len(self.closed)} orphaned run(s) (KILLED); left {len(self.alive)} live, "
                f"{len(self.other_host)} on other hosts, {len(self.untagged)} without driver tags")


def close_orphaned_runs(experiments: str | Iterable[str], client: Any = None) -> DoctorReport:
    """End as KILLED every RUNNING run of ``experiments`` whose driver on this host is gone.

    ``experiments``: a dataset name (experiment ``anet-<dataset>``; nothing to do when it does not
    exist) or experiment ids. Each closed run gets ``anet.closed_by=doctor``.
    """
    from mlflow import MlflowClient

    client = client or MlflowClient()
    report = DoctorReport()
    with retry.outage_as_user_error("looking for orphaned runs"):
        ids = _experiment_ids(client, experiments)
        for run in _running_runs(client, ids) if ids else []:
            alive = liveness.owner_alive(run.data.tags)
            if alive is False:
                _close(client, run)
                report.closed.append(run.info.run_id)
            elif alive:
                report.alive.append(run.info.run_id)
            elif liveness.PID_TAG in run.data.tags:
                report.other_host.append(run.info.run_id)
            else:
                report.untagged.append(run.info.run_id)
    return report


def fail_orphaned_versions(dataset: str, client: Any = None) -> list[str]:
    """Under the promotion lock, tag ``failed`` the versions of ``anet-<dataset>`` still
    ``pending`` (their registration died); returns their numbers (none when there is no model)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client, name = client or MlflowClient(), registry.model_name(dataset)
    with retry.outage_as_user_error(f"looking for unfinished registrations of {name}"):
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        with PromotionLock(client, name) as lock:
            return registry.fail_orphaned_versions(client, name, lock)


def _experiment_ids(client: Any, experiments: str | Iterable[str]) -> list[str]:
    if not isinstance(experiments, str):
        return [str(e) for e in experiments]
    exp = client.get_experiment_by_name(experiment_name(experiments))
    return [exp.experiment_id] if exp is not None else []


def _running_runs(client: Any, experiment_ids: list[str]) -> Iterable[Any]:
    token = None
    while True:
        page = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=500,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _close(client: Any, run: Any) -> None:
    tags = run.data.tags
    logger.warning("run %s (%s) was left RUNNING by pid %s on %s, which is gone: ending it as KILLED",
                   run.info.run_id, run.info.run_name, tags.get(liveness.PID_TAG), tags.get(liveness.HOST_TAG))
    client.set_tag(run.info.run_id, CLOSED_BY_TAG, "doctor")
    client.set_terminated(run.info.run_id, status="KILLED")
