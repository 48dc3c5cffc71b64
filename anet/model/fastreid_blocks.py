"""FastReID's model blocks, written to be equal to FastReID 1.4.0 on the same weights (tests/test_fastreid_blocks.py).

* :class:`NonLocal` = ``fastreid.layers.Non_local`` (same keys ``g``, ``theta``, ``phi``, ``W.{0,1}``).
  FastReID computes its inner width as ``reduc_ratio // reduc_ratio``, i.e. ONE channel whatever the
  input width; that is kept, because the recipe's numbers (and its checkpoints) come from it.
* :class:`GeneralizedMeanPooling` = ``GeneralizedMeanPooling`` (fixed p) / ``GeneralizedMeanPoolingP``
  (``learnable=True``: p is a parameter, 3 at start).
* :class:`FastReIDHead` = ``fastreid.modeling.heads.EmbeddingHead``: pooling -> optional 1x1 conv
  (``EMBEDDING_DIM``) -> BNNeck (bias frozen) -> classifier weight; ``cls="circle"`` takes cosine logits
  which :func:`circle_softmax` (= ``any_softmax.CircleSoftmax``) turns into the CE input given the labels.
  Key names follow FastReID (``pool_layer.p``, ``bottleneck.*``, ``weight``), so its head state dict loads.

Example:
    >>> head = FastReIDHead(2048, num_classes=576, pool="gemp", cls="circle", neck_feat="after")
    >>> tri_vec, bn_vec, cos = head(f_map)                 # B x 2048 each, cos: B x 576
    >>> ce_input = circle_softmax(cos, ids, scale=64.0, margin=0.35)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Pool = Literal["avg", "gem", "gemp"]
ClsLayer = Literal["linear", "circle"]
NeckFeat = Literal["before", "after"]


class NonLocal(nn.Module):
    """Embedded-Gaussian-free non-local block (dot product / N) with a zero-initialised residual branch."""

    def __init__(self, in_channels: int, reduc_ratio: int = 2) -> None:
        super().__init__()
        self.inter_channels = reduc_ratio // reduc_ratio  # = 1, FastReID's arithmetic (see module doc)
        self.g = nn.Conv2d(in_channels, self.inter_channels, 1)
        self.W = nn.Sequential(nn.Conv2d(self.inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)
        self.theta = nn.Conv2d(in_channels, self.inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, self.inter_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g_x = self.g(x).reshape(b, self.inter_channels, -1).transpose(1, 2)  # B x N x i
        theta_x = self.theta(x).reshape(b, self.inter_channels, -1).transpose(1, 2)  # B x N x i
        phi_x = self.phi(x).reshape(b, self.inter_channels, -1)  # B x i x N
        f = theta_x @ phi_x  # B x N x N
        y = (f / f.shape[-1]) @ g_x  # B x N x i
        y = y.transpose(1, 2).reshape(b, self.inter_channels, h, w)  # B x i x h x w
        return self.W(y) + x  # B x c x h x w


class GeneralizedMeanPooling(nn.Module):
    """GeM: (mean over h, w of clamp(x, eps)^p)^(1/p) -> B x c; ``learnable`` makes p a parameter."""

    def __init__(self, norm: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
        super().__init__()
        if norm <= 0:
            raise ValueError(f"GeM norm must be > 0, got {norm}")
        self.eps = eps
        if learnable:
            self.p = nn.Parameter(torch.ones(1) * norm)
        else:
            self.p = float(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3), keepdim=True)  # B x c x 1 x 1
        return pooled.pow(1.0 / self.p).flatten(1)  # B x c


def build_pool(pool: Pool) -> nn.Module | None:
    """``avg`` -> None (plain GAP), ``gem`` -> fixed p = 3, ``gemp`` -> learnable p starting at 3."""
    match pool:
        case "avg":
            return None
        case "gem":
            return GeneralizedMeanPooling(3.0)
        case "gemp":
            return GeneralizedMeanPooling(3.0, learnable=True)


def circle_softmax(cos: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """CircleSoftmax logits (Sun et al. 2020, FastReID's form): B x K cosine -> B x K scaled logits.

    alpha_p = [1 + m - s_p]_+ and alpha_n = [s_n + m]_+ (no gradient through the alphas), optimum
    delta_p = 1 - m, delta_n = m; rows labelled -1 get the negative form everywhere.
    """
    alpha_p = (1.0 + margin - cos.detach()).clamp(min=0.0)  # B x K
    alpha_n = (cos.detach() + margin).clamp(min=0.0)  # B x K
    logits_p = alpha_p * (cos - (1.0 - margin))
    logits_n = alpha_n * (cos - margin)
    is_target = F.one_hot(targets.clamp(min=0), cos.shape[1]).bool() & (targets >= 0)[:, None]  # B x K
    return torch.where(is_target, logits_p, logits_n) * scale


class FastReIDHead(nn.Module):
    """FastReID's EmbeddingHead: pool -> [1x1 conv to ``embedding_dim``] -> BNNeck -> classifier.

    ``forward`` returns ``(tri_vec, bn_vec, logits)`` like :class:`anet.model.heads.EmbeddingHead`:
    ``tri_vec`` is the triplet input (``neck_feat="after"``: the post-BNNeck vector, FastReID SBS;
    ``"before"``: the pooled vector), ``bn_vec`` the retrieval vector, ``logits`` the cosine to each
    class centre (``cls="circle"``) or the plain linear logits (``cls="linear"``); the criterion makes
    the CE input from them with :func:`cls_outputs`.
    """

    def __init__(self, in_channels: int, num_classes: int, pool: Pool = "avg", cls: ClsLayer = "linear",
                 neck_feat: NeckFeat = "before", embedding_dim: int = 0) -> None:
        super().__init__()
        self.pool_layer = build_pool(pool)
        self.cls, self.neck_feat = cls, neck_feat
        dim = embedding_dim if embedding_dim > 0 else in_channels
        neck: list[nn.Module] = [nn.Conv2d(in_channels, dim, 1, bias=False)] if embedding_dim > 0 else []
        neck.append(nn.BatchNorm2d(dim))
        self.bottleneck = nn.Sequential(*neck)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        for m in self.bottleneck:  # FastReID weights_init_kaiming on the neck
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.bottleneck[-1].bias.requires_grad_(False)  # BNNeck: bias frozen (get_norm(bias_freeze=True))
        nn.init.normal_(self.weight, std=0.01)
        self.out_dim = dim

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = feature_map.mean(dim=(2, 3)) if self.pool_layer is None else self.pool_layer(feature_map)  # B x c
        bn_vec = self.bottleneck(pooled[:, :, None, None]).flatten(1)  # B x dim
        if self.cls == "circle":
            logits = F.linear(F.normalize(bn_vec), F.normalize(self.weight))  # B x K cosine
        else:
            logits = F.linear(bn_vec, self.weight)  # B x K
        tri_vec = bn_vec if self.neck_feat == "after" else pooled
        return tri_vec, bn_vec, logits


def cls_outputs(logits: torch.Tensor, targets: torch.Tensor, cls: ClsLayer, scale: float, margin: float
                ) -> torch.Tensor:
    """The CE input FastReID computes from the head's logits: CircleSoftmax, or ``scale * logits``."""
    return circle_softmax(logits, targets, scale, margin) if cls == "circle" else logits * scale
