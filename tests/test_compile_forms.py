"""The two IR forms ``python -m pipelines.compile`` writes (real kfp compiler), and image pinning.

Field sets below are transcribed from the protos KFP backend 2.2.0 builds against
(kubeflow/pipelines: kubernetes_platform 8b2a099e8c9f, api 58ce09e07d03); that backend's driver
unmarshals strictly, so any other field fails the task (kubeflow/pipelines#12495).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["prepare-data", "train", "train-2", "evaluate", "register-model"]
DIGEST = "sha256:" + "ab" * 32
KFP22_K8S_CONFIG = {"secretAsVolume", "secretAsEnv", "pvcMount", "nodeSelector", "podMetadata", "imagePullSecret",
                    "imagePullPolicy", "configMapAsVolume", "configMapAsEnv", "activeDeadlineSeconds",
                    "fieldPathAsEnv", "tolerations", "genericEphemeralVolume", "nodeAffinity", "podAffinity"}
KFP22_SECRET_AS_ENV = {"secretName", "keyToEnv"}
KFP22_PVC_MOUNT = {"taskOutputParameter", "constant", "componentInputParameter", "mountPath"}
KFP22_RESOURCES = {"cpuLimit", "memoryLimit", "cpuRequest", "memoryRequest", "accelerator"}
KFP22_ACCELERATOR = {"type", "count"}


def _compile(tmp_path: Path, name: str, gpus: int = 2, **kwargs) -> tuple[str, dict, dict]:
    from pipelines.compile import compile_pipeline

    text = compile_pipeline(tmp_path / f"{name}.yaml", gpus=gpus, **kwargs).read_text()
    ir, platform = yaml.safe_load_all(text)
    return text, ir, platform


def _k8s(platform: dict) -> dict[str, dict]:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _containers(ir: dict) -> dict[str, dict]:
    return {name: spec["container"] for name, spec in ir["deploymentSpec"]["executors"].items()}


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict, dict]]:
    tmp = tmp_path_factory.mktemp("forms")
    return {"default": _compile(tmp, "default", gpus=1), "legacy": _compile(tmp, "legacy", gpus=1, kfp_backend="2.2")}


def test_default_form_is_what_kfp_writes_with_an_optional_auth_secret(forms):
    text, _, platform = forms["default"]
    assert "# Form:" not in text  # written by kfp itself, not rewritten
    for name in TASKS:
        config = _k8s(platform)[f"exec-{name}"]
        secrets = {s["secretName"]: s for s in config["secretAsEnv"]}
        assert secrets["anet-mlflow-auth"]["optional"] is True
        assert secrets["anet-s3"]["optional"] is False
        assert secrets["anet-s3"]["secretNameParameter"] == {"runtimeValue": {"constant": "anet-s3"}}
        assert config["pvcMount"][0]["pvcNameParameter"] == {"componentInputParameter": "cache_pvc"}
        assert config["securityContext"] == {"runAsNonRoot": True}


def test_legacy_form_holds_only_fields_kfp_2_2_knows(forms):
    text, ir, platform = forms["legacy"]
    assert "# Form: KFP backend 2.2 - 2.14" in text
    for name in TASKS:
        config = _k8s(platform)[f"exec-{name}"]
        assert set(config) <= KFP22_K8S_CONFIG, name
        assert [set(s) for s in config["secretAsEnv"]] == [KFP22_SECRET_AS_ENV] * 2, name
        assert [s["secretName"] for s in config["secretAsEnv"]] == ["anet-s3", "anet-mlflow"]
        mount = config["pvcMount"][0]
        assert set(mount) <= KFP22_PVC_MOUNT
        assert mount == {"componentInputParameter": "cache_pvc", "mountPath": "/mnt/anet"}
    for name, container in _containers(ir).items():
        resources = container.get("resources", {})
        assert set(resources) <= KFP22_RESOURCES, name
        assert set(resources.get("accelerator", {})) <= KFP22_ACCELERATOR, name
    train = _containers(ir)["exec-train"]["resources"]
    assert train["accelerator"] == {"type": "nvidia.com/gpu", "count": "1"}
    assert train["cpuRequest"] == 8.0 and train["memoryRequest"] == 32.0
    for field in ("secretNameParameter", "pvcNameParameter", "optional:", "resourceCpuRequest", "securityContext"):
        assert field not in text, field


def test_legacy_form_still_parses_with_the_current_protos_and_loads_in_kfp(forms, tmp_path):
    from kfp import components
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    text, ir, platform = forms["legacy"]
    json_format.ParseDict(ir, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(ir["deploymentSpec"], pipeline_spec_pb2.PipelineDeploymentConfig())
    for config in _k8s(platform).values():
        json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig())
    path = tmp_path / "legacy.yaml"
    path.write_text(text)
    assert components.load_component_from_file(str(path)).name == "anet-pipeline"


def test_both_forms_run_the_same_dag_commands_and_images(forms):
    _, default_ir, _ = forms["default"]
    _, legacy_ir, _ = forms["legacy"]
    assert legacy_ir["root"] == default_ir["root"] and legacy_ir["components"] == default_ir["components"]
    for name, container in _containers(default_ir).items():
        legacy = _containers(legacy_ir)[name]
        assert (legacy["command"], legacy["args"], legacy["image"]) == (
            container["command"], container["args"], container["image"])


def test_optional_secrets_are_left_out_or_required_by_name(tmp_path):
    from pipelines.dag import SECRETS

    optional = {name for name, (_, is_optional) in SECRETS.items() if is_optional}
    assert "anet-mlflow-auth" in optional
    _, _, required = _compile(tmp_path, "required", gpus=1, kfp_backend="2.2",
                              require_secrets=["anet-mlflow-auth"])
    secrets = _k8s(required)["exec-train"]["secretAsEnv"]
    assert [s["secretName"] for s in secrets] == ["anet-s3", "anet-mlflow", "anet-mlflow-auth"]
    assert all(set(s) == KFP22_SECRET_AS_ENV for s in secrets)
    _, _, default_required = _compile(tmp_path, "default-required", require_secrets=["anet-mlflow-auth"])
    flags = {s["secretName"]: s["optional"] for s in _k8s(default_required)["exec-train"]["secretAsEnv"]}
    assert flags["anet-mlflow-auth"] is False and all(flags[name] for name in optional - {"anet-mlflow-auth"})
    with pytest.raises(ValueError, match="optional secrets"):
        _compile(tmp_path, "bad", require_secrets=["anet-s3"])
    with pytest.raises(ValueError, match="older than 2.2"):
        _compile(tmp_path, "old", kfp_backend="2.0")


def test_multi_gpu_shared_memory_needs_kfp_2_3(tmp_path):
    """2.2 cannot mount the memory-backed /dev/shm of multi-GPU train tasks; 2.3 - 2.14 keep it."""
    with pytest.raises(ValueError, match=r"emptyDirMounts \(KFP >= 2.3\)"):
        _compile(tmp_path, "gpus2-kfp22", gpus=2, kfp_backend="2.2")
    text, _, platform = _compile(tmp_path, "gpus2-kfp23", gpus=2, kfp_backend="2.3")
    assert "# Form: KFP backend 2.3 - 2.14" in text
    assert _k8s(platform)["exec-train"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert "emptyDirMounts" not in _k8s(platform)["exec-evaluate"]


def test_newer_backends_get_the_default_form(tmp_path):
    text, _, platform = _compile(tmp_path, "new", kfp_backend="2.17.0")
    assert "# Form:" not in text and "securityContext" in text


def test_image_digest_pins_every_task(tmp_path):
    from pipelines.compile import pinned_image

    ref = pinned_image("registry.local/anet:0.1.0", DIGEST)
    assert ref == f"registry.local/anet:0.1.0@{DIGEST}"
    assert pinned_image(ref, "sha256:" + "cd" * 32).endswith("@sha256:" + "cd" * 32)
    with pytest.raises(ValueError, match="sha256"):
        pinned_image("registry.local/anet:0.1.0", "latest")
    _, ir, _ = _compile(tmp_path, "pinned", gpus=1, kfp_backend="2.2", image=ref)
    assert {c["image"] for c in _containers(ir).values()} == {ref}


def test_cli_legacy_ir_with_digest_and_anet_image(tmp_path):
    """The CLI: --legacy-ir + --image-digest on the ANET_IMAGE name; a malformed digest is a usage error."""
    out = tmp_path / "cli.yaml"
    env = {**os.environ, "ANET_IMAGE": "registry.local/anet:test"}
    cmd = [sys.executable, "-m", "pipelines.compile", "--output", str(out), "--legacy-ir", "--image-digest", DIGEST]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"image: registry.local/anet:test@{DIGEST}" in out.read_text()
    assert "secretNameParameter" not in out.read_text()
    bad = subprocess.run([*cmd[:-1], "sha256:nothex"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "sha256:<64 hex digits>" in bad.stderr
