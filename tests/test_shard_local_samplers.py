"""Shard-local samplers (issue 18): each rank draws only from the rows it owns (``xrisk.sharding.shard_range``).

Every index of the rank's shard once per epoch (the short shards topped up from their own rows), the same length on
every rank, determinism in ``(seed, epoch, rank)``, ``set_epoch``, ``state_dict`` round trip; the dual variant keeps
its positives per batch, covers every negative of the shard per epoch and refuses a shard without a class.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from xrisk.data import DualSampler, ShardLocalDualSampler, ShardLocalSampler
from xrisk.sharding import shard_range


@pytest.mark.parametrize("n,k", [(13, 1), (13, 2), (13, 4), (100, 3), (64, 8)])
def test_every_index_of_the_shard_once_per_epoch(n, k):
    samplers = [ShardLocalSampler(n, num_replicas=k, rank=r, seed=3) for r in range(k)]
    assert len({len(s) for s in samplers}) == 1  # every rank makes the same steps
    for r, s in enumerate(samplers):
        lo, hi = shard_range(n, k, r)
        for epoch in range(3):
            s.set_epoch(epoch)
            got = list(s)
            assert len(got) == len(s) == -(-n // k)
            assert set(got) == set(range(lo, hi))  # every row of the shard, no other
            assert sorted(got[: hi - lo]) == list(range(lo, hi))  # the first pass is a permutation of the shard


def test_order_is_a_function_of_seed_epoch_and_rank():
    a, b = (ShardLocalSampler(40, num_replicas=2, rank=1, seed=5) for _ in range(2))
    assert torch.equal(a.order(2), b.order(2))
    assert not torch.equal(a.order(0), a.order(1))  # a new order every epoch
    assert not torch.equal(a.order(0), ShardLocalSampler(40, num_replicas=2, rank=1, seed=6).order(0))
    r0 = ShardLocalSampler(40, num_replicas=2, rank=0, seed=5).order(0)
    assert not torch.equal(r0 + 20, a.order(0))  # ranks do not share one permutation
    assert ShardLocalSampler(10, num_replicas=2, rank=1, shuffle=False).order(0).tolist() == [5, 6, 7, 8, 9]


def test_iteration_advances_and_set_epoch_selects_the_epoch():
    s = ShardLocalSampler(30, num_replicas=3, rank=2, seed=1)
    first, second = list(s), list(s)
    assert first == s.order(0).tolist() and second == s.order(1).tolist() and s.epoch == 2
    s.set_epoch(0)
    assert list(s) == first
    it = iter(s)  # the epoch is read at the first draw, not at iter()
    s.set_epoch(1)
    assert list(it) == second
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)


def test_state_dict_round_trip():
    s = ShardLocalSampler(30, num_replicas=2, rank=1, seed=4)
    list(s), list(s)
    t = ShardLocalSampler(30, num_replicas=2, rank=1, seed=4)
    t.load_state_dict(s.state_dict())
    assert list(t) == list(s)
    with pytest.raises(ValueError, match="seed"):
        ShardLocalSampler(30, num_replicas=2, rank=1, seed=9).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="num_samples"):
        ShardLocalSampler(31, num_replicas=2, rank=1, seed=4).load_state_dict(s.state_dict())


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="without rows"):
        ShardLocalSampler(5, num_replicas=4, rank=0)  # shard_range(5, 4): 2, 2, 1, 0 rows
    with pytest.raises(ValueError, match="rank"):
        ShardLocalSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_samples"):
        ShardLocalSampler(0, num_replicas=1, rank=0)


def _labels(n: int = 60) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, generator=g) < 0.2).long()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dual_batches_keep_positives_and_cover_the_shard(k):
    y = _labels()
    samplers = [ShardLocalDualSampler(y, 6, num_replicas=k, rank=r, num_pos=2, seed=7) for r in range(k)]
    assert len({s.num_batches for s in samplers}) == 1 and len({len(s) for s in samplers}) == 1
    for r, s in enumerate(samplers):
        lo, hi = shard_range(y.numel(), k, r)
        b = s.batches(1)
        assert b.shape == (s.num_batches, 6)
        assert ((b >= lo) & (b < hi)).all()
        assert (y[b[:, :2]] == 1).all() and (y[b[:, 2:]] == 0).all()
        negatives = {i for i in range(lo, hi) if y[i] == 0}
        assert set(b[:, 2:].flatten().tolist()) == negatives  # every negative of the shard, each epoch
        assert torch.equal(b, s.batches(1)) and not torch.equal(b, s.batches(2))
        loader = DataLoader(range(y.numel()), batch_sampler=s.batch_sampler)
        s.set_epoch(1)
        assert [x.tolist() for x in loader] == b.tolist()


def test_dual_on_one_process_is_the_dual_sampler_of_its_batches():
    y = _labels()
    s = ShardLocalDualSampler(y, 6, num_replicas=1, rank=0, num_pos=2, shuffle=False)
    assert torch.equal(s.batches(0), DualSampler(y, 6, num_pos=2, shuffle=False).batches(0))


def test_dual_state_dict_and_a_shard_without_a_class():
    y = _labels()
    s = ShardLocalDualSampler(y, 6, num_replicas=2, rank=0, num_pos=2, seed=1)
    s.set_epoch(4)
    t = ShardLocalDualSampler(y, 6, num_replicas=2, rank=0, num_pos=2, seed=1)
    t.load_state_dict(s.state_dict())
    assert t.epoch == 4 and torch.equal(t.batches(), s.batches())
    with pytest.raises(ValueError, match="num_pos"):
        ShardLocalDualSampler(y, 6, num_replicas=2, rank=0, num_pos=3, seed=1).load_state_dict(s.state_dict())
    sorted_labels = torch.sort(y, descending=True).values  # every positive in the first shard
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\].*permute it once"):
        ShardLocalDualSampler(sorted_labels, 6, num_replicas=2, rank=0, num_pos=2)
