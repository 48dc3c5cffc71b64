"""Bounded retries for MLflow calls: a tracking outage costs seconds per call, not minutes.

MLflow's HTTP client retries each request with urllib3's exponential backoff. Its defaults
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``, ``..._BACKOFF_FACTOR=2``, ``..._TIMEOUT=120``) sleep
0, 4, 8, ... 128 s between attempts: about 4.3 minutes per call against a stopped server, and
two such calls (the metric and the run's end) blocked training for 8.5 minutes. Here one budget
decides them all::

    ANET_MLFLOW_RETRY_BUDGET_S=30   # seconds of backoff one call may spend on a down server
    ANET_MLFLOW_HTTP_TIMEOUT_S=60   # per attempt: a model upload or a busy sqlite store needs seconds
    ANET_MLFLOW_MAX_OUTAGE_S=300    # how long MlflowCallback keeps metrics in memory before failing

    policy = apply_http_policy()    # done by tracking.configure(); sets MLFLOW_HTTP_REQUEST_*
    policy.max_retries, policy.worst_case_s()     # (4, 16.0) for the defaults

An ``MLFLOW_HTTP_REQUEST_*`` variable the user exported keeps the user's value. A refused
connection or a 5xx costs at most ``budget`` seconds; a silent server costs up to
``(max_retries + 1) * timeout`` on top (the per-attempt timeout cannot be shorter without failing
large artifact uploads, so it has its own knob: 10 s failed a register step on a loaded 2-core machine
whose sqlite-backed server answered a model upload in more than 10 s).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

from anet.errors import UserError
from anet.mlops.tracking.endpoint import redact_url

BUDGET_ENV, TIMEOUT_ENV, OUTAGE_ENV = "ANET_MLFLOW_RETRY_BUDGET_S", "ANET_MLFLOW_HTTP_TIMEOUT_S", "ANET_MLFLOW_MAX_OUTAGE_S"
DEFAULT_BUDGET_S, DEFAULT_TIMEOUT_S, DEFAULT_MAX_OUTAGE_S = 30.0, 60, 300.0
BACKOFF_FACTOR = 1  # MLflow reads the factor as an int: sleeps are 0, 2, 4, 8, ... s (+ jitter)
JITTER_S = 0.5
MAX_RETRIES_CAP = 10  # MLflow refuses more
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_applied: dict[str, str] = {}  # what apply_http_policy() wrote, to tell it from a user's own setting


@dataclass(frozen=True)
class RetryPolicy:
    """The MLflow HTTP settings derived from a retry budget."""

    budget_s: float
    max_retries: int
    timeout_s: int

    def backoff_s(self) -> float:
        """Longest total sleep between the attempts of one call (urllib3: first retry at once)."""
        return BACKOFF_FACTOR * (2 ** self.max_retries - 2) + JITTER_S * self.max_retries if self.max_retries else 0.0

    def worst_case_s(self, silent_server: bool = False) -> float:
        """Upper bound of one call against a down server (refusing, or silent when asked)."""
        return self.backoff_s() + ((self.max_retries + 1) * self.timeout_s if silent_server else 0.0)

    def as_env(self) -> dict[str, str]:
        """The ``MLFLOW_HTTP_*`` variables that make MLflow's client follow this policy."""
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF_FACTOR),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(JITTER_S),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout_s),
            # a Retry-After header (429/503) would otherwise set its own sleep, outside the budget
            "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
        }


def _env_float(name: str, default: float, environ: MutableMapping[str, str]) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{name}={text!r}: expected a number of seconds") from None
    if value < 0:
        raise UserError(f"{name}={text!r}: must be >= 0")
    return value


def policy_from_env(environ: MutableMapping[str, str] | None = None) -> RetryPolicy:
    """The policy for ``ANET_MLFLOW_RETRY_BUDGET_S`` / ``ANET_MLFLOW_HTTP_TIMEOUT_S``: the most
    retries whose backoff fits in the budget."""
    environ = os.environ if environ is None else environ
    budget = _env_float(BUDGET_ENV, DEFAULT_BUDGET_S, environ)
    timeout = max(1, round(_env_float(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, environ)))
    retries = 0
    while retries < MAX_RETRIES_CAP and RetryPolicy(budget, retries + 1, timeout).backoff_s() <= budget:
        retries += 1
    return RetryPolicy(budget, retries, timeout)


def apply_http_policy(environ: MutableMapping[str, str] | None = None) -> RetryPolicy:
    """Export the policy as ``MLFLOW_HTTP_REQUEST_*`` (read by MLflow at every request), keeping
    any of those the user set; step subprocesses inherit them."""
    environ = os.environ if environ is None else environ
    policy = policy_from_env(environ)
    for name, value in policy.as_env().items():
        current = environ.get(name)
        if current is None or current == _applied.get(name):
            environ[name] = _applied[name] = value
    return policy


def max_outage_s(environ: MutableMapping[str, str] | None = None) -> float:
    """How long buffered metrics may wait for the server (``ANET_MLFLOW_MAX_OUTAGE_S``)."""
    return _env_float(OUTAGE_ENV, DEFAULT_MAX_OUTAGE_S, os.environ if environ is None else environ)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says the server could not be reached or
    answered 5xx after the retries: connection refused/reset, DNS, timeout, too many 5xx."""
    import requests
    import urllib3.exceptions

    transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                 requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError,
                 urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, transient):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def outage_reason(exc: BaseException) -> str:
    """A few words on why the server was unreachable (``Connection refused``, ``timed out``)."""
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip()
    for words in ("timed out", "too many", "Connection reset", "Connection aborted", "Read timed out"):
        if words in text:
            start = text.index(words)
            return redact_url(text[start:start + 60].split(")")[0].split("\n")[0])
    return type(exc).__name__


def outage_error(uri: str, exc: BaseException, what: str) -> UserError:
    """The one-line error for a tracking outage that outlasted its budget."""
    return UserError(f"MLflow tracking server {redact_url(uri)} is unreachable ({outage_reason(exc)}) "
                     f"while {what}; check the server, then rerun")


@contextlib.contextmanager
def outage_as_user_error(what: str) -> Iterator[None]:
    """Turn an MLflow outage raised in the block into :func:`outage_error` (other errors pass).

    Example:
        >>> with outage_as_user_error("registering the model"):      # doctest: +SKIP
        ...     client.create_model_version(...)
    """
    try:
        yield
    except Exception as exc:
        if isinstance(exc, UserError) or not is_outage(exc):
            raise
        import mlflow

        raise outage_error(mlflow.get_tracking_uri(), exc, what) from None
