"""``anet runs doctor``: a pipeline run whose driver died is ended KILLED; a live one is left alone.
``anet train`` takes its ``key=value`` overrides wherever they stand among the options."""

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


def test_train_overrides_may_stand_anywhere_among_the_options():
    from anet.cli import build_parser

    args = build_parser().parse_args(["train", "stage_one.epochs=2", "--config", "smoke", "data.image_size=[32,32]",
                                      "--out", "runs/x", "--stage", "one", "stage_two.lr=0.1", "--no-progress"])
    assert args.overrides == ["stage_one.epochs=2", "data.image_size=[32,32]", "stage_two.lr=0.1"]
    assert (args.config, str(args.out), args.stage, args.no_progress) == ("smoke", "runs/x", "one", True)
    assert build_parser().parse_args(["train"]).overrides == []
