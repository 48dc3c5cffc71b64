"""Component: log and register the model in MLflow; move alias ``champion`` only if it wins."""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from typing import Optional

from kfp import dsl
from kfp.dsl import Input, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_model(
    config_json: str,
    dataset: str,
    evaluation_json: str,
    model: Input[Model],
    promote: bool,
    mlflow_parent_run_id: Optional[str] = None,
) -> str:
    """Returns the registration summary as JSON (status, metrics, model_version, champion, decision).

    ``promote=False`` (sweep trials) registers the version without moving any alias.
    """
    import json

    from anet import steps  # lazy: kfp runs only this function body, inside the image

    return json.dumps(steps.register(config_json, dataset, evaluation_json, model.path,
                                     parent_run_id=mlflow_parent_run_id, promote=promote))
