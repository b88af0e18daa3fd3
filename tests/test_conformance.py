"""Registry-driven conformance suite: every public loss passes the same checks.

Cases live in ``tests/cases/cases_*.py``; see :class:`cases.LossCase`.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from cases import LossCase, all_cases
from xrisk.state import PendingWrites

CASES = all_cases()
IDS = [c.name for c in CASES]
# losses whose schedules read the epoch warn once that it is inferred (tests/test_step_contract.py checks that)
pytestmark = pytest.mark.filterwarnings(r"ignore:.*set_epoch\(\) was never called")


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


def test_every_exported_loss_has_a_case():
    """The contract: every module exported from ``xrisk.losses`` is driven by at least one case (as the loss
    itself or as a submodule of one, like the false-negative detector inside a contrastive loss)."""
    import xrisk.losses

    covered = {type(m) for case in CASES for m in case.make().modules()}
    missing = [name for name in xrisk.losses.__all__ if getattr(xrisk.losses, name) not in covered]
    assert not missing, f"losses without a LossCase in tests/cases: {missing}"


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
    if _has_objective(loss):
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


DEGENERATE = [c for c in CASES if "degenerate" in c.extra]


@pytest.mark.parametrize("case", DEGENERATE, ids=[c.name for c in DEGENERATE])
def test_degenerate_batches_are_connected_zero_and_keep_state(case: LossCase):
    loss = case.make()
    loss(*_prepare(case, case.batch(0)))
    before = _states(loss)
    for batch in case.extra["degenerate"]():
        args = _prepare(case, batch)
        out = loss(*args)
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
        for i in case.grad_args:
            assert torch.equal(args[i].grad, torch.zeros_like(args[i]))
    _assert_same_state(before, _states(loss))


def _has_objective(loss: torch.nn.Module) -> bool:
    """A surrogate loss reports the true objective's estimate; a loss whose value is the objective (focal) has none
    (``xrisk.recipes.runner.train_loss_key`` makes the same distinction)."""
    return callable(getattr(loss, "objective", None))


def _is_stateful(loss: torch.nn.Module) -> bool:
    params = {k for k, _ in loss.named_parameters()}
    return any(k not in params for k in loss.state_dict())


CONTEXTS = {"plain": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("context", list(CONTEXTS))
def test_state_changes_in_training_mode_only(case: LossCase, context: str):
    """BatchNorm's rule: eval() computes the training value from a copy of the update and writes nothing
    (under no_grad / inference_mode too); training mode updates the state (under no_grad / inference_mode too)."""
    loss = case.make()
    for seed in range(2):
        loss(*_prepare(case, case.batch(seed)))
    before = _states(loss)
    twin = copy.deepcopy(loss)
    want = twin(*_prepare(case, case.batch(2)))  # what a training step returns (and writes)
    loss.eval()
    with CONTEXTS[context]():
        got = loss(*_prepare(case, case.batch(2)))
    assert torch.equal(got.detach(), want.detach()), "eval() returns the training-mode value"
    if _has_objective(loss):
        assert torch.equal(loss.objective(), twin.objective()), "objective() reports the eval call's estimate"
    _assert_same_state(before, _states(loss))
    loss.train()
    with CONTEXTS[context]():
        loss(*_prepare(case, case.batch(2)))
    after = _states(loss)
    _assert_same_state(_states(twin), after)  # the mode decides, not the autograd context
    if _is_stateful(loss):
        assert any(not torch.equal(before[k], after[k]) for k in before), "training mode updates the state"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_failed_step_writes_nothing(case: LossCase, monkeypatch):
    """All or nothing: a step whose last staged update is not finite raises and changes no buffer."""
    loss = case.make()
    loss(*_prepare(case, case.batch(0)))
    before = _states(loss)
    commit = PendingWrites.commit
    staged = []

    def poisoned(self: PendingWrites, *, write: bool, check: bool = True) -> None:
        if self._rows:  # spoil the last staged update: the others must not be written either
            value, seen, index, rows, mask, _ = self._rows[-1]
            bad = rows.clone()
            bad.view(-1)[-1] = float("nan")
            self._rows[-1] = (value, seen, index, bad, mask, "forced failure")
            staged.append(len(self._rows))
        elif len(self):  # only other writes (a step counter): fail the step's check
            self.check(torch.full((1,), float("nan")), "forced failure")
            staged.append(len(self))
        return commit(self, write=write, check=check)

    monkeypatch.setattr(PendingWrites, "commit", poisoned)
    if not _is_stateful(loss):
        loss(*_prepare(case, case.batch(1)))
        assert not staged  # nothing to stage, nothing to spoil
        return
    with pytest.raises(FloatingPointError, match="forced failure; no state was changed"):
        loss(*_prepare(case, case.batch(1)))
    assert staged
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


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 summation order (the device path and the validated path sum in different orders; a
    temperature's momentum near 0 is a difference of O(1) terms, hence the absolute tolerance)."""
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_validation_off_trains_like_validation_on(case: LossCase):
    """``xrisk.validation(False)`` changes how a step is computed (device masks, no host read), never what it
    computes: over normal, empty and degenerate batches the values, the inputs' gradients, the loss's own
    parameters' gradients (a zero gradient and no gradient differ: an optimizer with momentum moves a parameter
    with a zero gradient and skips one without), the state and ``objective()`` agree with validation on."""
    import xrisk

    ref = case.make()
    losses = {True: ref, False: copy.deepcopy(ref)}
    batches = [case.batch(0)]
    batches += [case.empty_batch()] if case.empty_batch is not None else []
    batches += list(case.extra["degenerate"]()) if "degenerate" in case.extra else []
    batches += [case.batch(1), case.batch(2), case.batch(0)]
    for step, batch in enumerate(batches):
        seen = {}
        for on, loss in losses.items():
            for p in loss.parameters():
                p.grad = None
            args = _prepare(case, copy.deepcopy(batch))
            with xrisk.validation(on):
                out = loss(*args)
                out.backward()
                obj = loss.objective().detach().clone() if _has_objective(loss) else None
            seen[on] = (out.detach(), [args[i].grad for i in case.grad_args],
                        {k: p.grad for k, p in loss.named_parameters()}, _states(loss), obj)
        (o1, g1, p1, s1, j1), (o0, g0, p0, s0, j0) = seen[True], seen[False]
        where = f"step {step}"
        assert _close(o1, o0), f"{where}: value {o1} (on) vs {o0} (off)"
        for a, b in zip(g1, g0):
            assert (a is None) == (b is None) and (a is None or _close(a, b)), f"{where}: input gradient differs"
        for k in p1:
            assert (p1[k] is None) == (p0[k] is None), f"{where}: parameter {k} gradient {p1[k]} (on) vs {p0[k]} (off)"
            assert p1[k] is None or _close(p1[k], p0[k]), f"{where}: parameter {k} gradient differs"
        assert s1.keys() == s0.keys()
        for k in s1:
            assert _close(s1[k], s0[k]), f"{where}: state {k} differs"
        assert (j1 is None) == (j0 is None) and (j1 is None or _close(j1, j0)), f"{where}: objective {j1} vs {j0}"
