"""Batch augmentation: shapes, dtype, range, flip, reproducibility, test transform."""

from __future__ import annotations

import torch

from anet.config import AugmentCfg
from anet.data.augment import BatchAugment, TestTransform

CFG = AugmentCfg()


def _batch(b: int = 8, h: int = 32, w: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CFG.mean).view(1, 3, 1, 1)
    std = torch.tensor(CFG.std).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std


def test_shapes_dtype_range_and_channels_last():
    x = _batch()
    y = BatchAugment(CFG, channels_last=True)(x)
    assert y.shape == (8, 3, 32, 24) and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    lo, hi = _normalise(torch.zeros(1, 1, 1, 3, dtype=torch.uint8)), _normalise(torch.full((1, 1, 1, 3), 255,
                                                                                         dtype=torch.uint8))
    assert (y >= lo.min() - 1e-5).all() and (y <= hi.max() + 1e-5).all()
    assert BatchAugment(CFG, channels_last=False)(x).is_contiguous()


def test_flip_with_p1_flips_and_nothing_else():
    cfg = CFG.model_copy(update={"flip_p": 1.0, "zoom_p": 0.0, "erase_p": 0.0})
    x = _batch()
    assert torch.allclose(BatchAugment(cfg)(x), _normalise(x).flip(-1), atol=1e-5)


def test_zoom_and_erase_change_pixels():
    x = _batch(4, 64, 64)
    zoom = CFG.model_copy(update={"flip_p": 0.0, "zoom_p": 1.0, "zoom_max": 1.5, "erase_p": 0.0})
    assert not torch.allclose(BatchAugment(zoom)(x), _normalise(x), atol=1e-3)
    erase = CFG.model_copy(update={"flip_p": 0.0, "zoom_p": 0.0, "erase_p": 1.0, "erase_area": (0.1, 0.2)})
    zero_frac = (BatchAugment(erase)(x) == 0).all(dim=1).float().mean(dim=(1, 2))  # B
    assert ((zero_frac > 0.05) & (zero_frac < 0.3)).all()


def test_reproducible_with_seed_or_generator():
    x = _batch()
    aug = BatchAugment(CFG)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    assert torch.equal(a, aug(x))
    g = torch.Generator().manual_seed(3)
    seeded = BatchAugment(CFG, generator=g)
    first = seeded(x)
    g.manual_seed(3)
    state = torch.get_rng_state()
    assert torch.equal(first, seeded(x)) and torch.equal(state, torch.get_rng_state())


def test_test_transform_deterministic_and_resizes():
    x = _batch()
    tt = TestTransform(CFG, channels_last=True)
    y = tt(x)
    assert torch.equal(y, tt(x)) and torch.allclose(y, _normalise(x), atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert TestTransform(CFG, image_size=(16, 12))(x).shape == (8, 3, 16, 12)


def test_modules_move_with_to():
    aug = BatchAugment(CFG).to(torch.device("cpu"))  # nn.Module.to must keep working (no _apply shadowing)
    tt = TestTransform(CFG).to(torch.device("cpu"))
    assert aug(_batch()).shape == tt(_batch()).shape
