"""Component: resolve the config once, fetch or generate the dataset, build (or reuse) the prepared cache.

The Dataset artifact is a small directory (``descriptor.json``) naming where the prepared cache is;
the cache itself stays in place (``.cache/anet`` locally, the PVC in a cluster).

Two components from one function: :data:`prepare_data` takes the typed run settings (the DAG a user
starts from the Kubeflow UI), :data:`prepare_resolved` does not (kfp.local, whose driver passes the
resolved ``config_json`` and which cannot leave an optional integer unset). Both are named
``prepare_data`` in a compiled pipeline.
"""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components import IMAGE
from components.run_settings import with_run_settings


def prepare_data(
    prepared: Output[Dataset],
    report: Output[Markdown],
    profile: str,
    dataset: str,
    overrides: dict,
    cache_root: str,
    config_json: Optional[str] = None,
    data_root: Optional[str] = None,
    mlflow_parent_run_id: Optional[str] = None,
    **run_settings,
) -> NamedTuple("PrepareOutputs", config_json=str, parent_run_id=str):
    """Returns the resolved config as JSON and the MLflow parent run id the later steps nest under.

    ``**run_settings`` becomes one typed parameter per field of ``anet.config.RunSettings``
    (:func:`components.run_settings.with_run_settings`). Without ``mlflow_parent_run_id`` (a run
    started from the Kubeflow UI or a schedule) this step opens the parent run itself; the register
    step, or a failing step, closes it.
    """
    given = dict(locals())  # first line: the parameters as kfp passed them, run settings included
    from collections import namedtuple  # lazy: kfp runs only this function body, inside the image

    from anet import steps  # lazy: kfp runs only this function body, inside the image
    from anet.config import RunSettings  # lazy: kfp runs only this function body, inside the image

    settings = RunSettings(**{name: given.get(name) for name in RunSettings.model_fields})
    result = steps.prepare_data(prepared.path, config_json=config_json, profile=profile, dataset=dataset,
                                overrides=overrides, settings=settings, data_root=data_root,
                                cache_root=cache_root, parent_run_id=mlflow_parent_run_id, open_parent_run=True)
    prepared.metadata.update(result["metadata"])
    steps.write_report(report.path, result["report_md"])
    outputs = namedtuple("PrepareOutputs", ["config_json", "parent_run_id"])
    return outputs(result["config_json"], result["parent_run_id"])


_component = dsl.component(base_image=IMAGE, install_kfp_package=False)
prepare_resolved = _component(with_run_settings(prepare_data, None))
prepare_data = _component(with_run_settings(prepare_data))  # type: ignore[no-redef]  # the component replaces its source
