"""Run a compiled KFP v2 pipeline YAML task by task, as a Kubeflow cluster would, in a container runner.

What the KFP 2.17 driver and launcher do for each task, reusing kfp.local's own pieces where they
match the backend (executor input, placeholder filling, DAG order, output parsing):

* the task's arguments: pipeline inputs and defaults, constants, upstream outputs (DAG order);
* the executor input: output artifact URIs under ``<pipeline root>/<pipeline>/<run id>/<task>/<salt>``
  (``minio://...`` by default), output parameters in ``/tmp/kfp/outputs/<name>``, the executor output
  file beside the artifacts at the launcher's local path (``/minio/...``);
* the command: the executor's container command + args, placeholders filled (``{{$}}`` etc.);
* the environment: the container's env plus every ``secretAsEnv`` of the platform spec, from
  ``secrets`` (a required secret or key that is missing fails the task, as on Kubernetes);
* input artifacts are copied to their local paths before the task and outputs collected after it.

``runner(task) -> int`` runs one :class:`TaskRun` (see tools/buildah.py) and returns the exit code.

    runs = run_pipeline("anet.yaml", {"profile": "smoke"}, runner, {"anet-mlflow": {...}}, store=tmp)
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.local import executor_input_utils, executor_output_utils, graph_utils, io, placeholder_utils
from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
from kfp.pipeline_spec import pipeline_spec_pb2

LOCAL_ROOTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}  # the launcher's LocalPathForURI
OUTPUT_PARAMETER_DIR = "/tmp/kfp/outputs"


@dataclass
class TaskRun:
    """One task as the cluster runs it: image, resolved argv, env, and the files moved in and out.

    ``stage_in`` maps container paths to host copies placed there before the run (the launcher's
    input artifact download); ``collect`` maps container paths to host paths to copy them to after
    it (the launcher's upload of the task root, and the output parameter files).
    """

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    stage_in: dict[str, Path]
    collect: dict[str, Path]
    executor_input: dict[str, Any] = field(repr=False, default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def local_path(uri: str) -> str:
    """``minio://bucket/key`` -> ``/minio/bucket/key`` (and gs://, s3://), as the launcher maps it."""
    for prefix, root in LOCAL_ROOTS.items():
        if uri.startswith(prefix):
            return root + uri[len(prefix):]
    raise ValueError(f"no local path for {uri!r}: unsupported storage scheme")


def load(path: str | Path) -> tuple[pipeline_spec_pb2.PipelineSpec, dict, dict]:
    """The pipeline spec (proto), its executors (dict) and the Kubernetes configs by executor label."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec, docs[0]["deploymentSpec"]["executors"], platform


def secret_env(k8s_config: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """Env vars from ``secretAsEnv``; a missing required secret or key raises (CreateContainerConfigError)."""
    env = {}
    for item in k8s_config.get("secretAsEnv", []):
        name = item.get("secretName") or item["secretNameParameter"]["runtimeValue"]["constant"]
        values = secrets.get(name)
        for pair in item["keyToEnv"]:
            if values is not None and pair["secretKey"] in values:
                env[pair["envVar"]] = values[pair["secretKey"]]
            elif not item.get("optional", False):
                raise LookupError(f"CreateContainerConfigError: secret {name!r} key {pair['secretKey']!r} not found")
    return env


def executor_input(component: pipeline_spec_pb2.ComponentSpec, arguments: dict, task_root_uri: str) -> tuple:
    """The ExecutorInput the driver hands this task (proto and dict with ints cast, as the backend does)."""
    message = executor_input_utils.construct_executor_input(component, arguments, task_root_uri,
                                                            block_input_artifact=False)
    values = message.inputs.parameter_values
    for name in [n for n, v in values.items() if v.WhichOneof("kind") is None]:
        del values[name]  # an optional input nobody set: left out, the function's default applies
    for name, parameter in message.outputs.parameters.items():
        parameter.output_file = f"{OUTPUT_PARAMETER_DIR}/{name}"
    message.outputs.output_file = local_path(task_root_uri) + "/output_metadata.json"
    return message, executor_input_utils.executor_input_to_dict(message, component)


def _prepare(task_name: str, io_store: io.IOStore, ctx: dict) -> tuple[TaskRun, Any, Any]:
    spec, store = ctx["spec"], ctx["store"]
    task = spec.root.dag.tasks[task_name]
    component = spec.components[task.component_ref.name]
    container = ctx["executors"][component.executor_label]["container"]
    inputs = copy.deepcopy(task.inputs)
    for name in [n for n, p in inputs.parameters.items()
                 if p.component_input_parameter and p.component_input_parameter not in ctx["provided"]]:
        del inputs.parameters[name]  # bound to a pipeline input nobody set (optional, no default)
    arguments = OrchestratorUtils.make_task_arguments(inputs, io_store)
    root_uri = f"{ctx['root']}/{spec.pipeline_info.name}/{ctx['run_id']}/{task_name}/{uuid.uuid4().hex[:8]}"
    message, as_dict = executor_input(component, arguments, root_uri)
    argv = placeholder_utils.replace_placeholders(
        container["command"] + container.get("args", []), copy.deepcopy(as_dict),
        spec.pipeline_info.name, task_name, ctx["root"], ctx["run_id"])
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    env.update(secret_env(ctx["platform"].get(component.executor_label, {}), ctx["secrets"]))
    inputs = [local_path(a.uri) for a_list in message.inputs.artifacts.values() for a in a_list.artifacts]
    task_root = local_path(root_uri)
    run = TaskRun(task_name, container["image"], argv, env,
                  stage_in={p: store / "objects" / p.lstrip("/") for p in inputs},
                  collect={task_root: store / "objects" / task_root.lstrip("/"),
                           OUTPUT_PARAMETER_DIR: store / "tasks" / task_name / "outputs"},
                  executor_input=as_dict)
    return run, message, component


def _outputs(run: TaskRun, message: Any, component: Any) -> dict[str, Any]:
    """Parse the collected executor output (and output parameter files) as the launcher does."""
    host_message = copy.deepcopy(message)
    for name, parameter in host_message.outputs.parameters.items():
        parameter.output_file = str(run.collect[OUTPUT_PARAMETER_DIR] / name)
    task_root = next(iter(run.collect))
    result = executor_output_utils.load_executor_output(str(run.collect[task_root] / "output_metadata.json"))
    return executor_output_utils.get_outputs_from_executor_output(result, host_message, component)


def _pipeline_inputs(spec: pipeline_spec_pb2.PipelineSpec, arguments: dict) -> dict[str, Any]:
    """Run arguments plus declared defaults; optional inputs without either are left out, as in a run."""
    values = dict(arguments)
    for name, parameter in spec.root.input_definitions.parameters.items():
        if name not in values and parameter.HasField("default_value"):
            values[name] = executor_output_utils.pb2_value_to_python(parameter.default_value)
    return values


def run_pipeline(path: str | Path, arguments: dict, runner: Callable[[TaskRun], int],
                 secrets: dict[str, dict[str, str]], store: Path,
                 pipeline_root: str = "minio://mlpipeline/v2/artifacts") -> list[TaskRun]:
    """Run every task of the compiled pipeline at ``path`` in DAG order; returns the task runs.

    ``store`` is the host folder standing in for object storage (artifacts move through it between
    tasks). Raises RuntimeError on the first task that exits non-zero.
    """
    spec, executors, platform = load(path)
    io_store = io.IOStore()
    provided = _pipeline_inputs(spec, arguments)
    for name, value in provided.items():
        io_store.put_parent_input(name, value)
    ctx = {"spec": spec, "executors": executors, "platform": platform, "secrets": secrets, "store": store,
           "root": pipeline_root, "run_id": str(uuid.uuid4()), "provided": provided}
    order = graph_utils.topological_sort_tasks(dict(spec.root.dag.tasks))
    runs = []
    while order:
        run, message, component = _prepare(order.pop(), io_store, ctx)
        runs.append(run)
        code = runner(run)
        if code != 0:
            raise RuntimeError(f"task {run.name} exited with {code}")
        run.outputs = _outputs(run, message, component)
        for key, value in run.outputs.items():
            io_store.put_task_output(run.name, key, value)
    return runs
