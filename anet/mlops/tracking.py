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
        model_uri = log_model(model, input_example=example)
    end_run(parent, "FINISHED")

MLflow is imported inside functions only: ``import anet.mlops.tracking`` stays cheap. Nothing that
looks like a credential (key names with secret/password/token/access_key/...) is ever logged, and
user:password parts of URLs are masked in messages.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from anet.callbacks import Callback
from anet.errors import UserError
from anet.mlops import lineage
from anet.mlops.models import log_embedding_model, log_model, model_requirements  # noqa: F401

MAX_PARAM_VALUE = 6000  # MLflow 3 limit on a param value (characters)
MAX_PARAM_KEY = 250
BATCH = 100  # params/tags/metrics per log_batch request (server-side limit is larger)
_SECRET_KEY = re.compile(r"passw(or)?d|secret|token|access[_-]?key|credential|api[_-]?key|^auth", re.I)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at ``tracking_uri`` and return the URI actually used.

    ``None``/``""`` falls back to ``$MLFLOW_TRACKING_URI``, then to the embedded default
    ``sqlite:///<cwd>/mlflow.db`` (artifacts under ``<cwd>/mlruns``). It is set explicitly so an old
    ``./mlruns`` file store cannot silently take over. Relative sqlite paths are made absolute, so
    the returned URI works from a step process with another working directory. The file store is
    refused (MLflow 3 keeps it in maintenance mode) unless ``MLFLOW_ALLOW_FILE_STORE=true``.

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
    mlflow.set_tracking_uri(uri)
    return uri


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in {"1", "true", "yes"}


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (one line naming the URL) when an http(s) tracking server is unreachable.

    For a sqlite URI the directory holding the database must exist. Other schemes pass unchecked.
    """
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise UserError(f"MLflow tracking URI {uri}: directory {folder} does not exist; create it first")
        return
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (http(s) only)
            reply.read(64)
    except urllib.error.HTTPError as exc:
        hint = " (the server rejects this Host header: start it with --allowed-hosts)" if exc.code == 403 else ""
        raise UserError(
            f"MLflow tracking server {redact_url(uri)} answered HTTP {exc.code} on /health{hint}"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"MLflow tracking server {redact_url(uri)} is unreachable ({reason}); start it or unset "
            "MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def redact_url(text: str) -> str:
    """Mask ``user:password@`` in URLs so they can go into messages and logs."""
    return _URL_USERINFO.sub("***@", text)


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
) -> str:
    """Create the pipeline's parent run (left RUNNING; close it with :func:`end_run`); return its id.

    Params: the resolved config flattened to dotted keys (``loss.lambda_a``), plus
    ``lineage.git_commit``, ``lineage.dvc_data_hash`` (and ``lineage.data_fingerprint`` when given;
    otherwise add it later with :func:`log_lineage`). The same lineage goes into tags
    (``git.commit``, ``dvc.data_hash``, ``data.fingerprint``) and the full JSON into
    ``config/config.json``. An unreachable tracking server fails here, fast, as a UserError.
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
    }
    run = client.create_run(experiment_id(dataset), run_name=run_name, tags=_str_values(run_tags))
    run_id = run.info.run_id
    params = flatten(json.loads(config_json)) if config_json else {}
    params.update({f"lineage.{k.replace('.', '_')}": v for k, v in lineage_tags.items()})
    log_params(run_id, params)
    if config_json:
        pretty = json.dumps(json.loads(config_json), indent=2, sort_keys=True)
        client.log_text(run_id, pretty, "config/config.json")
    return run_id


def log_lineage(run_id: str, fingerprint: str) -> None:
    """Attach the dataset fingerprint (known only after data preparation) to a run."""
    from mlflow import MlflowClient

    MlflowClient().set_tag(run_id, "data.fingerprint", fingerprint)
    log_params(run_id, {"lineage.data_fingerprint": fingerprint})


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Close a run created by :func:`start_parent_run` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    from mlflow import MlflowClient

    MlflowClient().set_terminated(run_id, status=status)


@contextlib.contextmanager
def start_step_run(parent_run_id: str, step_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[str]:
    """Nested run for one pipeline step, in this process; yields the step run's id.

    The step run is the active MLflow run inside the block (``mlflow.log_*``, :class:`MlflowCallback`,
    :func:`log_model` use it). It inherits the parent's non-``mlflow.*`` tags (lineage, optuna),
    gets ``mlflow.parentRunId`` and ``anet.step``, and ends FAILED if the block raises.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        parent = mlflow.MlflowClient().get_run(parent_run_id)
    except MlflowException as exc:
        where = redact_url(mlflow.get_tracking_uri())
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"MLflow at {where}: {exc.message.splitlines()[0]}") from None
        raise UserError(f"MLflow parent run {parent_run_id} not found at {where}; start the pipeline "
                        "from its driver (it creates the parent run) with the same MLFLOW_TRACKING_URI") from None
    inherited = {k: v for k, v in parent.data.tags.items() if not k.startswith(("mlflow.", "anet.outcome"))}
    step_tags = _str_values({**inherited, **safe_mapping(tags or {}), "anet.kind": "step", "anet.step": step_name})
    active = mlflow.active_run()
    nested = active is not None and active.info.run_id == parent_run_id
    with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=step_name,
                          parent_run_id=parent_run_id, nested=nested, tags=step_tags) as run:
        yield run.info.run_id


class MlflowCallback(Callback):
    """Engine callback: ``train/<term>`` per epoch and the in-training evaluation, at step=epoch.

    Logs into ``run_id`` or, when None, the run active at construction (the stage's step run), so
    each stage's nested run holds its own ``train/*`` history. Evaluation metrics keep their names
    when they already carry a prefix (``val/mAP``), else get ``val/``. Never asks to stop.
    """

    def __init__(self, run_id: str | None = None):
        import mlflow

        active = mlflow.active_run()
        self.run_id = run_id or (active.info.run_id if active else None)
        if self.run_id is None:
            raise RuntimeError("MlflowCallback needs a run: create it inside start_step_run(...)")

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        log_metrics({f"train/{name}": value for name, value in terms.items()}, step=epoch, run_id=self.run_id)

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        named = {(k if "/" in k else f"val/{k}"): v for k, v in metrics.items()}
        log_metrics(named, step=epoch, run_id=self.run_id)
        return False


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
        if _is_number(value)
    }
    log_metrics(flat, step=0, run_id=run_id)
    return flat


def log_metrics(metrics: Mapping[str, float], step: int = 0, run_id: str | None = None) -> None:
    """Log numeric metrics in batches (non-numbers skipped) to ``run_id`` or the active run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    run_id = run_id or _active_run_id()
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _is_number(v)]
    client = MlflowClient()
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, metrics=items[start:start + BATCH], synchronous=True)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (credential-looking keys dropped, values cut to MLflow's 6000 characters)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    items = [Param(k[:MAX_PARAM_KEY], _param_value(v)) for k, v in safe_mapping(params).items()]
    client = MlflowClient()
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH], synchronous=True)


def log_artifacts(paths: Iterable[str | os.PathLike[str]], artifact_path: str | None = None,
                  run_id: str | None = None) -> None:
    """Upload files (and whole directories, under their own name) to ``artifact_path`` of a run."""
    from mlflow import MlflowClient

    client, run_id = MlflowClient(), run_id or _active_run_id()
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


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _str_values(values: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _active_run_id() -> str:
    import mlflow

    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("no active MLflow run: pass run_id or call inside start_step_run(...)")
    return active.info.run_id
