"""ResNet-IBN-a backbone that returns the feature map F (``f_map``).

The module tree mirrors the official IBN-Net ``resnet_ibn.py`` (v1.0 release) and FastReID, so their
weight files load key-for-key: ``conv1.weight``, ``bn1.*``, ``layerX.Y.conv{1,2,3}.weight``,
``layer{1-3}.Y.bn1.IN.{weight,bias}`` + ``layer{1-3}.Y.bn1.BN.*`` (IBN-a), plain ``layer4.Y.bn1.*``,
``layerX.0.downsample.{0,1}.*``. There is no ``fc``: the last pooling and classifier are removed
(paper section 4.2).

FastReID options (``model.non_local``, ``model.maxpool``): with ``non_local=True`` FastReID's
``Non_local`` blocks follow the last blocks of each stage by its ``nl_layers_per_stage`` rule (R50:
the last 2 blocks of layer2 and the last 3 of layer3; R101: 2 and 9; R18/R34: none), and
``maxpool="ceil"`` is FastReID's stem pooling (3x3, stride 2, no padding, ceil mode) instead of
IBN-Net's (padding 1). Key map from a FastReID checkpoint: identity after dropping its ``backbone.``
prefix (``backbone.NL_2.0.theta.weight`` -> ``NL_2.0.theta.weight``; :func:`load_backbone_weights`
does it); the non-local keys are ``NL_{2,3}.<i>.{g,theta,phi}.{weight,bias}`` and
``NL_{2,3}.<i>.W.{0,1}.*`` (conv, BatchNorm), ``i`` counting the blocks of that stage in order.

Example:
    >>> net = build_backbone(depth=50, ibn=True, last_stride=1)
    >>> net(torch.zeros(2, 3, 256, 256)).shape
    torch.Size([2, 2048, 16, 16])
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from anet.model.fastreid_blocks import NonLocal

# depth -> (block kind, blocks per layer), as in torchvision / IBN-Net.
_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# depth -> non-local blocks after the last n blocks of layer1-4 (FastReID's ``nl_layers_per_stage``).
NL_LAYERS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    18: (0, 0, 0, 0), 34: (0, 0, 0, 0), 50: (0, 2, 3, 0), 101: (0, 2, 9, 0),
}


class IBN(nn.Module):
    """IBN-a normalisation: InstanceNorm on the first ``int(planes/2)`` channels, BatchNorm on the rest."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.half = int(planes * 0.5)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # keep channels_last inputs channels_last (a plain .contiguous() would switch the rest of the
        # network back to NCHW)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        x_in, x_bn = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        out_in = self.IN(x_in.contiguous(memory_format=fmt))  # B x half x h x w
        out_bn = self.BN(x_bn.contiguous(memory_format=fmt))  # B x (planes - half) x h x w
        return torch.cat((out_in, out_bn), dim=1)  # B x planes x h x w


def _norm1(planes: int, ibn: bool) -> nn.Module:
    return IBN(planes) if ibn else nn.BatchNorm2d(planes)


class BasicBlock(nn.Module):
    """Two 3x3 convs; with IBN-a, ``bn1`` is an :class:`IBN` (as in the official BasicBlock_IBN)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, ibn: bool, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm1(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 x4; with IBN-a, ``bn1`` is an :class:`IBN`."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, ibn: bool, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm1(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetIBN(nn.Module):
    """ResNet(-IBN-a) trunk without pooling/fc; ``forward`` returns F (``f_map``, B x c x h x w).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        ibn: IBN-a in ``bn1`` of every block of layer1-3 (layer4 stays plain BN).
        last_stride: stride of layer4 (1 keeps a 16x16 map for 256x256 inputs).
        non_local: non-local blocks per stage after that stage's last blocks (all zero: none).
        maxpool: "pad" (IBN-Net: padding 1) or "ceil" (FastReID: no padding, ceil mode).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 ibn: bool = True, last_stride: int = 1, non_local: tuple[int, int, int, int] = (0, 0, 0, 0),
                 maxpool: Literal["pad", "ceil"] = "pad") -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True) if maxpool == "ceil"
                        else nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.layer1 = self._make_layer(block, 64, layers[0], 1, ibn)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, ibn)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, ibn)
        self.layer4 = self._make_layer(block, 512, layers[3], last_stride, False)
        self.out_channels = 512 * block.expansion  # c in the paper
        self._init_weights()
        # after _init_weights, as in FastReID: W's BatchNorm stays zero so each block starts as identity
        self.nl_after: dict[int, tuple[int, ...]] = {}
        for stage, (n_blocks, n_nl) in enumerate(zip(layers, non_local, strict=True), start=1):
            if n_nl:
                channels = 64 * 2 ** (stage - 1) * block.expansion
                self.add_module(f"NL_{stage}", nn.ModuleList(NonLocal(channels) for _ in range(n_nl)))
                self.nl_after[stage] = tuple(sorted(n_blocks - 1 - i for i in range(n_nl)))

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int, ibn: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, ibn, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # B x 64 x H/4 x W/4
        if not self.nl_after:
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.layer4(x)  # f_map: B x c x H/16 x W/16 (last_stride 1) or H/32 x W/32
        for stage in range(1, 5):
            x = self._stage(stage, x)
        return x  # f_map, as above

    def _stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """One layer, each non-local block right after the block it follows (FastReID's order)."""
        after = self.nl_after.get(stage, ())
        nl_blocks = getattr(self, f"NL_{stage}") if after else ()
        for i, block in enumerate(getattr(self, f"layer{stage}")):
            x = block(x)
            if i in after:
                x = nl_blocks[after.index(i)](x)
        return x


def build_backbone(depth: int = 50, ibn: bool = True, last_stride: int = 1, non_local: bool = False,
                   maxpool: Literal["pad", "ceil"] = "pad") -> ResNetIBN:
    """Build a ResNet(-IBN-a) of depth 18/34 (BasicBlock) or 50/101 (Bottleneck), randomly initialised.

    ``non_local=True`` adds FastReID's non-local blocks (:data:`NL_LAYERS_PER_STAGE`); ``maxpool="ceil"``
    is FastReID's stem pooling.

    Example:
        >>> build_backbone(18, ibn=True).out_channels
        512
    """
    if depth not in _DEPTHS:
        raise ValueError(f"model.depth must be one of {sorted(_DEPTHS)}, got {depth}")
    kind, layers = _DEPTHS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    nl = NL_LAYERS_PER_STAGE[depth] if non_local else (0, 0, 0, 0)
    return ResNetIBN(block, layers, ibn=ibn, last_stride=last_stride, non_local=nl, maxpool=maxpool)
