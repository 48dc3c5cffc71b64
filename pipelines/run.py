"""Run the pipeline: locally through kfp.local (default) or on a Kubeflow cluster (``KFP_HOST``).

Examples::

    python -m pipelines.run                                        # synthetic data, CPU profile
    python -m pipelines.run --dataset synthetic --profile smoke --set stage_one.epochs=2
    python -m pipelines.run --dataset veri776                      # DVC-tracked data under data/veri776
    KFP_HOST=https://kfp.example.org KFP_TOKEN=... python -m pipelines.run --dataset veri776

    from pipelines.run import run_pipeline                         # the sweep's entry point
    outcome = run_pipeline(dataset="synthetic", profile="smoke", settings=RunSettings(lambda_a=0.3))

Before any work: the config is resolved, the dataset is checked (a missing real dataset stops with
the ``anet data import`` hint), the MLflow tracking server and S3 endpoint are reached (an
unreachable one is named), and the MLflow parent run is created; its id is a pipeline parameter,
each step opens a nested run under it. Locally every step is a subprocess of this Python
(``SubprocessRunner(use_venv=False)``): no Docker, no cluster. A failing step stops the DAG and
its one-line reason (which each step records on the MLflow parent run) is printed; exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kfp import local

from anet import steps
from anet.config import ExperimentConfig, RunSettings, parse_overrides, resolve_config
from anet.contract import CLUSTER_CACHE_ROOT
from anet.errors import UserError, run_guarded
from anet.logs import setup_logging
from anet.mlops.registry import doctor
from anet.mlops.storage import s3
from anet.mlops.storage.pretrained import resolve_model_weights
from anet.mlops.tracking import liveness, tracking
from anet.steps.preflight import check_run_paths
from pipelines.cluster import kfp_client, run_on_cluster
from pipelines.dag import local_pipeline
from pipelines.outcome import PipelineOutcome, failure_reason, format_summary, make_outcome, step_lines

log = logging.getLogger("pipelines.run")


def run_pipeline(dataset: str = "synthetic", profile: str | None = None, overrides: Mapping[str, Any] | None = None,
                 settings: RunSettings | None = None, trial: dict[str, Any] | None = None,
                 tags: dict[str, str] | None = None, *, promote: bool = True,
                 pipeline_root: str | os.PathLike[str] = "local_outputs", run_name: str | None = None,
                 echo: bool = True) -> PipelineOutcome:
    """Run the whole DAG once; returns its outcome (a failed step gives status "failed", not an exception).

    The config is resolved here, once (profile + typed ``overrides`` + ``settings``), and travels to
    every step as its JSON. Pre-flight problems (bad config, missing dataset, unreachable MLflow/S3)
    raise ``UserError`` before anything starts. ``trial`` (a TrialRef dict) reaches the train steps.
    ``promote=False`` registers without moving the champion alias (sweep trials).
    """
    profile = profile or dataset
    on_cluster = bool(os.environ.get("KFP_HOST"))
    cfg = _run_config(resolve_config(profile, overrides, settings, dataset=dataset), on_cluster)
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = _preflight(cfg, on_cluster, pipeline_root)
    client = kfp_client() if on_cluster else None
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri  # the step subprocesses inherit it (same store, absolute)
        run_tags = {**(tags or {}), **_trial_tags(trial),
                    **{f"param.{k}": str(getattr(cfg.loss, k)) for k in ("lambda_a", "lambda_g", "lambda_van")}}
        parent = steps.start_pipeline_run(cfg.data.dataset, profile, cfg.to_json(), run_tags, run_name)
        _say(echo, f"MLflow parent run {parent} at {tracking.redact_url(uri)}")
        arguments = dag_arguments(cfg, profile, parent, trial, promote)
        try:
            with liveness.sigterm_raises():
                if client is not None:
                    outcome = run_on_cluster(client, arguments, cfg.registry.primary_metric, parent, echo)
                else:
                    outcome = _run_locally(arguments, cfg.registry.primary_metric, parent, Path(pipeline_root), echo)
        except BaseException as exc:  # interrupted, or the runner itself broke: never leave the run RUNNING
            status = "killed" if tracking.run_status(exc) == "KILLED" else "failed"
            steps.finish_pipeline_run(parent, status, {"error": f"{type(exc).__name__}: {exc}"[:500]})
            raise
        steps.finish_pipeline_run(parent, outcome.status, {"model_version": outcome.model_version,
                                                           "champion": outcome.champion, "error": outcome.error})
    finally:
        if saved_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    return dataclasses.replace(outcome, tracking_uri=uri)


def _preflight(cfg: ExperimentConfig, on_cluster: bool, pipeline_root: str | os.PathLike[str]) -> str:
    """Everything checkable before a run starts (one line each, ``UserError``); returns the tracking URI.

    Also closes the runs of drivers that died earlier (``anet runs doctor``'s sweep).
    """
    if not on_cluster:  # there the steps' pods check their own folders (the prepare step)
        check_run_paths(cfg, outputs={"--pipeline-root": pipeline_root})
    steps.check_dataset_available(cfg)
    if not on_cluster:
        resolve_model_weights(cfg.model)  # offline or a bad hash: one line before any work
    uri = _check_endpoints()
    closed = doctor.close_orphaned_runs(cfg.data.dataset)
    if closed.closed:
        log.warning("%s", closed.describe())
    if on_cluster and not uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"MLFLOW_TRACKING_URI={tracking.redact_url(uri)} is a store on this machine: pods on the "
                        "cluster cannot reach it; set it to your tracking server (http(s)://...)")
    return uri


def _run_config(cfg: ExperimentConfig, on_cluster: bool) -> ExperimentConfig:
    """Locations for where the steps run: absolute local paths, or the cache on the cluster's PVC."""
    if on_cluster:
        data = cfg.data.model_copy(update={"cache_dir": CLUSTER_CACHE_ROOT})
    else:
        data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).resolve()),
                                           "cache_dir": str(Path(cfg.data.cache_dir).resolve())})
    return cfg.model_copy(update={"data": data})


def dag_arguments(cfg: ExperimentConfig, profile: str, parent: str, trial: dict[str, Any] | None,
                  promote: bool) -> dict[str, Any]:
    """The DAG's parameters for a driver-resolved config: its JSON, once; the run settings stay unset
    (they are in the config already; the DAG for kfp.local has none)."""
    return {"dataset": cfg.data.dataset, "profile": profile, "overrides": {}, "config_json": cfg.to_json(),
            "mlflow_parent_run_id": parent, "trial": dict(trial or {}), "data_root": cfg.data.root,
            "cache_root": cfg.data.cache_dir, "promote": bool(promote)}


def _check_endpoints() -> str:
    """Reach MLflow (and S3 when an endpoint is configured) before any work; export the tracking URI."""
    uri = tracking.configure(None)
    tracking.check_tracking_server(uri)
    endpoints = {os.environ.get(k, "") for k in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")} - {""}
    for url in sorted(endpoints):
        s3.check_endpoint(url)
    return uri


def _trial_tags(trial: dict[str, Any] | None) -> dict[str, str]:
    if not trial:
        return {}
    return {"optuna.study": str(trial.get("study_name", "")), "optuna.trial_number": str(trial.get("trial_number", ""))}


# --------------------------------------------------------------------------- local (kfp.local)
def _run_locally(arguments: dict[str, Any], primary: str, parent: str, root: Path, echo: bool) -> PipelineOutcome:
    """Run the DAG with kfp.local; the outcome comes from kfp's result and the steps' MLflow tags."""
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root.resolve()),
               raise_on_error=True)
    before = {p.name for p in root.iterdir()}
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:  # local_pipeline sets no PVC checkpoint root: the steps keep checkpoints in their outputs
            with step_lines() as lines:  # kfp.local prints each step's log through this process
                summary, error = json.loads(local_pipeline(**arguments).output), None
        except RuntimeError as exc:  # kfp.local's way of saying that a task failed
            summary, error = {}, failure_reason(parent, str(exc), lines.last)
    new = sorted((p for p in root.iterdir() if p.name not in before), key=lambda p: p.stat().st_mtime)
    _say(echo, f"pipeline finished in {time.monotonic() - started:.0f} s")
    return make_outcome(summary, error, primary, parent, str(new[-1]) if new else None)


# --------------------------------------------------------------------------- CLI
def _say(echo: bool, text: str) -> None:
    if echo:
        log.info("%s", text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.run`` (what ``make pipeline-run DATASET=...`` calls)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description="Run the AttributeNet pipeline.")
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "veri776", "veriwild", "vehicleid"])
    parser.add_argument("--profile", default=None, help="config profile (default: the dataset's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set loss.lambda_a=0.5)")
    parser.add_argument("--seed", type=int, default=None, help="runtime.seed (default: the profile's)")
    parser.add_argument("--no-promote", action="store_true", help="register without moving the champion alias")
    parser.add_argument("--pipeline-root", default="local_outputs", help="where kfp.local writes step outputs")
    args = parser.parse_args(argv)
    return run_guarded(lambda: _run_and_report(args), "rerun the same command (the prepared cache is reused)")


def _run_and_report(args: argparse.Namespace) -> int:
    setup_logging()
    outcome = run_pipeline(args.dataset, args.profile, parse_overrides(args.overrides),
                           RunSettings(seed=args.seed), promote=not args.no_promote,
                           pipeline_root=args.pipeline_root)
    print("\n" + format_summary(outcome))
    if outcome.status == "failed":
        print(f"error: {outcome.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
