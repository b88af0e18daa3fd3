"""The shared input check of every score loss: one host read for finiteness, 0/1 targets and counts."""

from __future__ import annotations

import pytest
import torch

from xrisk._validate import check_binary_batch


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float64, torch.int64])
@pytest.mark.parametrize("tasks", [1, 3])
def test_counts_and_bool_targets_for_every_target_dtype(dtype: torch.dtype, tasks: int) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.rand(20, tasks, generator=g) < 0.3
    s = torch.rand(20, tasks, generator=g)
    targets = y.to(dtype) if tasks > 1 else y.to(dtype).squeeze(1)
    scores = s if tasks > 1 else s.squeeze(1)
    s_out, y_out, counts = check_binary_batch(scores, targets, tasks)
    assert s_out.shape == (20, tasks) and y_out.dtype == torch.bool
    assert torch.equal(y_out, y)
    assert counts == y.sum(0).tolist() and all(isinstance(c, int) for c in counts)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise_for_every_target_dtype(dtype: torch.dtype, bad: float) -> None:
    s = torch.rand(8)
    s[3] = bad
    y = (torch.arange(8) % 2).to(dtype)
    with pytest.raises(ValueError, match="scores contains 1 NaN/inf"):
        check_binary_batch(s, y, 1)


def test_overflowing_probe_is_not_an_error() -> None:
    """Finite scores whose sum overflows float32 take the exact check and pass, with exact counts."""
    s = torch.full((6,), 3e38)
    y = torch.tensor([True, False, True, False, False, False])
    _, _, counts = check_binary_batch(s, y, 1)
    assert counts == [2]


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, float("nan")])
def test_non_binary_targets_raise(value: float) -> None:
    y = torch.tensor([1.0, 0.0, value, 0.0])
    with pytest.raises(ValueError, match="binary|targets contains"):
        check_binary_batch(torch.rand(4), y, 1)


def test_label_order_matches_boolean_masks() -> None:
    from xrisk.losses.base import label_order

    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        pos = torch.rand(37, generator=g) < 0.3
        x = torch.randn(37, generator=g)
        pos_idx, neg_idx = label_order(pos, int(pos.sum()))
        assert torch.equal(x.index_select(0, pos_idx), x[pos])
        assert torch.equal(x.index_select(0, neg_idx), x[~pos])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("inf"), float("-inf"), float("nan")])
def test_all_finite_async_flags_every_nonfinite_entry(dtype: torch.dtype, bad: float | None) -> None:
    from xrisk._validate import all_finite_async

    big = torch.finfo(dtype).max
    # Large finite values of one sign must not read as overflow (float64 sums of them would reach inf).
    x = torch.full((64,), big, dtype=dtype)
    y = torch.linspace(-1, 1, 7, dtype=dtype)
    if bad is not None:
        y[3] = bad
    ints = torch.arange(5)
    assert bool(all_finite_async([x, ints, y])) is (bad is None)
    assert bool(all_finite_async([y])) is (bad is None)
    assert bool(all_finite_async([ints]))
