"""The register step: log the evaluated model, register it, and move the champion alias if it wins.

The registered model is the served python model of :mod:`anet.search.served` (encoded images or uint8
arrays in; the retrieval embedding and per-attribute probabilities out), logged with the project's code.
A pruned trial registers nothing, and a model is never registered without its primary metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig
from anet.errors import UserError
from anet.mlops.registry import registry
from anet.mlops.tracking import lineage, tracking
from anet.mlops.tracking.step_tracking import StepTracker, run_tags, step_run
from anet.search import served
from anet.steps.common import checkpoint_in, is_pruned, reported_step
from anet.steps.pipeline_run import close_if_opened_by_pipeline


@reported_step("register")
def register(config_json: str, dataset: str, metrics_json: str, checkpoint: str,
             parent_run_id: str | None = None, promote: bool = True) -> dict[str, Any]:
    """Log the model, register it as ``anet-<dataset>`` (alias challenger), move champion if it wins.

    Returns ``{"status", "metrics", "primary_metric", "primary_value", "model_version", "champion",
    "decision"}``; ``status`` is "pruned" (nothing registered) or "succeeded".
    """
    cfg = ExperimentConfig.from_json(config_json)
    evaluation = json.loads(metrics_json) if metrics_json else {}
    base = {"metrics": evaluation.get("metrics", {}), "primary_metric": cfg.registry.primary_metric,
            "primary_value": evaluation.get("primary_value"), "model_version": None, "champion": False}
    if evaluation.get("status") == "pruned" or is_pruned(checkpoint):
        if parent_run_id:
            tracking.configure(None)
            StepTracker(None, parent_run_id).tag_parent({"anet.pruned": "true"})
            close_if_opened_by_pipeline(parent_run_id, "pruned")
        return {**base, "status": "pruned", "decision": "pruned trial: nothing registered"}
    if base["primary_value"] is None:
        raise UserError(f"no value for {cfg.registry.primary_metric}: a model is never registered without "
                        "its metric")
    if not parent_run_id:
        return {**base, "status": "succeeded", "decision": "no MLflow run: not registered"}
    with step_run(parent_run_id, "register") as tracker:
        outcome = _register_candidate(cfg, dataset or cfg.data.dataset, checkpoint_in(checkpoint), evaluation,
                                      parent_run_id, promote)
        tracker.tag_parent({"anet.model_version": outcome["model_version"], "anet.champion": outcome["champion"],
                            "anet.decision": outcome["decision"]})
    close_if_opened_by_pipeline(parent_run_id, "succeeded", outcome)
    return {**base, "status": "succeeded", **outcome}


def _register_candidate(cfg: ExperimentConfig, dataset: str, ckpt: Path, evaluation: dict[str, Any],
                        parent_run_id: str, promote: bool) -> dict[str, Any]:
    """Log the served model (images -> embedding + attribute probabilities) into the active step run and
    register it.

    The model carries its preprocessing and the prepared dataset's vocabularies, with a real image of
    that dataset as input example (:func:`anet.search.served.log_served_model`). ``promote=False``
    (sweep trials) registers the version (alias challenger) without moving the champion; the sweep
    offers the best trial for promotion afterwards.
    """
    vocab, example = served.dataset_of_run(parent_run_id, tuple(cfg.data.image_size))
    model_uri = served.log_served_model(ckpt, cfg, vocab, example)
    tags = lineage.lineage_tags(fingerprint=run_tags(parent_run_id).get("data.fingerprint"))
    decision = registry.register_candidate(model_uri, dataset, parent_run_id, evaluation["metrics"],
                                           cfg.registry.primary_metric, cfg.registry.promotion_margin,
                                           lineage_tags=tags, promote=promote)
    return {"model_version": str(decision.version), "champion": bool(decision.is_champion),
            "decision": decision.decision, "champion_value": decision.champion_value, "model_uri": model_uri}
