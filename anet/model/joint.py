"""Joint Module (JM, eqs. 5-7) and its attention ablation ANet (att) (eq. 14, CBAM).

Both take the attribute maps A_i and the backbone map F and return ``(g_map, g_reid_map, j_map)``.
"""

from __future__ import annotations

import torch
from torch import nn

from anet.model.heads import init_kaiming


class ConvBNReLU(nn.Sequential):
    """theta(x) = ReLU(BN(W x)); kernel 1 for theta_A, 3 for theta_g1 / theta_g2."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )


class AttributeMerge(nn.Module):
    """G = sum_i A_i + theta_A(sum_i A_i) (eq. 5)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta_a = ConvBNReLU(channels, 1)

    def forward(self, a_maps: list[torch.Tensor]) -> torch.Tensor:
        summed = torch.stack(a_maps, dim=0).sum(dim=0)  # B x c x h x w
        return summed + self.theta_a(summed)  # g_map: B x c x h x w


class JointModule(nn.Module):
    """G (eq. 5) -> G_reid = theta_g1(theta_g2(G)) (eq. 6) -> J = F + G_reid (eq. 7)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.merge = AttributeMerge(channels)
        self.theta_g2 = ConvBNReLU(channels, 3)
        self.theta_g1 = ConvBNReLU(channels, 3)
        init_kaiming(self)

    def forward(self, f_map: torch.Tensor, a_maps: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g_map = self.merge(a_maps)  # B x c x h x w
        g_reid_map = self.theta_g1(self.theta_g2(g_map))  # B x c x h x w
        return g_map, g_reid_map, f_map + g_reid_map  # j_map: B x c x h x w


class CBAM(nn.Module):
    """CBAM attention mask (Woo et al. 2018): channel mask M_c, then spatial mask M_s on G * M_c.

    Returns the combined mask M_c(G) * M_s(G * M_c(G)) in [0, 1] (B x c x h x w), which eq. 14
    multiplies onto F.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, g_map: torch.Tensor) -> torch.Tensor:
        avg, mx = g_map.mean(dim=(2, 3)), g_map.amax(dim=(2, 3))  # B x c each
        m_c = torch.sigmoid(self.mlp(avg) + self.mlp(mx))[:, :, None, None]  # B x c x 1 x 1
        refined = g_map * m_c  # B x c x h x w
        pooled = torch.cat((refined.mean(dim=1, keepdim=True), refined.amax(dim=1, keepdim=True)), dim=1)
        m_s = torch.sigmoid(self.spatial(pooled))  # B x 1 x h x w
        return m_c * m_s  # B x c x h x w


class JointAttModule(nn.Module):
    """ANet (att): G as eq. 5, then J = F * CBAM(G) + F (eq. 14).

    There is no G_reid here; the returned ``g_reid_map`` is the term added to F, F * CBAM(G), which
    takes G_reid's place in eq. 7 (so activation-map plots still have something comparable to show).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.merge = AttributeMerge(channels)
        self.cbam = CBAM(channels, reduction)
        init_kaiming(self)

    def forward(self, f_map: torch.Tensor, a_maps: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g_map = self.merge(a_maps)  # B x c x h x w
        guided = f_map * self.cbam(g_map)  # B x c x h x w
        return g_map, guided, f_map + guided  # j_map: B x c x h x w
