"""Retrieval evaluation: exact blockwise metrics (``ranking``), dataset protocols (``protocols``),
feature extraction (``features``), reports (``report``), a checkpoint end to end (``run``) and the
engine's in-training evaluation (``in_training``). Import from the sub-modules::

    from anet.evaluation.ranking import rank_metrics
    from anet.evaluation.run import evaluate_checkpoint
"""
