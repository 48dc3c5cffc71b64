"""Component: one training stage (used twice: stage one, and stage two starting from stage one)."""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    config_json: str,
    prepared: Input[Dataset],
    stage_name: str,
    mlflow_parent_run_id: str,
    trial_json: str,
    model: Output[Model],
    init_from: Input[Model] = None,
) -> bool:
    """Returns True when the Optuna pruner stopped the stage (the checkpoint is then marked pruned)."""
    from anet import steps

    result = steps.train(config_json, prepared.path, stage_name, init_from.path if init_from else "",
                         model.path, mlflow_parent_run_id, trial_json)
    model.metadata.update({"stage": stage_name, "pruned": result["pruned"], "checkpoint": result["checkpoint"]})
    return result["pruned"]
