"""Component: one training stage (used twice: stage one, and stage two starting from stage one)."""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    config_json: str,
    prepared: Input[Dataset],
    stage_name: str,
    model: Output[Model],
    trial: dict = {},
    mlflow_parent_run_id: Optional[str] = None,
    init_from: Input[Model] = None,
) -> bool:
    """Returns True when the Optuna pruner stopped the stage (the checkpoint is then marked pruned).

    ``trial`` is the Optuna trial a sweep runs this stage for (empty: not a sweep trial).
    """
    import json

    from anet import steps  # lazy: kfp runs only this function body, inside the image

    result = steps.train(config_json, prepared.path, stage_name, model.path,
                         init_from=init_from.path if init_from else None, parent_run_id=mlflow_parent_run_id,
                         trial_json=json.dumps(trial, sort_keys=True) if trial else None)
    model.metadata.update({"stage": stage_name, "pruned": result["pruned"], "checkpoint": result["checkpoint"]})
    return result["pruned"]
