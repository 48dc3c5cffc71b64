"""MLflow tracking for one pipeline run: a parent run per pipeline, a nested run per step.

Contract (design.md section 4): experiment ``anet-<dataset>``; the parent run carries the whole
resolved config (flattened to dotted params, full JSON as ``config/config.json``) and lineage (git
commit, DVC data hash, dataset fingerprint); metrics ``train/<term>`` per epoch (logged inside the
stage's own nested run, so stage one and stage two do not mix) and ``eval/<split>/<metric>``.

Each kfp step runs in its own process, so the parent run id travels as a plain string::

    uri = configure(os.environ.get("MLFLOW_TRACKING_URI"))     # driver
    check_tracking_server(uri)
    parent = start_parent_run("synthetic", "smoke-1", {"trigger": "cli"}, cfg.to_json())
    ...                                                         # in the train step's process:
    configure(uri)
    with start_step_run(parent, "train_stage_one"):
        train_stage(..., callbacks=[MlflowCallback()])        # train/<term> at step=epoch
    ...                                                         # in the register step's process:
    with start_step_run(parent, "register"):
        model_uri = log_code_model(...)                       # anet.mlops.tracking.models
    end_run(parent, "FINISHED")

Outages (see :mod:`anet.mlops.tracking.retry`): one MLflow call gives up after a bounded retry budget;
per-epoch metrics wait in memory (:class:`MlflowCallback`); a longer outage fails the step with one
line naming the URL (credentials masked). Every run opened here ends FINISHED, FAILED (an error) or
KILLED (Ctrl-C, SIGTERM); runs carry their driver's pid and host (``anet.driver_*`` tags), so
:func:`anet.mlops.registry.doctor.close_orphaned_runs` ends as KILLED those whose driver was killed outright.

MLflow is imported inside functions only: ``import anet.mlops.tracking.tracking`` stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from anet.errors import UserError
from anet.mlops.tracking import lineage, liveness, retry
from anet.mlops.tracking.callback import MlflowCallback  # noqa: F401 (public here)
from anet.mlops.tracking.endpoint import check_tracking_server, export_credentials, redact_url  # noqa: F401
from anet.mlops.tracking.models import log_model, model_requirements  # noqa: F401
from anet.mlops.tracking.record import (  # noqa: F401 (the public logging API lives here for callers)
    BATCH,
    MAX_PARAM_KEY,
    MAX_PARAM_VALUE,
    flatten,
    log_artifacts,
    log_eval_metrics,
    log_metrics,
    log_params,
    safe_mapping,
    str_values,
)

logger = logging.getLogger(__name__)


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at ``tracking_uri`` and return the URI actually used.

    ``None``/``""`` falls back to ``$MLFLOW_TRACKING_URI``, then to the embedded default
    ``sqlite:///<cwd>/mlflow.db`` (artifacts under ``<cwd>/mlruns``). It is set explicitly so an old
    ``./mlruns`` file store cannot silently take over. Relative sqlite paths are made absolute, so
    the returned URI works from a step process with another working directory. The file store is
    refused (MLflow 3 keeps it in maintenance mode) unless ``MLFLOW_ALLOW_FILE_STORE=true``.
    ``user:password@`` in an http(s) URI moves to ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (sent as
    basic auth; inherited by step subprocesses) and the returned URI has none. MLflow's HTTP retries
    are bounded by ``$ANET_MLFLOW_RETRY_BUDGET_S`` (:func:`anet.mlops.tracking.retry.apply_http_policy`).

    Example:
        >>> configure(None)                       # doctest: +SKIP
        'sqlite:////home/me/anet/mlflow.db'
    """
    import mlflow

    uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    elif (uri.startswith("file:") or "://" not in uri) and not _file_store_allowed():
        raise UserError(
            f"MLflow tracking URI {redact_url(uri)}: the file store is in maintenance mode in MLflow 3; "
            "use sqlite:///<dir>/mlflow.db or http(s)://<server> (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    uri = export_credentials(uri)
    retry.apply_http_policy()
    mlflow.set_tracking_uri(uri)
    return uri


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in {"1", "true", "yes"}


def experiment_name(dataset: str) -> str:
    """The MLflow experiment (and registered model) name for a dataset: ``anet-<dataset>``."""
    return f"anet-{dataset}"


def experiment_id(dataset: str) -> str:
    """Id of the dataset's experiment, created on first use (safe against a concurrent creator)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client, name = MlflowClient(), experiment_name(dataset)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name} is deleted; restore it with `mlflow experiments restore "
            f"--experiment-id {exp.experiment_id if exp else '?'}` or remove it for good with `mlflow gc`"
        )
    return exp.experiment_id


def start_parent_run(
    dataset: str,
    run_name: str,
    tags: Mapping[str, Any] | None,
    config_json: str,
    *,
    repo_dir: str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
    driver: bool = True,
) -> str:
    """Create the pipeline's parent run (left RUNNING; close it with :func:`end_run`); return its id.

    Params: the resolved config flattened to dotted keys (``loss.lambda_a``), plus
    ``lineage.git_commit``, ``lineage.dvc_data_hash`` (and ``lineage.data_fingerprint`` when given;
    otherwise add it later with :func:`log_lineage`). The same lineage goes into tags
    (``git.commit``, ``dvc.data_hash``, ``data.fingerprint``), with this process as the driver
    (``anet.driver_pid``/``_host``: :mod:`anet.mlops.registry.doctor` ends the run once it is gone; pass
    ``driver=False`` when this process is not the one that closes the run, e.g. a pipeline step
    opening it), and the full JSON into ``config/config.json``. An unreachable tracking server
    fails here, fast, as a UserError.
    """
    import mlflow
    from mlflow import MlflowClient

    check_tracking_server(mlflow.get_tracking_uri())
    client = MlflowClient()
    lineage_tags = lineage.lineage_tags(repo_dir, fingerprint)
    run_tags = {
        **safe_mapping(tags or {}),
        **lineage_tags,
        "anet.dataset": dataset,
        "anet.kind": "pipeline",
        "mlflow.source.git.commit": lineage_tags["git.commit"].removesuffix("+dirty"),
        **(liveness.driver_tags() if driver else {}),
    }
    with retry.outage_as_user_error("opening the pipeline's parent run"):
        run = client.create_run(experiment_id(dataset), run_name=run_name, tags=str_values(run_tags))
        run_id = run.info.run_id
        try:
            _log_config(client, run_id, config_json, lineage_tags)
        except BaseException:
            end_run(run_id, "FAILED")
            raise
    return run_id


def _log_config(client: Any, run_id: str, config_json: str, lineage_tags: Mapping[str, str]) -> None:
    params = flatten(json.loads(config_json)) if config_json else {}
    params.update({f"lineage.{k.replace('.', '_')}": v for k, v in lineage_tags.items()})
    log_params(run_id, params)
    if config_json:
        pretty = json.dumps(json.loads(config_json), indent=2, sort_keys=True)
        client.log_text(run_id, pretty, "config/config.json")


def log_lineage(run_id: str, fingerprint: str) -> None:
    """Attach the dataset fingerprint (known only after data preparation) to a run."""
    from mlflow import MlflowClient

    MlflowClient().set_tag(run_id, "data.fingerprint", fingerprint)
    log_params(run_id, {"lineage.data_fingerprint": fingerprint})


def run_status(exc: BaseException | None) -> str:
    """The status a run ends with after ``exc``: FINISHED (None, ``sys.exit(0)``), KILLED (Ctrl-C,
    SIGTERM as :class:`anet.mlops.tracking.liveness.Terminated`), FAILED (anything else)."""
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def end_run(run_id: str, status: str = "FINISHED") -> bool:
    """Close a run (``FINISHED``, ``FAILED`` or ``KILLED``); False when the server is unreachable.

    An outage is logged, not raised (the caller is usually on its way out with an error of its
    own); the run then stays RUNNING until :func:`anet.mlops.registry.doctor.close_orphaned_runs` ends it.
    """
    from mlflow import MlflowClient

    try:
        MlflowClient().set_terminated(run_id, status=status)
    except Exception as exc:
        if not retry.is_outage(exc):
            raise
        _warn_not_closed(run_id, status, exc)
        return False
    return True


def _warn_not_closed(run_id: str, status: str, exc: BaseException) -> None:
    import mlflow

    logger.warning("could not mark run %s %s: MLflow at %s unreachable (%s); `anet runs doctor` will "
                   "end it as KILLED", run_id, status, redact_url(mlflow.get_tracking_uri()),
                   retry.outage_reason(exc))


@contextlib.contextmanager
def start_step_run(parent_run_id: str, step_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[str]:
    """Nested run for one pipeline step, in this process; yields the step run's id.

    The step run is the active MLflow run inside the block (``mlflow.log_*``, :class:`MlflowCallback`,
    :func:`log_model` use it). It inherits the parent's non-``mlflow.*`` tags (lineage, optuna),
    gets ``mlflow.parentRunId``, ``anet.step`` and this process as its driver. It ends FINISHED,
    FAILED when the block raises, KILLED on Ctrl-C or SIGTERM (turned into
    :class:`~anet.mlops.tracking.liveness.Terminated` inside the block). A tracking outage that outlasts
    the retry budget leaves the block as one ``UserError`` line naming the (masked) URL.
    """
    import mlflow

    with retry.outage_as_user_error(f"opening the {step_name} step run"):
        parent = _parent_run(parent_run_id)
        inherited = {k: v for k, v in parent.data.tags.items()
                     if not k.startswith(("mlflow.", "anet.outcome", "anet.driver"))}
        step_tags = str_values({**inherited, **safe_mapping(tags or {}), "anet.kind": "step",
                                "anet.step": step_name, **liveness.driver_tags()})
        active = mlflow.active_run()
        nested = active is not None and active.info.run_id == parent_run_id
        run_id = mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=step_name,
                                  parent_run_id=parent_run_id, nested=nested, tags=step_tags).info.run_id
    status = "FAILED"
    try:
        with liveness.sigterm_raises():
            yield run_id
        status = "FINISHED"
    except BaseException as exc:
        status = run_status(exc)
        if isinstance(exc, Exception) and not isinstance(exc, UserError) and retry.is_outage(exc):
            raise retry.outage_error(mlflow.get_tracking_uri(), exc, f"running the {step_name} step") from None
        raise
    finally:
        _end_step_run(run_id, status)


def _parent_run(parent_run_id: str) -> Any:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_run(parent_run_id)
    except MlflowException as exc:
        if retry.is_outage(exc):
            raise
        where = redact_url(mlflow.get_tracking_uri())
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"MLflow at {where}: {redact_url(exc.message.splitlines()[0])}") from None
        raise UserError(f"MLflow parent run {parent_run_id} not found at {where}; start the pipeline "
                        "from its driver (it creates the parent run) with the same MLFLOW_TRACKING_URI") from None


def _end_step_run(run_id: str, status: str) -> None:
    """End the step run without masking the block's own error; an outage is only logged."""
    import mlflow

    active = mlflow.active_run()
    try:
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)  # pops the active-run stack before it calls the server
        else:
            mlflow.MlflowClient().set_terminated(run_id, status=status)
    except Exception as exc:
        if retry.is_outage(exc):
            _warn_not_closed(run_id, status, exc)
        elif status == "FINISHED":
            raise
        else:  # the block's own error is on its way out: say this one, do not mask that one
            logger.warning("could not mark run %s %s: %s", run_id, status, redact_url(str(exc))[:300])
