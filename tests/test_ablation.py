"""The ablation grid: each row a real pipeline run (kfp.local) under one MLflow ablation run, resumable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anet.config import ConfigError, resolve_config
from pipelines.ablation import ROWS, Row, main, row_config, stage_overrides


def test_rows_without_a_joint_module_train_stage_one_for_the_whole_schedule():
    base = resolve_config("veri776")
    baseline = stage_overrides(base, "one_total")
    assert baseline["stage_one.epochs"] == 210 and baseline["stage_two.epochs"] == 0
    # the paper's stage two starts at lr 6e-7: the one-stage schedule decays a third time at epoch 150
    assert baseline["stage_one.milestones"] == [60, 120, 150] and not baseline["stage_two.amelioration"]
    assert stage_overrides(base, "one_only")["stage_two.epochs"] == 0 and stage_overrides(base, "both") == {}


def test_every_row_resolves_to_what_it_claims():
    for row in ROWS:
        cfg = resolve_config("synthetic-wild", row_config("synthetic-wild", "synthetic", {}, row))
        has_joint = cfg.model.variant in ("anet", "anet_att")
        assert (cfg.stage_two.epochs > 0) == (row.stages == "both"), row.key
        assert has_joint or cfg.eval.feature in ("f", "fa"), row.key
    with pytest.raises(ConfigError, match="eval.feature='j' does not exist"):
        row_config("smoke", "synthetic", {}, Row("bad", "VAN (j)", {"model.variant": "van"}, "one_total"))


def test_table_gives_mean_and_sample_std_over_seeds():
    from pipelines.ablation_report import RowResult, summary_frame, to_markdown

    results = [RowResult("anet", seed, f"r{seed}", {"eval/test/mAP": v, "eval/val/mAP": 0.5})
               for seed, v in enumerate((0.10, 0.20, 0.30))] + [RowResult("baseline", 0, "b", {"eval/test/mAP": 0.25})]
    frame = summary_frame(results, "synthetic", {"baseline": 0, "anet": 1}, {"anet": "ANet (j)", "baseline": "Baseline"})
    assert list(frame["row"]) == ["Baseline", "ANet (j)"] and list(frame["seeds"]) == [1, 3]
    assert frame.loc[1, "mAP mean"] == pytest.approx(0.2) and frame.loc[1, "mAP std"] == pytest.approx(0.1)  # ddof=1
    table = to_markdown(frame, "synthetic").splitlines()
    assert table[2].startswith("| Baseline | 1 | 0.250 | nan |") and "+-" not in table[2]  # one seed: no spread
    assert table[3].startswith("| ANet (j) | 3 | 0.200 +- 0.100 |")


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_grid_runs_every_row_resumes_and_reports(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ANET_PROGRESS", "0")
    args = ["--dataset", "synthetic", "--profile", "smoke", "--seeds", "1", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    table = (tmp_path / "out" / "ablation-smoke" / "ablation.md").read_text()
    for row in ROWS:
        assert f"| {row.paper} | 1 |" in table
    client = MlflowClient()
    exp = client.get_experiment_by_name("anet-synthetic").experiment_id
    runs = client.search_runs([exp], "tags.`anet.ablation` = 'ablation-smoke' and tags.`anet.kind` = 'pipeline'")
    by_row = {r.data.tags["anet.ablation.row"]: r for r in runs}
    assert len(runs) == len(ROWS) == len(by_row)
    parent = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parent) == 1
    ablation = client.get_run(parent.pop())
    assert ablation.data.tags["anet.kind"] == "ablation" and ablation.info.status == "FINISHED"
    assert by_row["baseline"].data.params["model.variant"] == "baseline"
    assert by_row["baseline"].data.params["stage_one.epochs"] == "2"  # 1 + 1: the whole schedule in stage one
    assert by_row["anet_no_ac"].data.params["stage_two.epochs"] == "0"
    assert by_row["anet_fc"].data.params["model.attr_branch"] == "fc"
    assert main(args) == 0  # resumes: nothing runs again
    assert len(client.search_runs([exp], "tags.`anet.ablation` = 'ablation-smoke' and tags.`anet.kind` = 'pipeline'"
                                  )) == len(ROWS)
    assert os.path.getsize(Path(tmp_path / "out" / "ablation-smoke" / "ablation.png")) > 0
