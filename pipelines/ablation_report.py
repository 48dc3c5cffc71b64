"""The ablation's report, from ``runs.csv`` alone: the table, the paired steps with 95% CIs, the plot.

::

    python -m pipelines.ablation_report ablations/ablation-synthetic-wild/runs.csv
    python -m pipelines.ablation_report ablations/ablation-synthetic-wild/runs.csv --readme README.md
    make ablation-report                      # the same for the default grid, README included

Rows are grouped by the CPU that ran them: a grid split across machines shows one line per (row, CPU)
and pairs seeds only within one CPU (the same seed lands elsewhere on another CPU). ``--readme``
replaces the text between ``<!-- ablation:NAME -->`` and ``<!-- /ablation:NAME -->`` (NAME = the
folder of runs.csv). The grid's MLflow run (finding, opening, what finished) lives here too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from anet.config import TEST_SETS
from anet.errors import UserError, run_guarded
from anet.io import atomic_write_text
from anet.logs import setup_logging
from anet.mlops.tracking import tracking
from pipelines.ablation_plot import plot_report
from pipelines.ablation_rows import ROW_LABELS, ROW_ORDER, STEPS
from pipelines.ablation_runs import read_runs
from pipelines.ablation_stats import paired_difference

METRICS = ("mAP", "R1", "R5", "mINP")
STEP_METRICS = ("mAP", "R1")


@dataclasses.dataclass(frozen=True)
class RowResult:
    """One finished (row, seed) in MLflow: its pipeline run, metrics, CPU tag and duration."""

    row: str
    seed: int
    run_id: str
    metrics: dict[str, float]
    cpu: str = "unknown"
    wall_s: float = math.nan
    config: str = ""  # the anet.ablation.config tag: which resolved config the run trained
    git_commit: str = "unknown"
    finished_at: str = ""


def find_ablation_run(dataset: str, name: str) -> str | None:
    """The ablation's MLflow run id, found by its tags (None before the first run of the grid)."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    found = MlflowClient().search_runs([tracking.experiment_id(dataset)],
                                       f"tags.`anet.kind` = 'ablation' and tags.`anet.ablation` = '{name}'",
                                       max_results=1)
    return found[0].info.run_id if found else None


def open_ablation_run(dataset: str, name: str) -> str:
    """The ablation's MLflow run, RUNNING until the grid ends (found again on a rerun, else created)."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    client = MlflowClient()
    run_id = find_ablation_run(dataset, name)
    if run_id:
        client.update_run(run_id, status="RUNNING")  # resumed: open again until it ends
        return run_id
    run = client.create_run(tracking.experiment_id(dataset), run_name=name,
                            tags={"anet.kind": "ablation", "anet.ablation": name})
    return run.info.run_id


def finished_rows(dataset: str, name: str) -> dict[tuple[str, int], RowResult]:
    """Every (row, seed) of the ablation whose pipeline run succeeded, in this MLflow store."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    query = (f"tags.`anet.ablation` = '{name}' and tags.`anet.kind` = 'pipeline' "
             "and tags.`anet.outcome` = 'succeeded'")
    out: dict[tuple[str, int], RowResult] = {}
    for run in MlflowClient().search_runs([tracking.experiment_id(dataset)], query, max_results=5000):
        tags, info = run.data.tags, run.info
        key = (tags["anet.ablation.row"], int(tags["anet.ablation.seed"]))
        wall = (info.end_time - info.start_time) / 1000.0 if info.end_time and info.start_time else math.nan
        ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.end_time / 1000)) if info.end_time else ""
        out[key] = RowResult(key[0], key[1], info.run_id, dict(run.data.metrics), tags.get("anet.cpu", "unknown"),
                             wall, tags.get("anet.ablation.config", ""), tags.get("git.commit", "unknown"), ended)
    return out


def _latest(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, seed, cpu): the last one written (a rerun of the same seed replaces it)."""
    runs = runs.assign(cpu=runs["cpu"].fillna("unknown"))
    return runs.drop_duplicates(["row", "seed", "cpu"], keep="last")


def cpu_labels(runs: pd.DataFrame) -> dict[str, str]:
    """``{cpu model: "A"}`` in order of first appearance."""
    return {cpu: chr(ord("A") + i) for i, cpu in enumerate(dict.fromkeys(runs["cpu"].fillna("unknown")))}


def test_split(runs: pd.DataFrame) -> str:
    """The test split the table reports (the dataset's first), from the file's ``dataset`` column."""
    datasets = sorted(set(runs["dataset"]))
    if len(datasets) != 1 or datasets[0] not in TEST_SETS:
        raise UserError(f"runs.csv: one dataset per file expected, found {datasets}; split the file")
    return TEST_SETS[datasets[0]][0]


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, CPU): seeds, mean and sample std (ddof=1) of each test metric and val mAP."""
    runs, test, labels = _latest(runs), test_split(runs), cpu_labels(runs)
    columns = [(f"eval/{test}/{m}", m) for m in METRICS] + [("eval/val/mAP", "val mAP")]
    lines = []
    for (row, cpu), group in sorted(runs.groupby(["row", "cpu"], sort=False),
                                    key=lambda kv: (ROW_ORDER.get(kv[0][0], 99), labels[kv[0][1]])):
        line: dict[str, object] = {"row": ROW_LABELS.get(row, row), "key": row, "cpu": labels[cpu],
                                   "seeds": len(group), "wall_s": float(group["wall_s"].mean())}
        for key, label in columns:
            values = group[key].to_numpy(dtype=float) if key in group else np.array([math.nan])
            finite = values[np.isfinite(values)]
            line[f"{label} mean"] = float(finite.mean()) if len(finite) else math.nan
            line[f"{label} std"] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        lines.append(line)
    return pd.DataFrame(lines)


def steps_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Each step of the paper's ordering per metric and CPU: paired per-seed differences and their CI."""
    runs, test, labels = _latest(runs), test_split(runs), cpu_labels(runs)
    lines = []
    for metric in STEP_METRICS:
        column = f"eval/{test}/{metric}"
        for step in STEPS:
            for cpu, group in runs.groupby("cpu", sort=False):
                a = group[group["row"] == step.minuend].set_index("seed")
                b = group[group["row"] == step.subtrahend].set_index("seed")
                seeds = sorted(set(a.index) & set(b.index))
                if not seeds or column not in group:
                    continue
                d = paired_difference(a.loc[seeds, column].tolist(), b.loc[seeds, column].tolist())
                lines.append({"step": step.label, "metric": metric, "cpu": labels[cpu], "seeds": d.n,
                              "diffs": d.diffs, "mean": d.mean, "sd": d.sd, "half_width": d.half_width,
                              "lo": d.mean - d.half_width, "hi": d.mean + d.half_width,
                              "resolved": d.resolved, "needed": None if d.resolved else d.needed})
    return pd.DataFrame(lines)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f}" + (f" +- {std:.3f}" if math.isfinite(std) else "")


def _needed(line: pd.Series) -> str:
    if line["resolved"]:
        return "resolved"
    if line["seeds"] < 2:
        return "needs >= 2 seeds"
    return "unresolvable (mean ~0)" if pd.isna(line["needed"]) else f"{int(line['needed'])} seeds"


def to_markdown(summary: pd.DataFrame, steps: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The rows table, which CPU ran what, and the steps table, as one Markdown block."""
    labels, test = [*METRICS, "val mAP"], test_split(runs)
    out = [f"| row (test split `{test}`; val = validation) | CPU | seeds | " + " | ".join(labels) + " | s / run |",
           "|---|---|---|" + "---|" * len(labels) + "---|"]
    for _, r in summary.iterrows():
        cells = [_cell(r[f"{m} mean"], r[f"{m} std"]) for m in labels]
        out.append(f"| {r['row']} | {r['cpu']} | {r['seeds']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |")
    out.append("")
    for cpu, label in cpu_labels(runs).items():
        mine = runs[runs["cpu"].fillna("unknown") == cpu]
        out.append(f"- CPU {label}: {cpu}: {len(mine)} runs, {mine['wall_s'].sum() / 3600:.2f} h wall in all")
    out += ["", "| step of the paper's ordering | metric | CPU | seeds | per-seed differences | mean | 95% CI "
            "| smallest resolvable (CI half-width) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    if steps.empty:
        out.append("| (no step: no two rows of a step share a seed on one CPU) | | | | | | | | |")
    for _, s in steps.iterrows():
        diffs = ", ".join(f"{d:+.3f}" for d in s["diffs"])
        ci = f"[{s['lo']:+.3f}, {s['hi']:+.3f}]" if math.isfinite(s["half_width"]) else "n/a"
        half = f"{s['half_width']:.3f}" if math.isfinite(s["half_width"]) else "n/a"
        out.append(f"| {s['step']} | {s['metric']} | {s['cpu']} | {s['seeds']} | {diffs} | {s['mean']:+.3f} | {ci} "
                   f"| {half} | {_needed(s)} |")
    return "\n".join(out)


def replace_in_readme(readme: Path, name: str, block: str) -> None:
    """Put ``block`` between the README's ``<!-- ablation:NAME -->`` and ``<!-- /ablation:NAME -->``."""
    begin, end = f"<!-- ablation:{name} -->", f"<!-- /ablation:{name} -->"
    text = readme.read_text()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{readme}: needs one '{begin}' line and one '{end}' line after it around the table")
    head, rest = text.split(begin, 1)
    atomic_write_text(readme, f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}")


def write_report(runs_csv: Path, out_dir: Path | None = None, readme: Path | None = None) -> str:
    """ablation.md, the summary CSV, the steps CSV and ablation.png beside ``runs_csv``; returns the Markdown."""
    runs = read_runs(runs_csv)
    if runs.empty:
        raise UserError(f"{runs_csv}: no finished runs yet")
    out_dir = out_dir or runs_csv.parent
    summary, steps = summary_frame(runs), steps_frame(runs)
    block = to_markdown(summary, steps, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "ablation.md", block + "\n")
    atomic_write_text(out_dir / "ablation.csv", summary.to_csv(index=False))
    atomic_write_text(out_dir / "steps.csv", steps.to_csv(index=False))
    plot_report(summary, steps, out_dir / "ablation.png")
    if readme is not None:
        replace_in_readme(readme, runs_csv.parent.name, block)
    return block


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.ablation_report RUNS_CSV [--out DIR] [--readme README.md]``."""

    def body() -> int:
        setup_logging()
        p = argparse.ArgumentParser(prog="python -m pipelines.ablation_report", description=__doc__.splitlines()[0])
        p.add_argument("runs_csv", type=Path, help="ablations/<name>/runs.csv")
        p.add_argument("--out", type=Path, default=None, help="where the report goes (default: beside runs.csv)")
        p.add_argument("--readme", type=Path, default=None, help="also replace the table in this README")
        args = p.parse_args(argv)
        sys.stdout.write(write_report(args.runs_csv, args.out, args.readme) + "\n")
        return 0

    return run_guarded(body, "nothing was changed but files already written; rerun the same command")


if __name__ == "__main__":
    sys.exit(main())
