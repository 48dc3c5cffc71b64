"""MLOps glue: MLflow tracking (``tracking``), model registry (``registry``), run lineage (``lineage``),
the ``anet registry`` commands (``commands``) and the Optuna bridge (``optuna_bridge``).

Only drivers and pipeline steps import these modules; MLflow and Optuna are imported lazily inside
functions, so importing ``anet.mlops.<module>`` is cheap and has no side effects.
"""
