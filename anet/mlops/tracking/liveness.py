"""Who owns a run or a lock, and whether that process still lives; SIGTERM as an exception.

Every run this pipeline opens carries its driver's identity as tags, so a later process can tell a
run whose driver was killed (``kill -9``, OOM, a lost node) from one still in progress::

    tags = driver_tags()        # {'anet.driver_pid': '4242', 'anet.driver_host': 'ws1', 'anet.driver_started': '8812345'}
    owner_alive(tags)           # True / False on this host; None when the owner is on another host

The process start time (``/proc/<pid>/stat``, Linux) guards against a recycled pid. Liveness can
only be checked on the same host; elsewhere the caller needs a lease (see ``anet.mlops.registry.lock``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from anet.io import pid_alive

PID_TAG, HOST_TAG, STARTED_TAG = "anet.driver_pid", "anet.driver_host", "anet.driver_started"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM inside :func:`sigterm_raises` (kfp/k8s stop a pod so).

    A KeyboardInterrupt, so code that cleans up on Ctrl-C cleans up on SIGTERM too.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def hostname() -> str:
    """This machine's host name (a pod's name under Kubernetes)."""
    return socket.gethostname()


def process_started(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ("" when unknown: not Linux, or no such pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) may contain spaces and parentheses: fields start after the last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def driver_tags(prefix: str = "anet.driver") -> dict[str, str]:
    """Tags naming this process: ``<prefix>_pid``, ``<prefix>_host``, ``<prefix>_started``."""
    pid = os.getpid()
    return {f"{prefix}_pid": str(pid), f"{prefix}_host": hostname(), f"{prefix}_started": process_started(pid)}


def owner_alive(tags: Mapping[str, str], prefix: str = "anet.driver") -> bool | None:
    """Whether the process named by :func:`driver_tags`-style tags lives.

    None when it cannot be told: no such tags, or the process ran on another host.
    """
    pid_text = str(tags.get(f"{prefix}_pid", ""))
    if not pid_text.isdigit():
        return None
    return process_alive(int(pid_text), str(tags.get(f"{prefix}_host", "")), str(tags.get(f"{prefix}_started", "")))


def process_alive(pid: int, host: str, started: str = "") -> bool | None:
    """Whether process ``pid`` started at ``started`` (see :func:`process_started`) runs on
    ``host``; None when ``host`` is another machine (or unknown)."""
    if not host or host != hostname():
        return None
    if not pid_alive(pid):
        return False
    now = process_started(pid)
    return not (started and now and started != now)  # same pid, other process: the owner is gone


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (once; a second
    SIGTERM kills as usual). Does nothing off the main thread or when someone else handles SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise:
            signal.signal(signal.SIGTERM, previous)
