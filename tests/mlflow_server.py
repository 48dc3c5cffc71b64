"""Test helper: a REAL ``mlflow server`` subprocess on loopback (sqlite backend, optional S3 artifacts).

    with moto_server() as endpoint, mlflow_server(tmp_path, s3_endpoint=endpoint) as url:
        configure(url)                    # client needs no AWS credentials: artifacts are proxied

``moto_server`` comes from tests/s3_server.py. Startup takes ~20 s (migrations on a fresh DB), so
test modules start one per module. The server (and its uvicorn workers) runs in its own process group and is killed by that group's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
BUCKET = "mlflow-artifacts"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, s3_endpoint: str | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Start ``mlflow server`` with a sqlite store in ``tmp_path``; yield its URL; kill it afterwards.

    With ``s3_endpoint`` the server proxies artifacts to ``s3://mlflow-artifacts/mlflow`` there
    (bucket created here); otherwise artifacts go to ``tmp_path/artifacts``.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    if s3_endpoint:
        _create_bucket(s3_endpoint, BUCKET)
        env.update(FAKE_AWS, MLFLOW_S3_ENDPOINT_URL=s3_endpoint)
        destination = f"s3://{BUCKET}/mlflow"
    else:
        destination = str(tmp_path / "artifacts")
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", destination, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, timeout, tmp_path / "mlflow-server.log")
        yield url
    finally:
        _kill_group(proc)
        log.close()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{_tail(log_path)}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it was started as its own session), then SIGKILL.

    uvicorn's graceful shutdown waits for idle keep-alive client connections, so do not wait long.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the parent
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _create_bucket(endpoint: str, bucket: str) -> None:
    import boto3
    import botocore.config

    s3 = boto3.client("s3", endpoint_url=endpoint, **s3_credentials(),
                      config=botocore.config.Config(s3={"addressing_style": "path"}))
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=bucket)


def s3_credentials() -> dict[str, str]:
    """boto3 keyword arguments for the fake S3 endpoint (any key works with moto)."""
    return {"aws_access_key_id": FAKE_AWS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": FAKE_AWS["AWS_DEFAULT_REGION"]}
