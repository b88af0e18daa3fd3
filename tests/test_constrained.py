"""xrisk.constrained: estimators, weights, penalty exactness against scipy, Lagrangian, state rules, errors."""

from __future__ import annotations

import copy
import doctest
import importlib

import numpy as np
import pytest
import torch

from xrisk.constrained import (Constraints, HingePenalty, Lagrangian, ProblemState, SquaredHingePenalty,
                               equality_as_inequalities)
from xrisk.functional.constrained import hinge_weight, msvr_correction, smoothed_hinge

FORMULATIONS = {
    "hinge": lambda m, **kw: HingePenalty(m, beta=5.0, **kw),
    "smooth": lambda m, **kw: HingePenalty(m, beta=5.0, smooth=0.3, **kw),
    "squared": lambda m, **kw: SquaredHingePenalty(m, beta=5.0, **kw),
    "lagrangian": lambda m, **kw: Lagrangian(m, dual_lr=0.5, **kw),
}


def _state(values, index=None, objective=None, previous=None) -> ProblemState:
    values = torch.as_tensor(values, dtype=torch.float32)
    obj = torch.tensor(0.0) if objective is None else objective
    return ProblemState(obj, values, None if index is None else torch.as_tensor(index), previous)


# ------------------------------------------------------------------------------------ estimators
@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_moving_average_matches_closed_form_with_subsets(name: str) -> None:
    gamma = 0.3
    f = FORMULATIONS[name](4, gamma=gamma)
    seq = [([0, 2], [1.0, -2.0]), ([2, 3], [4.0, 0.5]), ([0, 1, 2, 3], [3.0, 1.5, -1.0, 2.0]), ([0], [-6.0])]
    for index, values in seq:
        f(_state(values, index))
    # closed form: the first observation of i, then u <- (1-g) u + g v for each later one
    expected = []
    for i in range(4):
        obs = [v[index.index(i)] for index, v in seq if i in index]
        u = obs[0] * (1 - gamma) ** (len(obs) - 1) + sum(gamma * (1 - gamma) ** (len(obs) - 1 - t) * obs[t]
                                                           for t in range(1, len(obs)))
        expected.append(u)
    assert torch.allclose(f.u.value, torch.tensor(expected), atol=1e-6)
    assert f.u.seen.all() and int(f.num_steps) == 4


def test_msvr_matches_closed_form() -> None:
    gamma = 0.4
    f = HingePenalty(3, beta=1.0, gamma=gamma, estimator="msvr")
    f(_state([1.0, 2.0, 3.0], previous=torch.tensor([9.0, 9.0, 9.0])))  # first visit: the value itself
    assert f.u.value.tolist() == [1.0, 2.0, 3.0]
    f(_state([2.0, -1.0], index=[0, 2], previous=torch.tensor([1.5, 0.0])))
    corr = (3 - 2) / (2 * (1 - gamma)) + (1 - gamma)
    assert corr == pytest.approx(msvr_correction(3, 2, gamma))
    want0 = (1 - gamma) * 1.0 + gamma * 2.0 + corr * (2.0 - 1.5)
    want2 = (1 - gamma) * 3.0 + gamma * -1.0 + corr * (-1.0 - 0.0)
    assert torch.allclose(f.u.value, torch.tensor([want0, 2.0, want2]), atol=1e-6)
    g = HingePenalty(1, beta=1.0, gamma=gamma, estimator="msvr", msvr_weight=0.25)
    g(_state([1.0], previous=torch.tensor([0.0])))
    g(_state([3.0], previous=torch.tensor([2.0])))
    assert float(g.u.value) == pytest.approx((1 - gamma) * 1.0 + gamma * 3.0 + 0.25 * 1.0)


# ------------------------------------------------------------------------------------ weights and gradients
def test_smoothed_hinge_gradient_is_clipped_ratio() -> None:
    u = torch.linspace(-1, 2, 31, dtype=torch.float64, requires_grad=True)
    nu = 0.5
    (grad,) = torch.autograd.grad(smoothed_hinge(u, nu).sum(), u)
    assert torch.allclose(grad, (u.detach() / nu).clamp(0, 1))
    assert torch.allclose(hinge_weight(u.detach(), nu), grad)
    assert hinge_weight(torch.tensor([-1.0, 0.0, 1e-6]), None).tolist() == [0.0, 0.0, 1.0]


def test_smoothed_hinge_gradcheck_float64() -> None:
    # points off the two kinks u = 0 and u = nu of the envelope's second derivative
    u = torch.tensor([-0.8, -0.1, 0.05, 0.2, 0.45, 0.7, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: smoothed_hinge(x, 0.5), (u,))
    assert torch.autograd.gradgradcheck(lambda x: smoothed_hinge(x, 0.5), (u,))


@pytest.mark.parametrize("smooth", [None, 0.4])
def test_penalty_gradient_uses_detached_weights_of_the_estimates(smooth) -> None:
    beta, gamma = 3.0, 0.5
    f = HingePenalty(3, beta=beta, gamma=gamma, smooth=smooth)
    f(_state([0.1, -0.3, 0.6]))  # u = values
    g = torch.tensor([-0.5, 0.2, 0.3], requires_grad=True)
    obj = torch.tensor(1.5, requires_grad=True)
    out = f(ProblemState(obj, g, torch.tensor([0, 1, 2])))
    out.backward()
    u = 0.5 * torch.tensor([0.1, -0.3, 0.6]) + 0.5 * torch.tensor([-0.5, 0.2, 0.3])
    w = hinge_weight(u, smooth)
    assert torch.allclose(g.grad, beta / 3 * w)
    assert float(obj.grad) == 1.0
    assert float(out.detach()) == pytest.approx(1.5 + beta / 3 * float(w @ g.detach()))


def test_squared_hinge_and_lagrangian_weights_and_scales() -> None:
    sq = SquaredHingePenalty(4, beta=2.0, gamma=1.0)
    g = torch.tensor([0.5, -1.0], requires_grad=True)
    sq(ProblemState(torch.tensor(0.0), g, torch.tensor([1, 3]))).backward()
    assert g.grad.tolist() == pytest.approx([2.0 / 2 * 0.5, 0.0])
    lag = Lagrangian(4, dual_lr=0.5, init=1.0)
    g = torch.tensor([0.5, -4.0], requires_grad=True)
    lag(ProblemState(torch.tensor(0.0), g, torch.tensor([1, 3]))).backward()
    assert g.grad.tolist() == pytest.approx([4 / 2 * 1.0, 4 / 2 * 1.0])  # (m/|S|) lambda_t (before the step)
    assert lag.multipliers.tolist() == pytest.approx([1.0, 1.25, 1.0, 0.0])  # projected ascent


# ------------------------------------------------------------------------------------ exactness vs scipy
def _qp() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array([2.0, 1.5])
    G = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.0]])
    h = np.array([1.0, 0.5, 0.0])
    return a, G, h


def _scipy_constrained() -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import minimize

    a, G, h = _qp()
    res = minimize(lambda x: 0.5 * np.sum((x - a) ** 2), np.zeros(2), jac=lambda x: x - a, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda x: h - G @ x, "jac": lambda x: -G}], tol=1e-14)
    x = res.x
    active = np.abs(G @ x - h) < 1e-7
    lam = np.zeros(3)
    lam[active] = np.linalg.lstsq(G[active].T, a - x, rcond=None)[0]  # x - a + G^T lambda = 0
    return x, lam


def _scipy_penalized(beta: float) -> np.ndarray:
    """min 1/2 ||x - a||^2 + (beta/m) sum s_i, s >= 0, s >= Gx - h (the hinge penalty as a smooth QP)."""
    from scipy.optimize import minimize

    a, G, h = _qp()
    m = len(h)
    fun = lambda z: 0.5 * np.sum((z[:2] - a) ** 2) + beta / m * z[2:].sum()  # noqa: E731
    jac = lambda z: np.concatenate([z[:2] - a, np.full(m, beta / m)])  # noqa: E731
    cons = [{"type": "ineq", "fun": lambda z: z[2:]},
            {"type": "ineq", "fun": lambda z: z[2:] - (G @ z[:2] - h)}]
    res = minimize(fun, np.zeros(2 + m), jac=jac, method="SLSQP", constraints=cons, tol=1e-14)
    return res.x[:2]


def _train(formulation, steps: int = 6000, lr0: float = 1.0) -> np.ndarray:
    a, G, h = (torch.tensor(v, dtype=torch.float64) for v in _qp())
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))  # strongly convex: eta_t ~ 1/t
    for _ in range(steps):
        state = ProblemState(0.5 * ((x - a) ** 2).sum(), G @ x - h)
        loss = formulation(state)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return x.detach().numpy()


def test_hinge_penalty_is_exact_above_the_threshold_and_not_below() -> None:
    x_star, lam = _scipy_constrained()
    m = 3
    threshold = m * lam.max()  # exact iff beta/m > ||lambda*||_inf
    assert threshold > 0.5
    x_hi = _train(HingePenalty(m, beta=2.0 * threshold, gamma=1.0))
    assert np.allclose(x_hi, x_star, atol=5e-3), (x_hi, x_star)
    assert np.allclose(_scipy_penalized(2.0 * threshold), x_star, atol=1e-6)
    beta_lo = 0.5 * threshold
    x_lo = _train(HingePenalty(m, beta=beta_lo, gamma=1.0))
    ref_lo = _scipy_penalized(beta_lo)
    assert np.allclose(x_lo, ref_lo, atol=5e-3), (x_lo, ref_lo)
    a, G, h = _qp()
    assert (G @ x_lo - h).max() > 0.05  # infeasible below the threshold
    assert (G @ x_hi - h).max() < 5e-3


def test_squared_hinge_needs_growing_beta_and_lagrangian_finds_kkt_point() -> None:
    x_star, lam = _scipy_constrained()
    a, G, h = _qp()
    violations = []
    for beta in (10.0, 100.0):
        x = _train(SquaredHingePenalty(3, beta=beta, gamma=1.0))
        violations.append((G @ x - h).max())
    assert violations[0] > violations[1] > 1e-3  # infeasible for every finite beta, less so as it grows
    lag = Lagrangian(3, dual_lr=0.2)  # simultaneous GDA: converges for small enough steps (diverges at 1.0)
    xt = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([xt], lr=0.5)
    at, Gt, ht = (torch.tensor(v, dtype=torch.float64) for v in (a, G, h))
    for _ in range(2000):
        loss = lag(ProblemState(0.5 * ((xt - at) ** 2).sum(), Gt @ xt - ht))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.allclose(xt.detach().numpy(), x_star, atol=1e-4)
    assert np.allclose(lag.multipliers.numpy(), lam, atol=1e-3)
    rep = lag.report([xt])
    assert rep.kkt_residual < 1e-3


# ------------------------------------------------------------------------------------ state rules
@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_eval_mode_writes_nothing_and_returns_the_same_value(name: str) -> None:
    f = FORMULATIONS[name](3, gamma=0.5)
    f(_state([0.3, -0.2, 0.1]))
    before = copy.deepcopy(f.state_dict())
    g = FORMULATIONS[name](3, gamma=0.5)
    g.load_state_dict(before)
    f.eval()
    with torch.no_grad():
        v_eval = f(_state([0.5, 0.1, -0.4], objective=torch.tensor(2.0)))
    for k, v in f.state_dict().items():
        assert torch.equal(v, before[k]), k
    v_train = g(_state([0.5, 0.1, -0.4], objective=torch.tensor(2.0)))
    assert float(v_eval) == float(v_train)


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_state_dict_round_trip_continues_bit_identically(name: str) -> None:
    torch.manual_seed(3)
    seq = [(torch.randn(3), torch.randperm(5)[:3]) for _ in range(6)]
    a = FORMULATIONS[name](5, gamma=0.7)
    outs_a = [float(a(_state(v, i, objective=torch.tensor(1.0)))) for v, i in seq]
    b = FORMULATIONS[name](5, gamma=0.7)
    for v, i in seq[:3]:
        b(_state(v, i, objective=torch.tensor(1.0)))
    c = FORMULATIONS[name](5, gamma=0.7)
    c.load_state_dict(copy.deepcopy(b.state_dict()))
    outs_c = [float(c(_state(v, i, objective=torch.tensor(1.0)))) for v, i in seq[3:]]
    assert outs_c == outs_a[3:]
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k


def test_checkpoint_round_trip_and_mismatch(tmp_path) -> None:
    from xrisk import CheckpointMismatchError, load_checkpoint, save_checkpoint

    f = HingePenalty(4, beta=2.0)
    f(_state([0.1, 0.2, 0.3, 0.4]))
    path = save_checkpoint(tmp_path / "c.pt", loss=f)
    g = HingePenalty(4, beta=2.0)
    load_checkpoint(path, loss=g)
    assert torch.equal(g.u.value, f.u.value) and int(g.num_steps) == 1
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(path, loss=HingePenalty(5, beta=2.0))
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(path, loss=HingePenalty(4, beta=2.0, estimator="msvr"))


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_nan_constraint_values_raise_and_leave_state_untouched(name: str) -> None:
    f = FORMULATIONS[name](3)
    f(_state([0.1, 0.2, 0.3]))
    before = copy.deepcopy(f.state_dict())
    with pytest.raises(ValueError, match="NaN/inf"):
        f(_state([0.1, float("nan"), 0.3]))
    with pytest.raises(ValueError, match="NaN/inf"):
        f(_state([0.1, 0.2, 0.3], objective=torch.tensor(float("inf"))))
    with pytest.raises(FloatingPointError, match="overflow"):
        # finite float64 values whose float32 estimate overflows
        f(ProblemState(torch.tensor(0.0), torch.tensor([1e39, 0.0, 0.0], dtype=torch.float64)))
    for k, v in f.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_misconfiguration_and_bad_shapes_raise_naming_the_value() -> None:
    with pytest.raises(ValueError, match="beta.*-1"):
        HingePenalty(3, beta=-1.0)
    with pytest.raises(ValueError, match="beta.*nan"):
        SquaredHingePenalty(3, beta=float("nan"))
    with pytest.raises(ValueError, match="num_constraints.*0"):
        HingePenalty(0, beta=1.0)
    with pytest.raises(ValueError, match="gamma.*1.5"):
        HingePenalty(3, beta=1.0, gamma=1.5)
    with pytest.raises(ValueError, match="estimator.*'adam'"):
        HingePenalty(3, beta=1.0, estimator="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="msvr.*gamma=1.0"):
        HingePenalty(3, beta=1.0, gamma=1.0, estimator="msvr")
    with pytest.raises(ValueError, match="smooth.*-0.1"):
        HingePenalty(3, beta=1.0, smooth=-0.1)
    with pytest.raises(ValueError, match="dual_lr"):
        Lagrangian(3, dual_lr=0.0)
    with pytest.raises(ValueError, match="sync.*'sum'"):
        HingePenalty(3, beta=1.0, sync="sum")  # type: ignore[arg-type]
    f = HingePenalty(3, beta=1.0)
    with pytest.raises(ValueError, match="num_constraints=3 but got 2"):
        f(_state([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"1-D \[k\], got shape \(3, 1\)"):
        f(_state([[0.1], [0.2], [0.3]]))
    with pytest.raises(ValueError, match="index has 1 entries but the batch has 2"):
        f(_state([0.1, 0.2], [0]))
    with pytest.raises(IndexError, match="index 3 is out of range"):
        f(_state([0.1, 0.2], [0, 3]))
    with pytest.raises(ValueError, match="repeats a constraint"):
        f(_state([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="scalar"):
        f(ProblemState(torch.zeros(2), torch.zeros(3)))
    with pytest.raises(TypeError, match="ProblemState"):
        f(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs ProblemState.previous"):
        HingePenalty(3, beta=1.0, estimator="msvr")(_state([0.1, 0.2, 0.3]))
    assert int(f.num_steps) == 0 and not f.u.seen.any()


def test_empty_step_returns_connected_objective_and_keeps_state() -> None:
    f = HingePenalty(3, beta=1.0)
    obj = torch.tensor(2.0, requires_grad=True)
    out = f(ProblemState(obj, torch.zeros(0), torch.zeros(0, dtype=torch.long)))
    out.backward()
    assert float(out.detach()) == 2.0 and float(obj.grad) == 1.0 and int(f.num_steps) == 0


# ------------------------------------------------------------------------------------ reports
def test_report_values() -> None:
    f = HingePenalty(4, beta=8.0, gamma=1.0)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = f(ProblemState((x ** 2).sum(), torch.stack([x[0] - 0.5, -x[1], x[1] - 1.9]), torch.tensor([0, 1, 3])))
    loss.backward()
    rep = f.report([x])
    assert torch.isnan(rep.estimates[2]) and rep.estimates[[0, 1, 3]].tolist() == pytest.approx([0.5, -2.0, 0.1])
    assert rep.violation.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.1])
    assert rep.max_violation == pytest.approx(0.5)
    assert rep.multipliers.tolist() == pytest.approx([2.0, 0.0, 0.0, 2.0])  # beta/m 1[u > 0]
    assert rep.complementarity == pytest.approx(1.0)
    assert rep.stationarity == pytest.approx(float(x.grad.norm()))
    assert rep.kkt_residual == pytest.approx(max(0.5, 1.0, float(x.grad.norm())))
    assert rep.steps == 1
    # objective(): last objective + (beta/m) sum [u]_+ over the observed estimates
    assert float(f.objective()) == pytest.approx(5.0 + 8.0 / 4 * 0.6)
    assert torch.isnan(HingePenalty(2, beta=1.0).objective())


def test_equality_as_inequalities() -> None:
    h = torch.tensor([0.5, -0.25])
    assert equality_as_inequalities(h, tol=0.25).tolist() == [0.25, -0.5, -0.75, 0.0]
    with pytest.raises(ValueError, match="tol"):
        equality_as_inequalities(h, tol=-1.0)


# ------------------------------------------------------------------------------------ compositional objective
def test_compositional_objective_keeps_its_own_estimators() -> None:
    from xrisk.losses import APLoss

    torch.manual_seed(0)
    x = torch.randn(12, 3)
    y = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    index = torch.arange(12)
    model = torch.nn.Linear(3, 1)
    ap_a, ap_b = APLoss(12, gamma=0.7), APLoss(12, gamma=0.7)
    f = HingePenalty(2, beta=4.0, gamma=0.5)
    scores = torch.sigmoid(model(x)).squeeze(1)
    cons = torch.stack([scores.mean() - 0.3, 0.2 - scores.mean()])
    total = f(ProblemState(ap_a(scores, y, index), cons))
    grads = torch.autograd.grad(total, list(model.parameters()))
    scores_b = torch.sigmoid(model(x)).squeeze(1)
    ap_val = ap_b(scores_b, y, index)
    w = hinge_weight(cons.detach(), None)  # first visit: u = values
    manual = ap_val + 4.0 / 2 * (w * torch.stack([scores_b.mean() - 0.3, 0.2 - scores_b.mean()])).sum()
    grads_b = torch.autograd.grad(manual, list(model.parameters()))
    for g1, g2 in zip(grads, grads_b):
        assert torch.allclose(g1, g2, atol=1e-6)
    assert torch.equal(ap_a.u_all.value, ap_b.u_all.value) and ap_a.u_all.seen.any()


# ------------------------------------------------------------------------------------ docstring examples
@pytest.mark.parametrize("module", ["xrisk.constrained.problem", "xrisk.constrained.hinge",
                                    "xrisk.constrained.squared_hinge", "xrisk.constrained.lagrangian",
                                    "xrisk.constrained.fairness", "xrisk.constrained.forgetting",
                                    "xrisk.functional.constrained", "xrisk.functional.prox",
                                    "xrisk.optim.smoothed_compositional", "xrisk.optim.prox_linear"])
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_constraints_pair_builds_a_state() -> None:
    c = Constraints(torch.tensor([0.1, 0.2]), torch.tensor([0, 2]))
    s = ProblemState.from_constraints(torch.tensor(1.0), c)
    assert s.index.tolist() == [0, 2] and s.constraints.tolist() == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_half_and_double_keep_the_state_dtypes(name: str) -> None:
    f = FORMULATIONS[name](3)
    f(_state([0.1, 0.2, 0.3]))
    f.half()
    f.double()
    assert f.u.value.dtype == torch.float32 and f.num_steps.dtype == torch.int64
    if name == "lagrangian":
        assert f.multipliers.dtype == torch.float32
    out = f(ProblemState(torch.tensor(1.0, dtype=torch.float64), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)))
    assert out.dtype == torch.float64 and int(f.num_steps) == 2
    assert "num_steps" not in dict(f.named_buffers())  # replicated state: never broadcast by DDP


# ------------------------------------------------------------------------------------ fast paths
@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_whole_set_fast_path_equals_the_first_visit_rule_and_restarts_after_load(name: str) -> None:
    torch.manual_seed(5)
    seq = [torch.randn(4) for _ in range(5)]
    fast = FORMULATIONS[name](4, gamma=0.6)  # every step observes all four: the lerp-only path from step 2 on
    slow = FORMULATIONS[name](4, gamma=0.6)  # the same values through an explicit index: the first-visit path
    for v in seq:
        a = fast(_state(v, objective=torch.tensor(1.0)))
        b = slow(_state(v, [0, 1, 2, 3], objective=torch.tensor(1.0)))
        assert float(a) == float(b)
    for k, v in fast.state_dict().items():
        assert torch.equal(v, slow.state_dict()[k]), k
    # a state loaded into the module (here: a fresh one, nothing seen) must be read again, not assumed seen
    fast.load_state_dict(FORMULATIONS[name](4, gamma=0.6).state_dict())
    fast(_state([0.5, -0.5, 0.25, 1.0]))
    assert fast.u.value.tolist() == [0.5, -0.5, 0.25, 1.0] and bool(fast.u.seen.all())


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_validation_off_matches_validation_on_and_still_refuses_nan(name: str) -> None:
    from xrisk import validation

    torch.manual_seed(6)
    seq = [(torch.randn(3), None if t % 2 else torch.tensor([2, 0, 1])) for t in range(5)]
    on, off = FORMULATIONS[name](3, gamma=0.5), FORMULATIONS[name](3, gamma=0.5)
    for v, i in seq:
        a = on(_state(v, i, objective=torch.tensor(0.5)))
        with validation(False):
            b = off(_state(v, i, objective=torch.tensor(0.5)))
        assert float(a) == float(b)
    for k, v in on.state_dict().items():
        assert torch.equal(v, off.state_dict()[k]), k
    before = copy.deepcopy(off.state_dict())
    with validation(False), pytest.raises(RuntimeError, match="NaN/inf.*no state was changed"):
        off(_state([0.1, float("nan"), 0.3]))
    with validation(False), pytest.raises(RuntimeError, match="NaN/inf"):
        off(_state([0.1, 0.2, 0.3], objective=torch.tensor(float("inf"))))
    for k, v in off.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_full_index_is_recognised_only_while_unmodified() -> None:
    from xrisk.constrained import full_index
    from xrisk.constrained.problem import is_full_index

    ids = full_index(4)
    assert ids is full_index(4) and ids.tolist() == [0, 1, 2, 3] and is_full_index(ids, 4)
    assert not is_full_index(torch.arange(4), 4) and not is_full_index(ids, 5)
    f, g = HingePenalty(4, beta=1.0, gamma=0.5), HingePenalty(4, beta=1.0, gamma=0.5)
    for v in ([0.2, -0.1, 0.3, 0.4], [0.1, 0.1, -0.3, 0.2]):
        assert float(f(_state(v, full_index(4)))) == float(g(_state(v)))
    assert torch.equal(f.u.value, g.u.value)
    ids.add_(0)  # written in place: no longer trusted, and replaced
    assert not is_full_index(ids, 4) and full_index(4) is not ids
    with pytest.raises(ValueError, match="repeats a constraint"):
        f(_state([0.1, 0.2, 0.3, 0.4], ids.fill_(1)))
