"""Each FastReID building block in anet/ equals FastReID 1.4.0's own module: same weights, same inputs,
same forward and same gradients (float tolerance). FastReID is a test-only reference (``make setup``
installs it without its pins); without it these tests skip."""

from __future__ import annotations

import pytest
import torch

from anet.losses.fastreid import cross_entropy, triplet_loss
from anet.model import build_backbone, load_backbone_weights
from anet.model.fastreid_blocks import FastReIDHead, GeneralizedMeanPooling, NonLocal, cls_outputs

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
