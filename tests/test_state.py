import pytest
import torch

from xrisk.state import (
    ReplicatedStateModule, SampleState, check_index, check_index_bounds, check_index_unique, write_rows,
)
from _dist import run_distributed


def test_first_visit_takes_new_value_then_moving_average():
    s = SampleState(5)
    out = s.update(torch.tensor([1, 2]), torch.tensor([4.0, 8.0]), gamma=0.25)
    assert torch.equal(out, torch.tensor([4.0, 8.0]))
    out = s.update(torch.tensor([1]), torch.tensor([0.0]), gamma=0.25)
    assert torch.allclose(out, torch.tensor([3.0]))  # 0.75*4 + 0.25*0
    assert s.seen.tolist() == [False, True, True, False, False]


def test_duplicates_are_averaged_order_independent():
    a, b = SampleState(4), SampleState(4)
    a.update(torch.tensor([0]), torch.tensor([1.0]), gamma=0.5)
    b.update(torch.tensor([0]), torch.tensor([1.0]), gamma=0.5)
    oa = a.update(torch.tensor([0, 0, 3]), torch.tensor([2.0, 6.0, 1.0]), gamma=0.5)
    ob = b.update(torch.tensor([3, 0, 0]), torch.tensor([1.0, 6.0, 2.0]), gamma=0.5)
    assert torch.allclose(oa, torch.tensor([2.5, 2.5, 1.0]))  # 0.5*1 + 0.5*mean(2,6)
    assert torch.equal(a.value, b.value)
    assert torch.allclose(ob, torch.tensor([1.0, 2.5, 2.5]))


def test_mask_and_tasks():
    s = SampleState(3, (2,))
    new = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [False, True]])
    s.update(torch.tensor([0, 1]), new, gamma=1.0, mask=mask)
    assert s.seen.tolist() == [[True, False], [False, True], [False, False]]
    assert s.value[0, 0] == 1.0 and s.value[1, 1] == 4.0 and s.value[0, 1] == 0.0


@pytest.mark.parametrize("bad", [torch.tensor([5]), torch.tensor([-1])])
def test_out_of_range_index(bad):
    with pytest.raises(IndexError, match="out of range"):
        SampleState(5).update(bad, torch.zeros(1), gamma=0.5)


@pytest.mark.parametrize("size", (3, 300))  # the Python path (<= 256 entries) and the torch.unique path
def test_check_index_unique_bounds_duplicates_and_types(size):
    n = 1000
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(size))[:size]
    idx, unique = check_index_unique(perm.int(), n, batch_size=size)
    assert unique and idx.dtype == torch.long and torch.equal(idx, perm)
    dup = perm.clone()
    dup[-1] = dup[0]
    assert check_index_unique(dup, n)[1] is False
    assert check_index_unique(torch.tensor([3]), 5)[1] is True
    assert check_index_unique(torch.tensor([], dtype=torch.long), 5)[1] is True
    # check_index_bounds: the same, and the smallest and largest index it read (None for an empty index)
    assert check_index_bounds(dup, n)[1:] == (False, (int(dup.min()), int(dup.max())))
    assert check_index_bounds(torch.tensor([], dtype=torch.long), 5)[2] is None
    for bad_value in (n, -1, n + 7):
        bad = perm.clone()
        bad[size // 2] = bad_value
        with pytest.raises(IndexError, match=f"dataset index {bad_value} is out of range"):
            check_index_unique(bad, n)
    with pytest.raises(TypeError, match="integer"):
        check_index_unique(torch.tensor([1.0]), 3)
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        check_index_unique(torch.tensor([0, 1, 2]), 3, batch_size=2)


def test_float_index_and_bad_gamma():
    with pytest.raises(TypeError, match="integer"):
        check_index(torch.tensor([1.0]), 3)
    with pytest.raises(ValueError, match="gamma"):
        SampleState(3).update(torch.tensor([0]), torch.zeros(1), gamma=0.0)
    with pytest.raises(FloatingPointError):
        SampleState(3).update(torch.tensor([0]), torch.tensor([float("nan")]), gamma=0.5)


def test_state_dict_round_trip_and_size_mismatch():
    s = SampleState(6)
    s.update(torch.tensor([2, 4]), torch.tensor([1.0, 2.0]), gamma=0.5)
    t = SampleState(6)
    t.load_state_dict(s.state_dict())
    assert torch.equal(s.value, t.value) and torch.equal(s.seen, t.seen)
    with pytest.raises(ValueError, match="num_samples=7"):
        SampleState(7).load_state_dict(s.state_dict())


def test_half_keeps_float32():
    m = torch.nn.Module()
    m.u = SampleState(4)
    m.lin = torch.nn.Linear(2, 2)
    m.half()
    assert m.u.value.dtype == torch.float32 and m.lin.weight.dtype == torch.float16


class _Counter(ReplicatedStateModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("estimate", torch.ones(3))
        self.register_buffer("cache", torch.zeros(2), persistent=False)
        self.u = SampleState(5)


def test_replicated_state_behaves_like_buffers_but_is_not_one():
    """Issue 10: kept out of named_buffers() (so DDP's default broadcast_buffers=True never copies it), while
    state_dict / load_state_dict / .to() / .half() behave as for buffers (float state is never cast)."""
    m = _Counter()
    assert [n for n, _ in m.named_buffers()] == []
    # the order buffers would have: own state, then submodules
    assert list(m.state_dict()) == ["steps", "estimate", "lin.weight", "lin.bias", "u.value", "u.seen"]
    m.steps += 3
    m.estimate.mul_(2.0)
    m.u.update(torch.tensor([1]), torch.tensor([5.0]), gamma=1.0)
    other = _Counter()
    other.load_state_dict(m.state_dict())
    assert int(other.steps) == 3 and torch.equal(other.estimate, m.estimate) and torch.equal(other.u.value, m.u.value)
    fresh = _Counter()
    fresh.load_state_dict(m.state_dict(), assign=True)
    assert fresh.estimate is not m.estimate and torch.equal(fresh.estimate, m.estimate)
    keys = fresh.load_state_dict({k: v for k, v in m.state_dict().items() if k != "estimate"} | {"x": m.steps},
                                 strict=False)
    assert keys.missing_keys == ["estimate"] and keys.unexpected_keys == ["x"]
    with pytest.raises(RuntimeError, match="size mismatch for estimate"):
        fresh.load_state_dict({**m.state_dict(), "estimate": torch.ones(4)})
    m.half()
    assert m.lin.weight.dtype == torch.float16
    assert (m.steps.dtype, m.estimate.dtype, m.cache.dtype, m.u.value.dtype) == (torch.long,) + (torch.float32,) * 3
    m.to("meta")  # a device move moves every state tensor
    assert {t.device.type for t in (m.steps, m.estimate, m.cache, m.u.value, m.u.seen)} == {"meta"}
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("lin", torch.zeros(1))
    del m.estimate
    assert "estimate" not in m.state_dict()


def _dist_local_update(rank, world):
    s = SampleState(10)
    # uneven local batches; sample 3 appears on both ranks
    idx = torch.tensor([3, 0]) if rank == 0 else torch.tensor([3, 7, 9])
    new = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([5.0, 6.0, 7.0])
    out = s.update(idx, new, gamma=0.5, local=True)
    return {"value": s.value, "seen": s.seen, "out": out}


@pytest.mark.distributed
def test_local_updates_sync_every_rank():
    res = run_distributed(_dist_local_update)
    ref = SampleState(10)
    ref.update(torch.tensor([3, 0, 3, 7, 9]), torch.tensor([1.0, 2.0, 5.0, 6.0, 7.0]), gamma=0.5)
    for r in res:
        assert torch.equal(r["value"], ref.value) and torch.equal(r["seen"], ref.seen)
    assert torch.equal(res[0]["out"], torch.tensor([3.0, 2.0]))
    assert torch.equal(res[1]["out"], torch.tensor([3.0, 6.0, 7.0]))


def test_all_finite_probe_is_exact():
    from xrisk._validate import all_finite

    big = torch.full((4,), 3e38)  # finite entries whose sum overflows float32: exact check says finite
    assert all_finite(big, torch.zeros(3, dtype=torch.float64))
    assert all_finite(torch.arange(5))  # integer tensors are always finite
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.zeros(6)
        x[3] = bad
        assert not all_finite(torch.ones(2), x)
    plus_minus = torch.tensor([float("inf"), float("-inf")])  # the sum is NaN either way
    assert not all_finite(plus_minus)


def test_write_rows_sets_values_and_seen_flags():
    st, other = SampleState(6, (2,), init=0.5), SampleState(6, (2,))
    write_rows((st, other), torch.tensor([4, 1]), (torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2, 2)))
    assert torch.equal(st.read(torch.tensor([1, 4, 0])), torch.tensor([[3.0, 4.0], [1.0, 2.0], [0.5, 0.5]]))
    assert torch.equal(st.seen.nonzero()[:, 0].unique(), torch.tensor([1, 4]))
    assert torch.equal(other.seen.nonzero()[:, 0].unique(), torch.tensor([1, 4]))
    before = (st.value.clone(), other.value.clone())
    with pytest.raises(FloatingPointError):  # checked before any write, for every state
        write_rows((st, other), torch.tensor([0]), (torch.ones(1, 2), torch.full((1, 2), float("nan"))))
    assert torch.equal(st.value, before[0]) and torch.equal(other.value, before[1])
