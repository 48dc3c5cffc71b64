"""Drill: a step fails with its one-line reason but cannot record it on MLflow; the driver still reports it.

A step that fails logs ``error: <step>: <reason>`` and tags the parent run with it; the driver reads the
tag. When that tag cannot be written (a tracking hiccup at that moment, here a proxy in front of a real
``mlflow server`` that refuses exactly the ``anet.failed_step`` tag), the driver's summary used to say
"the step recorded no reason" although the step's own line was in the log just above kfp's traceback.
The pipeline runs through kfp.local on the smoke profile with a config the resolver accepts and
stage one refuses (``data.attributes`` names an attribute the synthetic set does not have).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import mlflow_server

pytestmark = pytest.mark.integration
REFUSED = "anet.failed_step"


def refusing_proxy(target: str) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    """A reverse proxy to ``target`` that answers 400 to setting the tag :data:`REFUSED` (and logs that)."""
    refused: list[str] = []
    host = target.split("://", 1)[1]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.endswith("/runs/set-tag") and json.loads(body or b"{}").get("key") == REFUSED:
                refused.append(self.path)
                self._reply(400, b'{"error_code": "INVALID_STATE", "message": "drill: this tag is refused"}')
                return
            conn = http.client.HTTPConnection(host, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            reply = conn.getresponse()
            self._reply(reply.status, reply.read(), reply.getheader("Content-Type") or "application/json")
            conn.close()

        def _reply(self, status: int, data: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, *args: object) -> None:  # quiet
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, refused


@pytest.fixture
def tracked(tmp_path, monkeypatch) -> Iterator[list[str]]:
    """A real MLflow server behind the refusing proxy, as MLFLOW_TRACKING_URI; cwd a scratch folder."""
    with mlflow_server(tmp_path / "mlflow") as url:
        proxy, refused = refusing_proxy(url)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.setenv("ANET_PROGRESS", "0")
        monkeypatch.chdir(tmp_path)
        try:
            yield refused
        finally:
            proxy.shutdown()
            proxy.server_close()


def test_the_steps_own_line_is_the_reason_when_it_could_not_be_recorded(tracked, tmp_path, drill, capfd):
    drill("a step fails and MLflow refuses its failure tag",
          "the summary's reason is the step's own line (never 'the step recorded no reason')")
    from pipelines.run import run_pipeline

    outcome = run_pipeline(dataset="synthetic", profile="smoke", echo=False, pipeline_root=tmp_path / "outputs",
                           overrides={"stage_one.epochs": 0, "data.attributes": ["color", "model"],
                                      "data.root": str(tmp_path / "data"), "data.cache_dir": str(tmp_path / "cache")})
    logged = capfd.readouterr()
    assert tracked, "the failing step never tried to record its reason: the drill did not hit its moment"
    assert "error: train: data.attributes" in logged.out + logged.err
    assert outcome.status == "failed"
    assert outcome.error.startswith("training: data.attributes") and "\n" not in outcome.error, outcome.error
    assert "recorded no reason" not in outcome.error
    assert Path(os.getcwd()) == tmp_path


def test_step_lines_keep_the_last_step_error_line_written_in_pieces(drill):
    drill("a step's error line reaches the driver in pieces, coloured, before a traceback",
          "the driver's tee keeps that step and its reason")
    import io

    from pipelines.outcome import StepLines

    out = io.StringIO()
    tee = StepLines(out)
    for piece in ["13:01:02 INFO anet.steps.train_step: epoch 1\n13:01:03 ERROR anet.steps.common: \x1b[31merr",
                  "or: evaluate: checkpoint.pt: not a checkpoint\x1b[0m\n", "Traceback (most recent call last):\n",
                  "anet.errors.UserError: error: nothing: else\n"]:
        tee.write(piece)
    assert tee.last == ("evaluate", "checkpoint.pt: not a checkpoint")
    assert out.getvalue().startswith("13:01:02 INFO") and out.getvalue().endswith("else\n")
