"""Optuna on both sides of a pipeline run: storage, pruners, and the in-training pruning callback.

A sweep trial is a whole pipeline run. The driver (``pipelines/sweep.py``) asks the study for a
trial and passes a small JSON "trial reference" down to the training step; the training step
re-attaches to that RUNNING trial to report per-epoch validation mAP and to ask whether to stop::

    ref = TrialRef(study_name="anet-synthetic", storage="sqlite:////abs/optuna.db",
                   trial_id=3, trial_number=3, pruner={"kind": "median"})
    cb = pruning_callback_from_json(ref.to_json(), metric="val/mAP")
    train_stage(..., callbacks=[cb])      # on_eval() returns True once Optuna says prune

Optuna does not store the pruner with the study, so the trial reference carries its spec and the
training step rebuilds the same pruner explicitly (a plain ``load_study`` would silently fall back
to a default ``MedianPruner``). Optuna is imported lazily; ``import anet.mlops.sweeps.optuna_bridge`` is
cheap.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anet.errors import UserError
from anet.train.callbacks import Callback


@dataclass(frozen=True)
class TrialRef:
    """What a training step needs to find its trial again (JSON-able, no credentials in it)."""

    study_name: str
    storage: str
    trial_id: int
    trial_number: int
    pruner: dict[str, Any] = field(default_factory=lambda: {"kind": "median"})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialRef:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise UserError(f"trial reference is not valid JSON for TrialRef: {exc}") from None


def storage_url(value: str | None, default_dir: Path) -> str:
    """Normalise a storage setting: None -> a local sqlite file; a path -> ``journal:<abs path>``."""
    if not value:
        default_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(default_dir / 'optuna.db').resolve()}"
    if "://" in value or value.startswith("journal:"):
        return value
    return f"journal:{Path(value).resolve()}"


def open_storage(url: str) -> Any:
    """An Optuna storage for an RDB URL (sqlite/postgresql/mysql), ``journal:<file>`` or ``redis://``."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalRedisBackend

    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if url.startswith("redis://"):
        return JournalStorage(JournalRedisBackend(url))
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return RDBStorage(url, engine_kwargs=kwargs)
    except (optuna.exceptions.StorageInternalError, Exception) as exc:  # driver errors vary by backend
        raise UserError(f"cannot open Optuna storage {redact(url)}: {str(exc).splitlines()[0]}") from None


STORAGE_ENV = "OPTUNA_STORAGE"


def public_storage(url: str) -> str:
    """The storage URL as it may travel in a run parameter: any password masked (:func:`redact`)."""
    return redact(url)


def storage_for(ref: TrialRef) -> str:
    """The real storage URL of a trial reference: the reference's, unless its password was masked, in
    which case ``$OPTUNA_STORAGE`` (a Kubernetes secret on a cluster) must name the same database."""
    if "***@" not in ref.storage:
        return ref.storage
    real = os.environ.get(STORAGE_ENV, "")
    if not real:
        raise UserError(f"trial {ref.trial_number} of {ref.study_name}: its storage {ref.storage} needs credentials; "
                        f"set {STORAGE_ENV} (on a cluster: the secret anet-optuna, key {STORAGE_ENV})")
    if redact(real) != ref.storage:
        raise UserError(f"{STORAGE_ENV}={redact(real)} is not the sweep's storage {ref.storage}")
    return real


def cluster_storage_problem(url: str) -> str | None:
    """Why ``url`` cannot hold a sweep whose trials run in pods (None when it can)."""
    if url.startswith(("sqlite", "journal:")):
        return (f"{redact(url)} is a file on this machine, which pods on the cluster cannot reach; set "
                f"{STORAGE_ENV} to a database they reach (postgresql://..., mysql://..., redis://...)")
    return None


def redact(url: str) -> str:
    """Hide a password in a storage URL before it is printed or logged."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def build_pruner(spec: dict[str, Any] | None) -> Any:
    """Rebuild a pruner from its JSON spec: ``median`` | ``threshold`` | ``none``.

    ``n_startup_trials`` delays pruning until that many trials exist, for every kind.
    """
    import optuna

    spec = dict(spec or {"kind": "median"})
    kind = spec.pop("kind", "median")
    startup = int(spec.pop("n_startup_trials", 0))
    warmup = int(spec.pop("n_warmup_steps", 0))
    match kind:
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
        case "threshold":
            base = optuna.pruners.ThresholdPruner(
                lower=spec.get("lower"), upper=spec.get("upper"), n_warmup_steps=warmup
            )
            return _after_trials(base, startup) if startup else base
        case "none":
            return optuna.pruners.NopPruner()
        case _:
            raise UserError(f"unknown pruner kind {kind!r}; use median, threshold or none")


def _after_trials(base: Any, n_startup_trials: int) -> Any:
    """Wrap a pruner so it only acts on trials numbered >= n_startup_trials."""
    import optuna

    class _StartAfter(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            return trial.number >= n_startup_trials and base.prune(study, trial)

    return _StartAfter()


class OptunaPruningCallback(Callback):
    """Reports a validation metric to a running trial after each evaluation; stops when pruned.

    The step reported is the number of values the trial already holds, so stage one and stage
    two (separate processes) report one increasing sequence without knowing about each other.
    """

    def __init__(self, ref: TrialRef, metric: str) -> None:
        import optuna

        self.ref = ref
        self.metric = metric
        storage = open_storage(storage_for(ref))
        study = optuna.load_study(study_name=ref.study_name, storage=storage, pruner=build_pruner(ref.pruner))
        self._trial = optuna.trial.Trial(study, ref.trial_id)
        self._storage = storage
        self.pruned = False

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        value = _pick_metric(metrics, self.metric)
        if value is None or not math.isfinite(value):
            return False
        frozen = self._storage.get_trial(self.ref.trial_id)
        step = len(frozen.intermediate_values)
        self._trial.report(value, step)
        self.pruned = bool(self._trial.should_prune())
        return self.pruned


def _pick_metric(metrics: dict[str, float], wanted: str) -> float | None:
    if wanted in metrics:
        return float(metrics[wanted])
    for key, value in metrics.items():  # e.g. "val/test/mAP" when "val/mAP" was asked
        if key.endswith("mAP"):
            return float(value)
    return None


def pruning_callback_from_json(trial_json: str, metric: str = "val/mAP") -> OptunaPruningCallback | None:
    """The training step's entry point: None when the run is not part of a sweep."""
    if not trial_json:
        return None
    return OptunaPruningCallback(TrialRef.from_json(trial_json), metric)
