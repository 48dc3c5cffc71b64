"""The ablation grid: rows that test what the paper's tables test, runs.csv, and the report made from it."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from anet.config import ConfigError, LossCfg, ModelCfg, resolve_config
from anet.errors import UserError
from anet.losses import Criterion
from anet.model import build_model, freeze_for_amelioration, set_train_mode
from pipelines.ablation import ROWS, Row, main, row_config, stage_overrides
from pipelines.ablation_report import main as report_main
from pipelines.ablation_runs import append_run, read_runs
from pipelines.ablation_stats import seeds_needed, t_quantile_975

BY_KEY = {r.key: r for r in ROWS}


def _flat(profile: str, key: str) -> dict[str, object]:
    cfg = resolve_config(profile, row_config(profile, "synthetic", {}, BY_KEY[key]))
    return pd.json_normalize(cfg.model_dump(mode="json")).iloc[0].to_dict()


def _differences(profile: str, a: str, b: str) -> dict[str, tuple[object, object]]:
    one, two = _flat(profile, a), _flat(profile, b)
    return {k: (one[k], two[k]) for k in one if one[k] != two[k]}


def test_rows_without_a_joint_module_train_stage_one_for_the_whole_schedule():
    base = resolve_config("veri776")
    baseline = stage_overrides(base, "one_total")
    assert baseline["stage_one.epochs"] == 210 and baseline["stage_two.epochs"] == 0
    # the paper's stage two starts at lr 6e-7: the one-stage schedule decays a third time at epoch 150
    assert baseline["stage_one.milestones"] == [60, 120, 150] and not baseline["stage_two.amelioration"]
    assert stage_overrides(base, "one_only")["stage_two.epochs"] == 0 and stage_overrides(base, "both") == {}
    assert stage_overrides(base, "two_no_ac") == {"stage_two.amelioration": False}
    no_stage_two = resolve_config("veri776", {"stage_two.epochs": 0})
    with pytest.raises(UserError, match="w/o AC is ANet's stage two without AC"):
        stage_overrides(no_stage_two, "two_no_ac")


def test_every_row_resolves_to_what_it_claims():
    for row in ROWS:
        cfg = resolve_config("synthetic-wild", row_config("synthetic-wild", "synthetic", {}, row))
        has_joint = cfg.model.variant in ("anet", "anet_att")
        assert (cfg.stage_two.epochs > 0) == (row.stages in ("both", "two_no_ac")), row.key
        assert has_joint or cfg.eval.feature in ("f", "fa"), row.key
    with pytest.raises(ConfigError, match="eval.feature='j' does not exist"):
        row_config("smoke", "synthetic", {}, Row("bad", "VAN (j)", {"model.variant": "van", "eval.feature": "j"},
                                                       "one_total"))


def test_table_3_rows_differ_in_attribute_branch_type_only():
    for profile in ("synthetic-wild", "veri776"):
        assert _differences(profile, "van_f", "van_fc") == {"model.attr_branch": ("att", "fc")}
        assert _differences(profile, "anet", "anet_fc") == {"model.attr_branch": ("att", "fc")}  # ours
    assert BY_KEY["anet_fc"].ours and "ours" in BY_KEY["anet_fc"].paper and not BY_KEY["van_fc"].ours


def test_without_ac_trains_anets_stage_two_minus_the_two_ac_terms():
    # the same schedule: stage one and stage two equal except the AC switch; f stays frozen
    assert _differences("synthetic-wild", "anet_no_ac", "anet") == {"stage_two.amelioration": (False, True)}
    assert _flat("synthetic-wild", "anet_no_ac")["stage_two.freeze_f"] is True
    # on a frozen f the switch removes AC_tri and AC_ID and nothing else the optimiser sees
    torch.manual_seed(0)
    model = build_model(ModelCfg(variant="anet", depth=18, s_f=32, s_a=16, s_j=24), 4, {"color": 5, "type": 3})
    freeze_for_amelioration(model)
    set_train_mode(model)
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    attrs = {"color": torch.tensor([0, 0, 1, 1, 4, 4, 2, 2]), "type": torch.tensor([0, 0, 1, 1, 2, 2, 1, 1])}
    out = model(torch.randn(8, 3, 32, 32))
    with_ac = Criterion(LossCfg(), amelioration=True)(out, ids, attrs)
    without = Criterion(LossCfg(), amelioration=False)(out, ids, attrs)
    assert set(without) == (set(with_ac) - {"ac_tri", "ac_id"}) | {"tri_f", "id_f"}
    assert not without["tri_f"].requires_grad and not without["id_f"].requires_grad  # constants under freeze_f
    trainable = [p for p in model.parameters() if p.requires_grad]
    g_without = torch.autograd.grad(sum(without.values()), trainable, retain_graph=True, allow_unused=True)
    g_minus_ac = torch.autograd.grad(sum(v for k, v in with_ac.items() if not k.startswith("ac_")), trainable,
                                     allow_unused=True)
    assert sum(g is not None for g in g_without) > 0
    for a, b in zip(g_without, g_minus_ac, strict=True):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))


def test_student_t_critical_values_and_seeds_needed():
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (17, 2.1098), (30, 2.0423), (1000, 1.9623)):
        assert t_quantile_975(df) == pytest.approx(t, abs=1e-4)
    # mean 0.01, sd 0.02: t_{17} * 0.02 / sqrt(18) = 0.0497 < 0.01 * 5 ... i.e. 2.1098/4.2426 = 0.497 < 0.5,
    # while 17 seeds give 2.1199/4.1231 = 0.514 > 0.5
    assert seeds_needed(0.01, 0.02) == 18 and seeds_needed(0.0003, 0.02) is None and seeds_needed(0.03, 0.0) == 2


HEAD = "row,seed,run_id,dataset,profile,config,wall_s,cpu,git_commit,finished_at,eval/test/mAP,eval/test/R1,eval/val/mAP\n"
HAND_MADE = HEAD + "".join(f"{row},{seed},r{i},synthetic,synthetic-wild,c0,100,{cpu},abc,t,{m},0.5,0.4\n" for i, (row, seed, cpu, m)
                           in enumerate([
                               ("baseline", 0, "cpu-x", 0.10), ("baseline", 1, "cpu-x", 0.20), ("baseline", 2, "cpu-x", 0.30),
                               ("van_f", 0, "cpu-x", 0.13), ("van_f", 1, "cpu-x", 0.22), ("van_f", 2, "cpu-x", 0.34),
                               ("anet_no_ac", 0, "cpu-x", 0.99),  # replaced by the rerun of seed 0 below
                               ("anet_no_ac", 0, "cpu-x", 0.14), ("anet_no_ac", 1, "cpu-x", 0.21),
                               ("anet_no_ac", 2, "cpu-x", 0.37),
                               ("baseline", 3, "cpu-y", 0.50), ("van_f", 3, "cpu-y", 0.40)]))


def test_report_from_a_hand_made_runs_csv(tmp_path, capsys):
    runs = tmp_path / "grid" / "runs.csv"
    runs.parent.mkdir()
    runs.write_text(HAND_MADE)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- ablation:grid -->\nold table\n<!-- /ablation:grid -->\nafter\n")
    assert report_main([str(runs), "--readme", str(readme)]) == 0
    table = (runs.parent / "ablation.md").read_text()
    # rows per CPU: mean +- sample std over seeds; one seed shows its value alone
    assert "| Baseline | A | 3 | 0.200 +- 0.100 | 0.500 +- 0.000 | nan | nan | 0.400 +- 0.000 | 100 |" in table
    assert "| Baseline | B | 1 | 0.500 | 0.500 | nan | nan | 0.400 | 100 |" in table
    assert "| ANet (j) w/o AC | A | 3 | 0.240 +- 0.118 |" in table  # 0.14, 0.21, 0.37 (sd sqrt(0.0278 / 2)): the rerun replaced 0.99
    assert "- CPU A: cpu-x: 10 runs, 0.28 h wall in all" in table and "- CPU B: cpu-y: 2 runs" in table
    # diffs 0.03, 0.02, 0.04: sd 0.01, half-width 4.3027 * 0.01 / sqrt(3) = 0.0248
    assert ("| VAN (f) - Baseline | mAP | A | 3 | +0.030, +0.020, +0.040 | +0.030 | [+0.005, +0.055] | 0.025 "
            "| resolved |") in table
    # seeds are paired within one CPU only: seed 3 ran on B, alone
    assert "| VAN (f) - Baseline | mAP | B | 1 | -0.100 | -0.100 | n/a | n/a | needs >= 2 seeds |" in table
    # diffs 0.01, -0.01, 0.03: sd 0.02, half-width 4.3027 * 0.02 / sqrt(3) = 0.0497; 18 seeds would resolve 0.01
    assert ("| w/o AC - VAN (f) | mAP | A | 3 | +0.010, -0.010, +0.030 | +0.010 | [-0.040, +0.060] | 0.050 "
            "| 18 seeds |") in table
    assert "| VAN (f) - Baseline | R1 | A | 3 | +0.000, +0.000, +0.000 | +0.000 |" in table
    assert "unresolvable (mean ~0) |" in table and "ANet - w/o AC" not in table  # no ANet row: no such step
    assert readme.read_text() == f"intro\n<!-- ablation:grid -->\n{table}<!-- /ablation:grid -->\nafter\n"
    assert table.strip() in capsys.readouterr().out
    assert (runs.parent / "ablation.png").stat().st_size > 0 and (runs.parent / "steps.csv").is_file()


def test_runs_csv_appends_widens_and_refuses_what_is_not_ours(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    base = {"row": "anet", "seed": 0, "run_id": "r0", "dataset": "synthetic", "profile": "smoke", "config": "c0",
            "wall_s": 1.0,
            "cpu": "cpu-x", "git_commit": "abc", "finished_at": "t"}
    append_run(path, {**base, "eval/test/mAP": 0.25})
    append_run(path, {**base, "seed": 1, "run_id": "r1", "eval/test/mAP": 0.5, "eval/val/mAP": 0.75})
    frame = read_runs(path)
    assert list(frame["seed"]) == [0, 1] and list(frame.columns)[-2:] == ["eval/test/mAP", "eval/val/mAP"]
    assert frame["eval/val/mAP"].isna().tolist() == [True, False]
    path.write_text("a,b\n1,2\n")
    assert report_main([str(path)]) == 2 and "missing columns" in capsys.readouterr().err
    assert report_main([str(tmp_path / "nope.csv")]) == 2 and "no such runs.csv" in capsys.readouterr().err


def test_a_recorded_run_counts_only_for_the_config_it_trained(tmp_path):
    from pipelines.ablation import _is_done, config_sha, parse_args

    args = parse_args(["--profile", "smoke", "--seeds", "2"])
    anet = row_config("smoke", "synthetic", {}, BY_KEY["anet"])
    sha = config_sha(args, anet, 0)
    other_data = config_sha(args, {**anet, "data.synthetic.test_ids": 8}, 0)
    assert len({sha, config_sha(args, anet, 1), other_data, config_sha(args, row_config("smoke", "synthetic", {}, BY_KEY["anet_no_ac"]), 0)}) == 4
    recorded = {("anet", 0): sha}
    assert _is_done(("anet", 0), sha, recorded, tmp_path / "runs.csv") and not _is_done(("anet", 1), sha, recorded,
                                                                                            tmp_path / "runs.csv")
    with pytest.raises(UserError, match="anet seed 0 was trained with another config"):
        _is_done(("anet", 0), other_data, recorded, tmp_path / "runs.csv")


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_grid_writes_runs_csv_resumes_and_reports(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ANET_PROGRESS", "0")
    rows = ("baseline", "anet_no_ac", "van_fc")  # one row per kind of schedule; every row resolves above
    args = ["--dataset", "synthetic", "--profile", "smoke", "--seeds", "1", "--out", str(tmp_path / "out"),
            "--rows", ",".join(rows)]
    assert main(args) == 0
    runs = read_runs(tmp_path / "out" / "ablation-smoke" / "runs.csv")
    assert sorted(runs["row"]) == sorted(rows) and set(runs["seed"]) == {0} and (runs["wall_s"] > 0).all()
    assert runs["eval/test/mAP"].between(0, 1).all() and runs["eval/val/mAP"].between(0, 1).all()
    assert runs["cpu"].str.len().min() > 0 and runs["git_commit"].str.len().min() >= 7
    table = (tmp_path / "out" / "ablation-smoke" / "ablation.md").read_text()
    for key in rows:
        assert f"| {BY_KEY[key].paper} | A | 1 |" in table
    client = MlflowClient()
    exp = client.get_experiment_by_name("anet-synthetic").experiment_id
    found = client.search_runs([exp], "tags.`anet.ablation` = 'ablation-smoke' and tags.`anet.kind` = 'pipeline'")
    by_row = {r.data.tags["anet.ablation.row"]: r for r in found}
    assert set(by_row) == set(rows) and {r.info.run_id for r in found} == set(runs["run_id"])
    assert by_row["baseline"].data.params["stage_one.epochs"] == "2"  # 1 + 1: the whole schedule in stage one
    no_ac = by_row["anet_no_ac"].data.params
    assert (no_ac["stage_two.epochs"], no_ac["stage_two.amelioration"], no_ac["stage_two.freeze_f"]) == ("1", "false",
                                                                                                          "true")
    assert by_row["van_fc"].data.params["model.attr_branch"] == "fc"
    assert main(args) == 0  # resumes: nothing runs again
    assert len(read_runs(tmp_path / "out" / "ablation-smoke" / "runs.csv")) == len(rows)
    assert os.path.getsize(Path(tmp_path / "out" / "ablation-smoke" / "ablation.png")) > 0


def test_fastreid_recipe_row_changes_the_recipe_only_not_the_budget():
    changed = _differences("synthetic-wild", "anet", "anet_fastreid")
    assert changed and all(k.split(".")[0] in ("augment", "model", "loss", "stage_one", "stage_two") for k in changed)
    budget = ("stage_one.epochs", "stage_two.epochs", "stage_one.milestones", "model.depth", "model.variant",
              "data.image_size", "data.p_ids", "data.k_imgs", "runtime.precision", "stage_two.freeze_f",
              "stage_two.amelioration")
    assert not set(budget) & set(changed), set(budget) & set(changed)
    assert changed["model.head.kind"] == ("anet", "fastreid") and changed["loss.form"] == ("anet", "fastreid")
