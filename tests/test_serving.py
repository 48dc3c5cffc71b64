"""The registered champion, served by MLflow over HTTP and used by ``anet index`` / ``anet search``.

A smoke model is trained and registered through the pipeline steps against a sqlite store in a
temporary directory; ``mlflow models serve`` runs it in its own process group, which is killed at
the end.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow_server import free_port

from anet import steps
from anet.cli import main
from anet.config import resolve_config
from anet.data.cache import PreparedDataset
from anet.search.served import SERVED_DISTS, load_predictor, png_bytes

VENV_BIN = Path(sys.executable).parent
CHAMPION = "models:/anet-synthetic@champion"


def _train_and_register(tmp_path: Path) -> tuple[str, PreparedDataset]:
    cfg = resolve_config("smoke", data_root=str(tmp_path / "data"), cache_root=str(tmp_path / "cache"))
    prep = steps.prepare_data(str(tmp_path / "prep"), config_json=cfg.to_json(), open_parent_run=True)
    cfg_json, parent = prep["config_json"], prep["parent_run_id"]
    steps.train(cfg_json, str(tmp_path / "prep"), "stage_one", str(tmp_path / "one"), parent_run_id=parent)
    steps.train(cfg_json, str(tmp_path / "prep"), "stage_two", str(tmp_path / "two"),
                init_from=str(tmp_path / "one"), parent_run_id=parent)
    ev = steps.evaluate(cfg_json, str(tmp_path / "prep"), str(tmp_path / "two"), str(tmp_path / "ev"),
                        parent_run_id=parent)
    reg = steps.register(cfg_json, "synthetic", json.dumps(ev), str(tmp_path / "two"), parent_run_id=parent)
    return reg["model_version"], PreparedDataset.open(steps.read_descriptor(tmp_path / "prep")["cache_dir"])


def _serve(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
           "-p", str(port), "-h", "127.0.0.1"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the server and its uvicorn worker: the group started for it
            proc.wait(timeout=20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _invoke(url: str, images: list[bytes]) -> list[dict]:
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(i).decode()] for i in images]}}
    request = urllib.request.Request(url + "/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


@pytest.mark.integration
@pytest.mark.slow
def test_the_champion_is_served_over_http_and_searched_from_the_command_line(tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ANET_PROGRESS", "0")
    version, prepared = _train_and_register(tmp_path)
    MlflowClient().set_registered_model_alias("anet-synthetic", "champion", version)

    reqs = Path(mlflow.pyfunc.get_model_dependencies(CHAMPION)).read_text().split()
    assert "anet-pipeline" not in " ".join(reqs) and not any("+" in r for r in reqs)
    assert {r.split("==")[0] for r in reqs} >= set(SERVED_DISTS) and all("==" in r for r in reqs)
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION))
    assert (local / "code" / "anet" / "search" / "predictor.py").is_file()
    assert sorted(p.name for p in (local / "artifacts").iterdir()) == ["model.pt", "preprocess.json", "vocab.json"]

    rows = prepared.rows("query", "test")
    images = [png_bytes(prepared.images[rows["cache_index"].iloc[0]]),
              (Path(prepared.manifest.root) / rows["path"].iloc[1]).read_bytes()]  # a PNG and a JPEG
    port, log = free_port(), tmp_path / "serve.log"
    proc = _serve(port, log)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        served = _invoke(f"http://127.0.0.1:{port}", images)
    finally:
        _stop(proc)
    predictor, ref = load_predictor(CHAMPION)
    expected = predictor.predict(images)
    assert len(served) == 2 and ref.version == version
    np.testing.assert_allclose([p["embedding"] for p in served], np.array(expected["embedding"].tolist()), atol=1e-5)
    for name, classes in prepared.manifest.vocab.items():
        assert [p[name] for p in served] == list(expected[name])
        assert all(sorted(p[f"{name}_probs"]) == sorted(classes) for p in served)
        assert all(abs(sum(p[f"{name}_probs"].values()) - 1) < 1e-5 for p in served)

    assert main(["index", "--model", CHAMPION, "--split", "test", "--out", str(tmp_path / "index")]) == 0
    query = tmp_path / "query.png"
    query.write_bytes(images[0])
    capsys.readouterr()
    assert main(["search", str(query), "--index", str(tmp_path / "index"), "--k", "4", "--json",
                 "--sheet", str(tmp_path / "sheet.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["hits"]) == 4 and f"v{version}" in result["model"] and (tmp_path / "sheet.png").is_file()
