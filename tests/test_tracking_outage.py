"""Tracking outages: bounded retries, buffered metrics, one-line failures, no run left RUNNING.

ONE real ``mlflow server`` per module (sqlite store), stopped mid-run and started again on the same
port and store, as an outage looks to a client. Budgets are set small so that each test takes
seconds plus the server's restart (~20 s), never MLflow's default ~4 minutes per call.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from mlflow_server import basic_auth_proxy, free_port, mlflow_server_handle

from anet.errors import UserError
from anet.mlops.registry import doctor
from anet.mlops.tracking import endpoint, liveness, retry, tracking

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cr@t!pw"
EXPORTED = ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
            "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"]


@pytest.fixture
def clean_env(monkeypatch):
    """No MLFLOW_/ANET_MLFLOW_ settings from outside; whatever configure() exports is undone after."""
    for name in [n for n in os.environ if n.startswith(("MLFLOW_", "ANET_MLFLOW_", "ANET_LOCK_"))] + EXPORTED:
        monkeypatch.setenv(name, "x")  # recorded, so the teardown restores the original state
        monkeypatch.delenv(name)
    monkeypatch.setenv(retry.BUDGET_ENV, "1")
    monkeypatch.setenv(retry.TIMEOUT_ENV, "5")
    return monkeypatch


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "ANET_"))}
    return {**env, "PYTHONPATH": str(ROOT), retry.BUDGET_ENV: "1", retry.TIMEOUT_ENV: "5", **extra}


# ----------------------------------------------------------------------------- no server needed
def test_budget_sets_mlflow_http_retries(clean_env):
    clean_env.setenv(retry.BUDGET_ENV, "30")
    clean_env.delenv(retry.TIMEOUT_ENV)
    policy = retry.apply_http_policy()
    assert (policy.max_retries, policy.timeout_s) == (4, 60)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    # the most retries whose backoff (0, 2, 4, 8 s + jitter) fits the budget; MLflow's default is 252 s
    assert policy.backoff_s() <= 30 < retry.RetryPolicy(30, 5, 10).backoff_s()
    clean_env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # the user's own setting wins
    clean_env.setenv(retry.BUDGET_ENV, "0")
    assert retry.apply_http_policy().max_retries == 0
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    clean_env.setenv(retry.BUDGET_ENV, "soon")
    with pytest.raises(UserError, match="ANET_MLFLOW_RETRY_BUDGET_S='soon'"):
        retry.apply_http_policy()


def test_credentials_leave_the_url(clean_env):
    bare, user, password = endpoint.split_credentials("https://alice:s3cr%40t%21pw@mlflow.example.org:8443/x")
    assert (bare, user, password) == ("https://mlflow.example.org:8443/x", "alice", PASSWORD)
    assert endpoint.split_credentials("sqlite:////tmp/a@b/mlflow.db")[1] is None
    assert endpoint.export_credentials("http://alice:pw@host:5000") == "http://host:5000"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw"
    assert endpoint.auth_headers("http://host:5000") == {"Authorization": "Basic YWxpY2U6cHc="}
    endpoint.export_credentials("http://other:5000")  # another server must not get this password
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and endpoint.auth_headers("http://other:5000") == {}
    assert endpoint.redact_url("at http://bob:pw@host:5000/x") == "at http://***@host:5000/x"


def test_a_call_to_a_down_server_gives_up_within_the_budget(clean_env):
    from mlflow import MlflowClient

    clean_env.setenv(retry.BUDGET_ENV, "2")
    url = tracking.configure(f"http://alice:{urllib.parse.quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(UserError) as err, retry.outage_as_user_error("reading a run"):
        MlflowClient().get_run("0" * 32)
    assert time.monotonic() - start < 2 + 2
    message = str(err.value)
    assert message.startswith(f"MLflow tracking server {url} is unreachable (Connection refused) while reading")
    assert "\n" not in message and "s3cr" not in message


# ----------------------------------------------------------------------------- one real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server_handle(tmp_path_factory.mktemp("mlflow-outage")) as handle:
        yield handle


@pytest.fixture
def uri(server, clean_env):
    server.start()  # no-op unless a failed test left it stopped
    return tracking.configure(server.url)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.mark.integration
def test_credentials_pass_the_preflight_and_never_show(uri, server, caplog, capfd):
    with basic_auth_proxy(server.url, "alice", PASSWORD) as (proxy, seen):
        cred_uri = proxy.replace("http://", f"http://alice:{urllib.parse.quote(PASSWORD, safe='')}@")
        tracking.check_tracking_server(cred_uri)  # was "unreachable": urllib took the userinfo for the host
        assert tracking.configure(cred_uri) == proxy  # the password moved to MLFLOW_TRACKING_PASSWORD
        tracking.check_tracking_server(proxy)
        parent = tracking.start_parent_run("outage", "credentials", {"source": cred_uri}, "")
        assert tracking.end_run(parent)
        assert _client().get_run(parent).data.tags["source"] == endpoint.redact_url(cred_uri)
        with pytest.raises(UserError, match=r"^MLflow tracking server http://\*\*\*@127.*HTTP 401.*credentials"):
            tracking.check_tracking_server(proxy.replace("http://", "http://alice:wrong@"))
        assert all("s3cr" not in line for line in seen)
    down = f"^MLflow tracking server {re.escape(proxy)} is unreachable"
    with pytest.raises(UserError, match=down), tracking.start_step_run(parent, "evaluate"):
        pass
    out = capfd.readouterr()
    assert "s3cr" not in out.out + out.err + caplog.text


@pytest.mark.integration
def test_short_outage_loses_no_metric(uri, server):
    parent = tracking.start_parent_run("outage", "short", None, "")
    with tracking.start_step_run(parent, "train_stage_one") as step:
        callback = tracking.MlflowCallback(max_outage_s=120)
        callback.on_epoch_end("stage_one", 1, {"tri_f": 1.0})
        server.stop()
        for epoch in (2, 3):
            start = time.monotonic()
            callback.on_epoch_end("stage_one", epoch, {"tri_f": 1.0 / epoch})
            assert time.monotonic() - start < 4  # training goes on during the outage
        assert len(callback.pending) == 2 and callback.outage_since is not None
        before_restart = time.time() * 1000
        server.start()
        callback.on_epoch_end("stage_one", 4, {"tri_f": 0.25})  # the next epoch sends the queue
        assert callback.pending == [] and callback.outage_since is None
        server.stop()  # down again when the stage ends: the last flush waits for the server
        callback.on_epoch_end("stage_one", 5, {"tri_f": 0.2})
        restarter = threading.Thread(target=server.start)
        restarter.start()
        callback.on_stage_end("stage_one", None)
        restarter.join()
    history = _client().get_metric_history(step, "train/tri_f")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.3333), (4, 0.25), (5, 0.2)]
    assert all(m.timestamp < before_restart for m in history[:3])  # logged at epoch time, sent later
    assert _client().get_run(step).info.status == "FINISHED"
    tracking.end_run(parent)


LONG_OUTAGE_STEP = """
import sys, time, pathlib
from anet.errors import run_guarded
from anet.mlops.tracking import tracking

def main():
    tracking.configure(sys.argv[1])
    gate = pathlib.Path(sys.argv[3])
    with tracking.start_step_run(sys.argv[2], "train_stage_one") as run_id:
        callback = tracking.MlflowCallback()
        callback.on_epoch_end("stage_one", 1, {"tri_f": 1.0})
        gate.write_text(run_id)
        while gate.exists():  # the test stops the server, then removes the gate
            time.sleep(0.05)
        for epoch in range(2, 1000):
            callback.on_epoch_end("stage_one", epoch, {"tri_f": 1.0 / epoch})
            time.sleep(0.2)

sys.exit(run_guarded(main, "step stopped"))
"""


@pytest.mark.integration
def test_long_outage_fails_the_step_in_one_line_and_the_doctor_closes_its_run(uri, server, tmp_path):
    parent = tracking.start_parent_run("outage", "long", None, "")
    gate = tmp_path / "gate"
    with basic_auth_proxy(server.url, "alice", PASSWORD) as (proxy, _):
        cred_uri = proxy.replace("http://", f"http://alice:{urllib.parse.quote(PASSWORD, safe='')}@")
        step = subprocess.Popen([sys.executable, "-c", LONG_OUTAGE_STEP, cred_uri, parent, str(gate)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(ANET_MLFLOW_MAX_OUTAGE_S="3"))
        deadline = time.monotonic() + 60
        while not gate.exists() and step.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        step_run = gate.read_text()
        server.stop()
        start = time.monotonic()
        gate.unlink()
        out, err = step.communicate(timeout=60)
    assert step.returncode == 2, err[-2000:]
    assert time.monotonic() - start < 15
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: MLflow tracking server {proxy} is unreachable (")
    assert "while logging metrics" in errors[0]
    assert "Traceback" not in err and "s3cr" not in out + err

    server.start()
    client = _client()
    assert client.get_run(step_run).info.status == "RUNNING"  # it could not be closed while the server was down
    assert [m.step for m in client.get_metric_history(step_run, "train/tri_f")] == [1]
    report = doctor.close_orphaned_runs("outage")
    assert report.closed == [step_run] and parent in report.alive  # the test process is the parent's driver
    assert client.get_run(step_run).info.status == "KILLED"
    assert client.get_run(step_run).data.tags[doctor.CLOSED_BY_TAG] == "doctor"
    tracking.end_run(parent, "FAILED")


KILLED_DRIVER = """
import sys, time
from anet.mlops.tracking import tracking
tracking.configure(sys.argv[1])
parent = tracking.start_parent_run("doctor", "killed-driver", None, "")
with tracking.start_step_run(parent, "train_stage_one") as step:
    print(parent, step, flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_runs_of_a_killed_driver_are_closed_by_the_doctor(uri):
    client = _client()
    driver = subprocess.Popen([sys.executable, "-c", KILLED_DRIVER, uri], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_env())
    line = driver.stdout.readline().split()
    assert len(line) == 2, driver.stderr.read()[-2000:]
    parent, step = line
    assert client.get_run(parent).data.tags[liveness.PID_TAG] == str(driver.pid)
    driver.kill()  # SIGKILL: no finally, no atexit
    driver.wait(timeout=10)
    driver.stdout.close()
    driver.stderr.close()
    alive = tracking.start_parent_run("doctor", "alive", None, "")
    experiment = client.get_run(alive).info.experiment_id
    elsewhere = client.create_run(experiment, tags={liveness.PID_TAG: "1", liveness.HOST_TAG: "elsewhere"}).info.run_id
    untagged = client.create_run(experiment).info.run_id
    assert {client.get_run(r).info.status for r in (parent, step)} == {"RUNNING"}

    report = doctor.close_orphaned_runs("doctor")
    assert sorted(report.closed) == sorted([parent, step])
    assert (report.alive, report.other_host, report.untagged) == ([alive], [elsewhere], [untagged])
    assert {client.get_run(r).info.status for r in (parent, step)} == {"KILLED"}
    assert doctor.close_orphaned_runs([experiment]).closed == []  # idempotent; experiment ids work too
    assert doctor.close_orphaned_runs("no-such-dataset").closed == []
    for run_id in (alive, elsewhere, untagged):
        tracking.end_run(run_id)


SIGTERM_STEP = """
import sys, time
from anet.mlops.tracking import tracking
tracking.configure(sys.argv[1])
with tracking.start_step_run(sys.argv[2], "train_stage_two") as step:
    print(step, flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_step_run_ends_killed_on_sigterm_and_ctrl_c(uri):
    client = _client()
    parent = tracking.start_parent_run("signals", "signals", None, "")
    step = subprocess.Popen([sys.executable, "-c", SIGTERM_STEP, uri, parent], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    step_run = step.stdout.readline().strip()
    assert step_run, step.stderr.read()[-2000:]
    step.send_signal(signal.SIGTERM)
    _, err = step.communicate(timeout=30)
    assert step.returncode != 0 and "Terminated" in err
    assert client.get_run(step_run).info.status == "KILLED"

    with pytest.raises(KeyboardInterrupt), tracking.start_step_run(parent, "evaluate") as interrupted:
        raise KeyboardInterrupt
    assert client.get_run(interrupted).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the block
    with pytest.raises(RuntimeError), tracking.start_step_run(parent, "register") as failed:
        raise RuntimeError("boom")
    assert client.get_run(failed).info.status == "FAILED"
    assert tracking.run_status(KeyboardInterrupt()) == "KILLED" and tracking.run_status(None) == "FINISHED"
    tracking.end_run(parent, tracking.run_status(RuntimeError()))
    assert client.get_run(parent).info.status == "FAILED"
