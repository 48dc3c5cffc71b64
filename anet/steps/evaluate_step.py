"""The evaluate step: the final checkpoint on the dataset's protocol, logged as ``eval/*`` metrics.

A pruned trial is skipped cleanly; a profile whose ``registry.primary_metric`` the evaluation does
not produce fails with a one-line reason. The step returns the metrics and a Markdown report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig
from anet.errors import UserError
from anet.evaluation.run import evaluate_checkpoint
from anet.mlops.tracking.step_tracking import step_run
from anet.steps.common import checkpoint_in, is_pruned, read_descriptor, reported_step
from anet.steps.train_step import remove_run_checkpoints

log = logging.getLogger(__name__)


@reported_step("evaluate")
def evaluate(config_json: str, dataset_descriptor: str, checkpoint: str, out_dir: str,
             parent_run_id: str | None = None) -> dict[str, Any]:
    """Evaluate the final checkpoint on the dataset's protocol; skip cleanly when it was pruned.

    Returns ``{"status": "ok"|"pruned", "metrics": {"eval/<split>/<metric>": v}, "primary_metric",
    "primary_value", "files", "report_md"}``.
    """
    cfg = ExperimentConfig.from_json(config_json)
    primary = cfg.registry.primary_metric
    if is_pruned(checkpoint):
        remove_run_checkpoints(parent_run_id)
        return {"status": "pruned", "metrics": {}, "primary_metric": primary, "primary_value": None,
                "files": [], "report_md": "# Evaluation skipped\n\nThe trial was pruned during training.\n"}
    descriptor = read_descriptor(dataset_descriptor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with step_run(parent_run_id, "evaluate") as tracker:
        results, files = _evaluate_checkpoint(cfg, descriptor, checkpoint_in(checkpoint), out)
        flat = tracker.log_eval(results, files)
    if primary not in flat:
        raise UserError(f"registry.primary_metric {primary!r} was not produced by the evaluation "
                        f"(got {', '.join(sorted(flat)) or 'nothing'}); fix the profile")
    remove_run_checkpoints(parent_run_id)  # trained and evaluated: no task of this run resumes any more
    return {"status": "ok", "metrics": flat, "primary_metric": primary, "primary_value": flat[primary],
            "files": files, "report_md": _eval_report(results, primary, flat[primary])}


def _evaluate_checkpoint(cfg: ExperimentConfig, descriptor: dict[str, Any], ckpt: Path,
                         out: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({test_set: {metric: value}}, [report files])`` for the checkpoint on the dataset's protocol."""
    result = evaluate_checkpoint(ckpt, descriptor["cache_dir"], cfg, out)
    for warning in result.get("warnings", []):
        log.warning("%s", warning)
    return result["results"], [str(p) for p in result.get("files", [])]


def _eval_report(results: dict[str, dict[str, Any]], primary: str, value: float) -> str:
    names = ["mAP", "R1", "R5", "R10", "mINP"]
    rows = "\n".join(f"| {split} | " + " | ".join(f"{float(m.get(n, float('nan'))):.4f}" for n in names) + " |"
                     for split, m in results.items())
    rows += "".join(f"\n| {split} re-ranked | " + " | ".join(f"{float(m[f'rerank/{n}']):.4f}" for n in names) + " |"
                    for split, m in results.items() if "rerank/mAP" in m)  # eval.rerank: beside, never instead
    return (f"# Evaluation\n\nprimary metric `{primary}` = {value:.4f}\n\n| test set | "
            + " | ".join(names) + " |\n|---|" + "---|" * len(names) + f"\n{rows}\n")
