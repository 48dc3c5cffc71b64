"""The pipeline: prepare -> stage one -> stage two -> evaluate -> register.

One DAG for both places it runs. ``kfp.local`` ignores the Kubernetes platform settings (GPU
requests, secrets, PVC mounts), so they are always applied; a cluster honours them:

* the two train tasks request ``gpus`` NVIDIA GPUs, CPU and memory, retry twice and resume from
  ``ANET_CHECKPOINT_ROOT`` on the PVC (cluster only: kfp.local honours retries too and has no PVC,
  so ``make_pipeline(cluster=False)`` leaves both out), and get ``ANET_NPROC=<gpus>`` (the train
  step re-launches itself under ``torchrun`` when it is > 1); every name shared with the steps and
  the image is a constant in :mod:`anet.contract`;
* credentials come only from Kubernetes secrets (never a literal in the YAML):
  ``anet-s3`` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL: DVC remote and S3),
  ``anet-mlflow`` (MLFLOW_TRACKING_URI), optional ``anet-mlflow-auth`` (MLFLOW_TRACKING_USERNAME,
  MLFLOW_TRACKING_PASSWORD);
* every task mounts the PVC named by the ``cache_pvc`` parameter at ``/mnt/anet``; the prepared
  cache lives there (``cache_root`` defaults to ``/mnt/anet/cache``) and later steps find it through
  the location written in the Dataset artifact, so no images are copied between steps.

Run settings: a run started from the Kubeflow UI sets ``profile``, ``overrides`` (a JSON object of
dotted config keys, e.g. ``{"stage_two.epochs": 0}``) and any of the typed run settings declared once
by :class:`anet.config.RunSettings` (``lambda_a``, ``lambda_g``, ``lambda_van``, ``lr``, ...; omitted:
the profile's value), and leaves ``config_json`` empty; the prepare step resolves them into the
config once. A driver (``pipelines.run``, the sweep, the ablation) resolves the config itself and
passes ``config_json`` alone, leaving the settings unset (the prepare step refuses both at once); the
DAG for kfp.local has no run settings at all. Either way every later step reads the config's JSON,
and ``lambda_g`` ends up as ``cfg.loss.lambda_g`` in ``anet.losses.Criterion``. The settings are not
listed here: :func:`make_pipeline` spells them out from ``RunSettings``.

Example:
    >>> from pipelines.dag import anet_dag, anet_pipeline, make_pipeline
    >>> four_gpu = make_pipeline(gpus=4)   # compile with: python -m pipelines.compile --gpus 4
"""

# no `from __future__ import annotations`: kfp reads the real annotation objects
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from kfp import dsl, kubernetes

from anet.contract import (
    CACHE_PVC,
    CHECKPOINT_ROOT,
    CHECKPOINT_ROOT_ENV,
    CLUSTER_CACHE_ROOT,
    EXPECT_GPUS_ENV,
    NPROC_ENV,
    PVC_MOUNT,
    SECRETS,
    SHM_MOUNT,
    SHM_SIZE,
)
from components.evaluate import evaluate
from components.prepare_data import prepare_data, prepare_resolved
from components.register_model import register_model
from components.run_settings import run_setting_parameters
from components.train import train
from pipelines.trainjob import node_settings

PIPELINE_NAME = "anet-pipeline"


def _platform(task: dsl.PipelineTask, cache_pvc: str, secrets: dict, cpu: str, memory: str) -> None:
    """Kubernetes settings every task gets: secrets as env, the cache PVC, non-root, resources, no caching.

    kfp-kubernetes 2.17 has no fsGroup (its security context is runAsUser/runAsGroup/runAsNonRoot
    only), so the PVC is made writable once by docker/k8s/pvc-permissions.yaml; no runAsUser
    either: OpenShift assigns its own uid, and the image works for any uid in group 0.
    """
    for name, (key_to_env, optional) in secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=key_to_env, optional=optional)
    kubernetes.mount_pvc(task, pvc_name=cache_pvc, mount_path=PVC_MOUNT)
    kubernetes.set_security_context(task, run_as_non_root=True)
    task.set_cpu_request(cpu).set_memory_request(memory)
    # every step writes MLflow runs: a cache hit would silently skip them
    task.set_caching_options(enable_caching=False)


@dataclass(frozen=True)
class Placement:
    """Where train tasks may run: ``node_selector`` labels and ``tolerations`` ("key=value:Effect" or
    "key:Effect" for Exists), e.g. ``Placement({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    ("nvidia.com/gpu:NoSchedule",))``."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[str, ...] = ()


def _place(task: dsl.PipelineTask, placement: Placement) -> None:
    for key, value in placement.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for spec in placement.tolerations:
        key_value, _, effect = spec.rpartition(":")
        key, eq, value = key_value.partition("=")
        kubernetes.add_toleration(task, key=key, operator="Equal" if eq else "Exists", value=value or None,
                                  effect=effect or None)


@dataclass(frozen=True)
class TrainShape:
    """What a compiled DAG fixes for its train tasks: ``gpus`` each, ``nodes`` (> 1: a TrainJob),
    ``retries`` (0 locally: kfp.local honours them and a failing step must stop the run at once),
    ``checkpoint_root`` (the PVC folder a retried task resumes from; ``None`` locally, where no
    PVC exists and the steps keep checkpoints in their own outputs)."""

    gpus: int = 1
    retries: int = 2
    placement: Placement = field(default_factory=Placement)
    nodes: int = 1
    checkpoint_root: str | None = CHECKPOINT_ROOT


def _checkpoint_root(task: dsl.PipelineTask, shape: TrainShape) -> None:
    if shape.checkpoint_root:
        task.set_env_variable(CHECKPOINT_ROOT_ENV, shape.checkpoint_root)


def _train_settings(task: dsl.PipelineTask, cache_pvc: str, display_name: str, shape: TrainShape) -> None:
    """GPUs (an error in the step when they are requested but not visible), NCCL's shared memory,
    placement, retries that resume from the last checkpoint on the PVC. ``nodes`` > 1: the task
    launches a TrainJob of ``nodes`` x ``gpus`` instead (:mod:`pipelines.trainjob`)."""
    gpus, retries, placement, nodes = shape.gpus, shape.retries, shape.placement, shape.nodes
    _platform(task, cache_pvc, SECRETS, cpu="8", memory="32G")
    task.set_display_name(display_name)
    if nodes > 1:  # the pod only launches and follows the job: no GPU, no placement of its own
        node_settings(task, nodes, gpus, placement.node_selector, placement.tolerations)
        _checkpoint_root(task, shape)
        if retries:
            task.set_retry(num_retries=retries, backoff_duration="60s")
        return
    if gpus > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
        task.set_env_variable(EXPECT_GPUS_ENV, str(gpus))
    if gpus > 1:  # NCCL needs more /dev/shm than a pod's 64 MB default
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path=SHM_MOUNT, medium="Memory",
                                   size_limit=SHM_SIZE)
    task.set_env_variable(NPROC_ENV, str(max(gpus, 1)))
    _checkpoint_root(task, shape)
    _place(task, placement)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s")


def anet_dag(
    shape: TrainShape,
    prepare: Callable[..., dsl.PipelineTask],
    dataset: str = "synthetic",
    profile: str = "synthetic",
    overrides: dict = {},
    config_json: Optional[str] = None,
    mlflow_parent_run_id: Optional[str] = None,
    trial: dict = {},
    data_root: Optional[str] = None,
    cache_root: str = CLUSTER_CACHE_ROOT,
    cache_pvc: str = CACHE_PVC,
    promote: bool = True,
    **run_settings: Any,
) -> str:
    """The DAG; ``make_pipeline`` binds ``shape`` and ``prepare`` and kfp sees every other parameter.

    ``run_settings`` are the typed run settings (:class:`anet.config.RunSettings`' fields, unset: the
    profile's value), handed to ``prepare`` by name; ``overrides`` maps dotted config keys to values.
    """
    prep = prepare(
        profile=profile, dataset=dataset, overrides=overrides, cache_root=cache_root, config_json=config_json,
        data_root=data_root, mlflow_parent_run_id=mlflow_parent_run_id, **run_settings,
    ).set_display_name("prepare data")
    _platform(prep, cache_pvc, SECRETS, cpu="2", memory="8G")
    resolved = prep.outputs["config_json"]
    parent = prep.outputs["parent_run_id"]  # the driver's, or the one prepare opened (UI, schedules)

    one = train(config_json=resolved, prepared=prep.outputs["prepared"], stage_name="stage_one",
                mlflow_parent_run_id=parent, trial=trial)
    _train_settings(one, cache_pvc, "stage-one training", shape)
    two = train(config_json=resolved, prepared=prep.outputs["prepared"], stage_name="stage_two",
                mlflow_parent_run_id=parent, trial=trial, init_from=one.outputs["model"])
    _train_settings(two, cache_pvc, "stage-two AC fine-tuning", shape)

    ev = evaluate(config_json=resolved, prepared=prep.outputs["prepared"], model=two.outputs["model"],
                  mlflow_parent_run_id=parent).set_display_name("evaluate")
    _platform(ev, cache_pvc, SECRETS, cpu="4", memory="16G")
    _checkpoint_root(ev, shape)  # it removes the run's retry checkpoints
    reg = register_model(config_json=resolved, dataset=dataset, evaluation_json=ev.outputs["Output"],
                         model=two.outputs["model"], mlflow_parent_run_id=parent, promote=promote)
    reg.set_display_name("register model")
    _platform(reg, cache_pvc, SECRETS, cpu="1", memory="4G")
    return reg.output


def make_pipeline(gpus: int = 1, cluster: bool = True, placement: Placement | None = None, nodes: int = 1) -> Callable:
    """The pipeline :func:`anet_dag` with ``gpus`` per train task (> 1 runs DDP via torchrun); ``nodes``
    > 1 trains each stage as a Kubeflow Trainer TrainJob of ``nodes`` x ``gpus`` (docker/README.md).

    Its signature is :func:`anet_dag`'s with ``**run_settings`` spelled out, one typed optional
    parameter per field of :class:`anet.config.RunSettings` (:func:`components.run_settings.run_setting_parameters`).
    ``cluster=False`` is the DAG for kfp.local: no run settings (its driver passes ``config_json``,
    and kfp.local 2.17 can run neither a DAG with an unset optional parameter nor a task with an unset
    optional integer), no retry policy (kfp.local honours it, with its backoff, and locally a failing
    step must stop the run at once) and no PVC checkpoint root (no PVC exists there). kfp.local
    ignores every other platform setting.
    """
    shape = TrainShape(gpus=gpus, retries=2 if cluster else 0, placement=placement or Placement(), nodes=nodes,
                       checkpoint_root=CHECKPOINT_ROOT if cluster else None)
    prepare = prepare_data if cluster else prepare_resolved
    fixed = [p for p in inspect.signature(anet_dag).parameters.values()
             if p.name not in ("shape", "prepare") and p.kind is not p.VAR_KEYWORD]
    signature = inspect.Signature(fixed + (run_setting_parameters() if cluster else []), return_annotation=str)

    def anet_pipeline(*args: Any, **kwargs: Any) -> str:  # kfp passes its channels in signature order
        return anet_dag(shape, prepare, **signature.bind(*args, **kwargs).arguments)

    anet_pipeline.__signature__ = signature  # type: ignore[attr-defined]
    anet_pipeline.__doc__ = anet_dag.__doc__
    return dsl.pipeline(name=PIPELINE_NAME, description="AttributeNet vehicle re-ID: prepare, two-stage "
                        "training, evaluation, MLflow registration with champion/challenger promotion")(anet_pipeline)


anet_pipeline = make_pipeline()
local_pipeline = make_pipeline(gpus=0, cluster=False)
