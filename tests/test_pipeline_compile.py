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
    """RunSettings is the one declaration: the DAG's signature, the prepare component's parameters and
    the compiled IR's inputs name every run setting with its type, optional and unset by default."""
    import inspect
    from typing import get_args

    from anet.config import RUN_SETTING_KEYS, RunSettings, config_value, resolve_config
    from components.prepare_data import prepare_data
    from pipelines.dag import anet_dag

    declared = {name: set(get_args(f.annotation)) for name, f in RunSettings.model_fields.items()}
    for where, func in (("pipelines/dag.py anet_dag", anet_dag), ("components/prepare_data.py", prepare_data.python_func)):
        params = inspect.signature(func).parameters
        found = {n: set(get_args(p.annotation)) for n, p in params.items() if n in declared}
        assert found == declared, f"{where}: run settings drifted from anet.config.RunSettings"
        assert all(params[n].default is None for n in declared), where
    _, ir, _ = compiled
    inputs = ir["root"]["inputDefinitions"]["parameters"]
    kinds = {float: "NUMBER_DOUBLE", int: "NUMBER_INTEGER"}
    for name, types in declared.items():
        (kind,) = types - {type(None)}
        assert inputs[name] == {"isOptional": True, "parameterType": kinds[kind]}, name
    cfg = resolve_config("smoke")  # every declared key exists in the config, at any depth
    assert all(config_value(cfg, key) is not None for keys in RUN_SETTING_KEYS.values() for key in keys)


def test_the_image_provides_what_the_contract_names():
    """docker/Dockerfile cannot import anet.contract: its mount point and baked-in variables are checked here."""
    from anet.contract import BUILD_DATE_ENV, GIT_COMMIT_ENV, PVC_MOUNT

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for name in (PVC_MOUNT, f"{GIT_COMMIT_ENV}=", f"{BUILD_DATE_ENV}="):
        assert name in dockerfile, f"docker/Dockerfile lacks {name} (anet/contract.py)"
