"""Model registry: every completed run registers a version; ``champion`` moves only when earned.

Registered model ``anet-<dataset>`` (design.md section 4). A new version is tagged with its metrics
(``metric.<name>``) and lineage, gets alias ``challenger``, and takes alias ``champion`` only when
its primary metric beats the champion's by at least the margin (higher is better; a tie never
moves the champion). The decision and both numbers are stored as version tags::

    decision = register_candidate(model_uri, "synthetic", run_id, {"eval/test/mAP": 0.61},
                                  primary_metric="eval/test/mAP", margin=0.0,
                                  lineage_tags={"git.commit": "014f7fc"})
    decision.decision        # "first-champion" | "promoted" | "kept-champion" | "no-metric"
    promote("synthetic", "2", reason="rollback: v3 regressed on night images")   # manual / rollback

MLflow has no compare-and-set on aliases, so moving ``champion`` happens under a registry-wide
lock: a transient registered model ``anet-<dataset>.lock`` whose creation is atomic in the
tracking store (unique name), working the same for a local sqlite file and a remote server. Inside
the lock the champion is re-read right before the alias moves and read back after; if it moved
anyway (someone bypassing the lock), the comparison is redone a bounded number of times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from anet.errors import UserError
from anet.mlops.tracking import experiment_name, redact_url, safe_mapping

CHAMPION, CHALLENGER = "champion", "challenger"
MAX_ATTEMPTS = 5
LOCK_WAIT_S = 120.0  # give up waiting for another registration after this long
LOCK_STALE_S = 300.0  # a lock older than this was left by a crashed process and is broken


@dataclass(frozen=True)
class Decision:
    """What a registration (or a manual promotion) did, and whether the version is champion now."""

    version: str
    decision: str  # first-champion | promoted | kept-champion | no-metric | manual | registered
    candidate_value: float | None
    champion_value: float | None  # the champion it was compared with (None: none, or no metric)
    champion_version: str | None  # that champion's version (the previous one after a promotion)
    is_champion: bool
    note: str = ""

    @property
    def would_promote(self) -> bool:
        """True when the version wins (or won) the champion alias under this decision."""
        return self.decision in {"first-champion", "promoted", "manual"}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for step outputs (``champion`` = ``is_champion``)."""
        return {**dataclasses.asdict(self), "champion": self.is_champion}

    def describe(self) -> str:
        """One line for a terminal: ``v3 promoted: 0.62 beats v2's 0.58 by >= 0 (champion now)``."""
        state = "champion now" if self.is_champion else "not champion"
        return f"v{self.version} {self.decision}: {self.note} ({state})"


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


def register_candidate(
    model_uri: str,
    dataset: str,
    run_id: str,
    metrics: Mapping[str, float],
    primary_metric: str,
    margin: float = 0.0,
    lineage_tags: Mapping[str, str] | None = None,
    promote: bool = True,
) -> Decision:
    """Register ``model_uri`` as a new version, alias it ``challenger``, promote it if it wins.

    A candidate without a finite ``primary_metric`` is registered but never becomes champion
    (decision ``no-metric``). A champion without the metric counts as beatable (the note says so).
    ``promote=False`` (e.g. sweep trials) only registers: decision ``registered``, the note says what
    promotion would have done; :func:`consider_promotion` can apply it later.
    """
    import mlflow
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    candidate = _finite(metrics.get(primary_metric))
    tags = {
        **{f"metric.{k}": repr(float(v)) for k, v in metrics.items() if _finite(v) is not None},
        **safe_mapping(lineage_tags or {}),
        "run_id": run_id,
        "promotion.primary_metric": primary_metric,
        "promotion.margin": repr(float(margin)),
    }
    # creates the registered model on first use (and tolerates a concurrent creator)
    version = str(mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}).version)
    with _promotion_lock(client, name):  # alias writes race in the store (unique constraint): serialise them
        client.set_registered_model_alias(name, CHALLENGER, version)
        decision = _decide_and_move(client, name, version, candidate, primary_metric, margin, move=promote)
    if not promote and decision.decision != "no-metric":
        decision = dataclasses.replace(decision, decision="registered",
                                       note=f"promotion off; would be {decision.decision}: {decision.note}")
    _tag_decision(client, name, decision)
    return decision


def consider_promotion(dataset: str, version: str | int, primary_metric: str, margin: float = 0.0,
                       apply: bool = False) -> Decision:
    """Compare an existing version with the champion; move the alias only when ``apply`` is True.

    A dry run (``apply=False``) changes nothing; its ``would_promote`` says what applying would do.
    """
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    _require_model(client, name, dataset)
    version = str(_require_version(client, name, version).version)
    candidate = _version_metric(client, name, version, primary_metric)
    if not apply:
        dry = _decide_and_move(client, name, version, candidate, primary_metric, margin, move=False)
        return dataclasses.replace(dry, note=f"{dry.note} (dry run: nothing changed)")
    with _promotion_lock(client, name):
        decision = _decide_and_move(client, name, version, candidate, primary_metric, margin)
    _tag_decision(client, name, decision)
    return decision


def _decide_and_move(client: Any, name: str, version: str, candidate: float | None,
                     primary_metric: str, margin: float, move: bool = True) -> Decision:
    """Compare with the current champion and move the alias if the candidate wins (bounded retries)."""
    champ_value: float | None = None
    champ: str | None = None
    for _ in range(MAX_ATTEMPTS):
        champ = _alias_version(client, name, CHAMPION)
        champ_value = _version_metric(client, name, champ, primary_metric) if champ else None
        if champ == version:
            return Decision(version, "kept-champion", candidate, champ_value, champ, True, "already the champion")
        if candidate is None:
            note = f"candidate has no finite {primary_metric}; never promoted automatically"
            return Decision(version, "no-metric", None, champ_value, champ, False, note)
        verdict, note = _verdict(candidate, champ, champ_value, primary_metric, margin)
        if verdict == "kept-champion" or not move:
            return Decision(version, verdict, candidate, champ_value, champ, False, note)
        if _alias_version(client, name, CHAMPION) != champ:  # moved since we compared
            continue
        client.set_registered_model_alias(name, CHAMPION, version)
        if _alias_version(client, name, CHAMPION) == version:
            return Decision(version, verdict, candidate, champ_value, champ, True, note)
    now = _alias_version(client, name, CHAMPION)
    note = f"champion alias kept moving; gave up after {MAX_ATTEMPTS} attempts"
    return Decision(version, "kept-champion", candidate, champ_value, champ, now == version, note)


def _verdict(candidate: float, champ: str | None, champ_value: float | None, metric: str,
             margin: float) -> tuple[str, str]:
    if champ is None:
        return "first-champion", "no champion yet"
    if champ_value is None:
        return "promoted", f"champion v{champ} has no {metric}; treated as beatable"
    if candidate > champ_value and candidate - champ_value >= margin:
        return "promoted", f"{candidate:.6g} beats v{champ}'s {champ_value:.6g} by >= {margin:g}"
    return "kept-champion", f"{candidate:.6g} does not beat v{champ}'s {champ_value:.6g} by {margin:g}"


def promote(dataset: str, version: str | int, reason: str = "") -> Decision:
    """Manually make ``version`` the champion (promotion or rollback); returns what changed.

    The version gets ``promotion.decision=manual``, ``promotion.reason`` and
    ``promotion.previous_champion``; its registration-time comparison tags stay as they were.
    """
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    _require_model(client, name, dataset)
    mv = _require_version(client, name, version)
    metric = mv.tags.get("promotion.primary_metric")
    with _promotion_lock(client, name):
        previous = _alias_version(client, name, CHAMPION)
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        is_champion = _alias_version(client, name, CHAMPION) == str(mv.version)
    previous_value = _version_metric(client, name, previous, metric) if previous and metric else None
    note = reason or "manual promotion"
    decision = Decision(str(mv.version), "manual", _version_metric(client, name, str(mv.version), metric)
                        if metric else None, previous_value, previous, is_champion, note)
    for key, value in {"promotion.decision": "manual", "promotion.reason": reason or "-", "promotion.note": note,
                       "promotion.previous_champion": previous or "none", "promotion.time": _now()}.items():
        client.set_model_version_tag(name, decision.version, key, value)
    return decision


def champion_info(dataset: str) -> VersionInfo | None:
    """The current champion of ``anet-<dataset>`` (None when there is none yet)."""
    return next((v for v in list_versions(dataset) if CHAMPION in v.aliases), None)


def list_versions(dataset: str) -> list[VersionInfo]:
    """All versions of ``anet-<dataset>``, oldest first, with aliases and their primary metric."""
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    model = _require_model(client, name, dataset)
    aliases: dict[str, list[str]] = {}
    for alias, ver in (model.aliases or {}).items():
        aliases.setdefault(str(ver), []).append(alias)
    infos = []
    for mv in client.search_model_versions(f"name='{name}'"):
        metric = mv.tags.get("promotion.primary_metric")
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        infos.append(VersionInfo(
            str(mv.version), tuple(sorted(aliases.get(str(mv.version), []))), mv.run_id, metric,
            _finite(mv.tags.get(f"metric.{metric}")) if metric else None,
            mv.tags.get("promotion.decision"), created, dict(mv.tags),
        ))
    return sorted(infos, key=lambda v: int(v.version))


def _tag_decision(client: Any, name: str, d: Decision) -> None:
    tags = {
        "promotion.decision": d.decision,
        "promotion.candidate_value": _fmt(d.candidate_value),
        "promotion.champion_value": _fmt(d.champion_value),
        "promotion.champion_version": d.champion_version or "none",
        "promotion.note": d.note or "-",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, d.version, key, value)


def _require_model(client: Any, name: str, dataset: str) -> Any:
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


def _require_version(client: Any, name: str, version: str | int) -> Any:
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


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    """Version an alias points at (None if unset), read fresh from the store."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            return None
        raise


def _version_metric(client: Any, name: str, version: str | None, metric: str | None) -> float | None:
    """A version's metric: its ``metric.<name>`` tag, else the value logged in its run."""
    if version is None or metric is None:
        return None
    mv = client.get_model_version(name, version)
    value = _finite(mv.tags.get(f"metric.{metric}"))
    if value is None and mv.run_id:
        value = _finite(client.get_run(mv.run_id).data.metrics.get(metric))
    return value


@contextlib.contextmanager
def _promotion_lock(client: Any, name: str) -> Iterator[None]:
    """Mutual exclusion across processes and machines: a registered model named ``<name>.lock``."""
    from mlflow.exceptions import MlflowException

    lock, token = f"{name}.lock", uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            client.create_registered_model(lock, tags={"anet.lock.owner": token},
                                           description="transient lock of anet's champion promotion")
            break
        except MlflowException as exc:
            # the sqlalchemy store answers a lost insert race by reading the winner back, which
            # yields RESOURCE_DOES_NOT_EXIST when the winner released in between: contended too
            if exc.error_code not in {"RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"}:
                raise
        _break_stale_lock(client, lock)
        if time.monotonic() > deadline:
            raise UserError(f"registered model {lock} has been held for over {LOCK_WAIT_S:.0f} s; if no "
                            "registration is running, delete it in the MLflow UI and retry")
        time.sleep(random.uniform(0.05, 0.3))
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if client.get_registered_model(lock).tags.get("anet.lock.owner") == token:
                client.delete_registered_model(lock)


def _break_stale_lock(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        held = client.get_registered_model(lock)
        if time.time() * 1000 - held.creation_timestamp > LOCK_STALE_S * 1000:
            client.delete_registered_model(lock)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: float | None) -> str:
    return "none" if value is None else repr(float(value))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
