"""Drills: S3 outages against the moto S3 server on 127.0.0.1, through the real commands.

``anet data import`` from S3 while the endpoint is up, stopped, silent (accepts connections, never
answers) and serving a damaged archive, and ``python -m pipelines.run`` starting with a silent
``AWS_ENDPOINT_URL``. Each failure must be one ``error:`` line, exit 2, within a bounded time
(``ANET_S3_TIMEOUT_S=2`` here) and leave nothing in the data folder.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import TEST_KEYS, free_port, moto_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TIMEOUT_S = 2
FAST = "exit 2, one error line naming the S3 URL, within 2 x ANET_S3_TIMEOUT_S + 2 s; data folder empty"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory) -> Iterator[str]:
    """moto with bucket ``datasets``: ``VeRi.zip`` (a fake VeRi-776) and ``VeRi-cut.zip`` (its first 60 %)."""
    import boto3

    from anet.config import SyntheticCfg
    from anet.synthetic.generator import render_dataset
    from anet.synthetic.layouts import write_veri776

    work = tmp_path_factory.mktemp("s3-drill")
    write_veri776(render_dataset(SyntheticCfg(train_ids=4, test_ids=2, images_per_id=2, cameras=2, render_size=32)),
                  work / "src" / "VeRi")
    archive = Path(shutil.make_archive(str(work / "VeRi"), "zip", work / "src"))
    cut = work / "VeRi-cut.zip"
    cut.write_bytes(archive.read_bytes()[: int(archive.stat().st_size * 0.6)])
    with moto_server() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket="datasets")
        for path in (archive, cut):
            s3.upload_file(str(path), "datasets", path.name)
        yield url


@pytest.fixture
def s3_at(monkeypatch):
    """Point AWS_* at an endpoint (test keys, no config files, ANET_S3_TIMEOUT_S=2)."""

    def point(url: str) -> None:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "ANET_S3_MAX_ATTEMPTS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {**TEST_KEYS, "AWS_ENDPOINT_URL": url, "AWS_EC2_METADATA_DISABLED": "true",
                            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                            "ANET_S3_TIMEOUT_S": str(TIMEOUT_S)}.items():
            monkeypatch.setenv(name, value)

    return point


@pytest.fixture
def silent() -> Iterator[str]:
    """A TCP server that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: _accept(server, held), daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def _accept(server: socket.socket, held: list[socket.socket]) -> None:
    while True:
        try:
            held.append(server.accept()[0])
        except OSError:
            return


def _import(source: str, data_dir: Path, capsys) -> tuple[int, list[str], float]:
    """``anet data import veri776 SOURCE``: (exit status, its ``error:`` lines, seconds)."""
    from anet.cli import main

    started = time.monotonic()
    status = main(["data", "import", "veri776", source, "--data-dir", str(data_dir), "--no-push"])
    err = capsys.readouterr().err.strip().splitlines()  # download progress bars besides the errors
    return status, [line for line in err if line.startswith("error:")], time.monotonic() - started


def test_import_while_s3_is_up(endpoint, s3_at, tmp_path, capsys, drill):
    drill("S3 up: anet data import s3://datasets/VeRi.zip", "exit 0; data/veri776 in place; no staging left")
    s3_at(endpoint)
    status, err, _ = _import("s3://datasets/VeRi.zip", tmp_path / "data", capsys)
    assert status == 0, err
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["veri776"]


def test_import_while_s3_is_down(s3_at, tmp_path, capsys, drill):
    drill("S3 down (nothing listens): anet data import", FAST)
    s3_at(f"http://127.0.0.1:{free_port()}")
    status, err, took = _import("s3://datasets/VeRi.zip", tmp_path / "data", capsys)
    assert status == 2 and len(err) == 1 and "s3://datasets/VeRi.zip" in err[0] and "unreachable" in err[0]
    assert took < 2 * TIMEOUT_S + 2 and not (tmp_path / "data").exists()


def test_import_from_a_silent_s3(silent, s3_at, tmp_path, capsys, drill):
    drill("S3 accepts connections, never answers: anet data import", FAST)
    s3_at(silent)
    status, err, took = _import("s3://datasets/VeRi.zip", tmp_path / "data", capsys)
    assert status == 2 and len(err) == 1 and f"did not answer within {TIMEOUT_S} s" in err[0]
    assert took < 2 * TIMEOUT_S + 2 and not (tmp_path / "data").exists()


def test_import_of_a_damaged_archive_on_s3(endpoint, s3_at, tmp_path, capsys, drill):
    drill("S3 serves a truncated archive: anet data import", "exit 2, one line naming VeRi-cut.zip and the damage; "
          "data folder empty")
    s3_at(endpoint)
    status, err, _ = _import("s3://datasets/VeRi-cut.zip", tmp_path / "data", capsys)
    assert status == 2 and len(err) == 1 and "VeRi-cut.zip: not a readable zip file" in err[0]
    assert list((tmp_path / "data").iterdir()) == []


def test_pipeline_start_with_a_silent_s3(silent, s3_at, tmp_path, capsys, monkeypatch, drill):
    drill("pipeline starts, AWS_ENDPOINT_URL never answers", "exit 2 before any step, one line naming the "
          "endpoint, the S3 check within 2 x ANET_S3_TIMEOUT_S")
    from pipelines.run import main

    s3_at(silent)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    started = time.monotonic()
    status = main(["--profile", "smoke", "--pipeline-root", str(tmp_path / "outputs"),
                   "--set", f"data.root={tmp_path / 'data'}", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith(f"error: {silent}: S3 endpoint accepted the connection but did not")
    assert time.monotonic() - started < 120 and not (tmp_path / "outputs").exists()
