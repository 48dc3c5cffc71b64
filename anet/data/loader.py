"""Batches from the prepared cache: fancy-indexed memmap reads, no JPEG decoding, uint8 tensors.

Reading B rows of a page-cached uint8 memmap costs far less than one training step (see
bench/data_bench.py), so there are no worker processes and no prefetch thread. That also keeps
the sampler's resume position exact: a prefetcher would advance the sampler ahead of what the
engine has consumed. Augmentation and float conversion happen later, on the training device
(anet.data.augment).

Example:
    >>> prepared = PreparedDataset.open(cache_dir)
    >>> train = prepared.train_rows()
    >>> sampler = PKSampler(train["label"].to_numpy(), p=16, k=4, seed=0)
    >>> for batch in TrainBatches(prepared, sampler, attributes=("color", "type")):
    ...     images = augment(batch.images.to(device, non_blocking=True))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from anet.data.cache import PreparedDataset
from anet.data.sampler import PKSampler
from anet.errors import UserError


@dataclass(frozen=True)
class Batch:
    """One training batch on the host."""

    images: torch.Tensor  # uint8 B x H x W x 3
    labels: torch.Tensor  # int64 B, contiguous train labels
    camids: torch.Tensor  # int64 B
    attrs: dict[str, torch.Tensor]  # name -> int64 B, -1 = missing
    index: torch.Tensor  # int64 B, cache_index (row of prepared.images)


class TrainBatches:
    """Iterable of :class:`Batch` for the positions the sampler yields into ``prepared.train_rows()``.

    ``pin_memory=True`` pins the image tensor (only when CUDA is available; ignored otherwise) so
    ``.to("cuda", non_blocking=True)`` overlaps the copy with compute.
    """

    def __init__(self, prepared: PreparedDataset, sampler: PKSampler, attributes: tuple[str, ...],
                 pin_memory: bool = False):
        self.prepared = prepared
        self.sampler = sampler
        self.attributes = tuple(attributes)
        rows = prepared.train_rows()
        missing = [a for a in self.attributes if f"attr_{a}" not in rows.columns]
        if missing:
            raise UserError(f"data.attributes: {missing} not in the {prepared.manifest.dataset} manifest "
                            f"(it has {', '.join(prepared.attributes) or 'none'})")
        self._cache_index = rows["cache_index"].to_numpy(np.int64)
        self._labels = rows["label"].to_numpy(np.int64)
        self._camids = rows["camid"].to_numpy(np.int64)
        self._attrs = {a: rows[f"attr_{a}"].to_numpy(np.int64) for a in self.attributes}
        self.pin_memory = pin_memory and torch.cuda.is_available()

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for positions in self.sampler:
            yield self.batch(np.asarray(positions, dtype=np.int64))

    def batch(self, positions: np.ndarray) -> Batch:
        """Assemble the batch for positions into the train rows."""
        index = self._cache_index[positions]
        images = torch.from_numpy(np.ascontiguousarray(self.prepared.images[index]))  # B x H x W x 3
        if self.pin_memory:
            images = images.pin_memory()
        return Batch(
            images=images,
            labels=torch.from_numpy(self._labels[positions]),
            camids=torch.from_numpy(self._camids[positions]),
            attrs={a: torch.from_numpy(v[positions]) for a, v in self._attrs.items()},
            index=torch.from_numpy(index),
        )


def iter_eval_batches(prepared: PreparedDataset, rows: pd.DataFrame, batch_size: int,
                      pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """uint8 B x H x W x 3 tensors for ``rows`` (any subset of the manifest) in row order."""
    index = rows["cache_index"].to_numpy(np.int64)
    pin = pin_memory and torch.cuda.is_available()
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        images = torch.from_numpy(np.ascontiguousarray(prepared.images[chunk]))  # B x H x W x 3
        yield images.pin_memory() if pin else images
