"""Augmentation of whole batches on the training device (paper section 4.2).

Training: random horizontal flip, random zoom (scale up by U(1, zoom_max) about the centre, i.e.
a centre crop of the enlarged image back to the input size), normalisation with the ImageNet
mean/std, then random erasing (area fraction ``erase_area``, aspect ratio 0.3-3.3). Erased pixels
are set to 0 AFTER normalisation, i.e. to the mean colour: kornia's RandomErasing fills with a
constant, and mean-colour filling is what FastReID uses by default.

Test time: (optional) resize + normalisation, nothing random.

Why kornia and not torchvision: torchvision wheels pin an exact torch build and cannot be
installed beside the CPU torch wheel used here; kornia is pure PyTorch, works on any device and
transforms a whole batch in one call (per-sample random parameters), which is what we need when
the batch already lives on the GPU.

Randomness: kornia draws its parameters from the global torch CPU generator, so
``torch.manual_seed`` makes a run reproducible; passing ``generator=`` instead draws a seed from
that generator for every call and runs the ops under a forked, re-seeded global RNG (the caller's
global RNG state is left untouched).

Example:
    >>> augment = BatchAugment(cfg.augment, channels_last=True).to(device)
    >>> x = augment(batch.images.to(device))       # uint8 B x H x W x 3 -> float32 B x 3 x H x W
    >>> x_test = TestTransform(cfg.augment)(images)
"""

from __future__ import annotations

import torch
from torch import nn

from anet.config import AugmentCfg


class _Normalise(nn.Module):
    """uint8 NHWC -> float32 NCHW, (x / 255 - mean) / std in one multiply-add."""

    def __init__(self, cfg: AugmentCfg):
        super().__init__()
        std = torch.tensor(cfg.std, dtype=torch.float32)
        mean = torch.tensor(cfg.mean, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # B x 3 x H x W (channels_last strides)
        return torch.addcmul(self.shift, x, self.scale)


def _as_nchw_float(images: torch.Tensor) -> torch.Tensor:
    _check_batch(images)
    return images.permute(0, 3, 1, 2).float().div_(255.0)  # B x 3 x H x W in [0, 1]


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 B x H x W x 3 batch, got {images.dtype} {tuple(images.shape)}")


def _memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


class BatchAugment(nn.Module):
    """Random flip + zoom + normalise + erase of a uint8 NHWC batch -> float32 NCHW (normalised)."""

    def __init__(self, cfg: AugmentCfg, channels_last: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        import kornia.augmentation as K

        self.channels_last = channels_last
        self.generator = generator
        self.flip = K.RandomHorizontalFlip(p=cfg.flip_p) if cfg.flip_p > 0 else None
        zoom_on = cfg.zoom_p > 0 and cfg.zoom_max > 1.0
        # scale > 1 about the centre == upscale then centre crop back; no padding ever needed
        self.zoom = K.RandomAffine(degrees=0.0, scale=(1.0, cfg.zoom_max), p=cfg.zoom_p) if zoom_on else None
        self.erase = (K.RandomErasing(scale=tuple(cfg.erase_area), ratio=(0.3, 3.3), value=0.0, p=cfg.erase_p)
                      if cfg.erase_p > 0 else None)
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 B x H x W x 3 (any device) -> float32 B x 3 x H x W, normalised."""
        if self.generator is None:
            return self._augment(images)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._augment(images)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_nchw_float(images)  # B x 3 x H x W in [0, 1]
        if self.flip is not None:
            x = self.flip(x)
        if self.zoom is not None:
            x = self.zoom(x)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)  # erased pixels = 0 = the mean colour
        return _memory_format(x, self.channels_last)


class TestTransform(nn.Module):
    """Deterministic test-time transform: optional bilinear resize to ``image_size`` + normalise."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, cfg: AugmentCfg, channels_last: bool = False,
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        self.channels_last = channels_last
        self.image_size = tuple(image_size) if image_size is not None else None
        self.normalise = _Normalise(cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 B x H x W x 3 -> float32 B x 3 x h x w, normalised."""
        _check_batch(images)
        x = self.normalise(images)  # B x 3 x H x W
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False,
                                          antialias=True)
        return _memory_format(x, self.channels_last)
