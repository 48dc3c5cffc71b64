"""A throw-away S3 endpoint on 127.0.0.1 for integration tests (moto_server, in memory).

Example:
    with moto_server() as endpoint:                     # "http://127.0.0.1:<port>"
        with s3_env(endpoint):                         # AWS_* env pointing at it (test keys only)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="b")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_executable() -> str:
    candidate = Path(sys.executable).with_name("moto_server")
    return str(candidate) if candidate.exists() else "moto_server"


@contextlib.contextmanager
def moto_server(timeout: float = 20.0) -> Iterator[str]:
    """Start ``moto_server -H 127.0.0.1 -p <free port>``, wait until it answers, yield its URL, kill it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # its request log goes to a file: a pipe nobody reads fills up (64 KB, a few hundred requests, e.g. a
    # model logged with its code) and then blocks the server in the middle of a request
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below, once the server is gone
    proc = subprocess.Popen([_moto_executable(), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read().decode()[-500:]}")
            try:
                with urllib.request.urlopen(url + "/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url} within {timeout} s") from None
                time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only the server and its children
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def s3_env(endpoint: str | None, keys: bool = True) -> Iterator[dict[str, str]]:
    """Temporarily point AWS_* at ``endpoint`` (with the test keys when ``keys``); restores after."""
    names = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
             "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED"]
    saved = {n: os.environ.get(n) for n in names}
    for name in names:
        os.environ.pop(name, None)
    env = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    if keys:
        env.update(TEST_KEYS)
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
