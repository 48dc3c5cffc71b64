"""The KFP_HOST runner: compile, submit to Kubeflow Pipelines, follow the run, read its outcome.

Example:
    >>> outcome = run_on_cluster(kfp_client(), dag_arguments(cfg, "veri776", parent, None, True),
    ...                          "eval/val/mAP", parent, echo=True)
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import kfp

from anet import steps
from anet.contract import IMAGE_REF_ENV
from anet.errors import UserError
from pipelines.compile import compile_pipeline
from pipelines.outcome import TASK_NAMES, PipelineOutcome, make_outcome

log = logging.getLogger("pipelines.run")
KFP_TERMINAL = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED", "ERROR"}


IMAGE_RECORD = Path(".cache/image/image.ref")  # written by `make image PUSH=1`: the pushed digest


def pinned_ref() -> str | None:
    """The image every task should run: ``$ANET_IMAGE_REF``, else the digest ``make image PUSH=1`` pushed."""
    if os.environ.get(IMAGE_REF_ENV):
        return os.environ[IMAGE_REF_ENV]
    return IMAGE_RECORD.read_text().strip() if IMAGE_RECORD.is_file() else None


def _say(echo: bool, text: str) -> None:
    if echo:
        log.info("%s", text)


def kfp_client() -> Any:
    """``kfp.Client`` for ``KFP_HOST`` (bearer token from ``KFP_TOKEN``); one line when unreachable."""
    host = os.environ["KFP_HOST"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return kfp.Client(host=host, existing_token=os.environ.get("KFP_TOKEN") or None,
                              namespace=os.environ.get("KFP_NAMESPACE") or "kubeflow")
    except Exception as exc:  # kfp raises urllib3/kube errors with pages of text
        raise UserError(f"Kubeflow Pipelines at {host} is unreachable ({type(exc).__name__}); check KFP_HOST "
                        "and KFP_TOKEN") from None


def run_on_cluster(client: Any, arguments: dict[str, Any], primary: str, parent: str, echo: bool) -> PipelineOutcome:
    """Submit the compiled pipeline, follow it to the end, read the outcome from the MLflow parent run."""
    host = os.environ["KFP_HOST"]
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "anet_pipeline.yaml", gpus=int(os.environ.get("ANET_GPUS", "1")),
                                   kfp_backend=os.environ.get("ANET_KFP_BACKEND") or None, image=pinned_ref())
        run = client.create_run_from_pipeline_package(str(package), arguments=arguments,
                                                      experiment_name=os.environ.get("KFP_EXPERIMENT")
                                                      or f"anet-{arguments['dataset']}",
                                                      namespace=os.environ.get("KFP_NAMESPACE") or None,
                                                      run_name=f"anet-{arguments['dataset']}-{parent[:8]}")
    _say(echo, f"submitted run {run.run_id} to {host}")
    state = _follow(client, run.run_id, echo)
    link = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    error = None if state == "SUCCEEDED" else f"Kubeflow run {run.run_id} ended {state}; see {link}"
    recorded = steps.pipeline_outcome(parent)
    if error and recorded.get("failed_step"):
        error = f"{TASK_NAMES.get(recorded['failed_step'], recorded['failed_step'])}: {recorded['error']} ({link})"
    summary = {**recorded, "primary_metric": primary, "primary_value": recorded["metrics"].get(primary),
               "status": "pruned" if recorded["pruned"] else "succeeded"}
    return make_outcome(summary, error, primary, parent, link)


def _follow(client: Any, run_id: str, echo: bool, poll_s: float = 10.0) -> str:
    """Poll the run, print every state change, return the terminal state."""
    last = None
    while True:
        state = str(client.get_run(run_id).state or "PENDING").upper()
        if state != last:
            _say(echo, f"{time.strftime('%H:%M:%S')} run {run_id}: {state}")
            last = state
        if state in KFP_TERMINAL:
            return state
        time.sleep(poll_s)


