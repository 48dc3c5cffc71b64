"""P x K identity sampler for triplet training (paper: P=128 identities x K=4 images per batch).

Epoch plan, a pure function of ``(seed, epoch)``:

* the identities are shuffled and cut into groups of P; the last incomplete group is dropped, so
  every identity appears at most once per epoch and, when ``P`` divides the number of identities,
  exactly once (with a remainder, the dropped identities differ from epoch to epoch);
* each identity contributes K images: drawn without replacement when it has at least K, WITH
  replacement when it has fewer (so a batch always holds K images per identity and batch-hard
  triplet mining always finds positives; such an identity's images repeat inside the batch).

Distributed training: every rank computes the same plan and rank ``r`` of ``w`` takes batches
``r, r + w, r + 2w, ...``; the plan is cut to a multiple of ``w`` so all ranks get the same count.

Resuming: ``state_dict()`` is ``{"epoch", "position"}`` where position counts the batches this
rank has handed out in the epoch; after ``load_state_dict`` iteration continues with the next
unseen batch. ``set_epoch(e)`` with a different epoch starts that epoch from its first batch
(the same epoch keeps the position, so resume + set_epoch is safe); iterating an exhausted epoch
starts the next one.

Example:
    >>> sampler = PKSampler(train_labels, p=16, k=4, seed=0)
    >>> for epoch in range(start, epochs):
    ...     sampler.set_epoch(epoch)
    ...     for positions in sampler:          # list[int] of length P * K, indices into train_labels
    ...         ...
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from anet.errors import UserError


class PKSampler:
    """Batches of P identities x K images as positions into ``labels`` (see the module docstring)."""

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int, rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels)
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler needs p >= 1 and k >= 1, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if (labels < 0).any():
            raise ValueError("PKSampler labels must be >= 0 (pass the train rows only)")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.ids = np.unique(labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], self.ids, side="left").tolist() + [len(labels)]
        self.positions_of = [order[bounds[i]:bounds[i + 1]] for i in range(len(self.ids))]
        if len(self.ids) < self.p * self.world_size:
            raise UserError(f"data.p_ids={self.p} identities per batch x {self.world_size} rank(s) needs at least "
                            f"{self.p * self.world_size} training identities, the data has {len(self.ids)}; "
                            "lower data.p_ids")
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return (len(self.ids) // self.p) // self.world_size

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a different epoch restarts at its first batch."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}``: enough to continue mid-epoch after a restart."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`; the next iteration yields the remaining batches of that epoch."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` for this rank, in order (deterministic from seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        ids = rng.permutation(len(self.ids))
        groups = len(ids) // self.p
        usable = (groups // self.world_size) * self.world_size
        batches = []
        for g in range(usable):
            batch = []
            for i in ids[g * self.p:(g + 1) * self.p]:
                pool = self.positions_of[i]
                replace = len(pool) < self.k
                batch.extend(rng.choice(pool, size=self.k, replace=replace).tolist())
            batches.append(batch)
        return batches[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # counted when handed out: a checkpoint after it resumes after it
            yield batch
