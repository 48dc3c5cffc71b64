"""The ANet + FastReID profiles train end to end (both stages) on tiny synthetic copies of their datasets'
layouts, with every FastReID block switched on as the profile has it; the plain-ANet defaults are untouched."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from anet.config import SyntheticCfg, load_config, resolve_config
from anet.config.validation import ConfigError
from anet.model import build_model
from anet.model.fastreid_blocks import FastReIDHead, NonLocal
from anet.steps.prepare import prepare_from_config
from anet.synthetic.generator import render_dataset
from anet.synthetic.layouts import write_vehicleid, write_veri776, write_veriwild
from anet.train.stage import run_stage

pytestmark = pytest.mark.usefixtures("one_thread")

WRITERS = {"veri776": write_veri776, "veriwild": write_veriwild, "vehicleid": write_vehicleid}
# tiny: 64 px, 4 x 4 batches, 2 + 1 epochs, fp32 on CPU, the schedule's phases shrunk to fit
SMALL = {"data.val_ids": 2, "data.image_size": [64, 64], "data.p_ids": 4, "data.k_imgs": 4,
         "model.pretrained": None, "stage_one.epochs": 2, "stage_one.solver.warmup_iters": 2,
         "stage_two.epochs": 1, "runtime.precision": "fp32", "runtime.sync_bn": False,
         "runtime.channels_last": False, "runtime.deterministic": True}
# VeRi keeps R50 (the non-local blocks exist only there) at lr 1e-5: from scratch, the recipe's 0.01 grows
# the non-local blocks (cubic in their input) within two steps, and the frozen stage two then runs them on
# running statistics of two steps (inf); the recipe's regime is ImageNet weights and 60 epochs.
PROFILE_SMALL = {
    "veri776": {"stage_one.solver.delay_epochs": 1, "stage_one.solver.freeze_iters": 1, "stage_one.lr": 1e-5},
    "veriwild": {"model.depth": 18, "stage_one.milestones": [1]},
    "vehicleid": {"model.depth": 18, "stage_one.milestones": [1]},
}


@pytest.mark.parametrize("dataset", [pytest.param("veri776", marks=pytest.mark.slow), "veriwild", "vehicleid"])
def test_fastreid_profile_trains_both_stages_on_its_layout(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / dataset
    WRITERS[dataset](render_dataset(SyntheticCfg(train_ids=8, test_ids=6, images_per_id=6, cameras=3,
                                                 image_size=32, difficulty=0.3)), root)
    cfg = resolve_config(f"{dataset}-fastreid", SMALL | PROFILE_SMALL[dataset], data_root=str(root),
                         cache_root=str(tmp_path / "cache"))
    prepared = prepare_from_config(cfg, progress=False)
    one = run_stage(cfg, prepared.cache_dir, "stage_one", tmp_path / "one", progress=False)
    assert {"tri_f", "id_f", "tri_j", "id_j", "tri_g"} <= set(one.last_terms)
    assert all(math.isfinite(v) for v in one.last_terms.values())
    two = run_stage(cfg, prepared.cache_dir, "stage_two", tmp_path / "two", init_from=one.checkpoint,
                    progress=False)
    assert {"ac_tri", "ac_id", "tri_j", "id_j"} <= set(two.last_terms) and "id_f" not in two.last_terms
    state = torch.load(two.checkpoint, weights_only=True)["model"]
    assert any(k.startswith("f_head.bottleneck.") for k in state)  # FastReID's head
    assert any(k.startswith("backbone.NL_3.") for k in state) == (dataset == "veri776")


@pytest.mark.parametrize("profile", ["veri776-fastreid", "veriwild-fastreid", "vehicleid-fastreid"])
def test_baseline_override_is_plain_fastreid(profile: str) -> None:
    cfg = load_config(profile, ["model.variant=baseline", "eval.feature=f", "stage_two.epochs=0",
                                "stage_two.amelioration=false", "stage_two.freeze_f=false", "model.depth=18"])
    model = build_model(cfg.model, num_ids=5, attr_classes={"color": 3, "type": 2})
    assert isinstance(model.f_head, FastReIDHead) and model.joint is None and not model.attr_branches
    assert model.f_head.cls == cfg.model.head.cls_layer and model.f_head.neck_feat == cfg.model.head.neck_feat


def test_defaults_stay_plain_anet() -> None:
    cfg = load_config("smoke")
    assert (cfg.model.non_local, cfg.model.maxpool, cfg.model.head.kind, cfg.loss.form) == \
        (False, "pad", "anet", "anet")
    assert (cfg.augment.kind, cfg.stage_one.solver.kind) == ("anet", "anet")
    model = build_model(cfg.model, num_ids=5, attr_classes={"color": 3, "type": 2})
    assert not any(isinstance(m, NonLocal | FastReIDHead) for m in model.modules())


@pytest.mark.parametrize(("override", "match"), [
    ("model.head.pool=gemp", "model.head.kind=fastreid"),
    ("augment.autoaug_p=0.1", "augment.kind=fastreid"),
    ("stage_one.solver.kind=fastreid", "amsgrad=false"),
])
def test_fastreid_options_without_their_switch_are_refused(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", [override])
