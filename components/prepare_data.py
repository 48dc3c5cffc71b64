"""Component: resolve the config, fetch or generate the dataset, build (or reuse) the prepared cache.

The Dataset artifact is a small directory (``descriptor.json``) naming where the prepared cache is;
the cache itself stays in place (``.cache/anet`` locally, the PVC in a cluster).
"""

# no `from __future__ import annotations`: kfp reads the real annotation objects
from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_data(
    dataset: str,
    profile: str,
    overrides: str,
    lambda_a: float,
    lambda_g: float,
    lambda_van: float,
    epochs: int,
    seed: int,
    promotion_margin: float,
    data_root: str,
    cache_root: str,
    mlflow_parent_run_id: str,
    prepared: Output[Dataset],
    report: Output[Markdown],
) -> str:
    """Returns the resolved config as JSON (the later steps' ``config_json``)."""
    from anet import steps

    merged = steps.pipeline_overrides(overrides, lambda_a, lambda_g, lambda_van, epochs, seed, promotion_margin)
    result = steps.prepare_data(dataset, profile, merged, data_root, cache_root, prepared.path,
                                parent_run_id=mlflow_parent_run_id)
    prepared.metadata.update(result["metadata"])
    steps.write_report(report.path, result["report_md"])
    return result["config_json"]
