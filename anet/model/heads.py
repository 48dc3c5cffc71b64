"""Heads on a feature map: the embedding head (f, j; eqs. 1, 8) and attribute branches (eqs. 2-3).

Every head is GAP -> FC (the paper's W, b) -> BNNeck (BatchNorm1d, bias frozen) -> Linear classifier
without bias, as in Bag-of-Tricks / FastReID: the triplet loss sees the pre-BNNeck vector, the
cross-entropy sees the logits computed from the post-BNNeck vector, and retrieval uses the post-BNNeck
vector.
"""

from __future__ import annotations

import torch
from torch import nn


def init_kaiming(module: nn.Module) -> None:
    """Bag-of-Tricks ``weights_init_kaiming``: Linear fan_out, Conv fan_in, norm weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def gap(x: torch.Tensor) -> torch.Tensor:
    """Spatial global average pooling: B x c x h x w -> B x c."""
    return x.mean(dim=(2, 3))


class EmbeddingHead(nn.Module):
    """GAP -> FC to ``dim`` (eq. 1 / 3 / 8) -> BNNeck -> classifier.

    ``forward`` returns ``(vec, bn_vec, logits)``: the pre-BNNeck vector (triplet loss), the post-BNNeck
    vector (retrieval) and the class logits (cross-entropy).
    """

    def __init__(self, in_channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, dim)
        self.bnneck = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        init_kaiming(self)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift, as in Bag-of-Tricks
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vec = self.fc(gap(feature_map))  # B x dim
        bn_vec = self.bnneck(vec)  # B x dim
        logits = self.classifier(bn_vec)  # B x num_classes
        return vec, bn_vec, logits


class SEAttention(nn.Module):
    """Squeeze-and-excitation channel attention Att_i(F) in R^c (eq. 2, reduction ``reduction``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        init_kaiming(self)

    def forward(self, f_map: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(gap(f_map)))))  # B x c
        return weights[:, :, None, None]  # B x c x 1 x 1


class AttributeBranch(nn.Module):
    """One attribute: A_i = F * Att_i(F) (eq. 2), a_i = FC(GAP(A_i)) (eq. 3), BNNeck, classifier.

    With ``attention=False`` (the "fc" branch of Table 3) there is no attention: A_i = F, so
    a_i = FC(GAP(F)), and the joint module then receives F for this branch.
    """

    def __init__(self, channels: int, s_a: int, num_classes: int, attention: bool, reduction: int) -> None:
        super().__init__()
        self.att = SEAttention(channels, reduction) if attention else None
        self.head = EmbeddingHead(channels, s_a, num_classes)

    def forward(self, f_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(a_map, a_vec, a_bn_vec, a_logits)``."""
        a_map = f_map if self.att is None else f_map * self.att(f_map)  # B x c x h x w
        a_vec, a_bn_vec, a_logits = self.head(a_map)
        return a_map, a_vec, a_bn_vec, a_logits
