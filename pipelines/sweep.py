"""Optuna sweeps over lambda_a, lambda_g and lambda_van where every trial is one pipeline run.

``make sweep DATASET=synthetic TRIALS=8 PARALLEL=2`` runs::

    python -m pipelines.sweep --dataset synthetic --profile synthetic --trials 8 --parallel 2

The coordinator creates the study once (so parallel workers never race on creating the sqlite
schema), reclaims trials left RUNNING by a dead worker of this machine, splits the remaining
trials between PARALLEL worker processes and prints a live summary while they run. Each worker
asks the study for a trial (seeded TPE), launches one pipeline run (kfp.local, or the cluster when
KFP_HOST is set) with the suggested lambdas, waits, and tells the study the dataset's primary
metric read back from the run. A failed run is a FAIL trial and the sweep goes on; a pruned run is
a PRUNED trial, not a failure. OPTUNA_STORAGE (or --storage) takes an RDB URL, ``journal:<file>``
or ``redis://`` so workers on many machines share one study; a rerun of the same command resumes
without repeating finished trials.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anet.config import RUN_SETTING_KEYS, ExperimentConfig, RunSettings, parse_overrides, resolve_config
from anet.errors import UserError, run_guarded
from anet.io import pid_alive
from anet.logs import setup_logging
from anet.mlops.sweeps.optuna_bridge import (
    STORAGE_ENV,
    TrialRef,
    cluster_storage_problem,
    open_storage,
    public_storage,
    redact,
    storage_url,
)
from anet.mlops.tracking import tracking
from pipelines.run import run_pipeline
from pipelines.sweep_report import finish_sweep

log = logging.getLogger("pipelines.sweep")

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
LAMBDAS = ("lambda_a", "lambda_g", "lambda_van")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--profile", default=None, help="config profile (default: the dataset name)")
    p.add_argument("--trials", type=int, default=8, help="total trials the study should hold")
    p.add_argument("--parallel", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE"), help="RDB URL, journal:<file>, redis://")
    p.add_argument("--study-name", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tune-lr", action="store_true", help="also search stage one's learning rate")
    p.add_argument("--pruner", default="median", choices=["median", "threshold", "none"])
    p.add_argument("--prune-lower", type=float, default=None, help="threshold pruner: prune below this")
    p.add_argument("--pruner-startup-trials", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=2,
                   help="in-training evaluation period (epochs) that feeds the pruner, unless set with --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument("--out", default="sweeps", help="folder for the study db, logs and reports")
    p.add_argument("--promote-best", action="store_true", help="apply the promotion rule to the best trial")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quota", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.profile = args.profile or args.dataset
    args.study_name = args.study_name or f"anet-{args.dataset}-lambdas"
    args.overrides = parse_overrides(args.overrides)
    args.storage = storage_url(args.storage, Path(args.out))
    if os.environ.get("KFP_HOST") and (problem := cluster_storage_problem(args.storage)):
        raise UserError(f"a sweep on a cluster: {problem}")
    os.environ[STORAGE_ENV] = args.storage  # inherited by workers and their pipeline steps, never a parameter
    if args.trials < 1 or args.parallel < 1:
        raise UserError("--trials and --parallel must be at least 1")
    return args


def pruner_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The pruner as data: the training step rebuilds it from this (Optuna does not store it)."""
    spec: dict[str, Any] = {"kind": args.pruner, "n_startup_trials": args.pruner_startup_trials}
    if args.pruner == "threshold":
        spec["lower"] = args.prune_lower
    return spec


def create_study(args: argparse.Namespace) -> Any:
    """Create (or load) the study before any worker starts."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=args.seed)
    study = optuna.create_study(
        study_name=args.study_name, storage=open_storage(args.storage), direction="maximize",
        sampler=sampler, load_if_exists=True,
    )
    study.set_user_attr("dataset", args.dataset)
    study.set_user_attr("profile", args.profile)
    return study


def reclaim_stale(study: Any) -> int:
    """Fail RUNNING trials whose worker on this host is gone, and queue their lambdas again."""
    import optuna

    host, reclaimed = socket.gethostname(), 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("worker_host") != host or pid_alive(int(attrs.get("worker_pid", -1))):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        reclaimed += 1
    return reclaimed


def finished_count(study: Any) -> int:
    """Trials that count towards --trials: finished ones that were not reclaimed as stale."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED and not t.user_attrs.get("stale"))


def searched_lambdas(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The lambdas the configured variant actually uses (a sweep over an ignored one would be noise).

    Baseline has no attribute or joint terms; VAN has L_att (lambda_a) but no joint module, so
    lambda_g and lambda_van (which balances L_VAN against L_JM) do nothing there.
    """
    match cfg.model.variant:
        case "baseline":
            return ()
        case "van":
            return ("lambda_a",)
        case "anet" | "anet_att":
            return LAMBDAS


def search_space(args: argparse.Namespace) -> tuple[str, ...]:
    """The lambdas to search for this sweep's profile and overrides; refused when there are none."""
    cfg = resolve_config(args.profile, args.overrides, dataset=args.dataset)
    names = searched_lambdas(cfg)
    if not names:
        raise UserError(f"model.variant={cfg.model.variant} uses none of {', '.join(LAMBDAS)}: nothing to sweep")
    ignored = [n for n in LAMBDAS if n not in names]
    if ignored:
        log.warning("model.variant=%s ignores %s: searching %s only", cfg.model.variant, ", ".join(ignored),
                    ", ".join(names))
    return names


def suggest(trial: Any, names: tuple[str, ...], tune_lr: bool) -> RunSettings:
    """The trial's run settings: each lambda log-uniform in [0.01, 100] (paper Table 4's range)."""
    params = {name: trial.suggest_float(name, 0.01, 100.0, log=True) for name in names}
    if tune_lr:
        params["lr"] = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    return RunSettings(**params)


def trial_overrides(base: dict[str, Any], eval_every: int) -> dict[str, Any]:
    """The user's overrides plus an in-training evaluation period for the pruner (unless they set one)."""
    period = {key: eval_every for key in RUN_SETTING_KEYS["eval_every"]}
    return {**period, **base}


def run_one_trial(study: Any, args: argparse.Namespace) -> str:
    """Ask, run one pipeline, tell. Returns the trial's final state name."""
    import optuna  # lazy: optuna is only needed by sweep processes

    trial = study.ask()
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    settings = suggest(trial, search_space(args), args.tune_lr).model_copy(update={"seed": args.seed})
    # the trial travels as a run parameter: never with the storage's password (steps read $OPTUNA_STORAGE)
    ref = TrialRef(args.study_name, public_storage(args.storage), trial._trial_id, trial.number, pruner_spec(args))
    tags = {"optuna.study": args.study_name, "optuna.trial_number": str(trial.number)}
    try:
        outcome = run_pipeline(dataset=args.dataset, profile=args.profile,
                               overrides=trial_overrides(args.overrides, args.eval_every), settings=settings,
                               trial=asdict(ref), tags=tags, promote=False)
    except Exception as exc:  # one broken trial must not end the sweep
        trial.set_user_attr("error", str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "FAIL"
    for key in ("parent_run_id", "model_version", "error"):
        if getattr(outcome, key, None):
            trial.set_user_attr("mlflow_run_id" if key == "parent_run_id" else key, getattr(outcome, key))
    if outcome.status == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "PRUNED"
    if outcome.status != "succeeded" or outcome.primary_value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "FAIL"
    study.tell(trial, float(outcome.primary_value))
    return "COMPLETE"


def run_worker(args: argparse.Namespace) -> int:
    """A worker process: run its quota of trials with its own seeded sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study_name, storage=open_storage(args.storage))
    # distinct, reproducible TPE streams per worker and per resume
    study.sampler = optuna.samplers.TPESampler(seed=args.seed * 1000 + args.worker + len(study.get_trials(deepcopy=False)))
    for _ in range(args.quota):
        run_one_trial(study, args)
    return 0


def spawn_workers(args: argparse.Namespace, remaining: int, log_dir: Path) -> list[subprocess.Popen]:
    """Split the remaining trials between worker processes; each logs to its own file."""
    workers = min(args.parallel, remaining)
    quotas = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
    procs = []
    base = [a for a in sys.argv[1:] if not a.startswith("--worker") and not a.startswith("--quota")]
    for index, quota in enumerate(quotas):
        log = open(log_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 - owned by the child process
        cmd = [sys.executable, "-m", "pipelines.sweep", *base, "--storage", args.storage,
               "--study-name", args.study_name, "--worker", str(index), "--quota", str(quota)]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    return procs


def watch(study: Any, procs: list[subprocess.Popen], poll_s: float = 3.0) -> None:
    """Print one line per trial as it finishes, with the best value so far."""
    seen: set[int] = set()
    while True:
        done = all(p.poll() is not None for p in procs)
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if trial.number in seen or trial.state.name not in FINISHED or trial.user_attrs.get("stale"):
                continue
            seen.add(trial.number)
            print(_trial_line(study, trial), flush=True)
        if done:
            return
        time.sleep(poll_s)


def _trial_line(study: Any, trial: Any) -> str:
    lams = " ".join(f"{k}={trial.params.get(k, float('nan')):.3g}" for k in LAMBDAS)
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    try:
        best = f"best #{study.best_trial.number} {study.best_value:.4f}"
    except ValueError:
        best = "best -"
    return f"trial {trial.number:3d} {trial.state.name:8s} value={value:>7s} {lams} | {best}"


def init_tracking(dataset: str) -> None:
    """Create the MLflow store and experiment once, before workers start: two processes creating
    a fresh sqlite store at the same moment race on its schema migrations (seen here)."""
    tracking.configure(None)
    tracking.experiment_id(dataset)


def coordinate(args: argparse.Namespace) -> int:
    search_space(args)  # refuses a variant with nothing to sweep before any work
    init_tracking(args.dataset)
    study = create_study(args)
    reclaimed = reclaim_stale(study)
    done = finished_count(study)
    remaining = max(0, args.trials - done)
    out_dir = Path(args.out) / args.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"study {args.study_name} on {redact(args.storage)}: {done} finished, {remaining} to run"
          f"{f', {reclaimed} interrupted trial(s) queued again' if reclaimed else ''}; worker logs in {out_dir}")
    if remaining:
        procs = spawn_workers(args, remaining, out_dir)
        try:
            watch(study, procs)
        except KeyboardInterrupt:
            for proc in procs:
                proc.terminate()
            log.warning("interrupted: rerun the same command to resume; finished trials are kept")
            return 130
        failed = [p.returncode for p in procs if p.returncode]
        if failed:
            log.warning("%d worker(s) exited with %s; see %s/worker-*.log", len(failed), failed, out_dir)
    return finish_sweep(study, args, out_dir)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        setup_logging()
        args = parse_args(argv)
        return run_worker(args) if args.worker is not None else coordinate(args)

    return run_guarded(body, "rerun the same command to resume the study")


if __name__ == "__main__":
    sys.exit(main())
