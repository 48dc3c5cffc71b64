"""``anet runs doctor``: a pipeline run whose driver died is ended KILLED; a live one is left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPEN_RUN = """
import sys
from anet.config import load_config
from anet.steps import start_pipeline_run
print(start_pipeline_run("synthetic", "smoke", load_config("smoke").to_json()))
"""


def test_doctor_ends_runs_of_a_dead_driver_only(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from anet.cli import main
    from anet.config import load_config
    from anet.steps import start_pipeline_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    dead = subprocess.run([sys.executable, "-c", OPEN_RUN], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    orphan = dead.stdout.strip().splitlines()[-1]
    live = start_pipeline_run("synthetic", "smoke", load_config("smoke").to_json())
    assert main(["runs", "doctor", "--dataset", "synthetic"]) == 0
    assert "closed 1 orphaned run(s)" in capsys.readouterr().out
    client = MlflowClient()
    assert client.get_run(orphan).info.status == "KILLED" and client.get_run(live).info.status == "RUNNING"
