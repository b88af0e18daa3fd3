"""DualSampler / DistributedDualSampler: batch composition, epoch definition, seeding, no global RNG use."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from _dist import run_distributed
from xrisk.data import DistributedDualSampler, DualSampler, IndexedDataset


def _labels(n: int = 203, n_pos: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=g)[:n_pos]] = 1
    return y


@pytest.mark.parametrize("batch_size,kwargs,want_pos", [
    (32, {}, 16),
    (32, {"pos_ratio": 0.25}, 8),
    (10, {"pos_ratio": 0.01}, 1),   # clipped to at least one positive
    (10, {"pos_ratio": 0.99}, 9),   # and at least one negative
    (7, {"num_pos": 3}, 3),
])
def test_every_batch_has_exactly_num_pos_positives(batch_size, kwargs, want_pos):
    y = _labels()
    s = DualSampler(y, batch_size, seed=1, **kwargs)
    assert s.num_pos == want_pos and s.num_neg == batch_size - want_pos
    for epoch in range(3):
        b = s.batches(epoch)
        assert b.shape == (s.num_batches, batch_size)
        assert (y[b].sum(1) == want_pos).all()
        assert (y[b[:, :want_pos]] == 1).all() and (y[b[:, want_pos:]] == 0).all()


@pytest.mark.parametrize("n,n_pos,batch_size,num_pos", [(203, 17, 32, 8), (200, 20, 20, 5), (50, 3, 64, 16)])
def test_epoch_length_and_every_negative_once(n, n_pos, batch_size, num_pos):
    y = _labels(n, n_pos)
    s = DualSampler(y, batch_size, num_pos=num_pos, seed=3)
    n_neg, k = n - n_pos, batch_size - num_pos
    assert s.num_batches == math.ceil(n_neg / k)
    assert len(s) == s.num_batches * batch_size
    indices = list(iter(s))
    assert len(indices) == len(s)
    negs = Counter(i for i in indices if y[i] == 0)
    assert set(negs) == set(torch.nonzero(y == 0).flatten().tolist())  # every negative seen
    extra = s.num_batches * k - n_neg  # top-up of the last batch
    if n_neg >= k:
        assert max(negs.values()) <= 2 and sum(c - 1 for c in negs.values()) == extra
        last = s.batches(0)[-1, num_pos:]
        assert last.unique().numel() == k  # the top-up does not repeat a negative inside the batch
    if extra == 0:
        assert set(negs.values()) == {1}
    # positives cycled evenly: floor or ceil of draws / P
    pos = Counter(i for i in indices if y[i] == 1)
    draws = s.num_batches * num_pos
    assert set(pos.values()) <= {draws // n_pos, math.ceil(draws / n_pos)} and sum(pos.values()) == draws


@pytest.mark.parametrize("n_pos,num_pos", [(7, 3), (10, 4), (5, 5), (13, 6)])
def test_no_positive_twice_in_a_batch_when_there_are_enough(n_pos, num_pos):
    y = _labels(300, n_pos, seed=n_pos)
    s = DualSampler(y, num_pos + 5, num_pos=num_pos, seed=1)
    for epoch in range(5):
        b = s.batches(epoch)
        assert all(row[:num_pos].unique().numel() == num_pos for row in b)
        counts = Counter(b[:, :num_pos].flatten().tolist())  # still balanced: floor/ceil of draws / P
        draws = s.num_batches * num_pos
        assert set(counts.values()) <= {draws // n_pos, math.ceil(draws / n_pos)}


def test_negatives_exactly_once_when_the_batch_divides_them():
    y = torch.tensor([1] * 5 + [0] * 30)
    s = DualSampler(y, 8, num_pos=2, seed=0)  # 30 negatives, 6 per batch
    flat = s.batches(4).flatten()
    assert sorted(flat[y[flat] == 0].tolist()) == list(range(5, 35))


def test_fewer_negatives_than_one_batch_repeats_them():
    y = torch.tensor([1, 1, 0, 0, 0])
    b = DualSampler(y, 8, num_pos=2, seed=0).batches(0)
    assert b.shape == (1, 8) and Counter(b[0, 2:].tolist()) == {2: 2, 3: 2, 4: 2}


def test_seeded_reproducible_and_epochs_differ():
    y = _labels()
    a, b = DualSampler(y, 16, seed=5), DualSampler(y, 16, seed=5)
    assert torch.equal(a.batches(0), b.batches(0))
    assert not torch.equal(a.batches(0), a.batches(1))
    assert not torch.equal(a.batches(0), DualSampler(y, 16, seed=6).batches(0))
    # iterating advances the epoch; set_epoch selects it; batches() does not advance
    first, second = list(a), list(a)
    assert first == a.batches(0).flatten().tolist() and second == a.batches(1).flatten().tolist()
    assert a.epoch == 2
    a.set_epoch(0)
    assert list(a) == first
    b.set_epoch(7)
    b.batches()
    assert b.epoch == 7 and list(b) == a.batches(7).flatten().tolist()


def test_no_global_rng_side_effects_and_independent_of_global_seed():
    y = _labels()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    s = DualSampler(y, 16, seed=2)
    got = list(s)
    d = DistributedDualSampler(y, 8, num_replicas=2, rank=1, seed=2)
    list(d)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    torch.manual_seed(999)
    assert list(DualSampler(y, 16, seed=2)) == got


def test_shuffle_false_is_index_order():
    y = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0])
    b = DualSampler(y, 4, num_pos=1, shuffle=False).batches(0)
    assert b.tolist() == [[1, 0, 2, 3], [4, 5, 6, 7]]


def test_label_formats_and_errors():
    y = _labels(40, 6)
    ref = DualSampler(y, 8, seed=0).batches(0)
    for fmt in (y.tolist(), y.numpy(), y.float(), y.bool(), y.view(-1, 1)):
        assert torch.equal(DualSampler(fmt, 8, seed=0).batches(0), ref)
    with pytest.raises(ValueError, match="binary 0/1"):
        DualSampler(torch.tensor([0, 1, 2, 1]), 4)
    with pytest.raises(ValueError, match=r"any\(dim=1\)"):
        DualSampler(torch.zeros(10, 3), 4)
    with pytest.raises(ValueError, match="either pos_ratio or num_pos"):
        DualSampler(y, 8, pos_ratio=0.5, num_pos=2)
    with pytest.raises(ValueError, match="0 positive"):
        DualSampler(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="batch_size"):
        DualSampler(y, 1)
    with pytest.raises(ValueError, match="num_pos"):
        DualSampler(y, 8, num_pos=8)
    with pytest.raises(ValueError, match="pos_ratio"):
        DualSampler(y, 8, pos_ratio=1.0)


def test_with_dataloader_as_sampler_and_as_batch_sampler():
    y = _labels(90, 9)
    ds = IndexedDataset(TensorDataset(torch.arange(90).float().unsqueeze(1), y))
    s = DualSampler(y, 12, pos_ratio=0.25, seed=4)
    loader = DataLoader(ds, batch_size=12, sampler=s)
    batches = list(loader)
    assert len(batches) == s.num_batches
    for x, yb, index in batches:
        assert int(yb.sum()) == 3 and torch.equal(x[:, 0].long(), index)
    bs = s.batch_sampler
    bs.set_epoch(0)
    loader2 = DataLoader(ds, batch_sampler=bs)
    assert len(loader2) == s.num_batches
    got = torch.stack([index for _, _, index in loader2])
    assert torch.equal(got, s.batches(0))
    assert torch.equal(torch.cat([index for _, _, index in batches]), s.batches(0).flatten())


def test_set_epoch_between_iter_and_the_first_draw_selects_the_epoch():
    """PyTorch Lightning creates the loader's iterator, then calls set_epoch: a resumed run at
    epoch 1 must get epoch 1's batches, not epoch 0's."""
    y = _labels(90, 9)
    ds = IndexedDataset(TensorDataset(torch.arange(90).float().unsqueeze(1), y))
    s = DualSampler(y, 12, pos_ratio=0.25, seed=4)
    for loader, want in ((DataLoader(ds, batch_sampler=s.batch_sampler), s.batches(1)[0]),
                         (DataLoader(ds, batch_size=12, sampler=s), s.batches(1)[0])):
        s.set_epoch(0)
        it = iter(loader)
        s.set_epoch(1)
        assert torch.equal(next(it)[2], want)
        assert s.epoch == 2


def test_state_dict_round_trip_and_mismatch():
    y = _labels()
    s = DualSampler(y, 16, seed=8)
    list(s), list(s)
    state = s.state_dict()
    t = DualSampler(y, 16, seed=8)
    t.load_state_dict(state)
    assert t.epoch == 2 and list(t) == list(s)
    with pytest.raises(ValueError, match="batch_size"):
        DualSampler(y, 32, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples"):
        DualSampler(_labels(100, 10), 16, seed=8).load_state_dict(state)


# ----------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_ranks_split_the_single_process_global_batches(world):
    y = _labels(301, 40)
    per_rank, num_pos = 10, 3
    ranks = [DistributedDualSampler(y, per_rank, num_replicas=world, rank=r, num_pos=num_pos, seed=9)
             for r in range(world)]
    single = DualSampler(y, per_rank * world, num_pos=num_pos * world, seed=9)
    n_neg = int((y == 0).sum())
    assert all(len(r) == len(ranks[0]) for r in ranks)
    assert ranks[0].num_batches == single.num_batches == math.ceil(n_neg / (world * (per_rank - num_pos)))
    for epoch in (0, 1):
        local = [r.batches(epoch) for r in ranks]
        glob = single.batches(epoch)
        for step in range(single.num_batches):
            rows = [b[step] for b in local]
            for row in rows:
                assert int(y[row].sum()) == num_pos  # each rank keeps the share
            union = torch.cat(rows)
            assert sorted(union.tolist()) == sorted(glob[step].tolist())  # same global batch
            assert union.unique().numel() == union.numel()  # ranks disjoint within the step
        covered = torch.cat([b.flatten() for b in local])
        assert set(torch.nonzero(y == 0).flatten().tolist()) <= set(covered.tolist())


def test_distributed_argument_checks():
    y = _labels()
    with pytest.raises(ValueError, match="rank"):
        DistributedDualSampler(y, 8, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        DistributedDualSampler(y, 8, num_replicas=0, rank=0)
    one = DistributedDualSampler(y, 8, seed=1)  # not initialised: one process
    assert (one.num_replicas, one.rank) == (1, 0)
    assert torch.equal(one.batches(3), DualSampler(y, 8, seed=1).batches(3))


def _rank_batches(rank: int, world: int) -> torch.Tensor:
    s = DistributedDualSampler(_labels(120, 12), 6, pos_ratio=1 / 3, seed=4)  # world/rank from torch.distributed
    s.set_epoch(2)
    return torch.tensor(list(s)).view(-1, 6)


@pytest.mark.distributed
def test_distributed_sampler_reads_world_and_rank_from_torch_distributed():
    r0, r1 = run_distributed(_rank_batches)
    y = _labels(120, 12)
    glob = DualSampler(y, 12, num_pos=4, seed=4).batches(2)
    assert r0.shape == r1.shape == (glob.shape[0], 6)
    for step in range(glob.shape[0]):
        assert sorted(torch.cat([r0[step], r1[step]]).tolist()) == sorted(glob[step].tolist())
        assert int(y[r0[step]].sum()) == int(y[r1[step]].sum()) == 2
