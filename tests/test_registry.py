"""Model registry: champion/challenger aliases, margin, decision tags, manual promotion, races.

Runs against ONE real ``mlflow server`` per module (``mlflow_url`` in conftest.py: sqlite, local artifacts); the last test
uses MLflow's embedded default store (``sqlite:///<cwd>/mlflow.db``) with no server at all.
"""

from __future__ import annotations

import argparse
import os
import threading

import numpy as np
import pytest
import torch

from anet.cli import registry as commands
from anet.errors import UserError
from anet.mlops.registry import registry
from anet.mlops.tracking import tracking

pytestmark = pytest.mark.integration
METRIC = "eval/test/mAP"


def _log_tiny_model(dataset: str) -> tuple[str, str]:
    """One logged torch model (model URI, run id); registering it again makes further versions."""
    parent = tracking.start_parent_run(dataset, "registry-test", None, "")
    with tracking.start_step_run(parent, "register") as run_id:
        model_uri = tracking.log_model(torch.nn.Linear(4, 2), input_example=np.zeros((1, 4), np.float32))
    tracking.end_run(parent)
    return model_uri, run_id


@pytest.fixture(scope="module")
def logged(mlflow_url):
    tracking.configure(mlflow_url)
    return _log_tiny_model("registry-models")


def _register(logged, dataset, value, margin=0.0, metric=METRIC, promote=True, fingerprint="f1" * 32):
    model_uri, run_id = logged
    metrics = {} if value is None else {metric: value, "eval/test/R1": 0.9}
    return registry.register_candidate(model_uri, dataset, run_id, metrics, METRIC, margin,
                                       {"git.commit": "abc123", "dvc.data_hash": "d41d.dir", "aws_token": "x",
                                        "data.fingerprint": fingerprint}, promote=promote)


def _aliases(dataset):
    from mlflow import MlflowClient

    return {k: str(v) for k, v in MlflowClient().get_registered_model(registry.model_name(dataset)).aliases.items()}


def _tags(dataset, version):
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(registry.model_name(dataset), version).tags


def test_first_champion_then_kept_then_promoted(mlflow_uri, logged):
    first = _register(logged, "seq", 0.5)
    assert (first.decision, first.is_champion, first.champion_version) == ("first-champion", True, None)
    assert _aliases("seq") == {"champion": first.version, "challenger": first.version}

    worse = _register(logged, "seq", 0.4)
    assert (worse.decision, worse.is_champion) == ("kept-champion", False)
    assert (worse.candidate_value, worse.champion_value, worse.champion_version) == (0.4, 0.5, first.version)
    assert _aliases("seq") == {"champion": first.version, "challenger": worse.version}
    tags = _tags("seq", worse.version)
    assert tags["promotion.decision"] == "kept-champion" and tags["promotion.champion_version"] == first.version
    assert float(tags["promotion.candidate_value"]) == 0.4 and float(tags["promotion.champion_value"]) == 0.5
    assert tags[f"metric.{METRIC}"] == "0.4" and tags["git.commit"] == "abc123" and "aws_token" not in tags
    assert tags["run_id"] == logged[1]

    better = _register(logged, "seq", 0.6)
    assert (better.decision, better.is_champion, better.champion_version) == ("promoted", True, first.version)
    assert _aliases("seq") == {"champion": better.version, "challenger": better.version}
    info = registry.champion_info("seq")
    assert info.version == better.version and info.primary_value == 0.6 and info.decision == "promoted"
    assert [v.version for v in registry.list_versions("seq")] == ["1", "2", "3"]


def test_margin_and_ties_do_not_move_the_champion(mlflow_uri, logged):
    assert _register(logged, "margin", 0.50, margin=0.05).decision == "first-champion"
    assert _register(logged, "margin", 0.53, margin=0.05).decision == "kept-champion"
    moved = _register(logged, "margin", 0.56, margin=0.05)
    assert moved.decision == "promoted" and moved.champion_value == 0.5
    tie = _register(logged, "margin", 0.56)
    assert tie.decision == "kept-champion" and _aliases("margin")["champion"] == moved.version


def test_metrics_measured_on_other_data_are_never_compared(mlflow_uri, logged):
    first = _register(logged, "otherdata", 0.40)
    wild = _register(logged, "otherdata", 0.90, fingerprint="e2" * 32)  # another profile's validation split
    assert (wild.decision, wild.is_champion) == ("other-data", False)
    assert wild.note.startswith("not comparable: measured on data e2e2e2e2e2e2, champion v1 on f1f1f1f1f1f1")
    assert _aliases("otherdata")["champion"] == first.version
    assert _tags("otherdata", wild.version)["promotion.decision"] == "other-data"
    dry = registry.consider_promotion("otherdata", wild.version, METRIC)
    assert dry.decision == "other-data" and "make promote VERSION=2" in dry.note
    assert _register(logged, "otherdata", 0.45).decision == "promoted"  # same data: compared as ever
    registry.promote("otherdata", wild.version, reason="new data version")  # the explicit way
    assert _aliases("otherdata")["champion"] == wild.version


def test_missing_metrics(mlflow_uri, logged):
    no_metric = _register(logged, "nometric", None)
    assert (no_metric.decision, no_metric.is_champion) == ("no-metric", False)
    assert "champion" not in _aliases("nometric")  # a model is never promoted without its metric
    # a champion registered under another primary metric has no mAP: beatable, and the note says so
    old = _register(logged, "nometric", 0.7, metric="eval/test/R5")
    assert old.decision == "no-metric"
    registry.promote("nometric", old.version, reason="bootstrap")
    new = _register(logged, "nometric", 0.1)
    assert new.decision == "promoted" and new.champion_value is None and "has no" in new.note
    assert _tags("nometric", new.version)["promotion.champion_value"] == "none"


def test_registration_without_promotion_then_applied(mlflow_uri, logged):
    trial = _register(logged, "nopromo", 0.5, promote=False)
    assert (trial.decision, trial.is_champion) == ("registered", False)
    assert "would be first-champion" in trial.note and trial.as_dict()["champion"] is False
    assert _aliases("nopromo") == {"challenger": trial.version}
    applied = registry.consider_promotion("nopromo", trial.version, METRIC, apply=True)
    assert (applied.decision, applied.is_champion) == ("first-champion", True)
    assert _tags("nopromo", trial.version)["promotion.decision"] == "first-champion"


def test_manual_promotion_rollback_and_cli(mlflow_uri, logged, capsys):
    v1 = _register(logged, "synthetic", 0.5)
    v2 = _register(logged, "synthetic", 0.7)
    assert v2.is_champion
    back = registry.promote("synthetic", v1.version, reason="rollback: v2 regressed")
    assert (back.decision, back.is_champion, back.champion_version) == ("manual", True, v2.version)
    tags = _tags("synthetic", v1.version)
    assert tags["promotion.decision"] == "manual" and tags["promotion.previous_champion"] == v2.version
    assert tags["promotion.reason"] == "rollback: v2 regressed"
    dry = registry.consider_promotion("synthetic", v2.version, METRIC, 0.0)
    assert dry.would_promote and not dry.is_champion and _aliases("synthetic")["champion"] == v1.version

    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["registry", "promote", "--dataset", "synthetic", "--version", v2.version,
                              "--reason", "forward again", "--tracking-uri", mlflow_uri])
    assert args.func(args) == 0
    assert _aliases("synthetic")["champion"] == v2.version
    args = parser.parse_args(["registry", "show", "--dataset", "synthetic", "--tracking-uri", mlflow_uri])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"champion -> v{v2.version} (was v{v1.version})" in out
    assert any(line.split()[:4] == [v2.version, METRIC, "0.7000", "manual"] and "champion" in line
               for line in out.splitlines())

    args = parser.parse_args(["registry", "promote", "--dataset", "synthetic", "--version", "7",
                              "--tracking-uri", mlflow_uri])
    with pytest.raises(UserError, match=r"^registered model anet-synthetic has no version 7; versions: 1, 2$"):
        args.func(args)
    with pytest.raises(UserError, match=r"no registered model anet-veri776 at http://127\.0\.0\.1"):
        registry.promote("veri776", 1)


def test_concurrent_registrations_agree_on_one_champion(mlflow_uri, logged):
    values = [0.30, 0.55, 0.90, 0.70, 0.10, 0.60]
    barrier = threading.Barrier(len(values))
    decisions: dict[float, registry.Decision] = {}
    errors: list[BaseException] = []

    def register(value: float) -> None:
        try:
            barrier.wait()
            decisions[value] = _register(logged, "race", value)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    champion = _aliases("race")["champion"]
    # the alias ends on the best candidate, and exactly that decision still holds the champion now
    assert decisions[0.90].version == champion and decisions[0.90].is_champion
    assert registry.champion_info("race").version == champion
    # no two registrations both took the champion alias away from the same previous champion
    winners = [d for d in decisions.values() if d.is_champion]
    assert len({d.champion_version for d in winners}) == len(winners)
    assert sum(d.decision == "first-champion" for d in decisions.values()) == 1
    # every winner beat the champion it replaced; every loser lost against the one it saw
    for d in decisions.values():
        if d.champion_value is not None:
            assert (d.candidate_value > d.champion_value) == d.is_champion
    from mlflow import MlflowClient

    client = MlflowClient()
    assert not any(m.name.endswith(".lock") for m in client.search_registered_models())
    # the lock lives in tags of anet-race itself and is gone once released; every version is decided
    assert not [k for k in client.get_registered_model("anet-race").tags if k.startswith("anet.lock.")]
    assert all(v.decision not in (None, "pending") for v in registry.list_versions("race"))


def test_default_local_sqlite_store(tmp_path, monkeypatch):
    import mlflow.pytorch

    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    assert tracking.configure(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged_here = _log_tiny_model("synthetic")
    assert _register(logged_here, "synthetic", 0.5).decision == "first-champion"
    second = _register(logged_here, "synthetic", 0.8)
    assert second.decision == "promoted" and registry.champion_info("synthetic").version == second.version
    model = mlflow.pytorch.load_model("models:/anet-synthetic@champion")
    assert model(torch.zeros(1, 4)).shape == (1, 2)
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir()
