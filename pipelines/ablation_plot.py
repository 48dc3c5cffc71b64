"""The ablation's figure: row means (test mAP, +- std over seeds) and the paired steps with 95% CIs.

Example:
    >>> plot_report(summary_frame(runs), steps_frame(runs), Path("ablations/x/ablation.png"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anet.io import atomic_path


def plot_report(summary: pd.DataFrame, steps: pd.DataFrame, path: Path) -> Path:
    """Two panels: test mAP per (row, CPU) and each step's mean difference with its 95% interval."""
    import matplotlib  # lazy: plotting is only needed for the report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several_cpus = summary["cpu"].nunique() > 1
    fig, (rows_ax, steps_ax) = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(summary))
    names = [f"{r} [{c}]" if several_cpus else r for r, c in zip(summary["row"], summary["cpu"], strict=True)]
    rows_ax.bar(x, summary["mAP mean"], 0.6, yerr=summary["mAP std"].fillna(0.0), capsize=3)
    rows_ax.set_xticks(x, names, rotation=25, ha="right", fontsize=7)
    rows_ax.set_ylabel("test mAP (mean +- std over seeds)")
    shown = steps[steps["metric"] == "mAP"] if len(steps) else steps
    if len(shown):
        y = np.arange(len(shown))[::-1]
        labels = [f"{s} [{c}]" if several_cpus else s for s, c in zip(shown["step"], shown["cpu"], strict=True)]
        steps_ax.errorbar(shown["mean"], y, xerr=shown["half_width"].fillna(0.0), fmt="o", capsize=3)
        steps_ax.axvline(0.0, color="gray", linewidth=0.8)
        steps_ax.set_yticks(y, labels, fontsize=7)
    steps_ax.set_xlabel("paired difference in test mAP (mean, 95% CI over seeds)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
