"""Test helper: a REAL ``mlflow server`` subprocess on loopback (sqlite backend, optional S3 artifacts).

    with moto_server() as endpoint, mlflow_server(tmp_path, s3_endpoint=endpoint) as url:
        configure(url)                    # client needs no AWS credentials: artifacts are proxied

    with mlflow_server_handle(tmp_path) as server:    # stop() / start(): an outage and the recovery
        server.stop(); ...; server.start()           # same port, same sqlite store

``moto_server`` comes from tests/s3_server.py. Startup takes ~20 s (migrations on a fresh DB), so
test modules start one per module. The server (and its uvicorn workers) runs in its own process
group and is killed by that group's id. ``basic_auth_proxy`` puts HTTP basic auth in front of it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
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


class MlflowServer:
    """A real ``mlflow server`` that a test can stop and start again (same port, same sqlite store).

    ``stop()`` kills it the way an outage looks to clients (connection refused); ``start()`` brings
    it back with all runs and models (~20 s: uvicorn and MLflow start up again).
    """

    def __init__(self, tmp_path: Path, s3_endpoint: str | None = None, timeout: float = 90.0,
                 backend_store_uri: str | None = None):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.backend = backend_store_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.tmp_path, self.timeout, self.port = tmp_path, timeout, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "ANET_"))}
        if s3_endpoint:
            _create_bucket(s3_endpoint, BUCKET)
            self.env.update(FAKE_AWS, MLFLOW_S3_ENDPOINT_URL=s3_endpoint)
            self.destination = f"s3://{BUCKET}/mlflow"
        else:
            self.destination = str(tmp_path / "artifacts")
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        """Start the server (if it is not running) and wait until /health answers; returns its URL."""
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", self.backend,
               "--artifacts-destination", self.destination,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log_path = self.tmp_path / "mlflow-server.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        _wait_healthy(self.proc, self.url, self.timeout, log_path)
        return self.url

    def stop(self) -> None:
        """Kill the server (its whole process group); clients get 'connection refused' from now on."""
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None


@contextlib.contextmanager
def mlflow_server_handle(tmp_path: Path, s3_endpoint: str | None = None, timeout: float = 90.0,
                         backend_store_uri: str | None = None) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer`, killed afterwards (the test may stop and restart it)."""
    server = MlflowServer(tmp_path, s3_endpoint, timeout, backend_store_uri)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, s3_endpoint: str | None = None, timeout: float = 90.0,
                  backend_store_uri: str | None = None) -> Iterator[str]:
    """Start ``mlflow server`` with a sqlite store in ``tmp_path``; yield its URL; kill it afterwards.

    With ``s3_endpoint`` the server proxies artifacts to ``s3://mlflow-artifacts/mlflow`` there
    (bucket created here); otherwise artifacts go to ``tmp_path/artifacts``.
    """
    with mlflow_server_handle(tmp_path, s3_endpoint, timeout, backend_store_uri) as server:
        yield server.url


@contextlib.contextmanager
def basic_auth_proxy(target: str, user: str, password: str) -> Iterator[tuple[str, list[str]]]:
    """A reverse proxy that demands HTTP basic auth on every path (as nginx in front of MLflow
    does, /health included) and forwards to ``target``; yields its URL and the request lines seen."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    seen: list[str] = []
    target_host = target.split("://", 1)[1]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            seen.append(f"{self.command} {self.path}")
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "authorization"}}
            conn = http.client.HTTPConnection(target_host, timeout=60)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
            except OSError:  # the server behind is down: answer as nginx does
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = reply.read()
            self.send_response(reply.status)
            for key, value in reply.getheaders():
                if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, *args: object) -> None:  # quiet
            return

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", seen
    finally:
        proxy.shutdown()
        proxy.server_close()


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
