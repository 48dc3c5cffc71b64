"""Component: resolve the config once, fetch or generate the dataset, build (or reuse) the prepared cache.

The Dataset artifact is a small directory (``descriptor.json``) naming where the prepared cache is;
the cache itself stays in place (``.cache/anet`` locally, the PVC in a cluster).
"""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_data(
    prepared: Output[Dataset],
    report: Output[Markdown],
    profile: str,
    dataset: str,
    overrides: dict,
    cache_root: str,
    # the run settings: exactly anet.config.RunSettings' fields (tests/test_pipeline_compile.py checks)
    lambda_a: Optional[float] = None,
    lambda_g: Optional[float] = None,
    lambda_van: Optional[float] = None,
    lr: Optional[float] = None,
    epochs: Optional[int] = None,
    eval_every: Optional[int] = None,
    seed: Optional[int] = None,
    promotion_margin: Optional[float] = None,
    config_json: Optional[str] = None,
    data_root: Optional[str] = None,
    mlflow_parent_run_id: Optional[str] = None,
) -> NamedTuple("PrepareOutputs", config_json=str, parent_run_id=str):
    """Returns the resolved config as JSON and the MLflow parent run id the later steps nest under.

    Without ``mlflow_parent_run_id`` (a run started from the Kubeflow UI or a schedule) this step
    opens the parent run itself; the register step, or a failing step, closes it.
    """
    given = dict(locals())  # first line: the parameters as kfp passed them
    from collections import namedtuple  # lazy: kfp runs only this function body, inside the image

    from anet import steps  # lazy: kfp runs only this function body, inside the image
    from anet.config import RunSettings  # lazy: kfp runs only this function body, inside the image

    settings = RunSettings(**{name: given[name] for name in RunSettings.model_fields})
    result = steps.prepare_data(prepared.path, config_json=config_json, profile=profile, dataset=dataset,
                                overrides=overrides, settings=settings, data_root=data_root,
                                cache_root=cache_root, parent_run_id=mlflow_parent_run_id, open_parent_run=True)
    prepared.metadata.update(result["metadata"])
    steps.write_report(report.path, result["report_md"])
    outputs = namedtuple("PrepareOutputs", ["config_json", "parent_run_id"])
    return outputs(result["config_json"], result["parent_run_id"])
