"""Each FastReID building block in anet/ equals FastReID 1.4.0's own module: same weights, same inputs,
same forward and same gradients (float tolerance). FastReID is a test-only reference (``make setup``
installs it without its pins); without it these tests skip."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest
import torch

from anet.data.fastreid_augment import (
    AA_FILL,
    AA_POLICY,
    RESAMPLE,
    FastReIDAugment,
    FastReIDAugmentSettings,
    apply_op,
    color_jitter,
    level_args,
    sample_autoaugment,
)
from anet.fastreid_losses import cross_entropy, triplet_loss
from anet.model import build_backbone, load_backbone_weights
from anet.model.fastreid_blocks import FastReIDHead, GeneralizedMeanPooling, NonLocal, cls_outputs
from anet.train.solver import FreezeFirstIters, SolverSchedule, build_optimizer, build_scheduler, param_groups

fastreid = pytest.importorskip("fastreid.layers", reason="FastReID 1.4.0 (test-only reference) is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


def _fr_cfg(**overrides: object):
    from fastreid.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_list([x for kv in overrides.items() for x in (kv[0].replace("__", "."), kv[1])])
    return cfg


def _randomise_norms(net: torch.nn.Module, seed: int) -> None:
    """BN/IN affine and running stats away from their init, so every norm (and NL's zero BN) matters."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.InstanceNorm2d) and m.affine:
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
            if m.running_mean is not None:
                m.running_mean.data = torch.randn(m.running_mean.shape, generator=gen) * 0.1
                m.running_var.data = torch.rand(m.running_var.shape, generator=gen) + 0.5


def _assert_grads_equal(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    their_grads = {n: p.grad for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        if p.grad is None:
            assert their_grads[name] is None, name
            continue
        torch.testing.assert_close(p.grad, their_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_non_local_block_equals_fastreid() -> None:
    from fastreid.layers import Non_local

    torch.manual_seed(0)
    theirs = Non_local(16, "BN")
    _randomise_norms(theirs, 1)
    ours = NonLocal(16)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 16, 5, 4)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x1), theirs(x2)
    torch.testing.assert_close(out_ours, out_theirs)
    (out_ours * torch.arange(out_ours.numel()).view_as(out_ours).sin()).sum().backward()
    (out_theirs * torch.arange(out_theirs.numel()).view_as(out_theirs).sin()).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    _assert_grads_equal(ours, theirs)


def test_r50_ibn_non_local_backbone_loads_a_fastreid_checkpoint(tmp_path) -> None:
    from fastreid.modeling.backbones.resnet import build_resnet_backbone

    torch.manual_seed(0)
    cfg = _fr_cfg(MODEL__BACKBONE__PRETRAIN=False, MODEL__BACKBONE__WITH_IBN=True,
                  MODEL__BACKBONE__WITH_NL=True, MODEL__BACKBONE__DEPTH="50x", MODEL__BACKBONE__LAST_STRIDE=1)
    theirs = build_resnet_backbone(cfg)
    _randomise_norms(theirs, 2)
    path = tmp_path / "model_final.pth"  # FastReID's checkpoint layout: {"model": {"backbone.*", "heads.*"}}
    torch.save({"model": {f"backbone.{k}": v for k, v in theirs.state_dict().items()}
                | {"heads.weight": torch.zeros(3, 2048)}, "iteration": 7}, path)
    ours = build_backbone(50, ibn=True, last_stride=1, non_local=True, maxpool="ceil")
    assert set(ours.state_dict()) == set(theirs.state_dict())  # no missing, no unexpected key
    assert ours.nl_after == {2: (2, 3), 3: (3, 4, 5)}  # after the last 2 blocks of layer2, last 3 of layer3
    assert load_backbone_weights(ours, path) == ["heads.weight"]
    x = torch.randn(2, 3, 64, 48)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    ours.train(), theirs.train()
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-4, atol=1e-4)
    out_ours.square().mean().backward()
    out_theirs.square().mean().backward()
    _assert_grads_equal(ours, theirs)
    assert ours.NL_3[0].g.weight.grad.abs().sum() > 0  # the non-local blocks are in the graph


def test_non_local_switch_off_keeps_the_plain_backbone() -> None:
    plain, nl = build_backbone(50, non_local=False), build_backbone(50, non_local=True)
    assert not any(k.startswith("NL_") for k in plain.state_dict())
    assert {k.split(".")[0] for k in nl.state_dict() if k.startswith("NL_")} == {"NL_2", "NL_3"}
    assert build_backbone(18, non_local=True).nl_after == {}  # FastReID: no non-local blocks for R18/R34
    assert build_backbone(101, non_local=True).nl_after == {2: (2, 3), 3: tuple(range(14, 23))}


@pytest.mark.parametrize("learnable", [True, False])
def test_gem_pooling_equals_fastreid(learnable: bool) -> None:
    from fastreid.layers.pooling import GeneralizedMeanPooling as FrGeM
    from fastreid.layers.pooling import GeneralizedMeanPoolingP as FrGeMP

    theirs = FrGeMP() if learnable else FrGeM()
    ours = GeneralizedMeanPooling(3.0, learnable=learnable)
    if learnable:
        assert float(ours.p.detach()) == 3.0
        with torch.no_grad():
            theirs.p.fill_(2.5), ours.p.fill_(2.5)
    x = torch.randn(4, 8, 5, 3)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x1), theirs(x2)[..., 0, 0]
    torch.testing.assert_close(out_ours, out_theirs)
    (out_ours * torch.linspace(-1, 1, out_ours.numel()).view_as(out_ours)).sum().backward()
    (out_theirs * torch.linspace(-1, 1, out_theirs.numel()).view_as(out_theirs)).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    if learnable:
        torch.testing.assert_close(ours.p.grad, theirs.p.grad)


def _fr_head(pool: str, cls: str, neck: str, scale: float, margin: float, emb: int = 0):
    from fastreid.modeling.heads.embedding_head import EmbeddingHead

    return EmbeddingHead(feat_dim=32, embedding_dim=emb, num_classes=7, neck_feat=neck, pool_type=pool,
                         cls_type=cls, scale=scale, margin=margin, with_bnneck=True, norm_type="BN")


@pytest.mark.parametrize(
    ("fr_pool", "pool", "fr_cls", "cls", "neck", "scale", "margin", "emb"),
    [("GeneralizedMeanPoolingP", "gemp", "CircleSoftmax", "circle", "after", 64.0, 0.35, 0),  # VeRi SBS
     ("GeneralizedMeanPooling", "gem", "Linear", "linear", "before", 1.0, 0.0, 0),  # VeRi-Wild/VehicleID BoT
     ("GlobalAvgPool", "avg", "Linear", "linear", "before", 1.0, 0.0, 16)],
)
def test_embedding_head_and_circle_softmax_equal_fastreid(fr_pool, pool, fr_cls, cls, neck, scale, margin,
                                                          emb) -> None:
    torch.manual_seed(0)
    theirs = _fr_head(fr_pool, fr_cls, neck, scale, margin, emb)
    ours = FastReIDHead(32, 7, pool=pool, cls=cls, neck_feat=neck, embedding_dim=emb)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert [n for n, p in ours.named_parameters() if not p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if not p.requires_grad]  # the BNNeck bias, frozen
    x = torch.randn(6, 32, 4, 4).abs()
    targets = torch.tensor([0, 1, 2, 3, 6, 6])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    tri_vec, _, logits = ours(x1)
    out = theirs(x2, targets)
    ce_in = cls_outputs(logits, targets, cls, scale, margin)
    torch.testing.assert_close(ce_in, out["cls_outputs"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tri_vec, out["features"])
    (cross_entropy(ce_in, targets, 0.1) + tri_vec.square().mean()).backward()
    (cross_entropy(out["cls_outputs"], targets, 0.1) + out["features"].square().mean()).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)
    _assert_grads_equal(ours, theirs)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[1], theirs(x))  # retrieval: the post-BNNeck vector


def test_circle_softmax_hand_values() -> None:
    cos = torch.tensor([[0.5, 0.2]])
    out = cls_outputs(cos, torch.tensor([0]), "circle", scale=2.0, margin=0.25)
    # target: [1.25 - 0.5]_+ * (0.5 - 0.75) = -0.1875; other: [0.2 + 0.25]_+ * (0.2 - 0.25) = -0.0225
    torch.testing.assert_close(out, torch.tensor([[-0.375, -0.045]]))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_equals_fastreid(eps: float) -> None:
    from fastreid.modeling.losses.cross_entroy_loss import cross_entropy_loss

    logits = torch.randn(8, 5)
    targets = torch.randint(0, 5, (8,))
    l1, l2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, theirs = cross_entropy(l1, targets, eps), cross_entropy_loss(l2, targets, eps)
    torch.testing.assert_close(ours, theirs)
    ours.backward(), theirs.backward()
    torch.testing.assert_close(l1.grad, l2.grad)


@pytest.mark.parametrize(("margin", "norm_feat", "hard_mining"),
                         [(0.0, False, True), (0.0, False, False), (0.3, False, True), (0.0, True, True),
                          (0.3, True, False)])
def test_triplet_variants_equal_fastreid(margin: float, norm_feat: bool, hard_mining: bool) -> None:
    from fastreid.modeling.losses.triplet_loss import triplet_loss as fr_triplet

    torch.manual_seed(3)
    emb = torch.randn(12, 6)
    targets = torch.arange(4).repeat_interleave(3)  # P = 4 identities x K = 3
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    ours = triplet_loss(e1, targets, margin, norm_feat, hard_mining)
    theirs = fr_triplet(e2, targets, margin, norm_feat, hard_mining)
    torch.testing.assert_close(ours, theirs)
    ours.backward(), theirs.backward()
    torch.testing.assert_close(e1.grad, e2.grad)
    assert e1.grad.abs().sum() > 0


# ---- solver: param groups, freezing, per-iteration schedule -------------------------------------------------


def _fr_hooks() -> dict[str, type]:
    """FastReID's own LRScheduler and LayerFreeze hook classes, compiled from its hooks.py source (the
    module itself cannot be imported here: it pulls in tensorboard and fastreid.evaluation)."""
    import ast
    import collections
    import logging
    from pathlib import Path

    import fastreid as fr

    path = Path(fr.__file__).parent / "engine" / "hooks.py"
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in {"LRScheduler", "LayerFreeze"}]
    namespace: dict = {"HookBase": object, "Counter": collections.Counter, "logging": logging,
                       "DistributedDataParallel": torch.nn.parallel.DistributedDataParallel}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {"LRScheduler": namespace["LRScheduler"], "LayerFreeze": namespace["LayerFreeze"]}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        self.heads = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        self.heads[1].bias.requires_grad_(False)  # a BNNeck-like frozen bias is left out of the groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x).mean(dim=(2, 3)))


_SOLVER = dict(SOLVER__BASE_LR=0.01, SOLVER__WEIGHT_DECAY=5e-4, SOLVER__WEIGHT_DECAY_NORM=1e-4,
               SOLVER__BIAS_LR_FACTOR=2.0, SOLVER__WEIGHT_DECAY_BIAS=0.0, SOLVER__HEADS_LR_FACTOR=3.0)


def test_param_groups_equal_fastreid() -> None:
    from fastreid.solver.build import get_default_optimizer_params

    net = _Net()
    theirs = get_default_optimizer_params(net, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=1e-4,
                                          bias_lr_factor=2.0, heads_lr_factor=3.0, weight_decay_bias=0.0,
                                          freeze_layers=["backbone"])
    ours = param_groups(net, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=1e-4, bias_lr_factor=2.0,
                        weight_decay_bias=0.0, heads_lr_factor=3.0, freeze_prefixes=("backbone",))
    assert len(ours) == len(theirs) == 7
    for o, t in zip(ours, theirs, strict=True):
        assert o["params"][0] is t["params"][0], o["name"]
        assert (o["lr"], o["weight_decay"], o["freeze"]) == \
            pytest.approx((t["lr"], t["weight_decay"], t["freeze_status"] == "freeze")), o["name"]


@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_optimizer_with_backbone_frozen_first_iters_equals_fastreid(opt: str) -> None:
    import copy

    from fastreid.solver.build import build_optimizer as fr_build_optimizer

    torch.manual_seed(0)
    theirs_net = _Net()
    ours_net = copy.deepcopy(theirs_net)
    cfg = _fr_cfg(SOLVER__OPT=opt, SOLVER__FREEZE_ITERS=3, MODEL__FREEZE_LAYERS=["backbone"], SOLVER__MOMENTUM=0.9,
                  **_SOLVER)
    theirs_opt, _ = fr_build_optimizer(cfg, theirs_net, contiguous=False)
    freeze_hook = _fr_hooks()["LayerFreeze"](theirs_net, ["backbone"], 3)
    freeze_hook.trainer = type("T", (), {"iter": 0})()
    groups = param_groups(ours_net, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=1e-4, bias_lr_factor=2.0,
                          weight_decay_bias=0.0, heads_lr_factor=3.0, freeze_prefixes=("backbone",))
    ours_opt = build_optimizer(opt, groups, momentum=0.9)
    ours_freeze = FreezeFirstIters(ours_net, ours_opt, ("backbone",), freeze_iters=3)
    start = copy.deepcopy(ours_net.backbone.state_dict())
    for it in range(6):
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(it))
        freeze_hook.trainer.iter = it
        freeze_hook.before_step()
        ours_freeze.before_step(it)
        assert ours_net.backbone.training == theirs_net.backbone.training == (it >= 3)
        for net, optimizer in ((ours_net, ours_opt), (theirs_net, theirs_opt)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
        if it == 2:  # backbone weights and BN statistics untouched while frozen
            for k, v in ours_net.backbone.state_dict().items():
                assert torch.equal(v, start[k]), k
        for (name, p), q in zip(ours_net.state_dict().items(), theirs_net.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, msg=f"{name} after step {it}")
    assert not torch.equal(ours_net.backbone[0].weight, start["0.weight"])  # trains after FREEZE_ITERS


def _fr_lrs(cfg, iters_per_epoch: int, n_iters: int) -> list[list[float]]:
    """Drive FastReID's scheduler exactly as its trainer does (its LRScheduler hook's after_step/after_epoch)."""
    from fastreid.solver.build import build_lr_scheduler

    net = _Net()
    optimizer = torch.optim.SGD(
        [{"params": [p], "lr": cfg.SOLVER.BASE_LR * (2.0 if i % 2 else 1.0)} for i, p in enumerate(net.parameters())
         if p.requires_grad], momentum=0.9)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    hook = _fr_hooks()["LRScheduler"](optimizer, scheduler)
    storage = type("S", (), {"put_scalar": lambda *a, **k: None})()
    hook.trainer = type("T", (), {"iter": 0, "epoch": 0, "grad_scaler": None, "storage": storage,
                                  "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
                                  "delay_epochs": cfg.SOLVER.DELAY_EPOCHS})()
    lrs = []
    for it in range(n_iters):
        hook.trainer.iter, hook.trainer.epoch = it, it // iters_per_epoch
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        hook.after_step()
        if (it + 1) % iters_per_epoch == 0:
            hook.after_epoch()
    return lrs


@pytest.mark.parametrize(
    ("sched", "warmup", "delay", "steps"),
    [("CosineAnnealingLR", 30, 12, ()),  # Base-SBS form: warmup, then flat until DELAY_EPOCHS, cosine to the end
     ("CosineAnnealingLR", 40, 0, ()),  # warmup spanning epochs, no delay (T_max from ceil(warmup / ipe))
     ("MultiStepLR", 30, 0, (10, 20)),  # bag-of-tricks form; milestones count the schedule's own steps
     ("MultiStepLR", 0, 0, (5, 25))],
)
def test_lr_per_iteration_equals_fastreid(sched: str, warmup: int, delay: int, steps: tuple[int, ...]) -> None:
    ipe, n = 7, 300  # 300 iterations = 42 epochs and a bit
    cfg = _fr_cfg(SOLVER__SCHED=sched, SOLVER__MAX_EPOCH=44, SOLVER__BASE_LR=0.01, SOLVER__ETA_MIN_LR=7.7e-5,
                  SOLVER__WARMUP_ITERS=warmup, SOLVER__WARMUP_FACTOR=0.1, SOLVER__DELAY_EPOCHS=delay,
                  SOLVER__STEPS=list(steps), SOLVER__GAMMA=0.1)
    theirs = _fr_lrs(cfg, ipe, n)
    net = _Net()
    groups = [{"params": [p], "lr": 0.01 * (2.0 if i % 2 else 1.0)} for i, p in enumerate(net.parameters())
              if p.requires_grad]
    optimizer = build_optimizer("SGD", groups)
    s = SolverSchedule(sched="cosine" if sched.startswith("Cosine") else "multistep", max_epoch=44,
                       warmup_iters=warmup, warmup_factor=0.1, delay_epochs=delay, eta_min=7.7e-5, steps=steps)
    scheduler = build_scheduler(optimizer, s, ipe)
    ours = []
    for _ in range(n):
        ours.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert len({round(x[0], 12) for x in ours}) >= 3  # the schedule moves
    for it, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        assert o == pytest.approx(t, rel=1e-9, abs=1e-15), f"iteration {it}"


# ---- augmentation: AutoAugment policy and ops, padding + crop, random erasing, colour jitter ------------------


@pytest.fixture(scope="module")
def fr_autoaugment():
    """FastReID's autoaugment.py, loaded from its file (PIL + numpy only; its package needs torchvision)."""
    import importlib.util
    from pathlib import Path

    import fastreid as fr

    spec = importlib.util.spec_from_file_location(
        "fastreid_autoaugment", Path(fr.__file__).parent / "data" / "transforms" / "autoaugment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_autoaugment_policy_equals_fastreid(fr_autoaugment) -> None:
    theirs = fr_autoaugment.AutoAugment().policy  # what build_transforms wraps in RandomApply(p=AUTOAUG.PROB)
    assert len(theirs) == len(AA_POLICY) == 25
    for ours_sub, their_sub in zip(AA_POLICY, theirs, strict=True):
        for (name, prob, magnitude), op in zip(ours_sub, their_sub, strict=True):
            assert op.aug_fn is fr_autoaugment.NAME_TO_OP[name] and op.level_fn is fr_autoaugment.LEVEL_TO_ARG[name]
            assert (op.prob, op.magnitude) == (prob, magnitude)
            assert op.kwargs["fillcolor"] == AA_FILL and tuple(op.kwargs["resample"]) == RESAMPLE
            assert op.magnitude_std == 0


def test_autoaugment_ops_equal_fastreid(fr_autoaugment, monkeypatch) -> None:
    from PIL import Image

    gen = np.random.default_rng(0)
    img = Image.fromarray((gen.random((20, 24, 3)) * 255).astype(np.uint8) // 2 + 40)
    ops = {(name, magnitude) for sub in AA_POLICY for name, _, magnitude in sub}
    for (name, magnitude), negate, resample in itertools.product(sorted(ops), (False, True), RESAMPLE):
        level_fn = fr_autoaugment.LEVEL_TO_ARG[name]
        monkeypatch.setattr(fr_autoaugment.random, "random", lambda negate=negate: 0.9 if negate else 0.1)
        their_args = level_fn(magnitude, fr_autoaugment._HPARAMS_DEFAULT) if level_fn else ()
        monkeypatch.undo()
        assert level_args(name, magnitude, negate) == pytest.approx(their_args), name
        theirs = fr_autoaugment.NAME_TO_OP[name](img, *their_args, fillcolor=AA_FILL, resample=resample)
        ours = apply_op(img, name, level_args(name, magnitude, negate), resample)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), (name, magnitude, negate, resample)


def test_autoaugment_op_distribution_matches_fastreid(fr_autoaugment) -> None:
    import random

    from PIL import Image

    n = 3000
    theirs: collections.Counter = collections.Counter()
    policy = fr_autoaugment.AutoAugment()
    for sub in policy.policy:
        for op in sub:
            name = next(k for k, v in fr_autoaugment.NAME_TO_OP.items() if v is op.aug_fn and
                        fr_autoaugment.LEVEL_TO_ARG[k] is op.level_fn)
            op.aug_fn = lambda img, *a, _name=name, **k: theirs.update([_name]) or img
    random.seed(0)
    img = Image.new("RGB", (4, 4))
    for _ in range(n):
        policy(img)
    gen = torch.Generator().manual_seed(0)
    ours = collections.Counter(name for _ in range(n) for name, _, _ in sample_autoaugment(gen))
    expected = collections.Counter()
    for sub in AA_POLICY:
        for name, prob, _ in sub:
            expected[name] += prob / len(AA_POLICY)  # ops per image, on average
    assert set(theirs) == set(ours) == {k for k, v in expected.items() if v > 0}
    for name, rate in expected.items():
        tol = 5 * math.sqrt(rate / n) + 1e-3  # ~5 sigma of a count's Poisson noise
        assert abs(ours[name] / n - rate) < tol and abs(theirs[name] / n - rate) < tol, name


def test_autoaugment_applies_with_its_probability(monkeypatch) -> None:
    import anet.data.fastreid_augment as fa

    calls = []
    monkeypatch.setattr(fa, "sample_autoaugment", lambda gen: calls.append(1) or [])
    aug = FastReIDAugment(FastReIDAugmentSettings(autoaug_p=0.1, pad=0, flip_p=0, erase_p=0), (0, 0, 0), (1, 1, 1),
                          generator=torch.Generator().manual_seed(1))
    aug(torch.zeros(4000, 4, 4, 3, dtype=torch.uint8))
    assert abs(len(calls) / 4000 - 0.1) < 5 * math.sqrt(0.09 / 4000)


def test_padding_and_random_crop_is_a_uniform_window() -> None:
    aug = FastReIDAugment(FastReIDAugmentSettings(pad=10, flip_p=0, erase_p=0), (0, 0, 0), (1, 1, 1),
                          generator=torch.Generator().manual_seed(2))
    out = aug(torch.full((2100, 12, 12, 3), 255, dtype=torch.uint8))  # white image, black padding
    assert out.shape == (2100, 3, 12, 12)
    rows, cols = out[:, 0].amax(dim=2) > 0, out[:, 0].amax(dim=1) > 0  # B x 12: which rows/cols hold image

    def offset(mask: torch.Tensor) -> torch.Tensor:  # top offset t in 0..20 of the window in the padded image
        first, last = mask.float().argmax(1), 11 - mask.flip(1).float().argmax(1)
        return torch.where(first > 0, 10 - first, 10 + (11 - last))

    for t in (offset(rows), offset(cols)):
        counts = torch.bincount(t, minlength=21)
        assert len(counts) == 21 and counts.min() > 100 - 5 * 10 and counts.max() < 100 + 5 * 10  # 2100 / 21


def test_random_erasing_follows_torchvision_params() -> None:
    aug = FastReIDAugment(FastReIDAugmentSettings(pad=0, flip_p=0, erase_p=0.5), (0, 0, 0), (1, 1, 1),
                          generator=torch.Generator().manual_seed(3))
    out = aug(torch.full((3000, 32, 32, 3), 255, dtype=torch.uint8))[:, 0]  # 1 where kept, 0 where erased
    erased = out == 0  # B x 32 x 32
    hit = erased.any(dim=(1, 2))
    assert abs(hit.float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / 3000)
    h = erased[hit].any(dim=2).sum(1).float()
    w = erased[hit].any(dim=1).sum(1).float()
    assert torch.equal(erased[hit].sum(dim=(1, 2)).float(), h * w)  # one rectangle
    frac = h * w / 1024
    assert frac.min() >= 0.015 and frac.max() <= 0.36  # area U(0.02, 0.33), rounding of h and w aside
    assert 0.12 < frac.mean() < 0.19
    assert abs(torch.log(h / w).mean().item()) < 0.1  # log-uniform aspect ratio in (0.3, 3.3): symmetric


def test_colour_jitter_factor_ranges() -> None:
    s = FastReIDAugmentSettings(cj_p=1.0, cj_brightness=0.15, cj_contrast=0, cj_saturation=0, cj_hue=0)
    gen = torch.Generator().manual_seed(4)
    gray = torch.full((3, 4, 4), 0.5)
    factors = torch.tensor([color_jitter(gray, s, gen)[0, 0, 0].item() / 0.5 for _ in range(500)])
    assert factors.min() >= 0.85 - 1e-6 and factors.max() <= 1.15 + 1e-6 and abs(factors.mean() - 1) < 0.02
    sat_hue = FastReIDAugmentSettings(cj_brightness=0, cj_contrast=0, cj_saturation=0.1, cj_hue=0.1)
    torch.testing.assert_close(color_jitter(gray, sat_hue, gen), gray, atol=1e-5, rtol=0)  # gray has no hue
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    shifted = color_jitter(red, FastReIDAugmentSettings(cj_brightness=0, cj_contrast=0, cj_saturation=0,
                                                        cj_hue=0.1), gen)
    assert not torch.allclose(shifted, red) and shifted[0].min() > 0.4  # a hue shift of at most 0.1 turn
