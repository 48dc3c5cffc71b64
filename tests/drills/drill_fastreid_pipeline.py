"""Drill: an ANet + FastReID profile as a user runs it: pipeline run, its plain-FastReID switch, a sweep.

``make pipeline-run DATASET=veriwild PROFILE=veriwild-fastreid`` on a tiny synthetic copy of VeRi-Wild's
layout (R18 at 64 px instead of the recipe's R50 at 256 px, 2 + 1 epochs: the recipe's blocks all on,
only the sizes shrunk), then the same command with ``model.variant=baseline`` (plain FastReID, the
paper's "FastReid" row: one stage, f feature), then ``make sweep`` with 2 trials on the same profile.
Each run goes through kfp.local, is tracked in this project's sqlite MLflow store, registered under the
dataset's model and judged against its champion, as for the plain-ANet profiles.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.val_ids=2", "data.image_size=[64, 64]", "data.p_ids=4", "data.k_imgs=4", "model.pretrained=none",
        "model.depth=18", "stage_one.epochs=2", "stage_one.solver.warmup_iters=2", "stage_one.milestones=[1]",
        "runtime.precision=fp32", "runtime.sync_bn=false"]
ANET = ["--set", "stage_two.epochs=1"]  # the plain run must not set it: an explicit key wins over the switch


def _make(target: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPTUNA_", "KFP_"))}
    env |= {"PYTHONPATH": str(ROOT), "ANET_PROGRESS": "0"}
    cmd = [sys.executable, "-m", target, "--dataset", "veriwild", "--profile", "veriwild-fastreid", *args]
    for item in TINY:
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anet.config import SyntheticCfg
    from anet.synthetic.generator import render_dataset
    from anet.synthetic.layouts import write_veriwild

    repo = tmp_path_factory.mktemp("fastreid")
    write_veriwild(render_dataset(SyntheticCfg(train_ids=8, test_ids=6, images_per_id=6, cameras=3, render_size=32,
                                               difficulty=0.3)), repo / "data" / "veriwild")
    return repo


def _runs(repo: Path) -> list:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`anet.kind` = 'pipeline'", order_by=["attributes.start_time ASC"])


def test_fastreid_profile_runs_registers_switches_to_plain_fastreid_and_sweeps(project: Path, drill) -> None:
    drill("ANet + FastReID profile: pipeline run, model.variant=baseline run, 2-trial sweep (veriwild layout)",
          "both runs succeed, are registered under veriwild and judged against the champion; the plain run "
          "trains one stage on f; the sweep completes its trials")
    anet = _make("pipelines.run", project, *ANET)
    assert anet.returncode == 0, anet.stdout[-3000:] + anet.stderr[-3000:]
    plain = _make("pipelines.run", project, "--set", "model.variant=baseline")
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    runs = _runs(project)
    assert len(runs) == 2, [r.data.tags for r in runs]
    first, second = runs
    assert first.data.params["model.variant"] == "anet" and first.data.params["eval.feature"] == "j"
    assert second.data.params["model.variant"] == "baseline" and second.data.params["eval.feature"] == "f"
    assert second.data.params["stage_two.epochs"] == "0" and second.data.params["loss.form"] == "fastreid"
    assert all(r.info.status == "FINISHED" and "eval/val/mAP" in r.data.metrics for r in runs)
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions("name = 'anet-veriwild'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    champion = MlflowClient().get_model_version_by_alias("anet-veriwild", "champion")
    assert str(champion.version) in ("1", "2")

    sweep = _make("pipelines.sweep", project, *ANET, "--trials", "2", "--parallel", "1", "--out", str(project / "sweeps"))
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert "best: trial #" in sweep.stdout
    assert len(_runs(project)) == 4
