"""The Kubeflow Trainer TrainJob a multi-node train step launches: a pure function of the step's own pod.

The job mirrors the pod the train step runs in (what kfp compiled for it): the same image, the same
PVC at the same mount path, the same secret-backed env and ``ANET_*`` settings, placed and sized as
the DAG asked (``ANET_NODE_RESOURCES``, ``ANET_NODE_PLACEMENT``). Every node runs the same
``torchrun`` with c10d rendezvous at node 0 (``PET_MASTER_ADDR``/``PET_MASTER_PORT``, set by the
torch-distributed runtime) and the step's arguments from a file on the PVC::

    manifest = trainjob_manifest(JobPlan(name="anet-1a2b3c4d5e6f-stage-one", nodes=2, gpus=4,
                                         args_file="/mnt/anet/checkpoints/<run>/stage_one/job/train_args.json"),
                                 own_pod)               # own_pod: the step's V1Pod as a dict

API: ``trainer.kubeflow.org/v1alpha1`` TrainJob of Kubeflow Trainer >= 2.2 (``runtimePatches``; the
2.0/2.1 ``podTemplateOverrides`` field is not written), checked against ``kubeflow-trainer-api`` in tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from typing import Any

from anet.contract import (
    EXPECT_GPUS_ENV,
    NNODES_ENV,
    NODE_PLACEMENT_ENV,
    NODE_RESOURCES_ENV,
    NPROC_ENV,
    PVC_MOUNT,
    SHM_MOUNT,
    SHM_SIZE,
    TRAINJOB_ENV,
)

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
DEFAULT_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs
NODE = "node"  # the runtime's replicated job and container that run the trainer
PATCH_MANAGER = "anet.pipeline/train-step"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
MIRRORED_PREFIXES = ("ANET_", "MLFLOW_", "AWS_", "OPTUNA_")  # env the ranks need from the step's pod


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """What the step decides: the job's name, nodes x GPUs per node, the arguments file on the PVC."""

    name: str
    nodes: int
    gpus: int  # per node: torchrun's --nproc-per-node (1 on CPU nodes)
    args_file: str
    runtime: str = DEFAULT_RUNTIME
    python: str = "python"


def torchrun_command(nnodes: str, nproc: str, endpoint: str, rdzv_id: str, args_file: str,
                     python: str = "python") -> list[str]:
    """The launch every node runs (and the local two-node emulation test runs with literal values)."""
    return [python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}", "--max-restarts=0",
            "-m", "anet.steps", "train", args_file]


def job_name(parent_run_id: str, stage_name: str) -> str:
    """One name per pipeline run and stage (a retried step finds its job again); a DNS-1035 label."""
    return f"anet-{parent_run_id[:12].lower()}-{stage_name.replace('_', '-')}"[:63].rstrip("-")


def trainjob_manifest(plan: JobPlan, pod: dict[str, Any]) -> dict[str, Any]:
    """The TrainJob (camelCase dict, ready for the Kubernetes API) mirroring ``pod`` (a V1Pod dict)."""
    container = _step_container(pod)
    command = torchrun_command("$PET_NNODES", str(plan.gpus), "$PET_MASTER_ADDR:$PET_MASTER_PORT", plan.name,
                               plan.args_file, plan.python)
    resources = json.loads(_env_value(container, NODE_RESOURCES_ENV) or "{}")
    trainer: dict[str, Any] = {
        "image": container["image"],
        "command": ["bash", "-c", "exec " + " ".join(_quote(part) for part in command)],
        "numNodes": plan.nodes,
        "numProcPerNode": plan.gpus,
        "env": _mirrored_env(container, plan),
    }
    if resources:
        trainer["resourcesPerNode"] = {"requests": resources, "limits": _limits(resources)}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": plan.name, "labels": {"app.kubernetes.io/part-of": "anet-pipeline",
                                                   "anet.pipeline/step": "train"}},
        "spec": {"runtimeRef": {"apiGroup": API_GROUP, "kind": "ClusterTrainingRuntime", "name": plan.runtime},
                 "trainer": trainer,
                 "runtimePatches": [_runtime_patch(pod, container, plan)]},
    }


def _quote(part: str) -> str:
    """Shell-quote everything but the ``$PET_*`` references bash must expand on the node."""
    return part if "$PET_" in part else shlex.quote(part)


def _step_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The container that runs the step (kfp's ``main``; the only one with the cache PVC mounted)."""
    containers = pod["spec"]["containers"]
    mounted = [c for c in containers if any(m.get("mountPath") == PVC_MOUNT for m in c.get("volumeMounts") or [])]
    named = [c for c in containers if c.get("name") == "main"]
    return (mounted or named or containers)[0]


def _env_value(container: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env") or [] if e.get("name") == name), None)


def _mirrored_env(container: dict[str, Any], plan: JobPlan) -> list[dict[str, Any]]:
    """Secret-backed env (as references, never values) and the ``ANET_*``/tracking settings; the ranks
    train in place (``ANET_NNODES``/``ANET_NPROC`` say the world size, GPUs are expected per node)."""
    own = {NNODES_ENV: str(plan.nodes), NPROC_ENV: str(plan.gpus), TRAINJOB_ENV: plan.name,
           **({EXPECT_GPUS_ENV: str(plan.gpus)} if _gpu_count(container) else {})}
    env = []
    for entry in container.get("env") or []:
        name = entry.get("name", "")
        secret = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if name in own or name in (NODE_RESOURCES_ENV, NODE_PLACEMENT_ENV):
            continue
        if secret:
            env.append({"name": name, "valueFrom": {"secretKeyRef": secret}})
        elif name.startswith(MIRRORED_PREFIXES) and "value" in entry:
            env.append({"name": name, "value": entry["value"]})
    return env + [{"name": k, "value": v} for k, v in own.items()]


def _gpu_count(container: dict[str, Any]) -> int:
    resources = json.loads(_env_value(container, NODE_RESOURCES_ENV) or "{}")
    return int(resources.get("nvidia.com/gpu", 0))


def _limits(requests: dict[str, str]) -> dict[str, str]:
    """GPUs are requested as limits too (an extended resource must have equal request and limit)."""
    return {k: v for k, v in requests.items() if k == "nvidia.com/gpu"}


def _runtime_patch(pod: dict[str, Any], container: dict[str, Any], plan: JobPlan) -> dict[str, Any]:
    """The PVC at the same path, /dev/shm for NCCL, the pod's security context and the DAG's placement."""
    volumes = {m["name"]: m for m in container.get("volumeMounts") or [] if m.get("mountPath") == PVC_MOUNT}
    pvc_volumes = [{"name": v["name"], "persistentVolumeClaim": {"claimName": v["persistentVolumeClaim"]["claimName"]}}
                   for v in pod["spec"].get("volumes") or [] if v.get("name") in volumes
                   and v.get("persistentVolumeClaim")]
    if not pvc_volumes:
        raise ValueError(f"the train step's pod has no PVC mounted at {PVC_MOUNT}: the nodes would not share "
                         "the prepared cache and checkpoints")
    mounts = [{"name": v["name"], "mountPath": PVC_MOUNT} for v in pvc_volumes]
    pod_spec: dict[str, Any] = {"volumes": [*pvc_volumes, {"name": "dshm", "emptyDir": {"medium": "Memory",
                                                                                         "sizeLimit": SHM_SIZE}}],
                                "containers": [{"name": NODE, "volumeMounts": [*mounts, {"name": "dshm",
                                                                                         "mountPath": SHM_MOUNT}]}]}
    placement = json.loads(_env_value(container, NODE_PLACEMENT_ENV) or "{}")
    if placement.get("nodeSelector"):
        pod_spec["nodeSelector"] = placement["nodeSelector"]
    if placement.get("tolerations"):
        pod_spec["tolerations"] = placement["tolerations"]
    if pod["spec"].get("securityContext"):
        pod_spec["securityContext"] = pod["spec"]["securityContext"]
    if container.get("securityContext"):  # kfp-kubernetes' set_security_context (runAsNonRoot)
        pod_spec["containers"][0]["securityContext"] = container["securityContext"]
    if pod["spec"].get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = pod["spec"]["imagePullSecrets"]
    replicated = {"name": NODE, "template": {"spec": {"template": {"spec": pod_spec}}}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}}}


def own_namespace() -> str:
    """The namespace this pod runs in (its service account's), ``default`` outside a cluster."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    return open(path).read().strip() if os.path.isfile(path) else os.environ.get("POD_NAMESPACE", "default")
