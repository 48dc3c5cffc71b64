"""Train tasks on several nodes: the compile-time half of the Kubeflow Trainer launch.

With ``--nodes N`` (N > 1) a train task does not train in its own pod: it becomes a light launcher
(1 CPU, no GPU) that creates a ``trainer.kubeflow.org/v1alpha1`` TrainJob from inside the step
(:mod:`anet.steps.trainjob_run`). What the job needs that the launcher's pod does not already carry
(its image, PVC, secrets and ``ANET_*`` env are mirrored from the pod) travels as env on the task:

* ``ANET_NNODES`` / ``ANET_NPROC``: nodes, processes (GPUs) per node;
* ``ANET_NODE_RESOURCES``: each node's requests (GPUs also as the limit), JSON;
* ``ANET_NODE_PLACEMENT``: each node's node selector and tolerations, JSON (the launcher needs none).

The launcher's service account needs docker/k8s/trainjob-rbac.yaml. N = 1 keeps the plain pod.

Example:
    >>> node_settings(task, nodes=2, gpus=4, placement=Placement())   # in pipelines.dag._train_settings
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from kfp import dsl

from anet.contract import NNODES_ENV, NODE_PLACEMENT_ENV, NODE_RESOURCES_ENV, NPROC_ENV

NODE_CPU = "8"
NODE_MEMORY = "32G"
LAUNCHER_CPU = "1"
LAUNCHER_MEMORY = "2G"


def node_resources(gpus: int) -> dict[str, str]:
    """What every node of the job requests: the single-pod train task's CPU and memory, ``gpus`` GPUs."""
    return {"cpu": NODE_CPU, "memory": NODE_MEMORY, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}


def node_placement(node_selector: Mapping[str, str], tolerations: tuple[str, ...]) -> dict[str, object]:
    """``Placement`` as Kubernetes fields: ``{"nodeSelector": {...}, "tolerations": [{key, operator, ...}]}``."""
    parsed = []
    for spec in tolerations:
        key_value, _, effect = spec.rpartition(":")
        key, eq, value = key_value.partition("=")
        parsed.append({"key": key, "operator": "Equal" if eq else "Exists", **({"value": value} if eq else {}),
                       **({"effect": effect} if effect else {})})
    return {"nodeSelector": dict(node_selector), "tolerations": parsed}


def node_settings(task: dsl.PipelineTask, nodes: int, gpus: int, node_selector: Mapping[str, str],
                  tolerations: tuple[str, ...]) -> None:
    """Turn a train task into the launcher of a ``nodes`` x ``gpus`` TrainJob."""
    task.set_cpu_request(LAUNCHER_CPU).set_memory_request(LAUNCHER_MEMORY)
    task.set_env_variable(NNODES_ENV, str(nodes))
    task.set_env_variable(NPROC_ENV, str(max(gpus, 1)))
    task.set_env_variable(NODE_RESOURCES_ENV, json.dumps(node_resources(gpus), sort_keys=True))
    task.set_env_variable(NODE_PLACEMENT_ENV, json.dumps(node_placement(node_selector, tolerations),
                                                         sort_keys=True))
