"""Retrieval evaluation: exact blockwise metrics, dataset protocols, feature extraction, reports.

``evaluate_checkpoint`` is imported lazily (it pulls in matplotlib and the data/engine modules)::

    from anet.evaluation import evaluate_checkpoint, rank_metrics, evaluate_dataset
"""

from __future__ import annotations

from typing import Any

__all__ = ["RankResult", "evaluate_checkpoint", "evaluate_dataset", "extract_features", "rank_metrics"]


def __getattr__(name: str) -> Any:
    if name in ("rank_metrics", "RankResult"):
        from anet.evaluation import ranking

        return getattr(ranking, name)
    if name == "evaluate_dataset":
        from anet.evaluation.protocols import evaluate_dataset

        return evaluate_dataset
    if name == "extract_features":
        from anet.evaluation.features import extract_features

        return extract_features
    if name == "evaluate_checkpoint":
        from anet.evaluation.run import evaluate_checkpoint

        return evaluate_checkpoint
    raise AttributeError(f"module 'anet.evaluation' has no attribute {name!r}")
