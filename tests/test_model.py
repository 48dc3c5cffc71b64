"""ANet variants: shapes, embeddings, gradients under L and L', the stage-two freezing rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anet.config import LossCfg, ModelCfg
from anet.errors import UserError
from anet.losses import Criterion
from anet.model import ANet, build_model, freeze_for_amelioration, set_train_mode

pytestmark = pytest.mark.usefixtures("one_thread")

ATTRS = {"color": 5, "type": 3}
IDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
SIZE = 32  # 2 x 2 feature maps: enough to exercise every layer, cheap on a 2-core CPU
BATCH_ATTRS = {"color": torch.tensor([0, 0, 1, 1, 4, 4, 2, 2]), "type": torch.tensor([0, 0, 1, 1, 2, 2, 1, 1])}


def _model(variant: str, depth: int = 18, **kw) -> ANet:
    torch.manual_seed(0)
    cfg = ModelCfg(variant=variant, depth=depth, s_f=32, s_a=16, s_j=24, **kw)
    return build_model(cfg, num_ids=4, attr_classes=ATTRS)


@pytest.mark.parametrize(
    ("variant", "depth", "size"),
    [("baseline", 18, 64), ("van", 18, 64), ("anet", 18, 64), ("anet_att", 18, 64),
     ("anet", 34, 32), ("anet", 50, 32), ("baseline", 101, 32)],
)
@torch.no_grad()
def test_output_shapes(variant: str, depth: int, size: int) -> None:
    model = _model(variant, depth)
    out = model(torch.randn(2, 3, size, size), return_maps=True)  # train mode: classifiers run
    c, side = model.backbone.out_channels, size // 16
    assert out.f_vec.shape == (2, 32) and out.f_logits.shape == (2, 4)
    assert out.maps["f_map"].shape == (2, c, side, side)
    with_attrs, with_joint = variant != "baseline", variant.startswith("anet")
    assert set(out.a_vecs) == (set(ATTRS) if with_attrs else set())
    for name, m in ATTRS.items() if with_attrs else ():
        assert out.a_vecs[name].shape == (2, 16) and out.a_logits[name].shape == (2, m)
        assert out.maps[f"a_map/{name}"].shape == (2, c, side, side)
    if with_joint:
        assert out.g_vec.shape == (2, c) and out.j_vec.shape == (2, 24) and out.j_logits.shape == (2, 4)
        for key in ("g_map", "g_reid_map", "j_map"):
            assert out.maps[key].shape == (2, c, side, side)
    else:
        assert out.g_vec is None and out.j_vec is None and out.j_logits is None
    expected = ("f",) + (("fa",) if with_attrs else ()) + (("j",) if with_joint else ())
    assert model.available_features == expected
    assert model.eval()(torch.randn(1, 3, size, size)).maps is None


def test_embed_is_normalised_post_bnneck() -> None:
    model = _model("anet").eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f_map = model.backbone(images)
        f_bn = model.f_head.bnneck(model.f_head.fc(f_map.mean((2, 3))))
        a_bns = [model.attr_branches[f"a_{n}"](f_map)[2] for n in ATTRS]
        fa = model.embed(images, "fa")
        torch.testing.assert_close(model.embed(images, "f"), F.normalize(f_bn, dim=1))
        torch.testing.assert_close(fa, F.normalize(torch.cat([f_bn, *a_bns], 1), dim=1))
        assert fa.shape == (3, 32 + 2 * 16)
        assert torch.allclose(model.embed(images, "j").norm(dim=1), torch.ones(3))
    with pytest.raises(UserError, match="eval.feature"):
        _model("baseline").embed(images, "j")


def test_fc_attribute_branch_passes_f_through() -> None:
    model = _model("anet", attr_branch="fc")
    out = model(torch.randn(2, 3, 64, 64), return_maps=True)
    assert all(model.attr_branches[f"a_{n}"].att is None for n in ATTRS)
    assert torch.equal(out.maps["a_map/color"], out.maps["f_map"])


def _grads_ok(model: ANet, terms: dict[str, torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"zero gradient: {name}"
        else:
            assert p.grad is None, name


@pytest.mark.parametrize(("variant", "branch"), [("baseline", "att"), ("van", "att"), ("van", "fc"),
                                                 ("anet", "att"), ("anet_att", "att"), ("anet", "fc")])
def test_every_trainable_parameter_gets_a_gradient_under_l(variant: str, branch: str) -> None:
    model = _model(variant, attr_branch=branch).train()
    out = model(torch.randn(8, 3, SIZE, SIZE))
    _grads_ok(model, Criterion(LossCfg())(out, IDS, BATCH_ATTRS))


@pytest.mark.parametrize("variant", ["anet", "anet_att"])
def test_stage_two_gradients_and_frozen_reference(variant: str) -> None:
    model = _model(variant)
    frozen = freeze_for_amelioration(model)
    assert set(frozen) == {n for n, _ in model.named_parameters() if n.startswith(("backbone.", "f_head."))}
    set_train_mode(model)
    assert not model.backbone.bn1.training and not model.f_head.bnneck.training
    assert model.j_head.bnneck.training and model.joint.merge.theta_a[1].training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4, amsgrad=True)
    out = model(torch.randn(8, 3, SIZE, SIZE))
    terms = Criterion(LossCfg(), amelioration=True)(out, IDS, BATCH_ATTRS)
    assert {"ac_id", "ac_tri"} <= set(terms) and "tri_f" not in terms and "id_f" not in terms
    _grads_ok(model, terms)
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():  # parameters AND running stats / counters
        if key.startswith(("backbone.", "f_head.")):
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["j_head.fc.weight"], before["j_head.fc.weight"])
    assert not torch.equal(after["attr_branches.a_color.head.fc.weight"], before["attr_branches.a_color.head.fc.weight"])
    assert not torch.equal(after["j_head.bnneck.running_mean"], before["j_head.bnneck.running_mean"])


def test_missing_attributes_train_id_losses_but_not_attribute_logits() -> None:
    model = _model("anet").train()
    out = model(torch.randn(8, 3, SIZE, SIZE))
    attrs = {"color": torch.tensor([0, -1, 1, 1, -1, 4, 2, 2]), "type": torch.tensor([0, 0, 1, -1, 2, 2, 1, 1])}
    terms = Criterion(LossCfg())(out, IDS, attrs)
    att_loss = terms["att/color"] + terms["att/type"]
    grad_color, grad_type = torch.autograd.grad(att_loss, [out.a_logits["color"], out.a_logits["type"]],
                                                retain_graph=True)
    assert torch.count_nonzero(grad_color[[1, 4]]) == 0 and torch.count_nonzero(grad_type[3]) == 0
    assert torch.count_nonzero(grad_color[[0, 2, 3]]) > 0
    (grad_g,) = torch.autograd.grad(terms["tri_g"], [out.g_vec], retain_graph=True)
    assert torch.count_nonzero(grad_g[[1, 3, 4]]) == 0
    id_loss = terms["id_f"] + terms["id_j"] + terms["tri_f"] + terms["tri_j"]
    g_f, g_j = torch.autograd.grad(id_loss, [out.f_logits, out.j_logits], retain_graph=True)
    assert all(torch.count_nonzero(g[i]) > 0 for g in (g_f, g_j) for i in range(8))
    none = {n: torch.full((8,), -1) for n in ATTRS}
    empty = Criterion(LossCfg())(out, IDS, none)
    assert empty["att/color"].item() == 0.0 and empty["tri_g"].item() == 0.0


def test_joint_variants_need_attributes() -> None:
    with pytest.raises(UserError, match="data.attributes"):
        build_model(ModelCfg(variant="anet", depth=18), num_ids=4, attr_classes={})
