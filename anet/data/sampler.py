"""P x K identity sampler for triplet training; an epoch is one pass over the training IMAGES.

The paper's batch is 512 = P=128 identities x K=4 images, a GLOBAL batch over its 8 GPUs, and its
epoch is one pass over the training images, as in the re-ID samplers it builds on (Bag of Tricks'
RandomIdentitySampler, FastReID's identity samplers): about ``N_images / (P * K)`` steps.

Epoch plan, a pure function of ``(seed, epoch)`` and the labels (never of the rank or world size):

* K-chunk rule: each identity's images are shuffled and cut into ``ceil(n / K)`` chunks of K. The
  final partial chunk is FILLED UP, not dropped: it is completed with the first images of the same
  shuffled order (other images of that identity, so a chunk never holds an image twice when the
  identity has at least K). An identity with fewer than K images cycles through them, so only
  such identities repeat an image inside a chunk, each image as evenly as possible. Filling rather
  than dropping keeps every image in every epoch (dropping would skip 17% of VehicleID's images,
  whose identities mostly have 6-10).
* Steps per epoch ``S``: the most steps such that P distinct identities per step can take one chunk
  each, i.e. the largest ``S <= C // P`` (C = total chunks) with ``sum_i min(c_i, S) >= S * P``.
  Without a dominant identity that is ``C // P``: the fewer than P chunks left over are dropped (a
  random few each epoch). An identity with more than ``S`` chunks appears in every step and its
  surplus chunks are dropped. Every image outside the dropped chunks is seen at least once per epoch.
* Each step takes P distinct identities, drawn without replacement with probability proportional to
  their remaining chunks (Gumbel top-k), except that identities with as many chunks left as steps
  left are always taken: this keeps the plan feasible to the last step, so ``len()`` is exact.
  The P chunks of a step are in random order.

Distributed training: ``p`` is the global identity count. Rank ``r`` of ``w`` takes identities
``[r * p / w, (r + 1) * p / w)`` of each step's global batch (``p`` must divide by ``w``), so the
shares are disjoint, their union is the world_size=1 batch, and all ranks run the same ``S`` steps.

Resuming: ``state_dict()`` is ``{"epoch", "position"}`` where position counts the batches this
rank has handed out in the epoch; after ``load_state_dict`` iteration continues with the next
unseen batch. ``set_epoch(e)`` with a different epoch starts that epoch from its first batch
(the same epoch keeps the position, so resume + set_epoch is safe); iterating an exhausted epoch
starts the next one.

Example:
    >>> sampler = PKSampler(train_labels, p=16, k=4, seed=0)   # 120 ids x 12 images: 22 steps
    >>> for epoch in range(start, epochs):
    ...     sampler.set_epoch(epoch)
    ...     for positions in sampler:          # list[int] of (P / world_size) * K indices into train_labels
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
        if p % world_size:
            raise UserError(f"data.p_ids={p} is the global batch's identity count and must be divisible by the "
                            f"{world_size} ranks (each takes p_ids / world_size); set data.p_ids to a multiple "
                            f"of {world_size}")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.ids, id_index, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self._id_index = id_index.ravel()
        self._chunks_per_id = -(-counts // self.k)  # ceil(n / K)
        self._first_chunk = np.concatenate([[0], np.cumsum(self._chunks_per_id)[:-1]])
        self._gather = _chunk_gather(counts, self._chunks_per_id, self.k)
        self.steps = _steps_per_epoch(self._chunks_per_id, self.p)
        if self.steps == 0:
            raise UserError(f"data.p_ids={self.p} identities per global batch needs at least {self.p} training "
                            f"identities, the data has {len(self.ids)}; lower data.p_ids")
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank: the global step count)."""
        return self.steps

    @property
    def batch_size(self) -> int:
        """Images per batch on this rank: ``p / world_size * k``."""
        return self.p // self.world_size * self.k

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

    def global_plan(self, epoch: int) -> np.ndarray:
        """Positions of every global batch of ``epoch``: steps x P x K (the same on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self._id_index))
        grouped = perm[np.argsort(self._id_index[perm], kind="stable")]  # by identity, shuffled within
        chunks = grouped[self._gather].reshape(-1, self.k)  # C x K, identity-major
        remaining = self._chunks_per_id.copy()
        rows = np.empty((self.steps, self.p), dtype=np.int64)  # steps x P chunk indices
        for step in range(self.steps):
            chosen = _pick_ids(rng, remaining, self.steps - step, self.p)
            rows[step] = self._first_chunk[chosen] + self._chunks_per_id[chosen] - remaining[chosen]
            remaining[chosen] -= 1
        return chunks[rows]  # steps x P x K

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` for this rank, in order (deterministic from seed and epoch)."""
        share = self.p // self.world_size
        mine = self.global_plan(epoch)[:, self.rank * share:(self.rank + 1) * share]  # steps x P/w x K
        return mine.reshape(self.steps, share * self.k).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # counted when handed out: a checkpoint after it resumes after it
            yield batch


def _chunk_gather(counts: np.ndarray, chunks_per_id: np.ndarray, k: int) -> np.ndarray:
    """Index into the identity-grouped positions that lays out every identity's chunks (the K-chunk rule).

    Identity i's padded sequence is its ``n_i`` shuffled images cycled to ``c_i * K`` entries.
    """
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    padded = chunks_per_id * k
    owner = np.repeat(np.arange(len(counts)), padded)
    offset = np.arange(int(padded.sum())) - np.repeat(np.cumsum(padded) - padded, padded)
    return starts[owner] + offset % counts[owner]


def _steps_per_epoch(chunks_per_id: np.ndarray, p: int) -> int:
    """Largest S <= C // P with sum(min(c_i, S)) >= S * P (the feasible set is an interval [0, S*])."""
    lo, hi = 0, int(chunks_per_id.sum()) // p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(chunks_per_id, mid).sum()) >= mid * p:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _pick_ids(rng: np.random.Generator, remaining: np.ndarray, steps_left: int, p: int) -> np.ndarray:
    """P distinct identity indices for one step, in random order.

    Identities with ``remaining >= steps_left`` must be taken now or the plan would run out of
    distinct identities before its last step; the rest are drawn without replacement with weights
    ``remaining`` (Gumbel top-k). This keeps ``sum(min(remaining, steps_left)) >= steps_left * p``.
    """
    forced = np.flatnonzero(remaining >= steps_left)
    if len(forced) >= p:
        return rng.choice(forced, size=p, replace=False)
    with np.errstate(divide="ignore"):
        keys = np.log(remaining.astype(np.float64)) + rng.gumbel(size=len(remaining))
    keys[forced] = np.inf
    chosen = np.argpartition(-keys, p - 1)[:p]
    if (remaining[chosen] <= 0).any():  # cannot happen while the invariant above holds
        raise RuntimeError("PKSampler plan ran out of identities; this is a bug")
    return rng.permutation(chosen)
