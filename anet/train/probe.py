"""Trial steps before the first epoch that leave no trace: what the precision choice and the fit check run.

A probe step is the engine's forward and backward on one real batch of this rank's share, without the
optimiser. Everything it touches is put back afterwards (BatchNorm running statistics, gradients, every
RNG the checkpoint carries, the sampler's position, train/eval flags), so a run with probes trains to
the same weights as one without::

    with untouched(model, data):
        batch = first_batch(data)
        probe_step(model, criterion, data, batch, device, "bf16", channels_last=False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from anet.model import set_train_mode
from anet.train.data import TrainData
from anet.train.runtime import autocast, rng_state, set_rng_state

Criterion = Callable[..., dict[str, torch.Tensor]]


@contextlib.contextmanager
def untouched(model: nn.Module, data: TrainData) -> Iterator[None]:
    """Run trial steps inside; the model's buffers, gradients and modes, the RNGs and the sampler come back."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {module: module.training for module in model.modules()}
    generators = data.generators()
    rng = rng_state(generators)
    sampler = data.sampler.state_dict()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for p in model.parameters():
            p.grad = None
        for module, training in modes.items():
            module.training = training
        set_rng_state(rng, generators)
        data.sampler.load_state_dict(sampler)


def first_batch(data: TrainData) -> Any:
    """The batch this rank trains on first (call inside :func:`untouched`: it moves the sampler)."""
    return next(iter(data.batches))


def shrink(batch: Any, images: int) -> Any:
    """The first ``images`` images of ``batch`` (whole identities first: the sampler lays them out in K-runs)."""
    keep = slice(0, images)
    return type(batch)(images=batch.images[keep], labels=batch.labels[keep], camids=batch.camids[keep],
                       attrs={name: value[keep] for name, value in batch.attrs.items()}, index=batch.index[keep])


def probe_step(model: nn.Module, criterion: Criterion, data: TrainData, batch: Any, device: torch.device,
               precision: str, channels_last: bool) -> None:
    """One forward + backward exactly as :func:`anet.train.engine._forward_terms` runs it, no optimiser step."""
    from anet.train.engine import to_fp32  # lazy: the engine imports this module (through fit.py)

    set_train_mode(model)
    images = data.augment(batch.images.to(device))  # B x 3 x H x W float
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    ids = batch.labels.to(device)
    attrs = {name: value.to(device) for name, value in batch.attrs.items()}
    with autocast(device, precision):
        out = model(images)
    terms = criterion(to_fp32(out) if precision != "fp32" else out, ids, attrs)
    loss = sum(terms.values())
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
