"""PK sampler invariants: batch shape, identity coverage, determinism, mid-epoch resume, DDP shares."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from anet.data.sampler import PKSampler
from anet.errors import UserError


def _labels(ids: int = 12, seed: int = 0) -> np.ndarray:
    """Identities with 1..7 images each (some fewer than K), shuffled positions."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(1 + i % 7, i) for i in range(ids)])
    return rng.permutation(labels)


def test_batches_are_p_by_k_and_cover_every_id_once():
    labels = _labels(12)
    sampler = PKSampler(labels, p=4, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    seen = []
    for batch in batches:
        assert len(batch) == 16
        ids = labels[batch]
        counts = Counter(ids.tolist())
        assert len(counts) == 4 and set(counts.values()) == {4}
        seen.extend(counts)
    assert sorted(seen) == list(range(12))  # every id exactly once per epoch
    few = {i for i in range(12) if (labels == i).sum() < 4}
    batch_of_id0 = next(b for b in batches if 0 in labels[b])  # id 0 has one image: sampled with replacement
    assert 0 in few and len({p for p in batch_of_id0 if labels[p] == 0}) == 1


def test_incomplete_last_group_dropped():
    labels = _labels(14)
    batches = list(PKSampler(labels, p=4, k=2, seed=3))
    ids = [i for b in batches for i in set(labels[b].tolist())]
    assert len(batches) == 3 and len(ids) == len(set(ids)) == 12


def test_deterministic_from_seed_and_epoch():
    labels = _labels(12)
    a, b = PKSampler(labels, 4, 4, seed=1), PKSampler(labels, 4, 4, seed=1)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    assert a.epoch_batches(5) != a.epoch_batches(6)
    assert PKSampler(labels, 4, 4, seed=2).epoch_batches(5) != a.epoch_batches(5)


def test_resume_mid_epoch_yields_remaining_batches():
    labels = _labels(24)
    sampler = PKSampler(labels, p=4, k=4, seed=0)
    sampler.set_epoch(2)
    full = sampler.epoch_batches(2)
    it = iter(sampler)
    consumed = [next(it), next(it)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "position": 2} and consumed == full[:2]
    fresh = PKSampler(labels, p=4, k=4, seed=0)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the engine's loop calls set_epoch again: must not rewind
    assert list(fresh) == full[2:]
    assert list(fresh) == fresh.epoch_batches(3)  # an exhausted epoch rolls over to the next


def test_ddp_shares_disjoint_and_equal():
    labels = _labels(40)
    world = 3
    shares = [PKSampler(labels, p=4, k=2, seed=0, rank=r, world_size=world).epoch_batches(0)
              for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == 3  # 10 groups -> 9 usable
    ids = [set(labels[b].tolist()) for s in shares for b in s]
    union = set().union(*ids)
    assert sum(len(x) for x in ids) == len(union)  # disjoint identities across all ranks' batches
    single = PKSampler(labels, p=4, k=2, seed=0).epoch_batches(0)
    assert shares[1][0] == single[1] and shares[2][1] == single[5]


def test_too_few_identities_is_a_user_error():
    with pytest.raises(UserError, match="data.p_ids=8"):
        PKSampler(_labels(5), p=8, k=4, seed=0)
