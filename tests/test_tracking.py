"""MLflow tracking: lineage, parent + nested step runs across processes, metrics, model logging.

Integration tests run against ONE real ``mlflow server`` per module (sqlite backend, artifacts
proxied to a moto S3 endpoint); the client has no AWS credentials at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow_server import BUCKET, free_port, mlflow_server, s3_credentials
from s3_server import moto_server

from anet.config import load_config
from anet.errors import UserError
from anet.mlops.tracking import lineage, record, tracking

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- no server needed
def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_git_commit_unknown_clean_and_dirty(tmp_path):
    assert lineage.git_commit(tmp_path) == "unknown"
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = lineage.git_commit(tmp_path)
    assert len(head) == 40 and all(c in "0123456789abcdef" for c in head)
    (tmp_path / "a.txt").write_text("2")
    assert lineage.git_commit(tmp_path) == f"{head}+dirty"


def test_dvc_data_hash(tmp_path):
    assert lineage.dvc_data_hash(tmp_path) == "none"
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 3b1f0c9d2e.dir\n  size: 10\n  nfiles: 2\n  path: data\n")
    assert lineage.dvc_data_hash(tmp_path) == "3b1f0c9d2e.dir"
    (tmp_path / "data.dvc").write_text("outs: [\n")
    with pytest.raises(UserError, match=r"data\.dvc.*not valid YAML"):
        lineage.dvc_data_hash(tmp_path)
    tags = lineage.lineage_tags(tmp_path.parent / "nowhere", fingerprint="fp1")
    assert tags == {"git.commit": "unknown", "data.fingerprint": "fp1"}  # dvc.data_hash: only once verified


def test_an_image_without_git_reports_the_commit_baked_into_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ANET_GIT_COMMIT", "0a27493")
    monkeypatch.setenv("ANET_IMAGE_REF", "registry.local/anet@sha256:abc")
    tags = lineage.lineage_tags(tmp_path)
    assert tags["git.commit"] == "0a27493" and tags["image.ref"] == "registry.local/anet@sha256:abc"


def test_flatten_and_credential_filter():
    flat = tracking.flatten({"loss": {"lambda_a": 1.0, "soft": False}, "data": {"size": [128, 64]}, "n": None})
    assert flat == {"loss.lambda_a": "1.0", "loss.soft": "false", "data.size": "[128, 64]", "n": "null"}
    safe = tracking.safe_mapping({"aws_secret_access_key": "x", "s3.access_key": "y", "MLFLOW_TRACKING_TOKEN": "z",
                                  "db_password": "p", "trigger": "cli", "url": "http://bob:pw@host:5000/x"})
    assert safe == {"trigger": "cli", "url": "http://***@host:5000/x"}
    assert len(record.param_value("x" * 7000)) == tracking.MAX_PARAM_VALUE


def test_configure_resolves_default_and_refuses_file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.configure(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.configure("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    with pytest.raises(UserError, match="sub/x.db"):
        tracking.check_tracking_server(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    for uri in ("file:./mlruns", "./mlruns"):
        with pytest.raises(UserError, match="file store"):
            tracking.configure(uri)


def test_unreachable_server_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"tracking server {url} is unreachable") as err:
        tracking.check_tracking_server(url, timeout=2.0)
    assert time.monotonic() - start < 5.0
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- real servers
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-s3")
    with moto_server() as endpoint, mlflow_server(tmp, s3_endpoint=endpoint) as url:
        yield url, endpoint


@pytest.fixture
def uri(server, monkeypatch):
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(name)  # the client needs no credentials: the server proxies S3
    url = server[0]
    assert tracking.configure(url) == url
    tracking.check_tracking_server(url)
    return url


STEP_SCRIPT = """
import sys
from anet.mlops.tracking import tracking
tracking.configure(sys.argv[1])
with tracking.start_step_run(sys.argv[2], "train_stage_one") as run_id:
    callback = tracking.MlflowCallback()
    for epoch in (1, 2, 3):
        callback.on_epoch_end("stage_one", epoch, {"tri_f": 1.0 / epoch, "att/color": 0.5 / epoch, "lr": 6e-4})
    assert callback.on_eval("stage_one", 3, {"val/mAP": 0.25, "R1": 0.5}) is False
print(run_id)
"""


@pytest.mark.integration
def test_pipeline_run_with_nested_steps_metrics_and_model(uri, server, tmp_path):
    import boto3
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    cfg = load_config("smoke")
    parent = tracking.start_parent_run("synthetic", "smoke-test", {"trigger": "test", "aws_secret_access_key": "x"},
                                       cfg.to_json(), repo_dir=ROOT, fingerprint="fp-123")
    # a step in another process, as kfp runs it (no AWS credentials in its environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    done = subprocess.run([sys.executable, "-c", STEP_SCRIPT, uri, parent], capture_output=True, text=True,
                          cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    train_run = done.stdout.strip().splitlines()[-1]

    report = tmp_path / "report.md"
    report.write_text("# results\n")
    with tracking.start_step_run(parent, "evaluate") as eval_run:
        flat = tracking.log_eval_metrics({"test": {"mAP": 0.5, "R1": 0.75, "num_valid": 10, "note": "x"}})
        tracking.log_artifacts([report], "evaluation")
    assert flat == {"eval/test/mAP": 0.5, "eval/test/R1": 0.75, "eval/test/num_valid": 10.0}
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    example = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    with tracking.start_step_run(parent, "register"):
        model_uri = tracking.log_model(net, input_example=example)
    tracking.end_run(parent)

    client = MlflowClient()
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.lambda_a"] == "1.0" and run.data.params["data.dataset"] == "synthetic"
    assert run.data.params["lineage.data_fingerprint"] == "fp-123"
    assert run.data.tags["git.commit"] == lineage.git_commit(ROOT) == run.data.params["lineage.git_commit"]
    assert "dvc.data_hash" not in run.data.tags  # added by the prepare step once DVC verified the data
    assert run.data.tags["trigger"] == "test" and "aws_secret_access_key" not in run.data.tags
    config_file = mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="config/config.json",
                                                      dst_path=str(tmp_path / "dl"))
    assert json.loads(Path(config_file).read_text()) == json.loads(cfg.to_json())

    experiment = client.get_experiment_by_name("anet-synthetic")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_name: r.info.status for r in children} == {
        "train_stage_one": "FINISHED", "evaluate": "FINISHED", "register": "FINISHED"}
    assert all(r.data.tags["git.commit"] == run.data.tags["git.commit"] for r in children)
    history = client.get_metric_history(train_run, "train/tri_f")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    assert client.get_run(train_run).data.metrics["train/att/color"] == pytest.approx(0.5 / 3)
    assert client.get_run(train_run).data.metrics["val/R1"] == 0.5
    assert client.get_run(eval_run).data.metrics["eval/test/mAP"] == 0.5

    reqs = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text()
    assert "+cpu" not in reqs and f"torch=={torch.__version__.split('+')[0]}" in reqs
    assert "anet-pipeline" not in reqs and "kornia" in reqs  # no pin on an unpublished package
    loaded = mlflow.pytorch.load_model(model_uri)
    torch.testing.assert_close(loaded(torch.from_numpy(example)), net(torch.from_numpy(example)))

    s3 = boto3.client("s3", endpoint_url=server[1], **s3_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith(f"{parent}/artifacts/config/config.json") for k in keys)
    assert any("/models/" in k and k.endswith("MLmodel") for k in keys)


@pytest.mark.integration
def test_failing_step_run_is_marked_failed(uri):
    from mlflow import MlflowClient

    parent = tracking.start_parent_run("synthetic", "failing", None, "")
    with pytest.raises(ValueError), tracking.start_step_run(parent, "train_stage_one") as step:
        raise ValueError("boom")
    tracking.end_run(parent, "FAILED")
    client = MlflowClient()
    assert client.get_run(step).info.status == "FAILED" and client.get_run(parent).info.status == "FAILED"
    with pytest.raises(UserError, match="parent run 0123 not found"), tracking.start_step_run("0123", "evaluate"):
        pass


@dataclasses.dataclass(frozen=True)
class _Output:
    f_vec: torch.Tensor


class _TinyReid(torch.nn.Module):
    """Like ANet: forward returns a dataclass (torch.export cannot trace it), embed returns a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, images: torch.Tensor) -> _Output:
        return _Output(self.fc(images.flatten(1)))

    def embed(self, images: torch.Tensor, feature: str = "f") -> torch.Tensor:
        return torch.nn.functional.normalize(self.fc(images.flatten(1)), dim=1)


@pytest.mark.integration
def test_dataclass_model_falls_back_to_pickle(uri):
    import mlflow.pytorch

    net, example = _TinyReid(), np.ones((1, 3, 2, 2), np.float32)
    parent = tracking.start_parent_run("synthetic", "formats", None, "")
    with tracking.start_step_run(parent, "register"), pytest.warns(UserWarning, match="torch.export failed"):
        full_uri = tracking.log_model(net, name="full", input_example=example)
    tracking.end_run(parent)
    assert isinstance(mlflow.pytorch.load_model(full_uri), _TinyReid)  # pickled module
