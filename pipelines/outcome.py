"""What one pipeline run produced, the one-line reason of a failed run, and the summary a user reads.

Both runners (kfp.local and a Kubeflow cluster) read the failing step and its reason from the MLflow
parent run, where every step records it; nothing here parses a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from anet import steps

TASK_NAMES = {"prepare": "prepare data", "train": "training", "evaluate": "evaluate", "register": "register model"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class PipelineOutcome:
    """What one pipeline run produced (the sweep reads it)."""

    status: str  # "succeeded" | "failed" | "pruned"
    parent_run_id: str | None
    metrics: dict[str, float]
    primary_metric: str
    primary_value: float | None
    model_version: str | None
    champion: bool
    error: str | None
    decision: str | None = None
    output_dir: str | None = None
    tracking_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def failure_reason(parent: str, kfp_message: str) -> str:
    """The failing step and its one-line reason, as the step recorded it on the parent run."""
    recorded = steps.pipeline_outcome(parent)
    if recorded.get("failed_step"):
        return f"{TASK_NAMES.get(recorded['failed_step'], recorded['failed_step'])}: {recorded['error']}"
    return f"{_ANSI.sub('', kfp_message)} (the step recorded no reason; see its log above)"


def make_outcome(summary: dict[str, Any], error: str | None, primary: str, parent: str,
             out_dir: str | None) -> PipelineOutcome:
    status = "failed" if error else ("pruned" if summary.get("status") == "pruned" else "succeeded")
    return PipelineOutcome(
        status=status, parent_run_id=parent, metrics=dict(summary.get("metrics", {})),
        primary_metric=summary.get("primary_metric", primary), primary_value=summary.get("primary_value"),
        model_version=summary.get("model_version"), champion=bool(summary.get("champion", False)), error=error,
        decision=summary.get("decision"), output_dir=out_dir,
    )


def format_summary(outcome: PipelineOutcome) -> str:
    """The final summary: metrics table, model version, champion decision, where to look."""
    lines = [f"status: {outcome.status}"]
    if outcome.error:
        lines.append(f"error: {outcome.error}")
    splits = sorted({k.split("/")[1] for k in outcome.metrics if k.count("/") == 2})
    names = ["mAP", "R1", "R5", "R10", "mINP"]
    if splits:
        lines += ["", "| test set | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for split in splits:
            vals = [outcome.metrics.get(f"eval/{split}/{n}") for n in names]
            lines.append(f"| {split} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
        lines.append("")
    if outcome.primary_value is not None:
        lines.append(f"primary metric {outcome.primary_metric} = {outcome.primary_value:.4f}")
    if outcome.model_version:
        verdict = "became champion" if outcome.champion else "not champion"
        lines.append(f"model version: {outcome.model_version} ({verdict}; decision: {outcome.decision})")
    if outcome.parent_run_id:
        lines.append(f"MLflow run: {outcome.parent_run_id}  (tracking URI {outcome.tracking_uri})")
        ui = outcome.tracking_uri or ""
        lines.append("look: " + (f"open {ui}" if ui.startswith("http") else "make ui  ->  http://127.0.0.1:5000"))
    if outcome.output_dir:
        lines.append(f"step outputs: {outcome.output_dir}")
    return "\n".join(lines)


