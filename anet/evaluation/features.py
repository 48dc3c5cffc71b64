"""Test-time feature extraction: ``model.embed`` over uint8 batches, optional flip averaging."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU when ``precision == "bf16"``; AMP (fp16 / bf16) on CUDA; else nothing."""
    if device.type == "cuda" and precision in ("fp16", "bf16"):
        return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches_iter: Iterable[torch.Tensor],
    feature: str,
    flip: bool,
    device: torch.device | str,
    precision: str,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """L2-normalised features (np.float32 N x D) of uint8 B x H x W x 3 batches, in order.

    ``transform`` is the test transform (``anet.data.augment.TestTransform``): uint8 NHWC -> float
    normalised NCHW. With ``flip`` the embeddings of the image and its horizontal mirror are summed
    and re-normalised (FastReID's flip test).

    Example:
        >>> feats = extract_features(model, iter_eval_batches(prepared, rows, 128), "j", True,
        ...                          "cpu", "bf16", TestTransform(cfg.augment))
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if isinstance(transform, nn.Module):
        transform = transform.to(device)
    chunks: list[np.ndarray] = []
    try:
        for images in batches_iter:
            x = transform(images.to(device, non_blocking=True))  # B x 3 x H x W, float
            with autocast_context(device, precision):
                vec = model.embed(x, feature=feature).float()  # B x D
                if flip:
                    vec = vec + model.embed(x.flip(3), feature=feature).float()
            chunks.append(torch.nn.functional.normalize(vec, dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
