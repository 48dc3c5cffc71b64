"""One plain function per pipeline step: paths and strings in, a small JSON-able dict out.

The kfp components in ``components/`` only map artifacts onto these functions, so every step can be
run and tested without kfp::

    from anet import steps
    cfg_json = steps.resolve_config("synthetic", "smoke", []).to_json()
    prep = steps.prepare_data("synthetic", "smoke", "[]", "", "", "out/prepared")
    one = steps.train(prep["config_json"], "out/prepared", "stage_one", "", "out/one", "", "")
    two = steps.train(prep["config_json"], "out/prepared", "stage_two", "out/one", "out/two", "", "")
    ev = steps.evaluate(prep["config_json"], "out/prepared", "out/two", "out/eval", "")
    reg = steps.register(prep["config_json"], "synthetic", json.dumps(ev), "out/two", "")

MLflow: the runner opens the parent run (:func:`start_pipeline_run`) before the DAG starts and
passes its id down; each step opens a nested run under it (kfp local steps are separate processes,
so nesting by id is the only way). An empty parent id means "no tracking" (unit tests).

Distributed training: when ``ANET_NPROC`` > 1 (set by the DAG on GPU nodes) :func:`train` re-launches
itself under ``torchrun --nproc_per_node=ANET_NPROC`` (``python -m anet.steps train ARGS.json``);
rank 0 writes the result the parent process returns.

Layout: shared helpers in :mod:`anet.steps.common`, one module per step (``prepare``,
``train_step``, ``evaluate_step``, ``register_step``) and the parent run in ``pipeline_run``; this
package re-exports their public names.
"""

from __future__ import annotations

from typing import Any

from anet.steps.common import (  # noqa: F401
    DESCRIPTOR,
    PRUNED_MARKER,
    RESULT_FILE,
    checkpoint_in,
    is_pruned,
    pipeline_overrides,
    read_descriptor,
    resolve_config,
    write_report,
)
from anet.steps.evaluate_step import evaluate
from anet.steps.pipeline_run import finish_pipeline_run, start_pipeline_run
from anet.steps.prepare import check_dataset_available, dvc_remote, dvc_repo_dir, import_hint, prepare_data  # noqa: F401
from anet.steps.register_step import _embedder_class, register
from anet.steps.train_step import main, train  # noqa: F401


def __getattr__(name: str) -> Any:
    """``anet.steps.ReidEmbedder`` is built on first use, so importing this module never imports torch
    (pickled models find the class here by name)."""
    if name == "ReidEmbedder":
        globals()[name] = _embedder_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["check_dataset_available", "evaluate", "finish_pipeline_run", "is_pruned", "pipeline_overrides",
           "prepare_data", "read_descriptor", "register", "resolve_config", "start_pipeline_run", "train",
           "write_report"]
