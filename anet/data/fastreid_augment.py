"""FastReID's training augmentation (``fastreid/data/transforms/build.py``) for uint8 batches.

In FastReID's order: AutoAugment (its "original" ImageNet policy, applied to an image with probability
``autoaug_p``; the same ops through the same PIL calls, fill (128, 128, 128), bilinear or bicubic drawn per
op) -> padding by ``pad`` px with black + random crop back to the input size -> horizontal flip ->
colour jitter with probability ``cj_p`` (torchvision's ColorJitter formulas on tensors, random op order)
-> normalise -> random erasing (torchvision's RandomErasing: area U(0.02, 0.33), log-uniform aspect
ratio in (0.3, 3.3), 10 tries, filled with the mean colour, i.e. 0 after normalisation, FastReID's
REA.VALUE).

Differences that do not change the distributions: FastReID resizes after AutoAugment; our batches
are already at the training size when AutoAugment runs. Randomness comes from one torch generator
(FastReID mixes Python's ``random`` and torch's), so draws differ but their distribution does not.

Example:
    >>> augment = FastReIDAugment(FastReIDAugmentSettings(autoaug_p=0.1), mean, std)
    >>> x = augment(batch.images)        # uint8 B x H x W x 3 -> float32 B x 3 x H x W, normalised
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import nn

# AutoAugment's ImageNet policy (Cubuk et al. 2018) as FastReID's auto_augment_policy_original lists it:
# 25 sub-policies of two (op, probability, magnitude 0-10).
AA_POLICY: tuple[tuple[tuple[str, float, int], ...], ...] = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)), (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)), (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)), (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)), (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)
AA_FILL = (128, 128, 128)
RESAMPLE = (Image.BILINEAR, Image.BICUBIC)


def level_args(name: str, magnitude: float, negate: bool) -> tuple[float | int, ...]:
    """Magnitude 0-10 -> the op's argument (FastReID's LEVEL_TO_ARG for the ops of :data:`AA_POLICY`)."""
    sign = -1.0 if negate else 1.0
    match name:
        case "Rotate":
            return (sign * magnitude / 10.0 * 30.0,)
        case "ShearX":
            return (sign * magnitude / 10.0 * 0.3,)
        case "PosterizeOriginal":
            return (int(magnitude / 10.0 * 4) + 4,)
        case "Solarize":
            return (int(magnitude / 10.0 * 256),)
        case "Color" | "Contrast" | "Sharpness":
            return (magnitude / 10.0 * 1.8 + 0.1,)
        case _:
            return ()


def apply_op(img: Image.Image, name: str, args: tuple[float | int, ...], resample: int) -> Image.Image:
    """One AutoAugment op on a PIL image, through the PIL calls FastReID makes."""
    match name:
        case "Rotate":
            return img.rotate(args[0], resample=resample, fillcolor=AA_FILL)
        case "ShearX":
            return img.transform(img.size, Image.AFFINE, (1, args[0], 0, 0, 1, 0), resample=resample,
                                 fillcolor=AA_FILL)
        case "PosterizeOriginal":
            return img if args[0] >= 8 else ImageOps.posterize(img, int(args[0]))
        case "Solarize":
            return ImageOps.solarize(img, args[0])
        case "AutoContrast":
            return ImageOps.autocontrast(img)
        case "Equalize":
            return ImageOps.equalize(img)
        case "Invert":
            return ImageOps.invert(img)
        case "Color":
            return ImageEnhance.Color(img).enhance(args[0])
        case "Contrast":
            return ImageEnhance.Contrast(img).enhance(args[0])
        case "Sharpness":
            return ImageEnhance.Sharpness(img).enhance(args[0])
    raise ValueError(f"unknown AutoAugment op {name!r}")


def sample_autoaugment(gen: torch.Generator | None) -> list[tuple[str, tuple[float | int, ...], int]]:
    """Draw what AutoAugment does to one image: a uniform sub-policy, each op kept with its probability."""
    sub = AA_POLICY[int(torch.randint(len(AA_POLICY), (1,), generator=gen))]
    plan = []
    for name, prob, magnitude in sub:
        u, neg, res = torch.rand(2, generator=gen).tolist() + [int(torch.randint(2, (1,), generator=gen))]
        if prob >= 1.0 or u <= prob:  # FastReID skips when random() > prob
            plan.append((name, level_args(name, magnitude, neg > 0.5), RESAMPLE[res]))
    return plan


@dataclass(frozen=True)
class FastReIDAugmentSettings:
    """FastReID's INPUT keys: AUTOAUG.PROB, PADDING.SIZE, FLIP.PROB, CJ.*, REA.PROB (0 = off)."""

    autoaug_p: float = 0.0
    pad: int = 10
    flip_p: float = 0.5
    cj_p: float = 0.0
    cj_brightness: float = 0.15
    cj_contrast: float = 0.15
    cj_saturation: float = 0.1
    cj_hue: float = 0.1
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)


def erase_box(h: int, w: int, area: tuple[float, float], ratio: tuple[float, float],
              gen: torch.Generator | None) -> tuple[int, int, int, int] | None:
    """torchvision RandomErasing.get_params: (top, left, height, width), or None after 10 misses."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u_area, u_ratio = torch.rand(2, generator=gen).tolist()
        target = h * w * (area[0] + (area[1] - area[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if eh < h and ew < w:
            top = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
            return top, left, eh, ew
    return None


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]  # 1 x H x W


def _hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    import kornia.color as kc  # lazy: kornia costs an import only when colour jitter is on

    hsv = kc.rgb_to_hsv(x[None])  # 1 x 3 x H x W, hue in radians
    hsv[:, 0] = torch.remainder(hsv[:, 0] + shift * 2 * math.pi, 2 * math.pi)
    return kc.hsv_to_rgb(hsv)[0].clamp(0, 1)


def _factor(v: float, u: float) -> float:
    """U(max(0, 1 - v), 1 + v) from a uniform ``u`` in [0, 1) (torchvision's brightness/contrast/saturation)."""
    lo = max(0.0, 1.0 - v)
    return lo + (1.0 + v - lo) * u


def color_jitter(x: torch.Tensor, s: FastReIDAugmentSettings, gen: torch.Generator | None) -> torch.Tensor:
    """torchvision ColorJitter on one 3 x H x W image in [0, 1]: four factors, applied in a random order."""
    u = torch.rand(4, generator=gen).tolist()
    b, c, sat = (_factor(v, ui) for v, ui in zip((s.cj_brightness, s.cj_contrast, s.cj_saturation), u, strict=False))
    hue = -s.cj_hue + 2 * s.cj_hue * u[3]  # U(-hue, hue), a fraction of the hue circle
    for op in torch.randperm(4, generator=gen).tolist():
        if op == 0 and s.cj_brightness > 0:
            x = (x * b).clamp(0, 1)
        elif op == 1 and s.cj_contrast > 0:
            x = (c * x + (1 - c) * _gray(x).mean()).clamp(0, 1)
        elif op == 2 and s.cj_saturation > 0:
            x = (sat * x + (1 - sat) * _gray(x)).clamp(0, 1)
        elif op == 3 and s.cj_hue > 0:
            x = _hue(x, hue)
    return x


class FastReIDAugment(nn.Module):
    """uint8 B x H x W x 3 -> float32 B x 3 x H x W: FastReID's training transforms (module doc)."""

    def __init__(self, s: FastReIDAugmentSettings, mean: tuple[float, float, float],
                 std: tuple[float, float, float], generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.s, self.generator = s, generator
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s, gen = self.s, self.generator
        if s.autoaug_p > 0:
            images = self._autoaugment(images)
        x = images.permute(0, 3, 1, 2).float().div(255.0)  # B x 3 x H x W in [0, 1]
        if s.pad > 0:
            x = self._pad_crop(x)
        flip = torch.rand(len(x), generator=gen) < s.flip_p  # B
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        if s.cj_p > 0:
            jitter = (torch.rand(len(x), generator=gen) < s.cj_p).tolist()
            x = torch.stack([color_jitter(xi, s, gen) if j else xi for xi, j in zip(x, jitter, strict=True)])
        x = (x - self.mean) / self.std
        if s.erase_p > 0:
            x = self._erase(x)
        return x.contiguous()

    def _autoaugment(self, images: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(len(images), generator=self.generator) < self.s.autoaug_p).nonzero().flatten().tolist()
        if not chosen:
            return images
        images = images.clone()
        for i in chosen:
            img = Image.fromarray(images[i].cpu().numpy())
            for name, args, resample in sample_autoaugment(self.generator):
                img = apply_op(img, name, args, resample)
            images[i] = torch.from_numpy(np.asarray(img).copy()).to(images.device)
        return images

    def _pad_crop(self, x: torch.Tensor) -> torch.Tensor:
        """T.Pad(pad) with black then T.RandomCrop(H, W): a uniform window of the padded image."""
        p, (h, w) = self.s.pad, x.shape[-2:]
        padded = nn.functional.pad(x, (p, p, p, p), value=0.0)  # B x 3 x (H + 2p) x (W + 2p)
        offsets = torch.randint(0, 2 * p + 1, (len(x), 2), generator=self.generator).tolist()
        return torch.stack([padded[i, :, top:top + h, left:left + w] for i, (top, left) in enumerate(offsets)])

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        h, w = x.shape[-2:]
        for i in (torch.rand(len(x), generator=self.generator) < self.s.erase_p).nonzero().flatten().tolist():
            box = erase_box(h, w, self.s.erase_area, self.s.erase_ratio, self.generator)
            if box is not None:
                top, left, eh, ew = box
                x[i, :, top:top + eh, left:left + ew] = 0.0  # the mean colour, after normalisation
        return x
