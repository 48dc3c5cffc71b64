"""A real sweep: 2 worker processes, each trial a kfp.local pipeline run on the smoke profile.

Checks: trials stored with their lambdas and MLflow run ids, MLflow tags on the trial runs, a
pruned trial ends its pipeline run cleanly (PRUNED, run FINISHED, not FAILED), an interrupted
trial is run again on resume while finished trials are not repeated, and the best lambdas are
reported with the trial table and plots on disk.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sweep(tmp: Path, trials: int, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPTUNA_", "KFP_"))}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [
        sys.executable, "-m", "pipelines.sweep", "--dataset", "synthetic", "--profile", "smoke",
        "--trials", str(trials), "--parallel", "2", "--out", str(tmp / "sweeps"),
        "--pruner", "threshold", "--prune-lower", "1.01", "--pruner-startup-trials", "3",
        "--set", "stage_one.eval_every=1", *extra,
    ]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)


def _study(tmp: Path):
    import optuna

    storage = f"sqlite:///{tmp / 'sweeps' / 'optuna.db'}"
    return optuna.load_study(study_name="anet-synthetic-lambdas", storage=storage)


def _inject_interrupted_trial(tmp: Path) -> dict:
    """A trial left RUNNING by a worker of this host that died (its pid no longer exists)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = _study(tmp)
    trial = study.ask({"lambda_a": __import__("optuna").distributions.FloatDistribution(0.01, 100, log=True)})
    trial.suggest_float("lambda_g", 0.01, 100.0, log=True)
    trial.suggest_float("lambda_van", 0.01, 100.0, log=True)
    trial.set_user_attr("worker_host", __import__("socket").gethostname())
    trial.set_user_attr("worker_pid", dead.pid)
    return trial.params


def test_sweep_runs_prunes_resumes_and_reports(tmp_path):
    first = _sweep(tmp_path, 4)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    study = _study(tmp_path)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    states = {t.number: t.state.name for t in trials}
    assert states[3] == "PRUNED" and all(states[n] == "COMPLETE" for n in (0, 1, 2)), states
    assert all(set(t.params) == {"lambda_a", "lambda_g", "lambda_van"} for t in trials)
    assert all(t.user_attrs.get("mlflow_run_id") for t in trials)
    assert "best: trial #" in first.stdout and (tmp_path / "sweeps/anet-synthetic-lambdas/trials.csv").exists()
    assert (tmp_path / "sweeps/anet-synthetic-lambdas/optimization_history.png").exists()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in trials:
        run = mlflow.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.study"] == "anet-synthetic-lambdas"
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert float(run.data.params["loss.lambda_a"]) == pytest.approx(t.params["lambda_a"])
        assert run.info.status == "FINISHED"  # the pruned trial's run too

    before = {t.number: (t.state.name, t.value) for t in trials}
    lost_params = _inject_interrupted_trial(tmp_path)
    second = _sweep(tmp_path, 5)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 interrupted trial(s) queued again" in second.stdout
    after = sorted(_study(tmp_path).get_trials(), key=lambda t: t.number)
    assert {t.number: (t.state.name, t.value) for t in after if t.number < 4} == before
    stale = [t for t in after if t.user_attrs.get("stale")]
    retried = [t for t in after if "retry_of" in t.user_attrs]
    assert len(stale) == 1 and len(retried) == 1 and retried[0].params == pytest.approx(lost_params)
    assert len(after) == 6  # 4 finished + 1 stale (not counted) + its retry
