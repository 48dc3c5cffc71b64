"""MLOps glue, one subpackage per concern:

* ``tracking/``: MLflow runs (``tracking``: a parent run per pipeline, a nested run per step), the
  engine callback, what a step logs (``step_tracking``), batched writes, bounded retries, the server
  address, logged models, lineage tags, who owns a run (``liveness``);
* ``registry/``: model versions and the champion (``registry``), the promotion lock (``lock``), reading
  versions (``versions``), cleaning up after dead drivers (``doctor``);
* ``storage/``: DVC (``dvc``), S3 (``s3``), ``anet data import`` (``importer``), pretrained weights;
* ``sweeps/``: Optuna on both sides of a pipeline run (``optuna_bridge``).

Lower to higher: ``storage`` and ``sweeps`` import no other subpackage, ``registry`` imports ``tracking``.
Only drivers and pipeline steps import these modules; MLflow, boto3, DVC and Optuna are imported lazily
inside functions, so importing ``anet.mlops.<concern>.<module>`` is cheap and has no side effects.
"""
