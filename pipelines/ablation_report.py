"""The ablation's MLflow run, what already finished, and the table: mean +- std over seeds per row.

Example:
    >>> run_id = open_ablation_run("synthetic", "ablation-synthetic")
    >>> results = list(finished_rows("synthetic", "ablation-synthetic").values())
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from anet.config import TEST_SETS
from anet.io import atomic_path, atomic_write_text
from anet.mlops import tracking

METRICS = ("mAP", "R1", "R5", "mINP")


@dataclasses.dataclass(frozen=True)
class RowResult:
    """One finished (row, seed): its pipeline run and its ``eval/<split>/<metric>`` values."""

    row: str
    seed: int
    run_id: str
    metrics: dict[str, float]


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
    """Every (row, seed) of the ablation whose pipeline run succeeded."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when tracking

    query = (f"tags.`anet.ablation` = '{name}' and tags.`anet.kind` = 'pipeline' "
             "and tags.`anet.outcome` = 'succeeded'")
    out: dict[tuple[str, int], RowResult] = {}
    for run in MlflowClient().search_runs([tracking.experiment_id(dataset)], query, max_results=5000):
        tags = run.data.tags
        key = (tags["anet.ablation.row"], int(tags["anet.ablation.seed"]))
        out[key] = RowResult(key[0], key[1], run.info.run_id, dict(run.data.metrics))
    return out


def summary_frame(results: list[RowResult], dataset: str, order: dict[str, int], papers: dict[str, str]
                  ) -> pd.DataFrame:
    """One line per row: seeds, then mean and std of each test metric and of the validation mAP."""
    test = TEST_SETS[dataset][0]
    columns = [(f"eval/{test}/{m}", m) for m in METRICS] + [("eval/val/mAP", "val mAP")]
    lines = []
    for row in sorted({r.row for r in results}, key=lambda k: order.get(k, 99)):
        runs = [r for r in results if r.row == row]
        line: dict[str, object] = {"row": papers.get(row, row), "key": row, "seeds": len(runs)}
        for key, label in columns:
            values = np.array([r.metrics.get(key, math.nan) for r in runs], dtype=float)
            line[f"{label} mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            # the sample standard deviation over seeds (ddof=1); undefined for one seed, shown as such
            line[f"{label} std"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else math.nan
        lines.append(line)
    return pd.DataFrame(lines)


def to_markdown(frame: pd.DataFrame, dataset: str) -> str:
    """``| row | seeds | mAP | R1 | ... |`` with ``mean +- std`` cells (test split, then validation); a
    row with one seed shows its value alone."""
    labels = [*METRICS, "val mAP"]
    head = f"| row ({dataset}, test split `{TEST_SETS[dataset][0]}`) | seeds | " + " | ".join(labels) + " |"
    lines = [head, "|---|---|" + "---|" * len(labels)]
    for _, r in frame.iterrows():
        cells = [f"{r[f'{m} mean']:.3f}" + (f" +- {r[f'{m} std']:.3f}" if math.isfinite(r[f"{m} std"]) else "")
                 for m in labels]
        lines.append(f"| {r['row']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: list[RowResult], args: argparse.Namespace, out_dir: Path, order: dict[str, int],
                 papers: dict[str, str]) -> str:
    """Markdown + CSV + bar plot on disk and in the ablation's MLflow run; returns the Markdown table."""
    frame = summary_frame(results, args.dataset, order, papers)
    table = to_markdown(frame, args.dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "ablation.md", table + "\n")
    atomic_write_text(out_dir / "ablation.csv", frame.to_csv(index=False))
    paths = [out_dir / "ablation.md", out_dir / "ablation.csv", _plot(frame, out_dir / "ablation.png")]
    run_id = find_ablation_run(args.dataset, args.name)
    if run_id:  # the grid has ended it already: artifacts may still be added
        tracking.log_artifacts([str(p) for p in paths], "ablation", run_id=run_id)
    return table


def _plot(frame: pd.DataFrame, path: Path) -> Path:
    import matplotlib  # lazy: plotting is only needed for the report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(frame))
    for i, metric in enumerate(("mAP", "R1")):
        ax.bar(x + (i - 0.5) * 0.38, frame[f"{metric} mean"], 0.38, yerr=frame[f"{metric} std"], capsize=3,
               label=metric)
    ax.set_xticks(x, frame["row"], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test split")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
