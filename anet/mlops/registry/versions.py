"""Reading the registry: versions of ``anet-<dataset>``, their aliases, metrics and decisions.

The write side (registration, promotion) is :mod:`anet.mlops.registry.registry`, which re-exports the
public names here::

    champion_info("synthetic")            # VersionInfo of the champion, or None
    for v in list_versions("synthetic"):  # oldest first
        print(v.version, v.aliases, v.primary_value, v.decision)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from anet.errors import UserError
from anet.mlops.tracking.endpoint import redact_url
from anet.mlops.tracking.tracking import experiment_name

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as ``registry show`` prints it."""

    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    primary_metric: str | None
    primary_value: float | None
    decision: str | None
    created: str
    tags: dict[str, str] = field(default_factory=dict)


def model_name(dataset: str) -> str:
    """Registered model name of a dataset: ``anet-<dataset>``."""
    return experiment_name(dataset)


def champion_info(dataset: str) -> VersionInfo | None:
    """The current champion of ``anet-<dataset>`` (None when there is none yet)."""
    return next((v for v in list_versions(dataset) if CHAMPION in v.aliases), None)


def list_versions(dataset: str) -> list[VersionInfo]:
    """All versions of ``anet-<dataset>``, oldest first, with aliases and their primary metric."""
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    model = require_model(client, name, dataset)
    aliases: dict[str, list[str]] = {}
    for alias, ver in (model.aliases or {}).items():
        aliases.setdefault(str(ver), []).append(alias)
    infos = []
    for mv in client.search_model_versions(f"name='{name}'"):
        metric = mv.tags.get("promotion.primary_metric")
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        infos.append(VersionInfo(
            str(mv.version), tuple(sorted(aliases.get(str(mv.version), []))), mv.run_id, metric,
            finite(mv.tags.get(f"metric.{metric}")) if metric else None,
            mv.tags.get("promotion.decision"), created, dict(mv.tags),
        ))
    return sorted(infos, key=lambda v: int(v.version))


def require_model(client: Any, name: str, dataset: str) -> Any:
    """The registered model ``name``, or a ``UserError`` saying how to create it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    where = redact_url(mlflow.get_tracking_uri())
    raise UserError(f"no registered model {name} at {where}; run the pipeline for {dataset} first "
                    f"(make pipeline-run DATASET={dataset}) or point MLFLOW_TRACKING_URI at the right server")


def require_version(client: Any, name: str, version: str | int) -> Any:
    """Version ``version`` (``3`` or ``v3``) of ``name``, or a ``UserError`` listing the versions."""
    from mlflow.exceptions import MlflowException

    text = str(version).strip().removeprefix("v")
    if text.isdigit():
        try:
            return client.get_model_version(name, text)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    known = sorted(int(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
    listed = ", ".join(map(str, known)) or "none"
    raise UserError(f"registered model {name} has no version {version}; versions: {listed}")


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """Version an alias points at (None if unset), read fresh from the store."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            return None
        raise


def version_metric(client: Any, name: str, version: str | None, metric: str | None) -> float | None:
    """A version's metric: its ``metric.<name>`` tag, else the value logged in its run."""
    if version is None or metric is None:
        return None
    mv = client.get_model_version(name, version)
    value = finite(mv.tags.get(f"metric.{metric}"))
    if value is None and mv.run_id:
        value = finite(client.get_run(mv.run_id).data.metrics.get(metric))
    return value


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (missing, NaN, inf, not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
