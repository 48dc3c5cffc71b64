"""Component: retrieval evaluation of the final checkpoint (skipped cleanly when it was pruned)."""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    config_json: str,
    prepared: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
    files: Output[Artifact],
    mlflow_parent_run_id: Optional[str] = None,
) -> str:
    """Returns the evaluation result as JSON (metrics by ``eval/<split>/<metric>``, or the skip reason).

    ``files`` is a directory with the evaluator's plots and results table (also logged to MLflow).
    """
    import json

    from anet import steps  # lazy: kfp runs only this function body, inside the image

    result = steps.evaluate(config_json, prepared.path, model.path, files.path, parent_run_id=mlflow_parent_run_id)
    for name, value in result.get("metrics", {}).items():
        metrics.log_metric(name, value)
    steps.write_report(report.path, result["report_md"])
    return json.dumps(result)
