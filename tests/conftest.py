"""Shared fixtures."""

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ONE real ``mlflow server`` per test module (sqlite store, local artifacts); its URL."""
    from mlflow_server import mlflow_server  # tests/mlflow_server.py: starts, waits for health, kills

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture
def mlflow_uri(mlflow_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's server as this test's tracking URI, with no ``MLFLOW_*`` from the caller's shell."""
    from anet.mlops.tracking import tracking

    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)
    return tracking.configure(mlflow_url)
