"""``ablations/<name>/runs.csv``: one line per finished (row, seed), the ablation's committed record.

Every finished pipeline run of the grid appends its line (row, seed, run id, every ``eval/*`` metric
of the test and validation splits, wall seconds, CPU model, git commit), so the table, the confidence
intervals and the plot can be recomputed from this file alone (``python -m pipelines.ablation_report``),
and a grid split across machines merges by concatenating files.

Example:
    >>> append_run(Path("ablations/ablation-synthetic-wild/runs.csv"), record)
    >>> frame = read_runs(Path("ablations/ablation-synthetic-wild/runs.csv"))
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

import pandas as pd

from anet.errors import UserError
from anet.io import atomic_write_text

# fixed columns first; then every eval/<split>/<metric> column, sorted
# config: sha256 prefix of the run's resolved config JSON (the same row and seed on other data differs)
ID_COLUMNS = ("row", "seed", "run_id", "dataset", "profile", "config", "wall_s", "cpu", "git_commit", "finished_at")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows; never empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def eval_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The test and validation metrics of a pipeline run (``eval/<split>/<metric>``), finite or NaN."""
    return {k: float(v) if v is not None and math.isfinite(float(v)) else math.nan
            for k, v in metrics.items() if k.startswith("eval/") and k.count("/") == 2}


def append_run(path: Path, record: dict[str, Any]) -> None:
    """Add one finished run's line; a new metric column widens the file (old lines get NaN there).

    The file is rewritten atomically, so a crash never leaves a torn line; a line for the same
    (row, seed, run id) is replaced, not repeated.
    """
    missing = [c for c in ID_COLUMNS if c not in record]
    if missing:
        raise ValueError(f"runs.csv record without {missing}")
    new = pd.DataFrame([record])
    old = read_runs(path) if path.is_file() else pd.DataFrame(columns=list(ID_COLUMNS))
    same = (old["row"] == record["row"]) & (old["seed"] == int(record["seed"])) & (old["run_id"] == record["run_id"])
    frame = pd.concat([old[~same], new], ignore_index=True) if len(old) else new
    metrics = sorted(c for c in frame.columns if c not in ID_COLUMNS)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame[[*ID_COLUMNS, *metrics]].to_csv(index=False, float_format="%.6g"))


def read_runs(path: Path) -> pd.DataFrame:
    """The lines of ``runs.csv``; one clear error line when it is missing or not one of ours."""
    if not path.is_file():
        raise UserError(f"{path}: no such runs.csv; run the grid first (make ablation) or name an existing file")
    try:
        frame = pd.read_csv(path, dtype={"row": str, "run_id": str, "cpu": str, "git_commit": str,
                                         "dataset": str, "profile": str, "config": str,
                                         "finished_at": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}); restore it from git") from exc
    missing = [c for c in ID_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing columns {missing}; a runs.csv starts with {','.join(ID_COLUMNS)}")
    if frame["seed"].isna().any():
        raise UserError(f"{path}: a line without a seed; every line is one (row, seed)")
    frame["seed"] = frame["seed"].astype(int)
    return frame
