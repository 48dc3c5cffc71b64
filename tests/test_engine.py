"""The training engine on the smoke profile (CPU, deterministic): both stages, resume, NaN guard, freezing."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from anet.config import load_config
from anet.errors import UserError
from anet.evaluation.in_training import extract_split, make_eval_fn
from anet.io import sha256_file
from anet.losses import Criterion
from anet.model.checkpoint_io import load_model_from_checkpoint
from anet.steps.prepare import prepare_from_config
from anet.train.callbacks import Callback, JsonlLogCallback
from anet.train.data import build_train_data
from anet.train.engine import TrainingDiverged, train_stage
from anet.train.stage import build_model_for, run_stage


def _cfg(tmp: Path, *overrides: str):
    return load_config("smoke", [f"data.root={tmp / 'data'}", f"data.cache_dir={tmp / 'cache'}", *overrides])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def prepared(workdir):
    return prepare_from_config(_cfg(workdir), progress=False)


@pytest.fixture(scope="module")
def stage_one_run(workdir, prepared) -> Path:
    """One stage-one epoch through the ``anet train`` command; returns the run folder."""
    from anet.cli import train as train_commands

    parser = argparse.ArgumentParser()
    train_commands.add_commands(parser.add_subparsers())
    out = workdir / "cli_run"
    args = parser.parse_args(["train", "--config", "smoke", f"data.root={workdir / 'data'}",
                              f"data.cache_dir={workdir / 'cache'}", "--stage", "one", "--out", str(out),
                              "--no-progress"])
    assert args.func(args) == 0
    return out


def _fresh(cfg, prepared, seed: int = 0):
    torch.manual_seed(seed)
    return build_model_for(cfg, prepared), build_train_data(prepared, cfg)


def test_cli_stage_one_writes_checkpoints_and_logs_every_term(stage_one_run):
    ckpt = torch.load(stage_one_run / "stage_one" / "final.pt", weights_only=True)
    assert ckpt["stage"] == "stage_one" and ckpt["epoch"] == 1 and ckpt["num_ids"] == 6
    assert ckpt["attr_classes"] == {"color": 10, "type": 9} and ckpt["model_cfg"]["depth"] == 18
    lines = [json.loads(line) for line in (stage_one_run / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1]
    assert {"tri_f", "id_f", "att/color", "att/type", "tri_j", "id_j", "tri_g", "loss", "lr", "raw/tri_g", "raw/att/color"} <= set(lines[0]["terms"])


def test_load_model_from_checkpoint_rebuilds_the_trained_weights(stage_one_run):
    path = stage_one_run / "stage_one" / "final.pt"
    model = load_model_from_checkpoint(path)
    stored = torch.load(path, weights_only=True)["model"]
    assert not model.training
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


def test_resume_after_a_kill_equals_an_uninterrupted_run(workdir, prepared):
    cfg = _cfg(workdir, "stage_one.epochs=2", "stage_one.milestones=[1]", "stage_one.warmup_epochs=1")

    class Kill(Callback):
        def on_epoch_end(self, stage_name, epoch, terms):
            raise KeyboardInterrupt("killed")

    model, data = _fresh(cfg, prepared)
    straight = train_stage(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, workdir / "straight",
                           config=cfg, progress=False)
    model_b, data_b = _fresh(cfg, prepared)
    with pytest.raises(KeyboardInterrupt):
        train_stage(model_b, Criterion(cfg.loss), cfg.stage_one, data_b, cfg.runtime, workdir / "killed",
                    callbacks=[Kill()], config=cfg, progress=False)
    assert torch.load(workdir / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    model_c, data_c = _fresh(cfg, prepared, seed=123)  # different init: everything must come from last.pt
    resumed = train_stage(model_c, Criterion(cfg.loss), cfg.stage_one, data_c, cfg.runtime, workdir / "killed",
                          config=cfg, progress=False)
    assert resumed.epochs_run == straight.epochs_run == 2
    a, b = model.state_dict(), model_c.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_bf16_channels_last_step_runs_with_fp32_losses(workdir, prepared):
    cfg = _cfg(workdir, "runtime.precision=bf16", "runtime.channels_last=true", "runtime.deterministic=false")
    model, data = _fresh(cfg, prepared)
    seen: list[dict] = []

    def criterion(out, ids, attrs):
        seen.append({"dtype": out.j_vec.dtype})
        return Criterion(cfg.loss)(out, ids, attrs)

    result = train_stage(model, criterion, cfg.stage_one, data, cfg.runtime, workdir / "bf16", config=cfg,
                         progress=False)
    assert seen and all(s["dtype"] == torch.float32 for s in seen)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # bf16 autocast must still yield every named term of L, each a finite positive fp32 mean
    assert {"tri_f", "id_f", "tri_j", "id_j", "tri_g"} <= set(result.last_terms)
    assert all(math.isfinite(result.last_terms[k]) and result.last_terms[k] > 0 for k in ("id_f", "id_j"))


def test_other_config_in_the_same_out_dir_is_refused(workdir, prepared, stage_one_run):
    cfg = _cfg(workdir, "loss.lambda_a=0.5")
    with pytest.raises(UserError, match="holds a different run"):
        run_stage(cfg, prepared.cache_dir, "stage_one", stage_one_run / "stage_one", progress=False)


class _NanAt:
    """The real criterion, except that ``term`` is NaN at global step ``at`` (1-based)."""

    def __init__(self, criterion, term: str, at: int):
        self.criterion, self.term, self.at, self.calls = criterion, term, at, 0

    def __call__(self, out, ids, attrs):
        self.calls += 1
        terms = self.criterion(out, ids, attrs)
        if self.calls == self.at:
            terms[self.term] = terms[self.term] * float("nan")
        return terms


def test_nan_loss_stops_naming_term_and_step_and_keeps_last_checkpoint(workdir, prepared):
    cfg = _cfg(workdir, "stage_one.epochs=2")
    model, data = _fresh(cfg, prepared)
    steps = len(data.sampler)
    out = workdir / "nan"
    last = out / "last.pt"
    seen: dict[int, str] = {}

    class Hash(Callback):
        def on_epoch_end(self, stage_name, epoch, terms):
            seen[epoch] = sha256_file(last)

    criterion = _NanAt(Criterion(cfg.loss), "tri_j", at=steps + 1)
    with pytest.raises(TrainingDiverged) as err:
        train_stage(model, criterion, cfg.stage_one, data, cfg.runtime, out, callbacks=[Hash()], config=cfg,
                    progress=False)
    assert str(err.value) == f"stage_one epoch 2 step 1: loss term tri_j is nan; last good checkpoint: {last}"
    assert list(seen) == [1] and not (out / "final.pt").exists()
    assert sha256_file(last) == seen[1]
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_stage_two_leaves_frozen_parameters_bit_identical(workdir, prepared, stage_one_run):
    cfg = _cfg(workdir, "stage_two.eval_every=1")
    init = stage_one_run / "stage_one" / "final.pt"
    evals: list[dict[str, float]] = []

    class Keep(Callback):
        def on_eval(self, stage_name, epoch, metrics):
            evals.append(metrics)
            return False

    result = run_stage(cfg, prepared.cache_dir, "stage_two", workdir / "two", init_from=init, resume=False,
                       progress=False, callbacks=[Keep()], eval_fn=make_eval_fn(cfg, prepared))
    assert len(evals) == 1 and 0.0 < evals[0]["eval/val/mAP"] <= 1.0 and result.last_metrics == evals[0]
    assert not any("/test/" in k for k in evals[0])  # in-training evaluation never scores the test split
    before = torch.load(init, weights_only=True)["model"]
    after = torch.load(result.checkpoint, weights_only=True)
    assert after["stage"] == "stage_two" and {"ac_tri", "ac_id"} <= set(result.last_terms)
    assert "tri_f" not in result.last_terms
    frozen = [k for k in before if k.startswith(("backbone.", "f_head."))]
    assert frozen and all(torch.equal(before[k], after["model"][k]) for k in frozen)
    trainable = [k for k in before if k.startswith("j_head.") and k.endswith("weight")]
    assert any(not torch.equal(before[k], after["model"][k]) for k in trainable)


def test_jsonl_log_drops_epochs_repeated_after_a_resume(tmp_path):
    log = JsonlLogCallback(tmp_path / "log.jsonl")
    for epoch in (1, 2, 3):
        log.on_epoch_end("stage_one", epoch, {"tri_f": 1.0 / epoch})
    log.on_epoch_end("stage_one", 3, {"tri_f": float("nan")})  # resumed from epoch 2's checkpoint
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(d["epoch"], d["terms"]["tri_f"]) for d in lines] == [(1, 1.0), (2, 0.5), (3, None)]


def _map(model, prepared, cfg) -> float:
    from anet.evaluation.ranking import rank_metrics

    model.eval()
    q, g = prepared.rows("query"), prepared.rows("gallery")
    qf = extract_split(model, prepared, q, cfg, torch.device("cpu"))
    gf = extract_split(model, prepared, g, cfg, torch.device("cpu"))
    return rank_metrics(qf, q["vid"].to_numpy(), q["camid"].to_numpy(), gf, g["vid"].to_numpy(),
                        g["camid"].to_numpy(), max_rank=10).mAP


@pytest.mark.slow
def test_two_stages_beat_an_untrained_model(tmp_path):
    data = ["data.synthetic.train_ids=16", "data.synthetic.test_ids=8", "data.synthetic.images_per_id=4"]
    cfg = _cfg(tmp_path, *data, "stage_one.epochs=10", "stage_one.lr=1e-3", "stage_two.epochs=2",
               "stage_two.eval_every=2")
    prepared = prepare_from_config(cfg, progress=False)
    torch.manual_seed(0)
    untrained = _map(build_model_for(cfg, prepared), prepared, cfg)
    one = run_stage(cfg, prepared.cache_dir, "stage_one", tmp_path / "one", progress=False)
    metrics: list[dict[str, float]] = []

    class Keep(Callback):
        def on_eval(self, stage_name, epoch, m):
            metrics.append(m)
            return False

    two = run_stage(cfg, prepared.cache_dir, "stage_two", tmp_path / "two", init_from=one.checkpoint,
                    progress=False, callbacks=[Keep()], eval_fn=lambda model: {"mAP": _map(model, prepared, cfg)})
    trained = _map(load_model_from_checkpoint(two.checkpoint), prepared, cfg)
    assert metrics and metrics[-1]["mAP"] == pytest.approx(trained)
    # measured here: untrained 0.11, stage one 0.21, stage two 0.24 (8 queries, 24 gallery images)
    assert trained > 1.5 * untrained and trained > untrained + 0.05, (untrained, trained)


@pytest.mark.gpu
def test_fp16_amp_on_cuda(workdir, prepared):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = _cfg(workdir, "runtime.device=cuda", "runtime.precision=fp16", "runtime.channels_last=true",
               "runtime.deterministic=false")
    model, data = _fresh(cfg, prepared)
    result = train_stage(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, workdir / "amp",
                         config=cfg, progress=False)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["scaler"] and next(model.parameters()).is_cuda
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_terms.values())


def test_stage_two_logs_what_ac_does(workdir, prepared, stage_one_run):
    """Per epoch of stage two, the AC diagnostics reach log.jsonl (and MLflow: the same on_epoch_end terms)."""
    cfg = _cfg(workdir)
    out = workdir / "two_diag"
    seen: list[dict[str, float]] = []

    class Keep(Callback):
        def on_epoch_end(self, stage_name, epoch, terms):
            seen.append(dict(terms))

    result = run_stage(cfg, prepared.cache_dir, "stage_two", out / "stage_two", resume=False, progress=False,
                       init_from=stage_one_run / "stage_one" / "final.pt",
                       callbacks=[JsonlLogCallback(out / "log.jsonl"), Keep()])
    terms = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["terms"]
    assert terms == pytest.approx(seen[-1]) and result.last_terms == seen[-1]
    groups = ("attr_branches", "joint", "j_head")  # trainable in stage two; backbone and f_head are frozen
    assert {"ac_tri", "ac_id", "ac/share_j_better"} <= set(terms)
    assert 0.0 <= terms["ac/share_j_better"] <= 1.0
    assert {f"ac/rel_change/{g}" for g in groups} == {k for k in terms if k.startswith("ac/rel_change/")}
    assert all(terms[f"ac/rel_change/{g}"] > 0 for g in groups)
    for term in ("ac_tri", "ac_id"):
        assert terms[f"ac/grad_share/{term}"] > 0
        assert {f"ac/grad_share/{term}/{g}" for g in groups} <= set(terms)
    # the loss is the sum of the weighted terms only: no diagnostic (or raw value) is added into it
    summed = sum(v for k, v in terms.items() if not k.startswith(("raw/", "ac/")) and k not in ("loss", "lr"))
    assert terms["loss"] == pytest.approx(summed)


def test_diagnostics_values_by_hand():
    """Gradient shares, relative weight change and the stats' epoch mean on a two-group toy model."""
    from anet.config import StageCfg
    from anet.losses import WeightedTerms
    from anet.train.diagnostics import EpochDiagnostics
    from anet.train.runtime import RuntimeContext

    model = torch.nn.ModuleDict({"joint": torch.nn.Linear(1, 1, bias=False), "j_head": torch.nn.Linear(1, 1, bias=False),
                                 "f_head": torch.nn.Linear(1, 1, bias=False)})
    model["f_head"].weight.requires_grad_(False)  # frozen: no group
    with torch.no_grad():
        model["joint"].weight.fill_(2.0)
        model["j_head"].weight.fill_(1.0)
    assert not EpochDiagnostics.begin(model, StageCfg(name="stage_one", epochs=1)).enabled
    diag = EpochDiagnostics.begin(model, StageCfg(name="stage_two", epochs=1, freeze_f=True, amelioration=True))
    for step, share in ((1, 0.25), (2, 0.75)):
        terms = WeightedTerms()
        terms.add("ac_tri", 1.0, 3.0 * model["joint"].weight.sum())  # d/d joint = 3
        terms.add("id_j", 1.0, 4.0 * model["j_head"].weight.sum())  # d/d j_head = 4: |grad L'| = 5
        terms.stats["share_j_better"] = torch.tensor(share)
        diag.on_step(step, terms, sum(terms.values()))
    with torch.no_grad():
        model["joint"].weight.fill_(2.5)  # |2.5 - 2| / |2| = 0.25
    values = diag.finish(RuntimeContext(torch.device("cpu")))
    assert values == pytest.approx({"ac/share_j_better": 0.5, "ac/grad_share/ac_tri": 0.6,
                                    "ac/grad_share/ac_tri/joint": 1.0, "ac/grad_share/ac_tri/j_head": 0.0,
                                    "ac/rel_change/joint": 0.25, "ac/rel_change/j_head": 0.0})
