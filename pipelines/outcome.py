"""What one pipeline run produced, the one-line reason of a failed run, and the summary a user reads.

Both runners (kfp.local and a Kubeflow cluster) read the failing step and its reason from the MLflow
parent run, where every step records it. When that record is missing (the tag could not be written, or
the parent run cannot be read now), the local runner falls back on the step's own ``error: <step>: ...``
line, which kfp.local prints through this process (:class:`StepLines`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from anet import steps

TASK_NAMES = {"prepare": "prepare data", "train": "training", "evaluate": "evaluate", "register": "register model"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# what anet.steps.common.reported_step logs for a failing step
_STEP_ERROR = re.compile(r"\berror: (?P<step>" + "|".join(TASK_NAMES) + r"): (?P<reason>.+)$")
log = logging.getLogger(__name__)


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


def failure_reason(parent: str, kfp_message: str, step_line: tuple[str, str] | None = None) -> str:
    """The failing step and its one-line reason, as the step recorded it on the parent run, else as it
    logged it (``step_line``: ``(step, reason)`` from :class:`StepLines`)."""
    try:
        recorded = steps.pipeline_outcome(parent)
    except Exception as exc:  # noqa: BLE001 - a tracking outage now must not hide the step's own reason
        log.warning("could not read the failing step's reason from MLflow run %s (%s)", parent,
                    (str(exc).splitlines() or [type(exc).__name__])[0][:200])
        recorded = {}
    if recorded.get("failed_step"):
        return f"{TASK_NAMES.get(recorded['failed_step'], recorded['failed_step'])}: {recorded['error']}"
    if step_line is not None:
        return f"{TASK_NAMES.get(step_line[0], step_line[0])}: {step_line[1]}"
    return f"{_ANSI.sub('', kfp_message)} (the step recorded no reason; see its log above)"


class StepLines(io.TextIOBase):
    """A tee for ``sys.stdout`` while kfp.local runs the steps: it passes everything on and keeps the
    last ``error: <step>: <reason>`` line a step logged (:attr:`last`)."""

    def __init__(self, out: Any):
        super().__init__()
        self.out, self.last, self._partial = out, None, ""

    def write(self, text: str) -> int:
        """Pass ``text`` on; remember a step's error line once it is complete."""
        self.out.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            found = _STEP_ERROR.search(_ANSI.sub("", line).rstrip())
            if found:
                self.last = (found["step"], found["reason"])
        return len(text)

    def flush(self) -> None:
        """Flush the stream behind."""
        self.out.flush()

    def isatty(self) -> bool:
        """Whether the stream behind is a terminal (kfp colours its lines then)."""
        return bool(getattr(self.out, "isatty", lambda: False)())


@contextlib.contextmanager
def step_lines() -> Iterator[StepLines]:
    """``sys.stdout`` goes through a :class:`StepLines` inside the ``with``."""
    tee = StepLines(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield tee


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


