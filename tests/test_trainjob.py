"""Train steps on several nodes: the compiled DAG makes each train task launch a Kubeflow Trainer
TrainJob (image, torchrun c10d command, PVC, secrets, GPU counts), the manifest validates against
Kubeflow Trainer's published API models (kubeflow-trainer-api), the launcher follows, replaces and
reports jobs, and two torchrun "nodes" with c10d rendezvous on 127.0.0.1 train the same weights as
one launch of the same world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from anet.config import resolve_config
from anet.errors import UserError
from anet.steps import trainjob_run
from anet.steps.prepare import prepare_data
from anet.steps.trainjob import JobPlan, job_name, torchrun_command, trainjob_manifest
from pipelines.compile import compile_pipeline
from pipelines.dag import Placement

api_models = pytest.importorskip("kubeflow_trainer_api.models", reason="dev extra: kubeflow-trainer-api")
IMAGE = "registry.local/anet@sha256:" + "a" * 64
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("compiled")
    placement = Placement({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, ("nvidia.com/gpu:NoSchedule",))
    many = compile_pipeline(out / "n2.yaml", gpus=4, image=IMAGE, placement=placement, nodes=2)
    one = compile_pipeline(out / "n1.yaml", gpus=4, image=IMAGE, placement=placement)
    return {"many": list(yaml.safe_load_all(many.read_text())), "one": list(yaml.safe_load_all(one.read_text()))}


def pod_of(docs: list[dict], executor: str) -> dict[str, Any]:
    """The pod kfp's driver makes for ``executor`` (image, env, secret env, PVC, security context) as a
    V1Pod dict; the cache_pvc parameter at its default."""
    ir, platform = docs[0], docs[1]
    container = ir["deploymentSpec"]["executors"][executor]["container"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    env = [*container.get("env", []),
           *({"name": e["envVar"], "valueFrom": {"secretKeyRef": {"name": s["secretName"], "key": e["secretKey"],
                                                                  "optional": s["optional"]}}}
             for s in k8s["secretAsEnv"] for e in s["keyToEnv"])]
    pvc = ir["root"]["inputDefinitions"]["parameters"]["cache_pvc"]["defaultValue"]
    main = {"name": "main", "image": container["image"], "env": env,
            "volumeMounts": [{"name": "anet-cache-0", "mountPath": m["mountPath"]} for m in k8s["pvcMount"]],
            "securityContext": k8s.get("securityContext")}
    return {"spec": {"containers": [main],
                     "volumes": [{"name": "anet-cache-0", "persistentVolumeClaim": {"claimName": pvc}}]}}


def _env(entries: list[dict], name: str) -> Any:
    return next(e.get("value", e.get("valueFrom")) for e in entries if e["name"] == name)


def test_the_compiled_dag_with_nodes_launches_a_trainjob_per_train_step(compiled):
    executors = compiled["many"][0]["deploymentSpec"]["executors"]
    for executor in ("exec-train", "exec-train-2"):
        launcher = executors[executor]["container"]
        assert "accelerator" not in launcher["resources"] and launcher["resources"]["resourceCpuRequest"] == "1"
        assert _env(launcher["env"], "ANET_NNODES") == "2" and _env(launcher["env"], "ANET_NPROC") == "4"
        job = trainjob_manifest(JobPlan("anet-0123456789ab-stage-one", 2, 4, "/mnt/anet/checkpoints/r/a.json"),
                                pod_of(compiled["many"], executor))
        trainer = job["spec"]["trainer"]
        assert trainer["image"] == IMAGE and trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
        assert trainer["command"][:2] == ["bash", "-c"]
        assert trainer["command"][2] == (
            "exec python -m torch.distributed.run --nnodes=$PET_NNODES --nproc-per-node=4 --rdzv-backend=c10d "
            "--rdzv-endpoint=$PET_MASTER_ADDR:$PET_MASTER_PORT --rdzv-id=anet-0123456789ab-stage-one "
            "--max-restarts=0 -m anet.steps train /mnt/anet/checkpoints/r/a.json")
        assert trainer["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "32G", "nvidia.com/gpu": "4"},
                                               "limits": {"nvidia.com/gpu": "4"}}
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in trainer["env"] if "valueFrom" in e}
        assert secrets == {"anet-s3", "anet-mlflow", "anet-mlflow-auth", "anet-optuna"}
        assert not any("value" in e and e["name"].startswith(("AWS_SECRET", "MLFLOW_TRACKING_P")) for e in trainer["env"])
        assert {_env(trainer["env"], n) for n in ("ANET_EXPECT_GPUS", "ANET_NPROC")} == {"4"}
        assert _env(trainer["env"], "ANET_CHECKPOINT_ROOT") == "/mnt/anet/checkpoints"
        pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        spec = pod["template"]["spec"]["template"]["spec"]
        assert {"name": "anet-cache-0", "persistentVolumeClaim": {"claimName": "anet-cache"}} in spec["volumes"]
        assert {"name": "anet-cache-0", "mountPath": "/mnt/anet"} in spec["containers"][0]["volumeMounts"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert spec["containers"][0]["securityContext"] == {"runAsNonRoot": True}
    plain = compiled["one"][0]["deploymentSpec"]["executors"]["exec-train"]["container"]  # N = 1: the plain pod
    assert plain["resources"]["accelerator"]["resourceCount"] == "4"
    assert not any(e["name"] == "ANET_NNODES" for e in plain["env"])


def test_the_manifest_validates_against_kubeflow_trainers_api_models(compiled):
    job = trainjob_manifest(JobPlan(job_name("0123456789abcdef", "stage_two"), 3, 8, "/mnt/anet/x.json"),
                            pod_of(compiled["many"], "exec-train-2"))
    model = api_models.TrainerV1alpha1TrainJob.from_dict(job)
    assert model.to_dict() == job  # every field known to the API (an unknown one would be dropped) and typed
    assert job["metadata"]["name"] == "anet-0123456789ab-stage-two"
    misspelt = json.loads(json.dumps(job))
    misspelt["spec"]["trainer"]["numNode"] = misspelt["spec"]["trainer"].pop("numNodes")
    assert api_models.TrainerV1alpha1TrainJob.from_dict(misspelt).to_dict() != misspelt
    with pytest.raises(ValueError):
        api_models.TrainerV1alpha1TrainJob.from_dict({**job, "spec": {**job["spec"], "trainer": {"numNodes": "3"}}})


class FakeApi:
    namespace = "kubeflow-user"

    def __init__(self, jobs: dict[str, dict], finish: str = "Complete", on_create=None):
        self.jobs, self.finish, self.on_create, self.calls = jobs, finish, on_create, []

    def own_pod(self) -> dict[str, Any]:
        main = {"name": "main", "image": IMAGE, "env": [], "volumeMounts": [{"name": "c", "mountPath": "/mnt/anet"}]}
        return {"spec": {"containers": [main], "volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "p"}}]}}

    def get_job(self, name: str):
        return self.jobs.get(name)

    def create_job(self, manifest: dict) -> None:
        self.calls.append(("create", manifest["metadata"]["name"]))
        reason = {"reason": "BackoffLimitExceeded", "message": "jobset failed:\n  node-1 OOMKilled"}
        done = {"type": self.finish, "status": "True", **(reason if self.finish == "Failed" else {})}
        self.jobs[manifest["metadata"]["name"]] = {**manifest, "status": {"conditions": [done]}}
        if self.on_create:
            self.on_create(manifest)

    def delete_job(self, name: str) -> None:
        self.calls.append(("delete", name))
        del self.jobs[name]

    def node0_log(self, name: str):
        yield "stage_one epoch 1/1"


def _launch_args(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "descriptor.json").write_text("{}")
    return {"config_json": "{}", "dataset_descriptor": str(tmp_path / "prep"), "stage_name": "stage_one",
            "out_dir": str(tmp_path / "artifact"), "init_from": None, "parent_run_id": "run0123456789", "trial_json": None}


def test_the_launcher_replaces_a_failed_job_and_reports_a_failure_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ANET_CHECKPOINT_ROOT", str(tmp_path / "pvc"))
    args, name = _launch_args(tmp_path), job_name("run0123456789", "stage_one")
    work = tmp_path / "pvc" / "run0123456789" / "stage_one"

    def rank0_writes_result(manifest: dict) -> None:  # what rank 0 of the job leaves on the PVC
        job_args = json.loads(Path(manifest["spec"]["trainer"]["command"][2].split()[-1]).read_text())
        assert job_args["out_dir"] == str(work) and job_args["dataset_descriptor"] == str(work / "descriptor.json")
        (work / "result.json").write_text(json.dumps({"checkpoint": str(work / "final.pt"), "pruned": False}))

    failed = {name: {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "Killed"}]}}}
    api = FakeApi(failed, on_create=rank0_writes_result)
    summary = trainjob_run.train_on_nodes(args, 2, 1, api)  # the retry: the failed job goes, a new one resumes
    assert api.calls == [("delete", name), ("create", name)] and summary["checkpoint"] == str(work / "final.pt")
    again = FakeApi(api.jobs)  # the step retried once more after the job completed: nothing is relaunched
    assert trainjob_run.train_on_nodes(args, 2, 1, again) == summary and again.calls == []
    (work / "result.json").unlink()
    with pytest.raises(UserError) as caught:
        trainjob_run.train_on_nodes(args, 2, 1, FakeApi({}, finish="Failed"))
    assert str(caught.value) == (f"TrainJob kubeflow-user/{name} failed: BackoffLimitExceeded; jobset failed: node-1 "
                                 f"OOMKilled (logs: kubectl -n kubeflow-user logs -l jobset.sigs.k8s.io/jobset-name="
                                 f"{name} --prefix)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~40 s on a busy 2-core CPU: 3 torchrun launches, 4 training processes
def test_two_nodes_with_c10d_rendezvous_train_like_one_node_of_the_same_world_size(tmp_path):
    cfg = resolve_config("smoke", data_root=str(tmp_path / "data"), cache_root=str(tmp_path / "cache"))
    prepare_data(str(tmp_path / "prep"), config_json=cfg.to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANET_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ANET_PROGRESS="0")

    def args_file(name: str) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"config_json": cfg.to_json(), "dataset_descriptor": str(tmp_path / "prep"),
                                    "stage_name": "stage_one", "out_dir": str(tmp_path / name)}))
        return str(path)

    port = _free_port()
    nodes = [subprocess.Popen(torchrun_command("2", "1", f"127.0.0.1:{port}", "two-nodes", args_file("two"),
                                               sys.executable), env=env, cwd=tmp_path) for _ in range(2)]
    one = subprocess.run(torchrun_command("1", "2", f"127.0.0.1:{_free_port()}", "one-node", args_file("one"),
                                          sys.executable), env=env, cwd=tmp_path, timeout=120)
    assert [p.wait(timeout=120) for p in nodes] == [0, 0] and one.returncode == 0
    two_w, one_w = (torch.load(tmp_path / n / "final.pt", weights_only=True)["model"] for n in ("two", "one"))
    assert two_w.keys() == one_w.keys() and all(torch.equal(two_w[k], one_w[k]) for k in one_w)
    assert json.loads((tmp_path / "two" / "result.json").read_text())["epochs_run"] == 1


def test_the_rbac_manifest_allows_every_call_the_launcher_makes():
    role, binding = yaml.safe_load_all((ROOT / "docker" / "k8s" / "trainjob-rbac.yaml").read_text())
    allowed = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {("trainer.kubeflow.org", "trainjobs", verb) for verb in ("create", "get", "delete")}
    needed |= {("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get")}  # own pod, node 0, its log
    assert needed <= allowed and not any(verb == "*" for _, _, verb in allowed)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}


def test_a_train_step_with_nodes_launches_the_job_and_publishes_rank_0s_checkpoint(tmp_path, monkeypatch):
    from anet import steps
    from anet.config import load_config

    monkeypatch.setenv("ANET_CHECKPOINT_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("ANET_NNODES", "2")
    monkeypatch.setenv("ANET_NPROC", "1")
    work = tmp_path / "pvc" / "run0123456789" / "stage_one"

    def rank0_trains(manifest: dict) -> None:
        (work / "final.pt").write_bytes(b"weights")
        (work / "result.json").write_text(json.dumps({"checkpoint": str(work / "final.pt"), "pruned": False,
                                                      "epochs_run": 1, "stopped": None}))

    fake = FakeApi({}, on_create=rank0_trains)
    monkeypatch.setattr(trainjob_run, "ClusterApi", lambda: fake)
    args = _launch_args(tmp_path)
    result = steps.train(load_config("smoke").to_json(), args["dataset_descriptor"], "stage_one",
                         str(tmp_path / "artifact"), parent_run_id="run0123456789")
    assert fake.calls == [("create", job_name("run0123456789", "stage_one"))]
    assert result["checkpoint"] == str(tmp_path / "artifact" / "final.pt")
    assert (tmp_path / "artifact" / "final.pt").read_bytes() == b"weights"  # the Model artifact
    assert json.loads((tmp_path / "artifact" / "result.json").read_text())["epochs_run"] == 1
