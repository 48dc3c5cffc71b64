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
                                                 render_size=32, difficulty=0.3)), root)
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
    cfg = load_config(profile, ["model.variant=baseline", "model.depth=18"])  # one switch: the paper's two rows
    assert (cfg.eval.feature, cfg.stage_two.epochs) == ("f", 0)  # plain FastReID: one stage, the f feature
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


def _fastreid_cfg(cfg, num_classes: int):
    """FastReID 1.4.0's config for what the profile sets, key by key (the README's recipe table)."""
    from fastreid.config import get_cfg

    m, h, loss = cfg.model, cfg.model.head, cfg.loss
    pools = {"gemp": "GeneralizedMeanPoolingP", "gem": "GeneralizedMeanPooling", "avg": "GlobalAvgPool"}
    fr = get_cfg()
    fr.merge_from_list([
        "MODEL.BACKBONE.PRETRAIN", False, "MODEL.BACKBONE.DEPTH", f"{m.depth}x", "MODEL.BACKBONE.WITH_IBN", m.ibn,
        "MODEL.BACKBONE.WITH_NL", m.non_local, "MODEL.BACKBONE.LAST_STRIDE", m.last_stride,
        "MODEL.BACKBONE.FEAT_DIM", 2048 if m.depth >= 50 else 512, "MODEL.HEADS.NUM_CLASSES", num_classes,
        "MODEL.HEADS.POOL_LAYER", pools[h.pool], "MODEL.HEADS.CLS_LAYER", {"circle": "CircleSoftmax"}.get(
            h.cls_layer, "Linear"), "MODEL.HEADS.SCALE", type(fr.MODEL.HEADS.SCALE)(h.scale),
        "MODEL.HEADS.MARGIN", type(fr.MODEL.HEADS.MARGIN)(h.margin),
        "MODEL.HEADS.NECK_FEAT", h.neck_feat, "MODEL.HEADS.EMBEDDING_DIM", h.embedding_dim,
        "MODEL.LOSSES.NAME", ("CrossEntropyLoss", "TripletLoss"), "MODEL.LOSSES.CE.EPSILON", loss.label_smoothing, "MODEL.LOSSES.TRI.MARGIN", loss.triplet_margin,
        "MODEL.LOSSES.TRI.HARD_MINING", loss.triplet_hard_mining, "MODEL.LOSSES.TRI.NORM_FEAT", loss.triplet_norm_feat,
        "MODEL.HEADS.WITH_BNNECK", True, "MODEL.DEVICE", "cpu",
    ])
    return fr


@pytest.mark.parametrize(("profile", "depth"), [("veri776-fastreid", 50), ("veriwild-fastreid", 18),
                                                ("vehicleid-fastreid", 18)])
def test_baseline_of_each_profile_equals_fastreids_own_baseline(profile: str, depth: int) -> None:
    """model.variant=baseline of the profile = FastReID's Baseline built from the recipe's keys: its state dict
    loads (heads.* -> f_head.*), and the training losses, their gradients and the test feature are equal."""
    pytest.importorskip("fastreid.layers", reason="FastReID 1.4.0 (test-only reference) is not installed")
    from fastreid.modeling.meta_arch import build_model as fr_build_model
    from fastreid.utils.events import EventStorage

    from anet.losses.fastreid import FastReIDCriterion

    cfg = load_config(profile, ["model.variant=baseline", "eval.feature=f", f"model.depth={depth}"])
    torch.manual_seed(0)
    theirs = fr_build_model(_fastreid_cfg(cfg, num_classes=4))
    for mod in theirs.modules():  # norms away from init, so that the non-local blocks and every BN matter
        if isinstance(mod, torch.nn.BatchNorm2d) and mod.weight.requires_grad:
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
    ours = build_model(cfg.model, num_ids=4, attr_classes={})
    state = {k.replace("heads.", "f_head.", 1): v for k, v in theirs.state_dict().items() if not k.startswith("pixel_")}
    ours.load_state_dict(state, strict=True)
    mean, std = torch.tensor(cfg.augment.mean).view(1, 3, 1, 1), torch.tensor(cfg.augment.std).view(1, 3, 1, 1)
    torch.testing.assert_close(theirs.pixel_mean / 255, mean), torch.testing.assert_close(theirs.pixel_std / 255, std)
    theirs.pixel_mean.zero_(), theirs.pixel_std.fill_(1.0)  # same normalisation: both get the same normalised input
    x = (torch.rand(8, 3, 64, 64) - mean) / std
    ids = torch.arange(4).repeat_interleave(2)
    with EventStorage(0):
        their_losses = theirs({"images": x.clone(), "targets": ids})  # in place
    terms = FastReIDCriterion(cfg.loss, cfg.model)(ours(x), ids, {})
    torch.testing.assert_close(terms["id_f"], their_losses["loss_cls"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["tri_f"], their_losses["loss_triplet"], rtol=1e-4, atol=1e-5)
    sum(terms.values()).backward()
    sum(their_losses.values()).backward()
    theirs_params = dict(theirs.named_parameters())
    pairs = [(n, p.grad, theirs_params[n.replace("f_head.", "heads.", 1)].grad) for n, p in ours.named_parameters()]
    assert all((g is None) == (h is None) for _, g, h in pairs)
    pairs = [(n, g, h) for n, g, h in pairs if h is not None]
    scale = torch.cat([h.flatten() for _, _, h in pairs]).norm()
    for name, g, h in pairs:  # float noise only (a conv bias before a BN has an exactly-zero true gradient)
        assert (g - h).norm() <= 1e-4 * h.norm() + 1e-6 * scale, name
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.embed(x, feature="f"), torch.nn.functional.normalize(theirs({"images": x})),
                                   rtol=1e-4, atol=1e-5)
