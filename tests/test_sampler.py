"""PK sampler invariants: an epoch is a pass over the images, K-chunk rule, determinism, resume, DDP shares."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from anet.data.sampler import PKSampler
from anet.errors import UserError


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Identity i has counts[i] images; positions shuffled."""
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def _check_pk(labels: np.ndarray, batch: list[int], p: int, k: int) -> Counter:
    counts = Counter(labels[batch].tolist())
    assert len(batch) == p * k and len(counts) == p and set(counts.values()) == {k}
    return counts


def test_epoch_is_one_pass_over_the_images():
    labels = _labels([12] * 120)  # the synthetic profile: 1440 images
    sampler = PKSampler(labels, p=16, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 1440 // (16 * 4) == 22
    for batch in batches:
        _check_pk(labels, batch, 16, 4)
    seen = Counter(pos for b in batches for pos in b)
    # 360 chunks, 22 x 16 = 352 used: the 8 left over (32 images) wait for the next epoch; no fill needed
    assert max(seen.values()) == 1 and len(seen) == 1440 - 8 * 4


def test_k_chunk_rule_fills_the_partial_chunk_and_sees_every_image():
    counts = list(range(1, 13))  # ceil(n/4) = 1,1,1,1,2,2,2,2,3,3,3,3: 24 chunks = 6 steps of P=4
    labels = _labels(counts)
    sampler = PKSampler(labels, p=4, k=4, seed=1)
    batches = sampler.epoch_batches(0)
    assert len(batches) == len(sampler) == 6
    seen: Counter = Counter()
    for batch in batches:
        _check_pk(labels, batch, 4, 4)
        for i in range(4):  # one chunk = one identity's K images
            chunk = [pos for pos in batch if labels[pos] == labels[batch[4 * i]]]
            assert len(chunk) == 4
            if counts[labels[chunk[0]]] >= 4:
                assert len(set(chunk)) == 4  # never an image twice in a chunk when the identity has K
        seen.update(batch)
    assert set(seen) == set(range(len(labels)))  # every image, every epoch
    for ident, n in enumerate(counts):
        per_image = [seen[pos] for pos in np.flatnonzero(labels == ident)]
        assert sum(per_image) == -(-n // 4) * 4  # padded to whole chunks
        assert max(per_image) - min(per_image) <= 1  # repeats spread as evenly as possible


def test_dominant_identity_is_capped_and_plan_stays_feasible():
    labels = _labels([40] + [4] * 7)  # 10 + 7 chunks; P=2: only 7 steps can hold 2 distinct ids each
    sampler = PKSampler(labels, p=2, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == 7
    for batch in batches:
        assert 0 in _check_pk(labels, batch, 2, 4)  # the big identity is in every step
    assert {i for b in batches for i in labels[b].tolist()} == set(range(8))


@pytest.mark.parametrize("seed", range(30))
def test_random_datasets_give_exact_lengths_and_pk_batches(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=int(rng.integers(8, 60))).tolist()
    p, k = int(rng.integers(2, 8)), int(rng.integers(2, 6))
    labels = _labels(counts, seed)
    sampler = PKSampler(labels, p=p, k=k, seed=seed)
    chunks = sum(-(-n // k) for n in counts)
    assert len(sampler) <= chunks // p and len(sampler) >= min(chunks // p, (len(counts) // p))
    for batch in sampler.epoch_batches(3):
        _check_pk(labels, batch, p, k)


def test_deterministic_from_seed_and_epoch():
    labels = _labels([1 + i % 7 for i in range(12)])
    a, b = PKSampler(labels, 4, 4, seed=1), PKSampler(labels, 4, 4, seed=1)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    assert a.epoch_batches(5) != a.epoch_batches(6)
    assert PKSampler(labels, 4, 4, seed=2).epoch_batches(5) != a.epoch_batches(5)


def test_resume_mid_epoch_equals_uninterrupted():
    labels = _labels([1 + i % 7 for i in range(24)])
    straight = PKSampler(labels, p=4, k=4, seed=0)
    straight.set_epoch(2)
    full = list(straight) + list(straight)  # epoch 2, then the rollover into epoch 3
    sampler = PKSampler(labels, p=4, k=4, seed=0)
    sampler.set_epoch(2)
    it = iter(sampler)
    consumed = [next(it), next(it)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "position": 2}
    fresh = PKSampler(labels, p=4, k=4, seed=0)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the engine's loop calls set_epoch again: must not rewind
    assert consumed + list(fresh) + list(fresh) == full  # an exhausted epoch rolls over to the next


def test_ddp_shares_are_disjoint_slices_of_the_global_batch():
    labels = _labels([3 + i % 9 for i in range(40)])
    world, p, k = 4, 8, 2
    shares = [PKSampler(labels, p=p, k=k, seed=0, rank=r, world_size=world) for r in range(world)]
    single = PKSampler(labels, p=p, k=k, seed=0)
    assert {len(s) for s in shares} == {len(single)}  # every rank runs the global step count
    assert shares[0].batch_size == p // world * k
    per_rank = [s.epoch_batches(1) for s in shares]
    for step, global_batch in enumerate(single.epoch_batches(1)):
        parts = [batches[step] for batches in per_rank]
        for part in parts:
            _check_pk(labels, part, p // world, k)
        ids = [set(labels[part].tolist()) for part in parts]
        assert sum(len(x) for x in ids) == len(set().union(*ids)) == p  # disjoint identities
        assert [pos for part in parts for pos in part] == global_batch  # union = the world_size=1 batch


def test_p_not_divisible_by_world_size_is_a_user_error():
    with pytest.raises(UserError, match="data.p_ids=6 .* divisible by the 4 ranks"):
        PKSampler(_labels([4] * 20), p=6, k=4, seed=0, rank=0, world_size=4)


def test_too_few_identities_is_a_user_error():
    with pytest.raises(UserError, match="data.p_ids=8"):
        PKSampler(_labels([4] * 5), p=8, k=4, seed=0)
