"""ANet and its ablation variants (baseline, VAN, ANet, ANet (att)) as one module.

Paper -> code (AttributeNet, sections 3.1-3.2):

==========================  ========  =====================================================
Paper                       Eq.       Code
==========================  ========  =====================================================
F(I), backbone map          1         ``f_map`` = ``ANet.backbone(images)`` (ResNet-IBN-a)
f(I) = W_f GAP(F) + b_f     1         ``f_vec`` = ``ANet.f_head.fc``; BNNeck ``f_head.bnneck``
Att_i(F), SE (r = 16)       2         ``ANet.attr_branches["a_<name>"].att`` (SE)
A_i = F * Att_i(F)          2         ``a_maps[name]`` (``maps["a_map/<name>"]``)
a_i = W_a GAP(A_i) + b_a    3         ``a_vecs[name]`` = ``attr_branches["a_<name>"].head.fc``
L_att^i classifier          4         ``a_logits[name]``
G = sum A_i + theta_A(.)    5         ``g_map`` = ``ANet.joint.merge`` (theta_A: 1x1 conv, BN, ReLU)
g(I) = GAP(G)               (9)       ``g_vec`` (attribute-pattern triplet L_tri^g)
G_reid = theta_g1(theta_g2) 6         ``g_reid_map`` = ``joint.theta_g1(joint.theta_g2(g_map))``
J = F + G_reid              7         ``j_map``
j(I) = W_j GAP(J) + b_j     8         ``j_vec`` = ``ANet.j_head.fc``; BNNeck ``j_head.bnneck``
J = F * CBAM(G) + F         14        ``joint`` = JointAttModule (variant ``anet_att``)
s_f, s_a, s_j               4.2       ``ModelCfg.s_f`` / ``s_a`` / ``s_j``
L_tri^f, L_ID^f             4         ``losses.triplet_hard(f_vec)`` / ``cross_entropy_ls(f_logits)``
L_att^i                     4         ``losses.attribute_ce`` (term ``att/<name>``)
L_tri^g, L_tri^j, L_ID^j    9         ``losses.attribute_triplet(g_vec)``, terms ``tri_j``, ``id_j``
lambda_A, lambda_G, lambda  4, 9, 10  ``LossCfg.lambda_a`` / ``lambda_g`` / ``lambda_van``
AC_ID, AC_tri               11, 12    ``losses.ac_id`` / ``losses.ac_tri``
L, L'                       10, 13    ``losses.Criterion(amelioration=False / True)``
freeze "all before f"       3.2       ``model.freeze.freeze_for_amelioration``
==========================  ========  =====================================================

Variants: ``baseline`` = backbone + f head; ``van`` = + attribute branches (Fig. 1); ``anet`` = + joint
module (Fig. 2); ``anet_att`` = joint module replaced by eq. 14. ``attr_branch="fc"`` drops the SE
attention (Table 3 "fc"): a_i = FC(GAP(F)) and the joint module receives A_i = F for every branch.

Example:
    >>> model = build_model(ModelCfg(depth=18), num_ids=576, attr_classes={"color": 10, "type": 9})
    >>> out = model(torch.randn(8, 3, 128, 128))
    >>> out.j_vec.shape, out.a_logits["color"].shape
    (torch.Size([8, 512]), torch.Size([8, 10]))
    >>> model.eval(); feats = model.embed(torch.randn(8, 3, 128, 128), feature="j")  # L2-normed 8 x 512
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anet.config import ModelCfg
from anet.errors import UserError
from anet.model.backbone import ResNetIBN, build_backbone
from anet.model.fastreid_blocks import FastReIDHead
from anet.model.heads import AttributeBranch, EmbeddingHead, gap
from anet.model.joint import JointAttModule, JointModule
from anet.model.weights import load_backbone_weights


@dataclass(frozen=True)
class ANetOutput:
    """Everything the criterion and the visualisations need from one forward pass."""

    f_vec: torch.Tensor  # B x s_f, pre-BNNeck (triplet)
    f_logits: torch.Tensor  # B x num_ids
    a_vecs: dict[str, torch.Tensor]  # name -> B x s_a, pre-BNNeck
    a_logits: dict[str, torch.Tensor]  # name -> B x m_i
    g_vec: torch.Tensor | None = None  # B x c
    j_vec: torch.Tensor | None = None  # B x s_j, pre-BNNeck
    j_logits: torch.Tensor | None = None  # B x num_ids
    maps: dict[str, torch.Tensor] | None = None  # only with return_maps=True


@dataclass(frozen=True)
class _Parts:
    """Internal forward results, including the post-BNNeck vectors used for retrieval."""

    out: ANetOutput
    f_bn: torch.Tensor
    a_bns: dict[str, torch.Tensor]
    j_bn: torch.Tensor | None


class ANet(nn.Module):
    """Backbone + f head, optional attribute branches (VAN) and optional joint module (ANet).

    Build it with :func:`build_model`; ``joint`` set requires at least one attribute branch.
    ``make_head(in_channels, dim, num_ids)`` builds the f and j heads (default: :class:`EmbeddingHead`;
    ``model.head.kind=fastreid``: FastReID's EmbeddingHead, which ignores ``dim``).
    """

    def __init__(self, backbone: ResNetIBN, num_ids: int, attr_classes: dict[str, int], s_f: int,
                 s_a: int, s_j: int, attention: bool, se_reduction: int,
                 joint: JointModule | JointAttModule | None,
                 make_head: Callable[[int, int, int], nn.Module] = EmbeddingHead) -> None:
        super().__init__()
        if joint is not None and not attr_classes:
            raise UserError("model.variant anet/anet_att needs at least one attribute (data.attributes is empty)")
        c = backbone.out_channels
        self.backbone = backbone
        self.f_head = make_head(c, s_f, num_ids)
        self.attr_names = tuple(attr_classes)
        # ModuleDict keys are "a_<name>": a bare name such as "type" would clash with nn.Module.type.
        self.attr_branches = nn.ModuleDict({
            f"a_{name}": AttributeBranch(c, s_a, m, attention, se_reduction) for name, m in attr_classes.items()
        })
        self.joint = joint
        self.j_head = make_head(c, s_j, num_ids) if joint is not None else None

    @property
    def available_features(self) -> tuple[str, ...]:
        """Features :meth:`embed` can return: "f" always, "fa" with attributes, "j" with a joint module."""
        return ("f",) + (("fa",) if len(self.attr_branches) else ()) + (("j",) if self.joint is not None else ())

    def forward(self, images: torch.Tensor, return_maps: bool = False) -> ANetOutput:
        """Run the network on normalised float images (B x 3 x H x W)."""
        return self._run(images, return_maps).out

    def _run(self, images: torch.Tensor, return_maps: bool) -> _Parts:
        f_map = self.backbone(images)  # B x c x h x w
        f_vec, f_bn, f_logits = self.f_head(f_map)
        a_maps, a_vecs, a_bns, a_logits = {}, {}, {}, {}
        for name in self.attr_names:
            branch = self.attr_branches[f"a_{name}"]
            a_maps[name], a_vecs[name], a_bns[name], a_logits[name] = branch(f_map)
        maps = {"f_map": f_map} | {f"a_map/{n}": m for n, m in a_maps.items()} if return_maps else None
        g_vec = j_vec = j_bn = j_logits = None
        if self.joint is not None and self.j_head is not None:
            g_map, g_reid_map, j_map = self.joint(f_map, list(a_maps.values()))
            g_vec = gap(g_map)  # B x c
            j_vec, j_bn, j_logits = self.j_head(j_map)
            if maps is not None:
                maps |= {"g_map": g_map, "g_reid_map": g_reid_map, "j_map": j_map}
        out = ANetOutput(f_vec=f_vec, f_logits=f_logits, a_vecs=a_vecs, a_logits=a_logits, g_vec=g_vec,
                         j_vec=j_vec, j_logits=j_logits, maps=maps)
        return _Parts(out=out, f_bn=f_bn, a_bns=a_bns, j_bn=j_bn)

    def embed(self, images: torch.Tensor, feature: str = "j") -> torch.Tensor:
        """L2-normalised retrieval features (post-BNNeck, like FastReID), B x D.

        ``"f"``: BN(f); ``"fa"``: concat(BN(f), BN(a_i) for each attribute) then normalised;
        ``"j"``: BN(j). Call in eval mode (and under ``torch.inference_mode()``) for retrieval.
        """
        if feature not in self.available_features:
            raise UserError(f"eval.feature={feature!r} is not available for this model "
                            f"(available: {', '.join(self.available_features)})")
        parts = self._run(images, return_maps=False)
        match feature:
            case "f":
                vec = parts.f_bn  # B x s_f
            case "fa":
                vec = torch.cat([parts.f_bn, *parts.a_bns.values()], dim=1)  # B x (s_f + n * s_a)
            case _:
                vec = parts.j_bn  # B x s_j
        return F.normalize(vec, dim=1)


def build_model(cfg: ModelCfg, num_ids: int, attr_classes: dict[str, int],
                pretrained: str | Path | None = None) -> ANet:
    """Build the variant named by ``cfg.variant``; load backbone weights from the local file ``pretrained``.

    ``cfg.pretrained`` names where weights come from (URL, path, s3://); the caller resolves it to a
    local file first (``anet.mlops.storage.pretrained``), so building a model never touches the network.

    Example:
        >>> model = build_model(cfg.model, num_ids=576, attr_classes={"color": 10, "type": 9})
    """
    backbone = build_backbone(cfg.depth, ibn=cfg.ibn, last_stride=cfg.last_stride, non_local=cfg.non_local,
                              maxpool=cfg.maxpool)
    c = backbone.out_channels
    match cfg.variant:
        case "baseline":
            attrs, joint = {}, None
        case "van":
            attrs, joint = dict(attr_classes), None
        case "anet":
            attrs, joint = dict(attr_classes), JointModule(c)
        case "anet_att":
            attrs, joint = dict(attr_classes), JointAttModule(c, cfg.se_reduction)
    if pretrained is not None:
        load_backbone_weights(backbone, pretrained)
    return ANet(backbone, num_ids, attrs, s_f=cfg.s_f, s_a=cfg.s_a, s_j=cfg.s_j,
                attention=cfg.attr_branch == "att", se_reduction=cfg.se_reduction, joint=joint,
                make_head=_head_builder(cfg))


def _head_builder(cfg: ModelCfg) -> Callable[[int, int, int], nn.Module]:
    """The f/j head constructor ``model.head`` names (ANet's, or FastReID's with its options)."""
    h = cfg.head
    if h.kind == "anet":
        return EmbeddingHead
    return lambda c, _dim, num_ids: FastReIDHead(c, num_ids, pool=h.pool, cls=h.cls_layer, neck_feat=h.neck_feat,
                                                 embedding_dim=h.embedding_dim)
