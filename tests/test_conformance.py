"""Registry-driven conformance suite: every public loss passes the same checks.

Cases live in ``tests/cases/cases_*.py``; see :class:`cases.LossCase`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cases import LossCase, all_cases

CASES = all_cases()
IDS = [c.name for c in CASES]


def _prepare(case: LossCase, args: tuple) -> tuple:
    out = list(args)
    for i in case.grad_args:
        out[i] = out[i].detach().clone().requires_grad_(True)
    return tuple(out)


def _states(mod: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in mod.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"state {k} differs"


def test_registry_not_empty():
    assert len(CASES) >= 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_finite_value_and_backward(case: LossCase):
    loss = case.make()
    for seed in range(3):
        args = _prepare(case, case.batch(seed))
        out = loss(*args)
        assert out.dim() == 0, "a loss returns a scalar tensor"
        assert torch.isfinite(out)
        out.backward()
        for i in case.grad_args:
            assert args[i].grad is not None and torch.isfinite(args[i].grad).all()
    obj = loss.objective()
    assert obj.dim() == 0 and torch.isfinite(obj), "objective() estimates the true objective after a batch"


@pytest.mark.parametrize("case", [c for c in CASES if c.empty_batch is not None],
                         ids=[c.name for c in CASES if c.empty_batch is not None])
def test_empty_batch_is_connected_zero_and_keeps_state(case: LossCase):
    loss = case.make()
    loss(*_prepare(case, case.batch(0)))  # put something in the state first
    before = _states(loss)
    args = _prepare(case, case.empty_batch())
    out = loss(*args)
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    for i in case.grad_args:
        assert args[i].grad is not None and torch.equal(args[i].grad, torch.zeros_like(args[i]))
    _assert_same_state(before, _states(loss))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_raises(case: LossCase, bad: float):
    loss = case.make()
    args = list(case.batch(0))
    i = case.grad_args[0]
    x = args[i].detach().clone()
    x.view(-1)[0] = bad
    args[i] = x
    with pytest.raises(ValueError, match="NaN|inf"):
        loss(*args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wrong_shape_raises_naming_shapes(case: LossCase):
    loss = case.make()
    args = list(case.batch(0))
    i = case.grad_args[0]
    args[i] = args[i][:-1]
    with pytest.raises(ValueError, match=r"shape|entries|\d"):
        loss(*args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_continues_bit_identically(case: LossCase):
    a = case.make()
    for seed in range(3):
        a(*_prepare(case, case.batch(seed)))
    b = case.make()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    _assert_same_state(_states(a), _states(b))
    for seed in range(3, 6):
        oa = a(*_prepare(case, case.batch(seed)))
        ob = b(*_prepare(case, case.batch(seed)))
        assert torch.equal(oa, ob)
    _assert_same_state(_states(a), _states(b))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_to_keeps_fp32_state_and_device(case: LossCase):
    loss = case.make()
    loss(*_prepare(case, case.batch(0)))
    before = _states(loss)
    loss.to("cpu")
    loss.half()
    checked = 0
    params = dict(loss.named_parameters())
    for k, v in loss.state_dict().items():  # per-sample state is in state_dict, not in named_buffers()
        if k not in params and k in before and before[k].dtype == torch.float32 and v.numel() > 1:
            assert v.dtype == torch.float32, f"per-sample state {k} was cast by .half()"
            checked += 1
    assert checked or not any(v.numel() > 1 for k, v in before.items() if k not in params)
    loss.float()


@pytest.mark.parametrize("case", [c for c in CASES if c.gradcheck is not None],
                         ids=[c.name for c in CASES if c.gradcheck is not None])
def test_kernel_gradcheck_float64(case: LossCase):
    case.gradcheck()
