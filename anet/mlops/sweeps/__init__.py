"""Optuna on both sides of a pipeline run (``optuna_bridge``).
"""
