"""Model registry: every completed run registers a version; ``champion`` moves only when earned.

Registered model ``anet-<dataset>`` (design.md section 4). A new version is tagged with its metrics
(``metric.<name>``) and lineage, gets alias ``challenger``, and takes alias ``champion`` only when
its primary metric beats the champion's by at least the margin (higher is better; a tie never
moves the champion). The decision and both numbers are stored as version tags::

    decision = register_candidate(model_uri, "synthetic", run_id, {"eval/test/mAP": 0.61},
                                  primary_metric="eval/test/mAP", margin=0.0,
                                  lineage_tags={"git.commit": "014f7fc"})
    decision.decision        # "first-champion" | "promoted" | "kept-champion" | "no-metric" | "other-data" | "registered"
    promote("synthetic", "2", reason="rollback: v3 regressed on night images")   # manual / rollback

One guarded unit: take the promotion lock (:mod:`anet.mlops.registry.lock`: tags on ``anet-<dataset>``
itself, crash-safe), register the version (created with ``promotion.decision=pending``, in the
same database write), set ``challenger``, decide, move ``champion``, tag the decision, release.
If anything fails on the way the version is tagged ``promotion.decision=failed`` with the reason;
if even that cannot be written (the process was killed, the server is gone), the next lock holder
marks every ``pending`` version it finds as ``failed``. So no version stays without a decision.
The alias moves only after the version won under the lock, and its verdict is tagged on it first
(``promotion.intent``): a pending or failing version found holding ``champion`` (killed between the
move and the decision) gets that decision, never ``failed`` on the champion.
Inside the lock the champion is re-read right before the alias moves and read back after; if it
moved anyway (someone bypassing the lock), the comparison is redone a bounded number of times.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anet.mlops.registry.lock import PromotionLock
from anet.mlops.registry.versions import (  # noqa: F401 (public here)
    CHALLENGER,
    CHAMPION,
    VersionInfo,
    alias_version,
    champion_info,
    finite,
    list_versions,
    model_name,
    require_model,
    require_version,
    version_metric,
)
from anet.mlops.tracking import retry
from anet.mlops.tracking.endpoint import redact_url
from anet.mlops.tracking.record import safe_mapping

MAX_ATTEMPTS = 5
PENDING, FAILED = "pending", "failed"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What a registration (or a manual promotion) did, and whether the version is champion now."""

    version: str
    decision: str  # first-champion | promoted | kept-champion | other-data | no-metric | manual | registered
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
    promotion would have done; :func:`consider_promotion` can apply it later. All of it happens
    under the promotion lock; a failure leaves the version tagged ``promotion.decision=failed``.
    """
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    candidate = finite(metrics.get(primary_metric))
    tags = {
        **{f"metric.{k}": repr(float(v)) for k, v in metrics.items() if finite(v) is not None},
        **safe_mapping(lineage_tags or {}),
        "run_id": run_id,
        "promotion.primary_metric": primary_metric,
        "promotion.margin": repr(float(margin)),
    }
    with retry.outage_as_user_error(f"registering a version of {name}"):
        _ensure_model(client, name)
        with PromotionLock(client, name) as lock:
            fail_orphaned_versions(client, name, lock)
            version = _create_version(model_uri, name, {**tags, "promotion.decision": PENDING,
                                                        "promotion.lock": lock.key})
            try:
                return _challenge(client, name, version, candidate, primary_metric, margin, promote, lock)
            except BaseException as exc:
                _tag_failed(client, name, version, exc)
                raise


def _ensure_model(client: Any, name: str) -> None:
    """Create the registered model (it holds the lock's tags) unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}:
            raise


def _create_version(model_uri: str, name: str, tags: Mapping[str, Any]) -> str:
    import mlflow

    return str(mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}).version)


def _challenge(client: Any, name: str, version: str, candidate: float | None, primary_metric: str,
               margin: float, promote: bool, lock: PromotionLock) -> Decision:
    """Inside the lock: alias ``challenger``, compare, maybe move ``champion``, tag the decision."""
    lock.check()
    client.set_registered_model_alias(name, CHALLENGER, version)
    decision = _decide_and_move(client, name, version, candidate, primary_metric, margin, move=promote,
                                guard=lock.check)
    if not promote and decision.decision != "no-metric":
        decision = dataclasses.replace(decision, decision="registered",
                                       note=f"promotion off; would be {decision.decision}: {decision.note}")
    lock.check()
    _tag_decision(client, name, decision)
    return decision


def consider_promotion(dataset: str, version: str | int, primary_metric: str, margin: float = 0.0,
                       apply: bool = False) -> Decision:
    """Compare an existing version with the champion; move the alias only when ``apply`` is True.

    A dry run (``apply=False``) changes nothing; its ``would_promote`` says what applying would do.
    """
    from mlflow import MlflowClient

    client, name = MlflowClient(), model_name(dataset)
    require_model(client, name, dataset)
    version = str(require_version(client, name, version).version)
    candidate = version_metric(client, name, version, primary_metric)
    if not apply:
        dry = _decide_and_move(client, name, version, candidate, primary_metric, margin, move=False)
        return dataclasses.replace(dry, note=f"{dry.note} (dry run: nothing changed)")
    with PromotionLock(client, name) as lock:
        decision = _decide_and_move(client, name, version, candidate, primary_metric, margin, guard=lock.check)
        lock.check()
        _tag_decision(client, name, decision)
    return decision


def _decide_and_move(client: Any, name: str, version: str, candidate: float | None, primary_metric: str,
                     margin: float, move: bool = True, guard: Callable[[], None] = lambda: None) -> Decision:
    """Compare with the current champion and move the alias if the candidate wins (bounded retries);
    ``guard`` runs right before the alias moves (the lock's :meth:`~PromotionLock.check`)."""
    champ_value: float | None = None
    champ: str | None = None
    for _ in range(MAX_ATTEMPTS):
        champ = alias_version(client, name, CHAMPION)
        champ_value = version_metric(client, name, champ, primary_metric) if champ else None
        if champ == version:
            return Decision(version, "kept-champion", candidate, champ_value, champ, True, "already the champion")
        if candidate is None:
            note = f"candidate has no finite {primary_metric}; never promoted automatically"
            return Decision(version, "no-metric", None, champ_value, champ, False, note)
        verdict, note = _verdict(candidate, champ, champ_value, primary_metric, margin)
        other = _measured_on_other_data(client, name, version, champ)
        if other:
            verdict, note = "other-data", other
        if verdict in ("kept-champion", "other-data") or not move:
            return Decision(version, verdict, candidate, champ_value, champ, False, note)
        if alias_version(client, name, CHAMPION) != champ:  # moved since we compared
            continue
        _set_version_tags(client, name, version, {  # what a kill right after the move leaves to finish
            "promotion.intent": verdict, "promotion.note": note, "promotion.candidate_value": _fmt(candidate),
            "promotion.champion_value": _fmt(champ_value), "promotion.champion_version": champ or "none"})
        guard()
        client.set_registered_model_alias(name, CHAMPION, version)
        if alias_version(client, name, CHAMPION) == version:
            return Decision(version, verdict, candidate, champ_value, champ, True, note)
    now = alias_version(client, name, CHAMPION)
    note = f"champion alias kept moving; gave up after {MAX_ATTEMPTS} attempts"
    return Decision(version, "kept-champion", candidate, champ_value, champ, now == version, note)


def _measured_on_other_data(client: Any, name: str, version: str, champ: str | None) -> str | None:
    """Why the two versions' metrics cannot be compared, or None: both carry a ``data.fingerprint``
    (the prepared dataset, validation split included) and the fingerprints differ, e.g. another profile
    of the same dataset or a new version of the data. Such a candidate is never promoted automatically."""
    if champ is None:
        return None
    mine, theirs = (client.get_model_version(name, v).tags.get("data.fingerprint") for v in (version, champ))
    if not mine or not theirs or mine == theirs:
        return None
    return (f"not comparable: measured on data {mine[:12]}, champion v{champ} on {theirs[:12]} (another "
            f"profile or data version); `make promote VERSION={version}` promotes it explicitly")


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
    require_model(client, name, dataset)
    mv = require_version(client, name, version)
    metric = mv.tags.get("promotion.primary_metric")
    with PromotionLock(client, name) as lock:
        previous = alias_version(client, name, CHAMPION)
        lock.check()
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        is_champion = alias_version(client, name, CHAMPION) == str(mv.version)
        previous_value = version_metric(client, name, previous, metric) if previous and metric else None
        note = reason or "manual promotion"
        decision = Decision(str(mv.version), "manual", version_metric(client, name, str(mv.version), metric)
                            if metric else None, previous_value, previous, is_champion, note)
        _set_version_tags(client, name, decision.version, {
            "promotion.decision": "manual", "promotion.reason": reason or "-", "promotion.note": note,
            "promotion.previous_champion": previous or "none", "promotion.time": _now()})
    return decision


def fail_orphaned_versions(client: Any, name: str, lock: PromotionLock | None = None) -> list[str]:
    """Settle every version still ``pending`` that is not ``lock``'s own; returns them. One holding
    ``champion`` gets the decision it won it with (:func:`_finish_move`); the others ``failed``.

    Only the lock holder (or a doctor with nothing running) may call this: a pending version
    under a held lock is that holder's work in progress.
    """
    query = f"name='{name}' and tags.`promotion.decision` = '{PENDING}'"
    orphans = [mv for mv in client.search_model_versions(query)
               if lock is None or mv.tags.get("promotion.lock") != lock.key]
    for mv in orphans:
        if lock is not None:
            lock.check()
        if _finish_move(client, name, str(mv.version), mv.tags, "its registration died after moving "
                        "champion; decided by the next lock holder"):
            continue
        note = "its registration died before deciding (process killed or tracking outage)"
        _set_version_tags(client, name, str(mv.version), {"promotion.decision": FAILED, "promotion.note": note,
                                                          "promotion.time": _now()})
        logger.warning("%s v%s: registration never finished; tagged promotion.decision=failed", name, mv.version)
    return [str(mv.version) for mv in orphans]


def _tag_failed(client: Any, name: str, version: str, exc: BaseException) -> None:
    """Best effort: the version whose registration failed says so (else the next holder does)."""
    reason = redact_url(str(exc).splitlines()[0] if str(exc) else "")
    note = f"registration failed: {type(exc).__name__}: {reason}"[:500]
    try:
        if _finish_move(client, name, version, client.get_model_version(name, version).tags, f"{note}, after "
                        "moving champion"):
            return
        _set_version_tags(client, name, version, {"promotion.decision": FAILED, "promotion.note": note,
                                                  "promotion.time": _now()})
    except Exception as tag_exc:  # noqa: BLE001 - the original error is what the caller must see
        logger.warning("%s v%s: could not tag the failed registration (%s); the next registration "
                       "tags it", name, version, type(tag_exc).__name__)


def _finish_move(client: Any, name: str, version: str, tags: Mapping[str, str], why: str) -> bool:
    """True after tagging the decision of a version that holds ``champion`` but whose registration ended
    before saying why: the alias moves only after a win under the lock, tagged as ``promotion.intent``."""
    if alias_version(client, name, CHAMPION) != version:
        return False
    decision = tags.get("promotion.intent") or "promoted"
    _set_version_tags(client, name, version, {"promotion.decision": decision, "promotion.time": _now(),
                                              "promotion.note": f"{tags.get('promotion.note', '-')} ({why})"})
    logger.warning("%s v%s holds champion but its decision was never tagged (%s); tagged %s", name, version,
                   why, decision)
    return True


def _tag_decision(client: Any, name: str, d: Decision) -> None:
    _set_version_tags(client, name, d.version, {
        "promotion.decision": d.decision,
        "promotion.candidate_value": _fmt(d.candidate_value),
        "promotion.champion_value": _fmt(d.champion_value),
        "promotion.champion_version": d.champion_version or "none",
        "promotion.note": d.note or "-",
    })


def _set_version_tags(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _fmt(value: float | None) -> str:
    return "none" if value is None else repr(float(value))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
