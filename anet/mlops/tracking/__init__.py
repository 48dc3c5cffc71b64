"""MLflow tracking: the parent run and nested step runs (``tracking``), the engine callback, what a step
logs (``step_tracking``), batched writes (``record``), bounded retries (``retry``), the server address
(``endpoint``), logged models (``models``), lineage tags (``lineage``), who owns a run (``liveness``).
"""
