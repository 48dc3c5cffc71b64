"""The paper's ablation as pipeline runs: ``make ablation DATASET=synthetic SEEDS=3``.

Rows (paper Tables 1-3), each a real pipeline run per seed, all nested under one MLflow run tagged
``anet.kind=ablation``; the rows run one after another (one torch job at a time on a small machine)
and a rerun of the same command skips every (row, seed) that already finished::

    python -m pipelines.ablation --dataset synthetic --profile synthetic --seeds 3
    python -m pipelines.ablation --profile smoke --seeds 1 --rows baseline,anet   # a quick look

Every row trains what makes sense for it: Baseline and VAN have no joint module, so no AC: they
train stage one for the profile's total number of epochs (stage one + stage two, with the
learning-rate decay stage two would have started with); "ANet (j) w/o AC" stops after stage one;
the ANet rows train both stages. Each row names the feature it is evaluated on, and a variant
without that feature is a config error, never a silent fallback. The table (mean +- std over
seeds of mAP, R1, R5, mINP on the test split, plus the validation mAP) is printed, written as
Markdown, CSV and a plot, and logged to the ablation's MLflow run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig, RunSettings, parse_overrides, resolve_config
from anet.errors import UserError, run_guarded
from anet.logs import setup_logging
from anet.mlops import liveness, tracking
from pipelines.ablation_report import RowResult, finished_rows, open_ablation_run, write_report
from pipelines.run import run_pipeline

log = logging.getLogger("pipelines.ablation")


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the paper's ablation tables: its overrides and which stages it trains."""

    key: str
    paper: str
    overrides: Mapping[str, Any]
    stages: str  # "one_total" (no joint module), "one_only" (w/o AC) or "both"


ROWS: tuple[Row, ...] = (
    Row("baseline", "Baseline", {"model.variant": "baseline", "eval.feature": "f"}, "one_total"),
    Row("van_f", "VAN (f)", {"model.variant": "van", "eval.feature": "f"}, "one_total"),
    Row("van_fa", "VAN (fa)", {"model.variant": "van", "eval.feature": "fa"}, "one_total"),
    Row("anet_no_ac", "ANet (j) w/o AC", {"eval.feature": "j"}, "one_only"),
    Row("anet", "ANet (j)", {"eval.feature": "j"}, "both"),
    Row("anet_att", "ANet (att), eq. 14", {"model.variant": "anet_att", "eval.feature": "j"}, "both"),
    Row("anet_fc", "ANet (j), fc attribute branch", {"model.attr_branch": "fc", "eval.feature": "j"}, "both"),
)


def stage_overrides(base: ExperimentConfig, stages: str) -> dict[str, Any]:
    """The stage settings of a row, derived from the profile's schedule."""
    one, two = base.stage_one, base.stage_two
    no_stage_two = {"stage_two.epochs": 0, "stage_two.amelioration": False, "stage_two.freeze_f": False}
    match stages:
        case "both":
            return {}
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


def run_grid(args: argparse.Namespace) -> list[RowResult]:
    """Run every missing (row, seed) in sequence; return every row's results (old and new)."""
    rows = [r for r in ROWS if r.key in args.rows]
    configs = {r.key: row_config(args.profile, args.dataset, args.overrides, r) for r in rows}  # fail before work
    tracking.configure(None)
    ablation_run = open_ablation_run(args.dataset, args.name)
    try:
        with liveness.sigterm_raises():
            _run_missing(args, rows, configs, ablation_run)
    except BaseException as exc:  # the ablation's run never stays RUNNING; a rerun reopens it
        tracking.end_run(ablation_run, tracking.run_status(exc))
        raise
    tracking.end_run(ablation_run, "FINISHED")
    return list(finished_rows(args.dataset, args.name).values())


def _run_missing(args: argparse.Namespace, rows: list[Row], configs: dict[str, dict[str, Any]],
                 ablation_run: str) -> None:
    done = finished_rows(args.dataset, args.name)
    for seed in range(args.from_seed, args.seeds):  # seed-major: an interrupted grid has every row at the first seeds
        for row in rows:
            if (row.key, seed) in done:
                log.info("%s seed %d: already finished (run %s)", row.key, seed, done[(row.key, seed)].run_id)
                continue
            log.info("%s seed %d: %s", row.key, seed, row.paper)
            tags = {"mlflow.parentRunId": ablation_run, "anet.ablation": args.name, "anet.ablation.row": row.key,
                    "anet.ablation.seed": str(seed)}
            outcome = run_pipeline(args.dataset, args.profile, configs[row.key], RunSettings(seed=seed), tags=tags,
                                   promote=False, run_name=f"{args.name}-{row.key}-s{seed}")
            if outcome.status != "succeeded":
                raise UserError(f"ablation row {row.key} seed {seed} failed: {outcome.error}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--profile", default=None, help="config profile (default: the dataset name)")
    p.add_argument("--seeds", type=int, default=3, help="runtime seeds 0..N-1 per row")
    p.add_argument("--from-seed", type=int, default=0,
                   help="train seeds FROM..N-1 only (seeds run on another machine are left to that one)")
    p.add_argument("--rows", default=",".join(r.key for r in ROWS), help="comma-separated row keys")
    p.add_argument("--name", default=None, help="ablation name (default ablation-<profile>); reruns resume it")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument("--out", default="ablations", help="folder for the table and plot")
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
        results = run_grid(args)
        order = {r.key: i for i, r in enumerate(ROWS)}
        papers = {r.key: r.paper for r in ROWS}
        table = write_report(results, args, Path(args.out) / args.name, order, papers)
        sys.stdout.write(table + "\n")
        return 0

    return run_guarded(body, "rerun the same command: finished rows are kept")


if __name__ == "__main__":
    sys.exit(main())
