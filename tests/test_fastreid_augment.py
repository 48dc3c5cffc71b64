"""FastReID's augmentations in anet/data/fastreid_augment.py: AutoAugment's policy and ops equal to FastReID
1.4.0's (its autoaugment.py loaded from its file: the package needs torchvision), its op frequencies, and the
distributions of padding + crop, random erasing and colour jitter. Skips without FastReID."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest
import torch

from anet.data.fastreid_augment import (
    AA_FILL,
    AA_POLICY,
    RESAMPLE,
    FastReIDAugment,
    FastReIDAugmentSettings,
    apply_op,
    color_jitter,
    level_args,
    sample_autoaugment,
)

fastreid = pytest.importorskip("fastreid.layers", reason="FastReID 1.4.0 (test-only reference) is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fr_autoaugment():
    """FastReID's autoaugment.py, loaded from its file (PIL + numpy only; its package needs torchvision)."""
    import importlib.util
    from pathlib import Path

    import fastreid as fr

    spec = importlib.util.spec_from_file_location(
        "fastreid_autoaugment", Path(fr.__file__).parent / "data" / "transforms" / "autoaugment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_autoaugment_policy_equals_fastreid(fr_autoaugment) -> None:
    theirs = fr_autoaugment.AutoAugment().policy  # what build_transforms wraps in RandomApply(p=AUTOAUG.PROB)
    assert len(theirs) == len(AA_POLICY) == 25
    for ours_sub, their_sub in zip(AA_POLICY, theirs, strict=True):
        for (name, prob, magnitude), op in zip(ours_sub, their_sub, strict=True):
            assert op.aug_fn is fr_autoaugment.NAME_TO_OP[name] and op.level_fn is fr_autoaugment.LEVEL_TO_ARG[name]
            assert (op.prob, op.magnitude) == (prob, magnitude)
            assert op.kwargs["fillcolor"] == AA_FILL and tuple(op.kwargs["resample"]) == RESAMPLE
            assert op.magnitude_std == 0


def test_autoaugment_ops_equal_fastreid(fr_autoaugment, monkeypatch) -> None:
    from PIL import Image

    gen = np.random.default_rng(0)
    img = Image.fromarray((gen.random((20, 24, 3)) * 255).astype(np.uint8) // 2 + 40)
    ops = {(name, magnitude) for sub in AA_POLICY for name, _, magnitude in sub}
    for (name, magnitude), negate, resample in itertools.product(sorted(ops), (False, True), RESAMPLE):
        level_fn = fr_autoaugment.LEVEL_TO_ARG[name]
        monkeypatch.setattr(fr_autoaugment.random, "random", lambda negate=negate: 0.9 if negate else 0.1)
        their_args = level_fn(magnitude, fr_autoaugment._HPARAMS_DEFAULT) if level_fn else ()
        monkeypatch.undo()
        assert level_args(name, magnitude, negate) == pytest.approx(their_args), name
        theirs = fr_autoaugment.NAME_TO_OP[name](img, *their_args, fillcolor=AA_FILL, resample=resample)
        ours = apply_op(img, name, level_args(name, magnitude, negate), resample)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), (name, magnitude, negate, resample)


def test_autoaugment_op_distribution_matches_fastreid(fr_autoaugment) -> None:
    import random

    from PIL import Image

    n = 3000
    theirs: collections.Counter = collections.Counter()
    policy = fr_autoaugment.AutoAugment()
    for sub in policy.policy:
        for op in sub:
            name = next(k for k, v in fr_autoaugment.NAME_TO_OP.items() if v is op.aug_fn and
                        fr_autoaugment.LEVEL_TO_ARG[k] is op.level_fn)
            op.aug_fn = lambda img, *a, _name=name, **k: theirs.update([_name]) or img
    random.seed(0)
    img = Image.new("RGB", (4, 4))
    for _ in range(n):
        policy(img)
    gen = torch.Generator().manual_seed(0)
    ours = collections.Counter(name for _ in range(n) for name, _, _ in sample_autoaugment(gen))
    expected = collections.Counter()
    for sub in AA_POLICY:
        for name, prob, _ in sub:
            expected[name] += prob / len(AA_POLICY)  # ops per image, on average
    assert set(theirs) == set(ours) == {k for k, v in expected.items() if v > 0}
    for name, rate in expected.items():
        tol = 5 * math.sqrt(rate / n) + 1e-3  # ~5 sigma of a count's Poisson noise
        assert abs(ours[name] / n - rate) < tol and abs(theirs[name] / n - rate) < tol, name


def test_autoaugment_applies_with_its_probability(monkeypatch) -> None:
    import anet.data.fastreid_augment as fa

    calls = []
    monkeypatch.setattr(fa, "sample_autoaugment", lambda gen: calls.append(1) or [])
    aug = FastReIDAugment(FastReIDAugmentSettings(autoaug_p=0.1, pad=0, flip_p=0, erase_p=0), (0, 0, 0), (1, 1, 1),
                          generator=torch.Generator().manual_seed(1))
    aug(torch.zeros(4000, 4, 4, 3, dtype=torch.uint8))
    assert abs(len(calls) / 4000 - 0.1) < 5 * math.sqrt(0.09 / 4000)


def test_padding_and_random_crop_is_a_uniform_window() -> None:
    aug = FastReIDAugment(FastReIDAugmentSettings(pad=10, flip_p=0, erase_p=0), (0, 0, 0), (1, 1, 1),
                          generator=torch.Generator().manual_seed(2))
    out = aug(torch.full((2100, 12, 12, 3), 255, dtype=torch.uint8))  # white image, black padding
    assert out.shape == (2100, 3, 12, 12)
    rows, cols = out[:, 0].amax(dim=2) > 0, out[:, 0].amax(dim=1) > 0  # B x 12: which rows/cols hold image

    def offset(mask: torch.Tensor) -> torch.Tensor:  # top offset t in 0..20 of the window in the padded image
        first, last = mask.float().argmax(1), 11 - mask.flip(1).float().argmax(1)
        return torch.where(first > 0, 10 - first, 10 + (11 - last))

    for t in (offset(rows), offset(cols)):
        counts = torch.bincount(t, minlength=21)
        assert len(counts) == 21 and counts.min() > 100 - 5 * 10 and counts.max() < 100 + 5 * 10  # 2100 / 21


def test_random_erasing_follows_torchvision_params() -> None:
    aug = FastReIDAugment(FastReIDAugmentSettings(pad=0, flip_p=0, erase_p=0.5), (0, 0, 0), (1, 1, 1),
                          generator=torch.Generator().manual_seed(3))
    out = aug(torch.full((3000, 32, 32, 3), 255, dtype=torch.uint8))[:, 0]  # 1 where kept, 0 where erased
    erased = out == 0  # B x 32 x 32
    hit = erased.any(dim=(1, 2))
    assert abs(hit.float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / 3000)
    h = erased[hit].any(dim=2).sum(1).float()
    w = erased[hit].any(dim=1).sum(1).float()
    assert torch.equal(erased[hit].sum(dim=(1, 2)).float(), h * w)  # one rectangle
    frac = h * w / 1024
    assert frac.min() >= 0.015 and frac.max() <= 0.36  # area U(0.02, 0.33), rounding of h and w aside
    assert 0.12 < frac.mean() < 0.19
    assert abs(torch.log(h / w).mean().item()) < 0.1  # log-uniform aspect ratio in (0.3, 3.3): symmetric


def test_colour_jitter_factor_ranges() -> None:
    s = FastReIDAugmentSettings(cj_p=1.0, cj_brightness=0.15, cj_contrast=0, cj_saturation=0, cj_hue=0)
    gen = torch.Generator().manual_seed(4)
    gray = torch.full((3, 4, 4), 0.5)
    factors = torch.tensor([color_jitter(gray, s, gen)[0, 0, 0].item() / 0.5 for _ in range(500)])
    assert factors.min() >= 0.85 - 1e-6 and factors.max() <= 1.15 + 1e-6 and abs(factors.mean() - 1) < 0.02
    sat_hue = FastReIDAugmentSettings(cj_brightness=0, cj_contrast=0, cj_saturation=0.1, cj_hue=0.1)
    torch.testing.assert_close(color_jitter(gray, sat_hue, gen), gray, atol=1e-5, rtol=0)  # gray has no hue
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    shifted = color_jitter(red, FastReIDAugmentSettings(cj_brightness=0, cj_contrast=0, cj_saturation=0,
                                                        cj_hue=0.1), gen)
    assert not torch.allclose(shifted, red) and shifted[0].min() > 0.4  # a hue shift of at most 0.1 turn
