"""The promotion lock: mutual exclusion for champion moves, kept as tags of the registered model.

MLflow has no compare-and-set, but every tag is its own row, written atomically, and every read
sees the last committed write (one database, behind one server or as one sqlite file). That is
all Lamport's bakery algorithm needs; it uses no read-modify-write. Each contender owns one tag on
``anet-<dataset>`` itself (no auxiliary model)::

    anet.lock.<id> = {"ticket": 0, ...}          1. choosing
    read every anet.lock.* tag                   2. ticket = 1 + the largest ticket seen
    anet.lock.<id> = {"ticket": t, ...}          3. queued
    wait: nobody choosing, no smaller (ticket, id)  4. held (first come, first served)
    delete anet.lock.<id>                         5. released

    with PromotionLock(MlflowClient(), "anet-synthetic") as lock:
        lock.check()                     # right before each write that needs the lock
        client.set_registered_model_alias(...)

Crashes: a thread rewrites the holder's (and each waiter's) tag every ``heartbeat_s`` (default
2 s, ``$ANET_LOCK_HEARTBEAT_S``) with a beat counter. A contender deletes an entry whose process on
this host is gone (at once), or whose value has not changed for ``3 * heartbeat_s`` on the
contender's own monotonic clock (no clock sync between machines needed), and goes on: a crashed
holder is taken over within seconds.

Guarantee and limits: mutual exclusion holds while the holder is live, whatever the timing. A
holder that stalls (SIGSTOP, swap, a partition) longer than ``3 * heartbeat_s`` may be taken over;
it notices by its own clock (a beat sent too late) and stops rewriting its tag, and
:meth:`PromotionLock.check` then raises :class:`LockLost` before its next write. A write already
in flight when such a stall begins can still land after the takeover; the registry reads the
champion alias back after moving it and tags the decision with what it saw.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from typing import Any

from anet.errors import UserError
from anet.mlops.tracking import liveness

PREFIX = "anet.lock."
HEARTBEAT_ENV, WAIT_ENV = "ANET_LOCK_HEARTBEAT_S", "ANET_LOCK_WAIT_S"
DEFAULT_HEARTBEAT_S, DEFAULT_WAIT_S = 2.0, 120.0
STALE_BEATS = 3  # an entry unchanged for this many heartbeats belongs to a dead or stalled process
logger = logging.getLogger(__name__)


class LockLost(UserError):
    """This process no longer holds the promotion lock (it stalled and another took over)."""


class PromotionLock:
    """Bakery lock on registered model ``name`` (see the module docstring); a context manager."""

    def __init__(self, client: Any, name: str, heartbeat_s: float | None = None, wait_s: float | None = None):
        self.client, self.name = client, name
        self.heartbeat_s = heartbeat_s or float(os.environ.get(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_S)
        self.wait_s = wait_s if wait_s is not None else float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_S)
        self.stale_after_s = STALE_BEATS * self.heartbeat_s
        self.taken_over: list[str] = []  # entries of dead/stalled contenders this lock deleted
        self._io = threading.Lock()  # serialises this lock's tag writes (main thread and heartbeat)
        self._stop = threading.Event()
        self._reset()

    def _reset(self) -> None:
        self.key = PREFIX + uuid.uuid4().hex[:16]
        self.ticket, self.beat, self.lost = 0, 0, ""
        self._last_sent = time.monotonic()
        self._seen: dict[str, tuple[str, float]] = {}  # other entries: (value, monotonic time first seen)

    def __enter__(self) -> PromotionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Block until this process holds the lock; ``UserError`` after ``wait_s`` seconds."""
        deadline = time.monotonic() + self.wait_s
        self._stop.clear()
        self._reset()
        beating = threading.Thread(target=self._heartbeat, name=f"lock-{self.key}", daemon=True)
        try:
            self._write(ticket=0)
            beating.start()
            while True:
                try:
                    self._write(ticket=1 + max((e["ticket"] for e in self._others().values()), default=0))
                    return self._wait_turn(deadline)
                except LockLost as exc:  # evicted while waiting (this process stalled): queue again
                    logger.warning("%s; queueing again", exc)
                    with self._io:
                        _delete_tag(self.client, self.name, self.key)
                        self._reset()
                    self._write(ticket=0)
        except BaseException:
            self.release()
            raise

    def _wait_turn(self, deadline: float) -> None:
        while True:
            ahead = {k: e for k, e in self._others().items()
                     if e["ticket"] == 0 or (e["ticket"], k) < (self.ticket, self.key)}
            if not ahead:
                return
            if time.monotonic() > deadline:
                holders = ", ".join(f"pid {e.get('pid')} on {e.get('host')}" for e in ahead.values())
                raise UserError(f"promotion lock of {self.name} still busy after {self.wait_s:.0f} s "
                                f"(ahead: {holders}); retry when those registrations are done")
            time.sleep(random.uniform(0.05, 0.2))

    def check(self) -> None:
        """Raise :class:`LockLost` unless this process still holds the lock; call before each write.

        Renews the lease first when the last beat is older than one heartbeat (so the write that
        follows has most of ``stale_after_s`` to land before anyone may take over), then reads the
        entry back.
        """
        if not self.lost and time.monotonic() - self._last_sent > self.heartbeat_s:
            self._write()  # refuses, marking the lock lost, when a takeover may already have happened
        if not self.lost and self.key not in self.client.get_registered_model(self.name).tags:
            self.lost = "its entry was removed by another process"
        if self.lost:
            raise LockLost(f"lost the promotion lock of {self.name} ({self.lost}); nothing more was "
                           "written; rerun the registration")

    def release(self) -> None:
        """Stop the heartbeat and delete this lock's entry (safe to call twice, and when not held)."""
        with self._io:
            self._stop.set()
        try:
            _delete_tag(self.client, self.name, self.key)
        except Exception as exc:  # noqa: BLE001 - the entry goes stale; others take over in seconds
            logger.warning("could not remove promotion lock entry %s of %s (%s); others take it over "
                           "after %.0f s", self.key, self.name, type(exc).__name__, self.stale_after_s)

    def _others(self) -> dict[str, dict[str, Any]]:
        """Other live entries by key; dead or stalled ones are deleted on the way. Raises
        :class:`LockLost` when this lock's own entry is gone."""
        tags = self.client.get_registered_model(self.name).tags
        if self.key not in tags:
            self.lost = "its entry was removed by another process"
            raise LockLost(f"promotion lock entry of {self.name} was removed while waiting")
        now, live = time.monotonic(), {}
        for key, value in tags.items():
            if not key.startswith(PREFIX) or key == self.key:
                continue
            entry, why = _parse(value), self._stale_reason(key, value, now)
            if why:
                self._take_over(key, entry, why)
            else:
                live[key] = entry
        self._seen = {k: v for k, v in self._seen.items() if k in live}
        return live

    def _stale_reason(self, key: str, value: str, now: float) -> str:
        entry = _parse(value)
        if liveness.process_alive(int(entry.get("pid") or 0), str(entry.get("host") or ""),
                                  str(entry.get("started") or "")) is False:
            return f"process {entry.get('pid')} on {entry.get('host')} is gone"
        first = self._seen.get(key)
        if first is None or first[0] != value:
            self._seen[key] = (value, now)
            return ""
        return f"no heartbeat for {now - first[1]:.1f} s" if now - first[1] >= self.stale_after_s else ""

    def _take_over(self, key: str, entry: dict[str, Any], why: str) -> None:
        logger.warning("promotion lock of %s: removing the entry of pid %s on %s (%s)", self.name,
                       entry.get("pid"), entry.get("host"), why)
        _delete_tag(self.client, self.name, key)
        self.taken_over.append(key)
        self._seen.pop(key, None)

    def _write(self, ticket: int | None = None) -> None:
        """Write this lock's entry: a new ticket (raises :class:`LockLost` when this process may
        have been taken over meanwhile), or the next beat (``ticket=None``: then it only marks
        ``lost``). An entry that may have been removed is never written again: that would revive it."""
        with self._io:
            if ticket is None and (self._stop.is_set() or self.lost):
                return
            sent = time.monotonic()
            if sent - self._last_sent >= self.stale_after_s:
                self.lost = f"stalled for {sent - self._last_sent:.1f} s"
            else:
                self.ticket, self.beat = (self.ticket if ticket is None else ticket), self.beat + 1
                value = json.dumps({"ticket": self.ticket, "beat": self.beat, "pid": os.getpid(),
                                    "host": liveness.hostname(), "started": liveness.process_started(os.getpid())})
                self.client.set_registered_model_tag(self.name, self.key, value)
                if time.monotonic() - self._last_sent >= self.stale_after_s:
                    self.lost = "a write took too long to reach the server"
                self._last_sent = sent
            if self.lost and ticket is not None:
                raise LockLost(f"promotion lock entry of {self.name}: {self.lost}")

    def _heartbeat(self) -> None:
        # one beat per heartbeat_s from the previous send (check() may have sent one meanwhile)
        while not self._stop.wait(max(0.05, self.heartbeat_s - (time.monotonic() - self._last_sent))):
            if time.monotonic() - self._last_sent < self.heartbeat_s:
                continue
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - an outage: keep beating, the lease decides
                logger.warning("promotion lock heartbeat of %s failed (%s)", self.name, type(exc).__name__)


def _parse(value: str) -> dict[str, Any]:
    """An entry's JSON; something unreadable counts as choosing (ticket 0) until it goes stale."""
    try:
        entry = json.loads(value)
    except ValueError:
        return {"ticket": 0}
    if not isinstance(entry, dict):
        return {"ticket": 0}
    ticket = entry.get("ticket")
    entry["ticket"] = ticket if isinstance(ticket, int) and ticket >= 0 else 0
    return entry


def _delete_tag(client: Any, name: str, key: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model_tag(name, key)
    except MlflowException as exc:
        if exc.error_code not in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            raise
