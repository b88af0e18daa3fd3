"""roc_fairness_constraints and non_forgetting_constraints against slow per-group loops."""

from __future__ import annotations

import math

import pytest
import torch

from xrisk.constrained import non_forgetting_constraints, roc_fairness_constraints, roc_fairness_num_constraints


def _slow_fairness(scores, targets, groups, thresholds, kappa, temperature):
    """Per-group, per-threshold loop written from the definition (rates of a group's negatives/positives)."""
    def rate(group: int, label: int, theta: float) -> float | None:
        vals = []
        for s, y, g in zip(scores.tolist(), targets.tolist(), groups.tolist()):
            if g == group and y == label:
                vals.append(1.0 / (1.0 + math.exp(-(s - theta) / temperature)) if temperature else float(s >= theta))
        return sum(vals) / len(vals) if vals else None

    values, index = [], []
    for k, theta in enumerate(thresholds):
        fa, fb, ta, tb = rate(1, 0, theta), rate(0, 0, theta), rate(1, 1, theta), rate(0, 1, theta)
        if fa is not None and fb is not None:
            values += [fa - fb - kappa, fb - fa - kappa]
            index += [4 * k, 4 * k + 1]
        if ta is not None and tb is not None:
            values += [ta - tb - kappa, tb - ta - kappa]
            index += [4 * k + 2, 4 * k + 3]
    return values, index


@pytest.mark.parametrize("temperature", [0.1, None])
def test_roc_fairness_matches_slow_loop(temperature) -> None:
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(40, generator=g, dtype=torch.float64)
    targets = (torch.rand(40, generator=g) < 0.4).long()
    groups = (torch.rand(40, generator=g) < 0.5).long()
    thresholds = [0.2, 0.5, 0.8]
    c = roc_fairness_constraints(scores, targets, groups, thresholds, 0.05, temperature=temperature)
    values, index = _slow_fairness(scores, targets, groups, thresholds, 0.05, temperature)
    assert c.index.tolist() == index == list(range(roc_fairness_num_constraints(3)))
    assert torch.allclose(c.values, torch.tensor(values, dtype=torch.float64), atol=1e-12)


def test_roc_fairness_leaves_out_unobservable_rates_and_is_differentiable() -> None:
    scores = torch.tensor([0.9, 0.1, 0.7, 0.3, 0.6], requires_grad=True)
    targets = torch.tensor([1, 0, 1, 0, 0])
    groups = torch.tensor([1, 1, 0, 0, 0])
    # group a has one positive and one negative, group b one positive and two negatives: all observable
    c = roc_fairness_constraints(scores, targets, groups, [0.5], 0.0, temperature=0.1)
    assert c.index.tolist() == [0, 1, 2, 3]
    c.values.sum().backward()
    assert scores.grad is not None
    # no positive in group b: only the FPR pair
    c2 = roc_fairness_constraints(scores.detach(), targets, torch.tensor([1, 1, 1, 0, 0]), [0.3, 0.6], 0.0,
                                  temperature=None)
    vals, idx = _slow_fairness(scores.detach(), targets, torch.tensor([1, 1, 1, 0, 0]), [0.3, 0.6], 0.0, None)
    assert c2.index.tolist() == idx == [0, 1, 4, 5]
    assert c2.values.tolist() == pytest.approx(vals)


def test_roc_fairness_errors() -> None:
    s, y, g = torch.rand(6), torch.tensor([0, 1] * 3), torch.tensor([0, 0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="NaN/inf"):
        roc_fairness_constraints(torch.tensor([float("nan")] * 6), y, g, [0.5], 0.1)
    with pytest.raises(ValueError, match=r"must all be \[B\]"):
        roc_fairness_constraints(s, y[:5], g, [0.5], 0.1)
    with pytest.raises(ValueError, match="groups must be binary"):
        roc_fairness_constraints(s, y, g + 1, [0.5], 0.1)
    with pytest.raises(ValueError, match="kappa.*-0.1"):
        roc_fairness_constraints(s, y, g, [0.5], -0.1)
    with pytest.raises(ValueError, match="at least one threshold"):
        roc_fairness_constraints(s, y, g, [], 0.1)


def test_non_forgetting_matches_slow_loop() -> None:
    g = torch.Generator().manual_seed(2)
    now = torch.rand(30, generator=g, dtype=torch.float64, requires_grad=True)
    before = torch.rand(30, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 6, (30,), generator=g)
    groups[groups == 3] = 4  # task 3 absent
    c = non_forgetting_constraints(now, before, groups, 0.05, num_groups=6)
    tasks = sorted(set(groups.tolist()))
    slow = [sum(float(now[j].detach() - before[j]) for j in range(30) if int(groups[j]) == t)
            / sum(1 for j in range(30) if int(groups[j]) == t) - 0.05 for t in tasks]
    assert c.index.tolist() == tasks and 3 not in tasks
    assert c.values.tolist() == pytest.approx(slow, abs=1e-12)
    c.values.sum().backward()
    counts = torch.bincount(groups, minlength=6).double()
    assert torch.allclose(now.grad, 1.0 / counts[groups])


def test_non_forgetting_errors() -> None:
    now, before = torch.rand(4), torch.rand(4)
    with pytest.raises(IndexError, match="task id 5"):
        non_forgetting_constraints(now, before, torch.tensor([0, 1, 5, 2]), num_groups=3)
    with pytest.raises(TypeError, match="integer task ids"):
        non_forgetting_constraints(now, before, torch.tensor([0.0, 1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN/inf"):
        non_forgetting_constraints(torch.tensor([float("inf"), 1.0, 1.0, 1.0]), before, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="slack"):
        non_forgetting_constraints(now, before, torch.tensor([0, 0, 1, 1]), -1.0)
    empty = non_forgetting_constraints(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty.values.numel() == 0 and empty.index.numel() == 0


# ------------------------------------------------------------------------------------ float64 gradchecks
def test_roc_fairness_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(24, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1] * 12)
    groups = torch.tensor([0, 0, 1, 1] * 6)

    def values(s: torch.Tensor) -> torch.Tensor:
        return roc_fairness_constraints(s, targets, groups, [0.3, 0.5, 0.7], 0.05, temperature=0.2).values

    assert values(scores).shape == (12,)
    assert torch.autograd.gradcheck(values, (scores,), eps=1e-6, atol=1e-7)


def test_non_forgetting_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(8)
    now = torch.rand(15, generator=g, dtype=torch.float64, requires_grad=True)
    before = torch.rand(15, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 4, (15,), generator=g)
    assert torch.autograd.gradcheck(lambda x: non_forgetting_constraints(x, before, groups, 0.1).values, (now,))


def test_roc_fairness_full_batch_returns_the_shared_full_index_and_one_host_read_checks() -> None:
    from xrisk.constrained import full_index

    s, y, g = torch.rand(8), torch.tensor([0, 1] * 4), torch.tensor([0, 0, 1, 1] * 2)
    c = roc_fairness_constraints(s, y, g, [0.3, 0.6], 0.1)
    assert c.index is full_index(8)
    with pytest.raises(ValueError, match="targets and groups must be binary"):
        roc_fairness_constraints(s, y - 1, g, [0.5], 0.1)  # negative labels
    with pytest.raises(ValueError, match="targets and groups must be binary"):
        roc_fairness_constraints(s, y * 2, g, [0.5], 0.1)
    with pytest.raises(ValueError, match="NaN/inf"):
        roc_fairness_constraints(s.clone().fill_(float("inf")), y, g, [0.5], 0.1)
    big = torch.full((8,), 3e38)  # finite scores whose sum overflows: only the exact check decides
    assert roc_fairness_constraints(big, y, g, [0.5], 0.1).values.isfinite().all()


def test_roc_fairness_label_dtypes_give_the_same_values() -> None:
    """bool / integer / float (bfloat16 too) labels and groups (read on the host) give the int64 result; float64
    scores keep it."""
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(30, generator=g, dtype=torch.float64)
    targets = (torch.rand(30, generator=g) < 0.4).long()
    groups = (torch.rand(30, generator=g) < 0.5).long()
    ref = roc_fairness_constraints(scores, targets, groups, [0.3, 0.6], 0.05)
    for y, a in ((targets.bool(), groups.bool()), (targets.int(), groups.int()), (targets.double(), groups.float()),
                 (targets.bfloat16(), groups.half()), (targets.to(torch.uint8), groups.to(torch.int8))):
        c = roc_fairness_constraints(scores, y, a, [0.3, 0.6], 0.05)
        assert c.values.dtype == torch.float64 and torch.equal(c.values, ref.values)
    with pytest.raises(ValueError, match="targets and groups must be binary"):
        roc_fairness_constraints(scores, targets, groups - 2, [0.5], 0.1)  # negative groups


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 0.5, 1.5, -0.5])
def test_roc_fairness_non_binary_float_labels_raise_the_binary_error_without_a_numpy_warning(bad: float) -> None:
    """NaN/inf and fractional float labels or groups are refused (not truncated to 0/1 as a cast would)."""
    import warnings

    s, y, g = torch.rand(8), torch.tensor([0.0, 1.0] * 4), torch.tensor([0, 0, 1, 1] * 2)
    y[3] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from the cast would fail here
        with pytest.raises(ValueError, match="targets and groups must be binary"):
            roc_fairness_constraints(s, y, g, [0.5], 0.1)
        with pytest.raises(ValueError, match="targets and groups must be binary"):
            roc_fairness_constraints(s, g, y, [0.5], 0.1)  # as groups


def test_roc_fairness_reuses_checked_labels_only_while_they_are_unchanged() -> None:
    """The same targets/groups tensors again (a full batch; MSVR's previous iterate) reuse the last check and sample
    weights; a write the version counter misses (through a NumPy view), an in-place write, another scores dtype or
    changed thresholds are all seen: the values equal the slow loop after each, and bad labels still raise."""
    g = torch.Generator().manual_seed(5)
    s = torch.rand(40, generator=g)
    y, a = (torch.rand(40, generator=g) < 0.4).long(), (torch.rand(40, generator=g) < 0.5).long()
    th = [0.3, 0.6]

    def check(scores: torch.Tensor, thresholds: list[float]) -> None:
        c = roc_fairness_constraints(scores, y, a, thresholds, 0.05)
        values, index = _slow_fairness(scores, y, a, thresholds, 0.05, 0.05)
        assert c.values.dtype == scores.dtype and c.index.tolist() == index
        assert c.values.tolist() == pytest.approx(values, abs=1e-6)

    check(s, th)
    check(s, th)  # reused
    y.numpy()[:6] = 1 - y.numpy()[:6]  # not seen by the version counter
    check(s, th)
    check(s.double(), th)  # the same labels, weights in another dtype
    th[0] = 0.4  # the thresholds list written between calls
    check(s, th)
    a.numpy()[3] = 2  # a bad group, not seen by the version counter
    with pytest.raises(ValueError, match="targets and groups must be binary"):
        roc_fairness_constraints(s, y, a, th, 0.05)
    a[3] = 1
    y[7] = -1  # in place: a new version
    with pytest.raises(ValueError, match="targets and groups must be binary"):
        roc_fairness_constraints(s, y, a, th, 0.05)
    y[7] = 0
    check(s, th)
    a.numpy()[:] = 1  # one group only: no rate gap observable
    c = roc_fairness_constraints(s, y, a, th, 0.05)
    assert c.values.numel() == 0 and c.index.numel() == 0
