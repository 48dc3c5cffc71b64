"""The compiled Kubeflow IR: five tasks in order, GPUs and retries on training, secrets by reference only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["prepare-data", "train", "train-2", "evaluate", "register-model"]
CREDENTIAL_LITERALS = ["testing", "minioadmin", "AKIA", "S3RVER", "aws_secret_access_key:", "password:"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, dict]:
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "anet.yaml", gpus=2)
    text = path.read_text()
    ir, platform = list(yaml.safe_load_all(text))
    return text, ir, platform


def test_five_tasks_run_in_order(compiled):
    _, ir, _ = compiled
    tasks = ir["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(ORDER)
    for before, after in zip(ORDER, ORDER[1:], strict=False):
        assert before in tasks[after].get("dependentTasks", []), f"{after} must wait for {before}"
    names = {t: tasks[t]["taskInfo"]["name"] for t in ORDER}
    assert names["train"] == "stage-one training" and names["train-2"] == "stage-two AC fine-tuning"
    stage = {t: tasks[t]["inputs"]["parameters"]["stage_name"]["runtimeValue"]["constant"] for t in ("train", "train-2")}
    assert stage == {"train": "stage_one", "train-2": "stage_two"}
    assert tasks["train-2"]["inputs"]["artifacts"]["init_from"]["taskOutputArtifact"]["producerTask"] == "train"


def test_train_tasks_request_gpus_cpu_memory_and_retry(compiled):
    _, ir, _ = compiled
    tasks, executors = ir["root"]["dag"]["tasks"], ir["deploymentSpec"]["executors"]
    for name in ("train", "train-2"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
        container = executors[tasks[name]["componentRef"]["name"].replace("comp-", "exec-")]["container"]
        resources = container["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert str(resources["accelerator"]["resourceCount"]) == "2"
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
        assert {"name": "ANET_NPROC", "value": "2"} in container["env"]


def test_credentials_come_only_from_secrets(compiled):
    text, ir, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) >= {f"exec-{t}" for t in ("prepare-data", "train", "train-2", "evaluate", "register-model")}
    for name, spec in executors.items():
        envs = {kv["envVar"] for s in spec["secretAsEnv"] for kv in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs, name
        assert spec["pvcMount"][0]["mountPath"] == "/mnt/anet"
    for container in (e["container"] for e in ir["deploymentSpec"]["executors"].values()):
        for env in container.get("env", []):
            assert not env["name"].startswith(("AWS_", "MLFLOW_")), env
    lowered = text.lower()
    for literal in CREDENTIAL_LITERALS:
        assert literal.lower() not in lowered, f"credential-looking literal {literal!r} in the compiled YAML"


def test_components_run_on_the_project_image_without_pip_bootstrap(compiled):
    text, ir, _ = compiled
    for container in (e["container"] for e in ir["deploymentSpec"]["executors"].values()):
        assert container["image"].startswith("ghcr.io/anet-pipeline/anet:")
    assert "pip install" not in text


def test_image_comes_from_anet_image_at_import(tmp_path):
    """ANET_IMAGE is read when the components are imported (so it must be set before)."""
    out = tmp_path / "p.yaml"
    env = {**os.environ, "ANET_IMAGE": "registry.local/anet:test"}
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--output", str(out), "--gpus", "1"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    assert "image: registry.local/anet:test" in out.read_text()


def test_kfp_host_run_submits_ir_parameters_and_reports_the_failing_step(monkeypatch, tmp_path, caplog):
    """The KFP_HOST path: the driver's arguments are exactly inputs the compiled IR declares, every state
    change is reported once, and a failed run is explained by what the failing step recorded in MLflow
    (a real sqlite store; only the Kubeflow API is stood in for, as no cluster is reachable here)."""
    from types import SimpleNamespace

    from anet import steps
    from anet.config import ExperimentConfig, resolve_config
    from anet.mlops.tracking.step_tracking import record_step_failure
    from pipelines import cluster as runner
    from pipelines.run import dag_arguments

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = resolve_config("smoke", dataset="veri776")
    parent = steps.start_pipeline_run("veri776", "smoke", cfg.to_json())
    record_step_failure(parent, "train", "data.attributes: ['color'] not in the dataset")
    states = iter(["PENDING", "RUNNING", "RUNNING", "FAILED"])
    submitted = {}

    class KubeflowApi:
        def create_run_from_pipeline_package(self, path, arguments, experiment_name, run_name, namespace=None):
            submitted.update(ir=yaml.safe_load_all(Path(path).read_text()).__next__(), arguments=arguments,
                             experiment=experiment_name)
            return SimpleNamespace(run_id="r-1")

        def get_run(self, run_id):
            return SimpleNamespace(state=next(states))

    monkeypatch.setenv("KFP_HOST", "https://kfp.example.org")
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    arguments = dag_arguments(cfg, "smoke", parent, None, promote=True)
    with caplog.at_level("INFO", logger="pipelines.run"):
        outcome = runner.run_on_cluster(KubeflowApi(), arguments, "eval/test/mAP", parent, echo=True)
    declared = set(submitted["ir"]["root"]["inputDefinitions"]["parameters"])
    assert set(submitted["arguments"]) <= declared, set(submitted["arguments"]) - declared
    assert "lambda_g" not in submitted["arguments"] and submitted["experiment"] == "anet-veri776"  # config_json only
    assert ExperimentConfig.from_json(submitted["arguments"]["config_json"]).loss.lambda_g == cfg.loss.lambda_g
    said = [r.getMessage() for r in caplog.records]
    assert [s for s in ("PENDING", "RUNNING", "FAILED") if any(f"r-1: {s}" in m for m in said)] == [
        "PENDING", "RUNNING", "FAILED"]
    assert sum("r-1: RUNNING" in m for m in said) == 1
    assert outcome.status == "failed" and outcome.error.startswith("training: data.attributes")
    assert "https://kfp.example.org/#/runs/details/r-1" in outcome.error


def test_multi_gpu_train_tasks_get_shared_memory_placement_and_a_checkpoint_root(tmp_path):
    from kfp import compiler

    from pipelines.dag import Placement, make_pipeline

    def platform_of(gpus: int) -> dict:
        placement = Placement({"nvidia.com/gpu.product": "A100"}, ("nvidia.com/gpu:NoSchedule",))
        path = tmp_path / f"g{gpus}.yaml"
        compiler.Compiler().compile(make_pipeline(gpus=gpus, placement=placement), str(path))
        ir, platform = list(yaml.safe_load_all(path.read_text()))
        return ir, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]

    ir, executors = platform_of(2)
    train = executors["exec-train"]
    assert train["emptyDirMounts"][0]["mountPath"] == "/dev/shm" and train["emptyDirMounts"][0]["medium"] == "Memory"
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "A100"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu" and train["tolerations"][0]["operator"] == "Exists"
    env = {e["name"]: e["value"] for e in ir["deploymentSpec"]["executors"]["exec-train"]["container"]["env"]}
    assert env["ANET_EXPECT_GPUS"] == "2" and env["ANET_CHECKPOINT_ROOT"].startswith("/mnt/anet/")
    evaluate = {e["name"]: e["value"] for e in ir["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["env"]}
    assert evaluate["ANET_CHECKPOINT_ROOT"] == env["ANET_CHECKPOINT_ROOT"]  # the step that removes them once evaluated
    assert "emptyDirMounts" not in platform_of(1)[1]["exec-train"]  # one GPU: no NCCL, no extra shm


def test_compile_cli_places_train_tasks_and_names_the_image_every_task_runs(tmp_path):
    from pipelines.compile import main

    out = tmp_path / "p.yaml"
    assert main(["--output", str(out), "--gpus", "1", "--node-selector", "pool=gpu", "--toleration",
                 "nvidia.com/gpu:NoSchedule", "--image", "reg.local/anet@sha256:" + "a" * 64]) == 0
    ir, platform = list(yaml.safe_load_all(out.read_text()))
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert train["nodeSelector"]["labels"] == {"pool": "gpu"} and train["tolerations"][0]["effect"] == "NoSchedule"
    for executor in ir["deploymentSpec"]["executors"].values():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env["ANET_IMAGE_REF"] == executor["container"]["image"] == "reg.local/anet@sha256:" + "a" * 64
    with pytest.raises(SystemExit):
        main(["--output", str(out), "--toleration", "no-effect"])


def test_dag_and_prepare_component_carry_exactly_the_declared_run_settings(compiled):
    """RunSettings is the one declaration: the compiled DAG's inputs, the prepare task's wiring, its
    component's inputs and the source the container runs (read as kfp's executor reads it) name every
    run setting with its type, optional and unset by default; the DAG for kfp.local has none."""
    import inspect
    from typing import Optional, get_args

    from anet.config import RUN_SETTING_KEYS, RunSettings, config_value, resolve_config
    from pipelines.dag import local_pipeline

    declared = {name: next(t for t in get_args(f.annotation) if t is not type(None))
                for name, f in RunSettings.model_fields.items()}
    kinds = {float: "NUMBER_DOUBLE", int: "NUMBER_INTEGER"}
    _, ir, _ = compiled
    prepare = ir["root"]["dag"]["tasks"]["prepare-data"]
    component = ir["components"][prepare["componentRef"]["name"]]["inputDefinitions"]["parameters"]
    for name, kind in declared.items():
        assert ir["root"]["inputDefinitions"]["parameters"][name] == {"isOptional": True, "parameterType": kinds[kind]}
        assert component[name] == {"isOptional": True, "parameterType": kinds[kind]}, name
        assert prepare["inputs"]["parameters"][name] == {"componentInputParameter": name}, name
    # what the container runs: the command's embedded source, loaded as kfp.dsl.executor_main loads it
    executor = ir["deploymentSpec"]["executors"][prepare["componentRef"]["name"].replace("comp-", "exec-")]
    namespace: dict = {}
    program = compile(executor["container"]["command"][3], "ephemeral_component.py", "exec", dont_inherit=True)
    exec(program, namespace)  # the compiled component's own source
    annotations = inspect.getfullargspec(namespace["prepare_data"]).annotations
    assert {n: annotations.get(n) for n in declared} == {n: Optional[k] for n, k in declared.items()}  # noqa: UP045

    local = local_pipeline.pipeline_spec
    assert not set(declared) & set(local.root.input_definitions.parameters)
    local_prepare = local.components[local.root.dag.tasks["prepare-data"].component_ref.name]
    assert not set(declared) & set(local_prepare.input_definitions.parameters)
    cfg = resolve_config("smoke")  # every declared key exists in the config, at any depth
    assert all(config_value(cfg, key) is not None for keys in RUN_SETTING_KEYS.values() for key in keys)


def test_a_new_run_setting_is_one_field(tmp_path):
    """The generation itself: a field added to the declaration becomes a typed parameter of the pipeline
    and of a component, reaches the component's body by name, and compiles; misuse fails at import."""
    import inspect

    from kfp import compiler, dsl
    from pydantic import BaseModel

    from components.run_settings import run_setting_parameters, with_run_settings

    class Settings(BaseModel):
        lambda_g: float | None = None
        margin: int | None = None  # the "new" one

    def step(
        name: str,
        **run_settings,
    ) -> str:
        given = dict(locals())
        return f"{given['name']} {given['lambda_g']} {given['margin']}"

    generated = with_run_settings(step, Settings)
    assert generated("x", margin=3) == "x None 3"
    assert [(p.name, p.default) for p in run_setting_parameters(Settings)] == [("lambda_g", None), ("margin", None)]
    component = dsl.component(base_image="python:3.11", install_kfp_package=False)(generated)
    assert component.component_spec.inputs["margin"].type == "Integer" and component.component_spec.inputs["margin"].optional
    compiler.Compiler().compile(component, str(tmp_path / "c.yaml"))
    assert "margin: Optional[int] = None" in (tmp_path / "c.yaml").read_text()
    assert list(inspect.signature(with_run_settings(step, None)).parameters) == ["name"]  # the line dropped

    class Bad(BaseModel):
        ratio: list | None = None

    with pytest.raises(TypeError, match="Bad.ratio"):
        run_setting_parameters(Bad)

    def unmarked(name: str) -> str:
        return name

    with pytest.raises(ValueError, match="unmarked"):
        with_run_settings(unmarked, Settings)


def test_the_image_provides_what_the_contract_names():
    """docker/Dockerfile cannot import anet.contract: its mount point and baked-in variables are checked here."""
    from anet.contract import BUILD_DATE_ENV, GIT_COMMIT_ENV, PVC_MOUNT

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for name in (PVC_MOUNT, f"{GIT_COMMIT_ENV}=", f"{BUILD_DATE_ENV}="):
        assert name in dockerfile, f"docker/Dockerfile lacks {name} (anet/contract.py)"
