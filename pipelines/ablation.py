"""The paper's ablation as pipeline runs: ``make ablation DATASET=synthetic SEEDS=5``.

Rows (paper Tables 1-3 and two of ours, ``pipelines.ablation_rows``), each a real pipeline run per
seed, all nested under one MLflow run tagged ``anet.kind=ablation``; the rows run one after another
(one torch job at a time on a small machine) and a rerun of the same command skips every (row, seed)
that already finished (in this MLflow store or in ``runs.csv``)::

    python -m pipelines.ablation --dataset synthetic --profile synthetic-wild --seeds 5
    python -m pipelines.ablation --profile smoke --seeds 1 --rows baseline,anet   # a quick look

What each row trains (the readings of the paper are in the README, "The ablation"):

* Baseline, VAN (f), VAN (fa) and Table 3's VAN (f) with fc attribute branches have no joint module,
  so no AC: they train stage one for the profile's whole schedule (stage one + stage two epochs,
  with the learning-rate decay stage two would have started with).
* ANet (j) and ANet (att) train stage one, then stage two (L', eq. 13, f frozen).
* ANet (j) w/o AC trains exactly ANet's stage two (same epochs, lr, frozen f) without AC_tri and
  AC_ID: ``stage_two.amelioration=false`` with ``freeze_f=true``. The switch also keeps L^f in the
  loss, but with f frozen L^f has no gradient on any trainable parameter, so the update is that of
  L' - AC_tri - AC_ID (eq. 13 read as: "without AC" removes the two AC terms only).
* Ours: ANet (j) after stage one only, and ANet (j) with fc attribute branches.

Every finished run appends its line to ``<out>/<name>/runs.csv`` (``pipelines.ablation_runs``); the
table, the paired steps with 95% CIs and the plot are made from that file alone
(``pipelines.ablation_report``), printed, written beside it and logged to the ablation's MLflow run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig, RunSettings, parse_overrides, resolve_config
from anet.errors import UserError, run_guarded
from anet.logs import setup_logging
from anet.mlops.tracking import liveness, tracking
from anet.mlops.tracking.lineage import git_commit
from pipelines.ablation_report import (
    RowResult,
    find_ablation_run,
    finished_rows,
    open_ablation_run,
    write_report,
)
from pipelines.ablation_rows import ROWS, Row
from pipelines.ablation_runs import append_run, cpu_model, eval_metrics, read_runs
from pipelines.run import run_pipeline

__all__ = ["ROWS", "Row", "main", "row_config", "run_grid", "stage_overrides"]

log = logging.getLogger("pipelines.ablation")


def stage_overrides(base: ExperimentConfig, stages: str) -> dict[str, Any]:
    """The stage settings of a row, derived from the profile's schedule."""
    one, two = base.stage_one, base.stage_two
    no_stage_two = {"stage_two.epochs": 0, "stage_two.amelioration": False, "stage_two.freeze_f": False}
    match stages:
        case "both":
            return {}
        case "two_no_ac":
            if not (two.epochs and two.freeze_f and two.amelioration):
                raise UserError("ANet (j) w/o AC is ANet's stage two without AC: the profile's stage two must be L' "
                                "on a frozen f (stage_two.epochs > 0, freeze_f=true, amelioration=true)")
            return {"stage_two.amelioration": False}  # frozen f: L^f carries no gradient (module doc)
        case "one_only":
            return no_stage_two
        case "one_total":
            milestones = list(one.milestones)
            lr_after_one = one.lr * one.gamma ** len(milestones)
            if two.epochs and two.lr < lr_after_one * 0.999:  # the decay stage two would have started with
                milestones.append(one.epochs)
            return {**no_stage_two, "stage_one.epochs": one.epochs + two.epochs, "stage_one.milestones": milestones}
    raise ValueError(stages)


def row_config(profile: str, dataset: str, user: Mapping[str, Any], row: Row) -> dict[str, Any]:
    """The overrides of one row: the user's, the row's, then its stage settings (checked by resolving)."""
    base = resolve_config(profile, user, dataset=dataset)
    merged = {**user, **row.overrides, **stage_overrides(base, row.stages)}
    resolve_config(profile, merged, dataset=dataset)  # a row that cannot mean what it says fails here
    return merged


def run_grid(args: argparse.Namespace) -> Path:
    """Run every missing (row, seed) in sequence, each appended to runs.csv; return runs.csv's path."""
    rows = [r for r in ROWS if r.key in args.rows]
    configs = {r.key: row_config(args.profile, args.dataset, args.overrides, r) for r in rows}  # fail before work
    runs_csv = Path(args.out) / args.name / "runs.csv"
    recorded = _recorded(runs_csv, args)
    tracking.configure(None)
    ablation_run = open_ablation_run(args.dataset, args.name)
    try:
        with liveness.sigterm_raises():
            _run_missing(args, rows, configs, ablation_run, runs_csv, recorded)
    except BaseException as exc:  # the ablation's run never stays RUNNING; a rerun reopens it
        tracking.end_run(ablation_run, tracking.run_status(exc))
        raise
    tracking.end_run(ablation_run, "FINISHED")
    return runs_csv


def config_sha(args: argparse.Namespace, overrides: Mapping[str, Any], seed: int) -> str:
    """Which config a (row, seed) trains: sha256 prefix of its resolved config JSON."""
    cfg = resolve_config(args.profile, overrides, RunSettings(seed=seed), dataset=args.dataset)
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]


def _recorded(runs_csv: Path, args: argparse.Namespace) -> dict[tuple[str, int], str]:
    """{(row, seed): config} already in runs.csv (on any machine); a file of another grid is refused."""
    if not runs_csv.is_file():
        return {}
    runs = read_runs(runs_csv)
    other = runs[(runs["dataset"] != args.dataset) | (runs["profile"] != args.profile)]
    if len(other):
        raise UserError(f"{runs_csv}: holds runs of dataset {other['dataset'].iloc[0]} profile "
                        f"{other['profile'].iloc[0]}; pass another --name for this grid")
    return {(r, int(s)): str(c) for r, s, c in zip(runs["row"], runs["seed"], runs["config"], strict=True)}


def _record(args: argparse.Namespace, run: RowResult) -> dict[str, Any]:
    return {"row": run.row, "seed": run.seed, "run_id": run.run_id, "dataset": args.dataset, "profile": args.profile,
            "config": run.config, "wall_s": round(run.wall_s, 1), "cpu": run.cpu, "git_commit": run.git_commit,
            "finished_at": run.finished_at, **eval_metrics(run.metrics)}


def _is_done(key: tuple[str, int], config: str, recorded: dict[tuple[str, int], str], runs_csv: Path) -> bool:
    """True when runs.csv has this (row, seed) with this config; another config there is refused."""
    if key not in recorded:
        return False
    if recorded[key] != config:
        raise UserError(f"{runs_csv}: {key[0]} seed {key[1]} was trained with another config ({recorded[key]}, now "
                        f"{config}: other data, overrides or row definitions); pass another --name for this grid")
    return True


def _run_missing(args: argparse.Namespace, rows: list[Row], configs: dict[str, dict[str, Any]],
                 ablation_run: str, runs_csv: Path, recorded: dict[tuple[str, int], str]) -> None:
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    done, cpu = finished_rows(args.dataset, args.name), cpu_model()
    for key, old in sorted(done.items()):  # finished in this store but not recorded (e.g. killed between the two)
        same = key[0] in configs and old.config == config_sha(args, configs[key[0]], key[1])
        if same and key not in recorded:  # runs of older row definitions or other data are never taken
            append_run(runs_csv, _record(args, old))
            recorded[key] = old.config
    for seed in range(args.from_seed, args.seeds):  # seed-major: an interrupted grid has every row at the first seeds
        for row in rows:
            config = config_sha(args, configs[row.key], seed)
            if _is_done((row.key, seed), config, recorded, runs_csv):
                log.info("%s seed %d: already finished (%s)", row.key, seed, runs_csv)
                continue
            log.info("%s seed %d: %s", row.key, seed, row.paper)
            tags = {"mlflow.parentRunId": ablation_run, "anet.ablation": args.name, "anet.ablation.row": row.key,
                    "anet.ablation.seed": str(seed), "anet.ablation.config": config, "anet.cpu": cpu}
            start = time.monotonic()
            outcome = run_pipeline(args.dataset, args.profile, configs[row.key], RunSettings(seed=seed), tags=tags,
                                   promote=False, run_name=f"{args.name}-{row.key}-s{seed}")
            if outcome.status != "succeeded" or outcome.parent_run_id is None:
                raise UserError(f"ablation row {row.key} seed {seed} failed: {outcome.error}")
            parent = MlflowClient().get_run(outcome.parent_run_id).data  # the commit the run started from
            append_run(runs_csv, _record(args, RowResult(
                row.key, seed, outcome.parent_run_id, dict(parent.metrics), cpu, time.monotonic() - start, config,
                parent.tags.get("git.commit", git_commit()), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))))
            recorded[(row.key, seed)] = config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--profile", default=None, help="config profile (default: the dataset name)")
    p.add_argument("--seeds", type=int, default=5, help="runtime seeds 0..N-1 per row")
    p.add_argument("--from-seed", type=int, default=0,
                   help="train seeds FROM..N-1 only (seeds run on another machine are left to that one)")
    p.add_argument("--rows", default=",".join(r.key for r in ROWS), help="comma-separated row keys")
    p.add_argument("--name", default=None, help="ablation name (default ablation-<profile>); reruns resume it")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument("--out", default="ablations", help="folder of <name>/runs.csv, the table and the plot")
    args = p.parse_args(argv)
    args.profile = args.profile or args.dataset
    args.name = args.name or f"ablation-{args.profile}"
    args.overrides = parse_overrides(args.overrides)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(args.rows) - {r.key for r in ROWS})
    if unknown or args.seeds < 1:
        raise UserError(f"--rows: unknown {unknown} (known: {', '.join(r.key for r in ROWS)})" if unknown
                        else "--seeds must be at least 1")
    if not 0 <= args.from_seed < args.seeds:
        raise UserError(f"--from-seed {args.from_seed}: must be at least 0 and below --seeds {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.ablation`` (what ``make ablation`` calls)."""

    def body() -> int:
        setup_logging()
        args = parse_args(argv)
        runs_csv = run_grid(args)
        table = write_report(runs_csv)
        run_id = find_ablation_run(args.dataset, args.name)
        if run_id:  # the grid has ended it already: artifacts may still be added
            names = ("runs.csv", "ablation.md", "ablation.csv", "steps.csv", "ablation.png")
            tracking.log_artifacts([str(runs_csv.parent / n) for n in names], "ablation", run_id=run_id)
        sys.stdout.write(table + "\n")
        return 0

    return run_guarded(body, "rerun the same command: finished rows are kept")


if __name__ == "__main__":
    sys.exit(main())
