"""One plain function per pipeline step: typed values and paths in, a small JSON-able dict out.

The kfp components in ``components/`` only map artifacts onto these functions, so every step can be
run and tested without kfp::

    from anet import steps
    prep = steps.prepare_data("out/prepared", profile="smoke")
    one = steps.train(prep["config_json"], "out/prepared", "stage_one", "out/one")
    two = steps.train(prep["config_json"], "out/prepared", "stage_two", "out/two", init_from="out/one")
    ev = steps.evaluate(prep["config_json"], "out/prepared", "out/two", "out/eval")
    reg = steps.register(prep["config_json"], "synthetic", json.dumps(ev), "out/two")

The run's config is resolved once, by the prepare step (or by the driver, which then passes
``config_json``), and travels as the config's JSON. MLflow: the runner opens the parent run
(:func:`start_pipeline_run`) and passes its id down; each step opens a nested run under it; no id
means no tracking (unit tests). A failing step tags the parent run with its reason.

Distributed training: when ``ANET_NPROC`` > 1 (set by the DAG on GPU nodes) :func:`train` re-launches
itself under ``torchrun --nproc_per_node=ANET_NPROC`` (``python -m anet.steps train ARGS.json``).
"""

from anet.steps.common import (
           DESCRIPTOR,
           PRUNED_MARKER,
           RESULT_FILE,
           checkpoint_in,
           is_pruned,
           read_descriptor,
           write_report,
)
from anet.steps.evaluate_step import evaluate
from anet.steps.pipeline_run import finish_pipeline_run, pipeline_outcome, start_pipeline_run
from anet.steps.prepare import check_dataset_available, import_hint, prepare_data, prepare_from_config
from anet.steps.register_step import register
from anet.steps.train_step import train

__all__ = ["DESCRIPTOR", "PRUNED_MARKER", "RESULT_FILE", "check_dataset_available", "checkpoint_in", "evaluate",
           "finish_pipeline_run", "import_hint", "is_pruned", "pipeline_outcome", "prepare_data",
           "prepare_from_config", "read_descriptor", "register", "start_pipeline_run", "train", "write_report"]
