"""A train step on N nodes: launch its Kubeflow Trainer TrainJob, follow it, return what rank 0 wrote.

Called by :func:`anet.steps.train_step.train` when ``ANET_NNODES`` > 1 (set by the DAG compiled with
``--nodes N``). The step's pod becomes a light launcher: it writes the step's arguments to the stage's
folder on the PVC (``$ANET_CHECKPOINT_ROOT/<run>/<stage>``: where the checkpoints already live), creates
the TrainJob (:mod:`anet.steps.trainjob`), streams node 0's log into its own, and on success returns
rank 0's ``result.json``. A retried step (a new pod) finds the job by its name: a running one is
followed, a finished one is read, a failed one is replaced and the new job resumes from ``last.pt``.
A failed job fails the step with the job's own reason in one line::

    summary = train_on_nodes(args, nodes=2, gpus=4)     # {"checkpoint", "pruned", "epochs_run", "stopped"}
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from anet.errors import UserError
from anet.io import atomic_write_text, sha256_file
from anet.steps.common import DESCRIPTOR, RESULT_FILE, checkpoint_in
from anet.steps.train_step import checkpoint_root
from anet.steps.trainjob import API_GROUP, JOBSET_LABEL, NODE, PLURAL, JobPlan, job_name, trainjob_manifest

log = logging.getLogger(__name__)
POLL_S = 10.0
RBAC_HINT = "apply docker/k8s/trainjob-rbac.yaml for the pipeline's service account"


class KubeApi(Protocol):
    """The few Kubernetes calls the launcher makes (a fake one in tests)."""

    namespace: str

    def own_pod(self) -> dict[str, Any]: ...
    def get_job(self, name: str) -> dict[str, Any] | None: ...
    def create_job(self, manifest: dict[str, Any]) -> None: ...
    def delete_job(self, name: str) -> None: ...
    def node0_log(self, name: str) -> Iterator[str]: ...


def train_on_nodes(args: dict[str, Any], nodes: int, gpus: int, api: KubeApi | None = None) -> dict[str, Any]:
    """Run the train step ``args`` as a TrainJob on ``nodes`` x ``gpus``; rank 0's summary when it succeeds."""
    root, parent = checkpoint_root(), args.get("parent_run_id")
    if root is None or not parent:
        raise UserError("a train step on several nodes needs the PVC checkpoint root (ANET_CHECKPOINT_ROOT) and an "
                        "MLflow parent run: compile with --nodes on a cluster, or use --nodes 1 locally")
    work = root / parent / args["stage_name"]
    work.mkdir(parents=True, exist_ok=True)
    result = work / RESULT_FILE
    api = api or ClusterApi()
    name = job_name(parent, args["stage_name"])
    job = api.get_job(name)
    if result.is_file() and (job is None or _state(job)[0] == "Complete"):
        log.info("TrainJob %s already finished; reading its result", name)
        return json.loads(result.read_text())
    if job is not None and _state(job)[0] == "Failed":
        log.info("TrainJob %s failed before (%s); replacing it, the new one resumes from %s", name,
                 _state(job)[1], work / "last.pt")
        api.delete_job(name)
        job = _wait_gone(api, name)
    if job is None:
        result.unlink(missing_ok=True)
        plan = JobPlan(name=name, nodes=nodes, gpus=gpus, args_file=str(_write_args(args, work)), python=sys.executable)
        api.create_job(trainjob_manifest(plan, api.own_pod()))
        log.info("created TrainJob %s/%s: %d nodes x %d process(es); logs: kubectl -n %s logs -l %s=%s --prefix",
                 api.namespace, name, nodes, gpus, api.namespace, JOBSET_LABEL, name)
    _follow(api, name)
    if not result.is_file():
        raise UserError(f"TrainJob {api.namespace}/{name} completed but rank 0 wrote no {result}")
    return json.loads(result.read_text())


def _write_args(args: dict[str, Any], work: Path) -> Path:
    """The step's arguments for every rank: the descriptor and the start checkpoint on the PVC, rank 0's
    output in the stage folder (so final.pt is not copied twice)."""
    descriptor = Path(args["dataset_descriptor"])
    descriptor = descriptor / DESCRIPTOR if descriptor.is_dir() else descriptor
    shutil.copyfile(descriptor, work / DESCRIPTOR)  # a few hundred bytes; the cache itself is on the PVC
    job_args = {**args, "dataset_descriptor": str(work / DESCRIPTOR), "out_dir": str(work)}
    if args.get("init_from"):
        job_args["init_from"] = str(_init_on_pvc(checkpoint_in(args["init_from"]), work))
    path = work / "train_args.json"
    atomic_write_text(path, json.dumps(job_args, sort_keys=True))
    return path


def _init_on_pvc(checkpoint: Path, work: Path) -> Path:
    """Stage one's final.pt as the nodes can read it: the PVC copy when it is the same file, else a copy."""
    sibling = work.parent / "stage_one" / checkpoint.name
    if sibling.is_file() and sha256_file(sibling) == sha256_file(checkpoint):
        return sibling
    target = work / "init_from.pt"
    shutil.copyfile(checkpoint, target)
    return target


def _state(job: dict[str, Any]) -> tuple[str, str]:
    """("Complete" | "Failed" | "Running", the condition's reason and message)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            detail = "; ".join(x for x in (cond.get("reason"), cond.get("message")) if x)
            return cond["type"], " ".join(detail.split())
    return "Running", ""


def _wait_gone(api: KubeApi, name: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while api.get_job(name) is not None:
        if time.monotonic() > deadline:
            raise UserError(f"TrainJob {api.namespace}/{name} was not deleted within {timeout_s:.0f} s; delete it")
        time.sleep(2.0)


def _follow(api: KubeApi, name: str, poll_s: float = POLL_S) -> None:
    """Stream node 0's log while polling the job; returns on Complete, one-line UserError on Failed."""
    streamer = threading.Thread(target=_stream, args=(api, name), daemon=True)
    streamer.start()
    while True:
        job = api.get_job(name)
        if job is None:
            raise UserError(f"TrainJob {api.namespace}/{name} disappeared while training (deleted by someone?)")
        state, detail = _state(job)
        if state == "Complete":
            streamer.join(timeout=5.0)
            return
        if state == "Failed":
            raise UserError(f"TrainJob {api.namespace}/{name} failed: {detail or 'no reason given'} (logs: kubectl -n "
                            f"{api.namespace} logs -l {JOBSET_LABEL}={name} --prefix)")
        time.sleep(poll_s)


def _stream(api: KubeApi, name: str) -> None:
    try:
        for line in api.node0_log(name):
            log.info("[%s node 0] %s", name, line.rstrip())
    except Exception as exc:  # noqa: BLE001 - the log is a convenience; the job's status decides
        log.warning("could not stream TrainJob %s's log (%s); kubectl -n %s logs -l %s=%s", name, exc,
                    api.namespace, JOBSET_LABEL, name)


class ClusterApi:
    """:class:`KubeApi` through the in-cluster service account (the pipeline's)."""

    def __init__(self) -> None:
        from kubernetes import client, config  # lazy: only a multi-node train step talks to the API

        from anet.steps.trainjob import own_namespace  # lazy: kept beside the client import it serves

        config.load_incluster_config()
        self.namespace = own_namespace()
        self.core, self.custom, self.api_client = client.CoreV1Api(), client.CustomObjectsApi(), client.ApiClient()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException  # lazy: see __init__

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 403:
                raise UserError(f"{what} in namespace {self.namespace} is forbidden; {RBAC_HINT}") from None
            if exc.status == 404 and "create" in what:
                raise UserError(f"{what}: no {PLURAL}.{API_GROUP} API in this cluster; install Kubeflow Trainer "
                                "(>= 2.2) and its torch-distributed runtime") from None
            raise

    def own_pod(self) -> dict[str, Any]:
        import os

        name = os.environ.get("KFP_POD_NAME") or os.environ["HOSTNAME"]
        pod = self._call("reading this step's pod", self.core.read_namespaced_pod, name, self.namespace)
        return self.api_client.sanitize_for_serialization(pod)

    def get_job(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException  # lazy: see __init__

        try:
            return self._call("reading a TrainJob", self.custom.get_namespaced_custom_object, API_GROUP,
                              "v1alpha1", self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_job(self, manifest: dict[str, Any]) -> None:
        self._call("creating a TrainJob", self.custom.create_namespaced_custom_object, API_GROUP, "v1alpha1",
                   self.namespace, PLURAL, manifest)

    def delete_job(self, name: str) -> None:
        self._call("deleting a TrainJob", self.custom.delete_namespaced_custom_object, API_GROUP, "v1alpha1",
                   self.namespace, PLURAL, name, propagation_policy="Foreground")

    def node0_log(self, name: str) -> Iterator[str]:
        from kubernetes import watch  # lazy: see __init__

        selector = f"{JOBSET_LABEL}={name},batch.kubernetes.io/job-completion-index=0"
        while True:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
            running = [p for p in pods if p.status.phase in ("Running", "Succeeded", "Failed")]
            if running:
                yield from watch.Watch().stream(self.core.read_namespaced_pod_log, running[0].metadata.name,
                                                self.namespace, container=NODE, follow=True)
                return
            time.sleep(POLL_S)
