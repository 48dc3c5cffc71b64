"""Engine callback that logs per-epoch metrics to MLflow and rides out short tracking outages.

Each epoch's values are queued in memory and sent at once; when the server cannot be reached (after
the bounded retries of :mod:`anet.mlops.tracking.retry`) they stay queued and training goes on. The queue
is sent, in order and with the original timestamps, at the next attempt that reaches the server,
and at the latest when the stage ends. Attempts during an outage are spaced by the retry budget,
so a long outage does not slow every epoch down. An outage longer than
``ANET_MLFLOW_MAX_OUTAGE_S`` (default 300 s) fails the step with one line naming the URL::

    with start_step_run(parent, "train_stage_one"):
        train_stage(..., callbacks=[MlflowCallback()])   # train/<term> and val/<metric> at step=epoch
"""

from __future__ import annotations

import logging
import time
from typing import Any

from anet.mlops.tracking import record, retry
from anet.mlops.tracking.endpoint import redact_url
from anet.train.callbacks import Callback

logger = logging.getLogger(__name__)


class MlflowCallback(Callback):
    """``train/<term>`` per epoch and the in-training evaluation, at step=epoch; never stops training.

    Logs into ``run_id`` or, when None, the run active at construction (the stage's step run), so
    each stage's nested run holds its own ``train/*`` history. Evaluation metrics keep their names
    when they already carry a prefix (``val/mAP``), else get ``val/``. ``max_outage_s`` (default
    ``$ANET_MLFLOW_MAX_OUTAGE_S``) is how long metrics may wait for an unreachable server.
    """

    def __init__(self, run_id: str | None = None, max_outage_s: float | None = None):
        import mlflow

        active = mlflow.active_run()
        self.run_id = run_id or (active.info.run_id if active else None)
        if self.run_id is None:
            raise RuntimeError("MlflowCallback needs a run: create it inside start_step_run(...)")
        self.max_outage_s = retry.max_outage_s() if max_outage_s is None else max_outage_s
        self.retry_every_s = retry.policy_from_env().budget_s
        self.pending: list[Any] = []  # mlflow Metric entities not yet on the server, oldest first
        self.outage_since: float | None = None  # monotonic time of the first failed send
        self.last_attempt = 0.0

    def on_measured(self, stage_name: str, params: dict[str, str], metrics: dict[str, float]) -> None:
        """What set-up measured (``runtime.precision: auto``): params at once, metrics queued at step 0."""
        with retry.outage_as_user_error(f"logging {stage_name}'s set-up params"):
            record.log_params(str(self.run_id), params)
        self._queue(metrics, 0)

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        self._queue({f"train/{name}": value for name, value in terms.items()}, epoch)

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        self._queue({(k if "/" in k else f"val/{k}"): v for k, v in metrics.items()}, epoch)
        return False

    def on_resume(self, stage_name: str, records: list[dict[str, Any]]) -> None:
        """Queue the checkpointed epochs this run lacks (``train/loss`` / the metrics not at that step):
        a kill after the checkpoint, or a retried step's new run. Unknown during an outage: all queued."""
        steps = self._logged_steps("train/loss")
        for rec in records:
            epoch, metrics = int(rec["epoch"]), rec.get("metrics") or {}
            if epoch not in steps:
                self.pending.extend(record.metric_items({f"train/{k}": v for k, v in rec["terms"].items()}, epoch))
            named = {(k if "/" in k else f"val/{k}"): v for k, v in metrics.items()}
            if named and epoch not in self._logged_steps(next(iter(named))):
                self.pending.extend(record.metric_items(named, epoch))
        if self.pending:
            logger.info("%s: logging %d metric values of resumed epochs this run lacks", stage_name,
                        len(self.pending))
            self.flush()

    def _logged_steps(self, key: str) -> set[int]:
        """Steps of ``key`` already in the run; empty when the server cannot tell (outage)."""
        from mlflow import MlflowClient

        try:
            return {m.step for m in MlflowClient().get_metric_history(self.run_id, key)}
        except Exception as exc:  # noqa: BLE001 - better a value twice than an epoch lost
            if not retry.is_outage(exc):
                raise
            return set()

    def on_stage_end(self, stage_name: str, result: Any) -> None:
        self.flush(final=True)

    def _queue(self, metrics: dict[str, Any], step: int) -> None:
        self.pending.extend(record.metric_items(metrics, step))
        if self.outage_since is None or time.monotonic() - self.last_attempt >= self.retry_every_s:
            self.flush()

    def flush(self, final: bool = False) -> bool:
        """Send what is queued; True when nothing is left.

        During an outage: False (the values stay queued), or ``UserError`` once the outage is
        longer than ``max_outage_s``. With ``final`` it keeps trying until then.
        """
        while self.pending:
            self.last_attempt = time.monotonic()
            try:
                record.send_metrics(self.run_id, self.pending)
            except Exception as exc:
                if not retry.is_outage(exc):
                    raise
                if self._outage(exc, final):
                    continue
                return False
        if self.outage_since is not None:
            logger.warning("MLflow is reachable again after %.0f s; every queued metric was logged",
                           time.monotonic() - self.outage_since)
        self.outage_since = None
        return True

    def _outage(self, exc: BaseException, final: bool) -> bool:
        """Account for a failed send; True to try again now (final flush), False to wait."""
        import mlflow

        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            logger.warning("MLflow at %s unreachable (%s); %d metric values kept in memory, retried "
                           "at the next epoch", redact_url(mlflow.get_tracking_uri()),
                           retry.outage_reason(exc), len(self.pending))
        if now - self.outage_since >= self.max_outage_s:
            what = f"logging metrics ({len(self.pending)} values not logged after {now - self.outage_since:.0f} s)"
            raise retry.outage_error(mlflow.get_tracking_uri(), exc, what) from None
        if final:
            time.sleep(min(1.0, self.max_outage_s - (now - self.outage_since)))
        return final
