"""Cluster emulation: every task of the compiled YAML runs in the built image as Kubeflow runs it.

``make test-image`` (builds or reuses the image of ``make image``, then runs this). Each task runs
in a fresh buildah container of the image, as the image's non-root user, with the exact command and
arguments of the IR (placeholders filled as the KFP driver/launcher would, see tools/kfp_emulator.py),
launcher-style artifact paths (/minio/...), a root-owned directory standing in for the PVC at
/mnt/anet (made writable by the documented docker/k8s/pvc-permissions.yaml command, run as root),
secrets from the platform spec as env (the optional anet-mlflow-auth left out), against a real
``mlflow server`` on the host's loopback. The smoke profile must register a model version.

Also, fast and everywhere: the image's locks pin every runtime dependency of pyproject.toml.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / ".cache" / "image" / "image.json"
ROOTS = ["/gcs", "/minio", "/s3", "/oci", "/mnt/anet", "/home/anet"]
PROBE = ("import json, os, sys\nout = {}\nfor d in sys.argv[1:]:\n    try:\n        open(f'{d}/.probe-{os.getuid()}', 'w').close()\n"
         "        out[d] = 'ok'\n    except OSError as e:\n        out[d] = type(e).__name__\n"
         "out['build'] = json.load(open('/etc/anet-build.json'))\nout['commit'] = os.environ.get('ANET_GIT_COMMIT')\n"
         "print(json.dumps(out))")



def _pins(lock: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = (line.split(" ", 1)[0].split("==") for line in lock.read_text().splitlines() if "==" in line[:80]
            and not line.startswith((" ", "#")))
    return {canonicalize_name(name): version for name, version in pins}


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_lock_pins_every_runtime_dependency_within_its_range(flavour):
    """A dependency added to pyproject.toml without `docker/lock.sh` would be missing from the image."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins(ROOT / "docker" / f"requirements-{flavour}.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["cluster"]  # the image serves clusters
    for requirement in map(Requirement, deps):
        name = canonicalize_name(requirement.name)
        if name == "torch":  # installed from TORCH_SPEC, not the lock
            assert "torch" not in pins
            continue
        assert name in pins, f"{name} is not in docker/requirements-{flavour}.lock: run docker/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def _image() -> str:
    """The image `make image` built (skips, with the reason, when this test cannot run here)."""
    if os.environ.get("ANET_IMAGE_TEST") != "1":
        pytest.skip("cluster emulation runs only through `make test-image` (ANET_IMAGE_TEST=1)")
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (apt-get install buildah debootstrap)")
    if os.geteuid() != 0:
        pytest.skip("buildah with vfs storage and chroot isolation needs root here")
    from tools.buildah import image_exists

    image = json.loads(RECORD.read_text())["image"] if RECORD.exists() else os.environ.get("ANET_IMAGE", "")
    if not image or not image_exists(image):
        pytest.skip(f"no built image {image or '(none recorded)'}: run `make image` first")
    return image


@pytest.fixture(scope="module")
def image() -> str:
    return _image()


@pytest.fixture(scope="module")
def probe_container(image):
    from tools.buildah import buildah

    name = buildah("from", "--pull-never", "--name", f"anet-probe-{os.getpid()}", image).stdout.strip()
    yield name
    buildah("rm", name, check=False)


def _in_image(container: str, user: str, pvc: Path, *argv: str) -> str:
    from tools.buildah import ISOLATION, buildah

    return buildah("run", "--isolation", ISOLATION, "--user", user, "--volume", f"{pvc}:/mnt/anet", container,
                   "--", *argv).stdout


def _probe(container: str, user: str, pvc: Path) -> dict:
    return json.loads(_in_image(container, user, pvc, "python", "-c", PROBE, *ROOTS).strip().splitlines()[-1])


def _pvc_init(container: str, pvc: Path) -> None:
    """The documented one-time PVC preparation (docker/k8s/pvc-permissions.yaml), run as its Job runs it."""
    job = yaml.safe_load((ROOT / "docker" / "k8s" / "pvc-permissions.yaml").read_text())
    spec = job["spec"]["template"]["spec"]["containers"][0]
    user = spec["securityContext"]["runAsUser"]
    _in_image(container, f"{user}:{user}", pvc, *spec["command"])


@pytest.mark.slow
def test_non_root_user_writes_launcher_roots_and_the_pvc_after_its_init(image, probe_container, tmp_path):
    from tools.buildah import image_user

    assert image_user(image) == "1000:0"
    pvc = tmp_path / "pvc"
    pvc.mkdir(mode=0o755)  # a fresh PVC: root-owned, not group-writable
    before = _probe(probe_container, "1000:0", pvc)
    assert before["/mnt/anet"] == "PermissionError"  # what the Job below exists for
    assert all(before[d] == "ok" for d in ROOTS if d != "/mnt/anet"), before
    assert before["commit"] == before["build"]["git_commit"] != "unknown"
    _pvc_init(probe_container, pvc)
    for user in ("1000:0", "1000680000:0"):  # the image's user, and an OpenShift-style uid in group 0
        after = _probe(probe_container, user, pvc)
        assert all(after[d] == "ok" for d in ROOTS if d != "/home/anet" or user == "1000:0"), (user, after)


UI_SETTINGS = {"lambda_g": 0.35, "seed": 7}  # typed run settings, as set in the Kubeflow UI (float and int)
UI_CONFIG = {"loss.lambda_g": "0.35", "runtime.seed": "7"}  # where they land in the resolved config


def _run_smoke(image: str, pvc: Path, tmp_path: Path) -> tuple[list, list, dict]:
    """The compiled default (KFP >= 2.15) form, task by task, against a real MLflow server."""
    from mlflow import MlflowClient
    from mlflow_server import mlflow_server

    from pipelines.compile import compile_pipeline
    from tools.buildah import BuildahTask
    from tools.kfp_emulator import run_pipeline

    # a CPU image is for CPU nodes: its train tasks request no GPU (they would refuse to run on CPU)
    gpus = 0 if json.loads(RECORD.read_text()).get("torch") == "cpu" else 1
    ir = compile_pipeline(tmp_path / "anet.yaml", gpus=gpus, image=image)
    logs = tmp_path / "logs"
    logs.mkdir()
    runner = BuildahTask(image, volumes={str(pvc): "/mnt/anet"}, log_dir=logs)
    with mlflow_server(tmp_path / "mlflow") as url:
        secrets = {"anet-mlflow": {"MLFLOW_TRACKING_URI": url},  # no anet-mlflow-auth: it is optional
                   "anet-s3": {"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused",
                               "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}}
        start = time.monotonic()
        try:
            runs = run_pipeline(ir, {"profile": "smoke", "dataset": "synthetic", **UI_SETTINGS}, runner, secrets,
                                tmp_path / "store")
        except RuntimeError as exc:
            failed = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[-1]
            pytest.fail(f"{exc}\n{failed.read_text()[-4000:]}")
        timing = {"wall_s": round(time.monotonic() - start, 1), **{k: round(v, 1) for k, v in runner.seconds.items()}}
        client = MlflowClient(url)
        versions = client.search_model_versions()
        experiments = [e.experiment_id for e in client.search_experiments()]
        parents = client.search_runs(experiments, filter_string="tags.`anet.kind` = 'pipeline'")
        assert len(parents) == 1 and {k: parents[0].data.params[k] for k in UI_CONFIG} == UI_CONFIG, \
            "a typed run setting set in the UI should reach the resolved config"
    return runs, versions, timing


@pytest.mark.slow
def test_compiled_pipeline_runs_task_by_task_in_the_image_and_registers(image, probe_container, tmp_path):
    pvc = tmp_path / "pvc"
    pvc.mkdir(mode=0o755)
    _pvc_init(probe_container, pvc)
    runs, versions, timing = _run_smoke(image, pvc, tmp_path)
    assert [r.name for r in runs] == ["prepare-data", "train", "train-2", "evaluate", "register-model"]
    assert all(r.argv[:2] == ["sh", "-ec"] and "--executor_input" in r.argv for r in runs)
    assert all(p.startswith("/minio/mlpipeline/v2/artifacts/") for r in runs for p in list(r.collect)[:1])
    registered = json.loads(runs[-1].outputs["Output"])
    assert registered["status"] == "succeeded" and registered["model_version"], registered
    assert [v.version for v in versions] == [str(registered["model_version"])]
    assert any((pvc / "cache").iterdir()), "the prepared cache should live on the PVC"
    checkpoints = pvc / "checkpoints"  # the train steps' retry checkpoints: on the PVC, removed by evaluate
    assert checkpoints.is_dir() and not any(checkpoints.iterdir()), sorted(checkpoints.rglob("*"))
    commit_tag = versions[0].tags.get("git.commit")
    (RECORD.parent / "emulation.json").write_text(json.dumps({"timing": timing, "git_commit_tag": commit_tag},
                                                             indent=1) + "\n")
    print(f"cluster emulation: {timing}; registered version {registered['model_version']} (git.commit {commit_tag})")
    assert commit_tag == json.loads(RECORD.read_text())["git_commit"]
