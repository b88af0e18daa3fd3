"""Prox maps, Moreau-envelope gradients, SmoothedCompositionalGD and ProxLinear."""

from __future__ import annotations

import math

import pytest
import torch

from xrisk.functional.prox import (absolute, capped_l1, hinge, moreau_envelope, prox_abs, prox_capped_l1,
                                   prox_hinge)
from xrisk.optim import ProxLinear, SmoothedCompositionalGD

PROX = {
    "hinge": (hinge, prox_hinge),
    "abs": (absolute, prox_abs),
    "capped_l1": (lambda y: capped_l1(y, 1.0), lambda y, mu: prox_capped_l1(y, mu, 1.0)),
}


@pytest.mark.parametrize("name", list(PROX))
def test_prox_is_the_argmin_on_a_grid(name: str) -> None:
    _, prox = PROX[name]
    mu = 0.4
    grid = torch.linspace(-4, 4, 160001, dtype=torch.float64)
    for y in [-2.7, -1.05, -0.3, 0.0, 0.15, 0.55, 1.2, 1.45, 3.1]:
        phi = {"hinge": grid.clamp_min(0), "abs": grid.abs(), "capped_l1": grid.abs().clamp_max(1.0)}[name]
        objective = phi + (grid - y) ** 2 / (2 * mu)
        best = grid[objective.argmin()]
        z = prox(torch.tensor([y], dtype=torch.float64), mu)
        assert float(z) == pytest.approx(float(best), abs=1e-4), (name, y)


@pytest.mark.parametrize("name", list(PROX))
def test_moreau_envelope_gradient_matches_finite_differences(name: str) -> None:
    value, prox = PROX[name]
    mu, eps = 0.3, 1e-6
    # points away from the kinks of the envelope (capped-l1: where both branches tie, |y| = 1 + mu/2)
    ys = torch.tensor([-2.3, -1.6, -0.9, -0.2, 0.1, 0.25, 0.7, 1.3, 1.9, 2.6], dtype=torch.float64)
    env, grad, _ = moreau_envelope(ys, mu, prox, value)
    for j in range(ys.numel()):
        e = torch.zeros_like(ys)
        e[j] = eps
        up = moreau_envelope(ys + e, mu, prox, value)[0]
        down = moreau_envelope(ys - e, mu, prox, value)[0]
        assert float((up - down) / (2 * eps)) == pytest.approx(float(grad[j]), abs=1e-6), (name, float(ys[j]))


@pytest.mark.parametrize("name", list(PROX))
def test_moreau_envelope_value_gradcheck_float64(name: str) -> None:
    """Autograd through ``f(prox(y)) + ||prox(y) - y||^2 / (2 mu)`` equals finite differences (float64)
    and, by the envelope theorem, the closed form ``(y - prox(y)) / mu``."""
    value, prox = PROX[name]
    mu = 0.3
    ys = torch.tensor([-2.3, -0.9, -0.2, 0.1, 0.7, 1.9, 2.6], dtype=torch.float64, requires_grad=True)

    def envelope(y: torch.Tensor) -> torch.Tensor:
        return moreau_envelope(y, mu, prox, value)[0]

    assert torch.autograd.gradcheck(envelope, (ys,))
    (grad,) = torch.autograd.grad(envelope(ys), ys)
    assert torch.allclose(grad, moreau_envelope(ys.detach(), mu, prox, value)[1], atol=1e-12)


def test_smoothed_gd_certificate_and_convergence_to_a_known_stationary_set() -> None:
    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    mu = 1e-3
    opt = SmoothedCompositionalGD([x], lr=mu / 20, mu=mu, prox="abs")

    def c() -> torch.Tensor:  # min | ||Ax - b||^2 - 1 |: stationary (global) set ||Ax - b|| = 1
        return ((a @ x - b) ** 2).sum().reshape(1) - 1.0

    first = opt.step(c)
    # the certificate of x0: y = c(x0), z = prox, xi = (y - z)/mu, epsilon = ||J^T xi||
    y = float(((a @ torch.zeros(3, dtype=torch.float64) - b) ** 2).sum() - 1.0)
    z = math.copysign(max(abs(y) - mu, 0.0), y)
    jac = 2 * a.t() @ (-b)
    assert first.delta == pytest.approx(abs(z - y))
    assert first.epsilon == pytest.approx(float(jac.norm()) * (y - z) / mu)
    assert first.value == pytest.approx(abs(y))
    for _ in range(20000):
        cert = opt.step(c)
        if cert.epsilon < 1e-6:
            break
    assert cert.epsilon < 1e-6 and cert.delta <= mu + 1e-12
    assert abs(float(((a @ x - b) ** 2).sum().detach()) - 1.0) <= mu + 1e-9


@pytest.mark.parametrize("prox", ["hinge", "capped_l1"])
def test_smoothed_gd_builtin_proxes_decrease_the_envelope(prox: str) -> None:
    x = torch.tensor([0.6, -0.1], dtype=torch.float64, requires_grad=True)  # c(x) inside the cap
    opt = SmoothedCompositionalGD([x], lr=0.01, mu=0.1, prox=prox, cap=1.0)
    envs = [opt.step(lambda: torch.stack([x[0] ** 2 + x[1], x[0] * x[1] + 0.2])).envelope for _ in range(300)]
    assert all(b <= a + 1e-12 for a, b in zip(envs, envs[1:]))  # GD on a smooth function with a small step
    assert envs[-1] < envs[0]


def test_smoothed_gd_user_prox_and_errors() -> None:
    x = torch.tensor([2.0], requires_grad=True)
    opt = SmoothedCompositionalGD([x], lr=0.1, mu=0.5, prox=lambda y, mu: prox_abs(y, mu))
    cert = opt.step(lambda: x - 1.0)
    assert math.isnan(cert.value) and cert.delta == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mu.*0"):
        SmoothedCompositionalGD([x], lr=0.1, mu=0.0)
    with pytest.raises(ValueError, match="prox must be one of"):
        SmoothedCompositionalGD([x], lr=0.1, mu=0.1, prox="huber")
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="NaN/inf"):
        opt.step(lambda: x * float("nan"))
    with pytest.raises(ValueError, match="no graph"):
        opt.step(lambda: torch.ones(2))


def _toy_problem():
    torch.manual_seed(1)
    a = torch.randn(5, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("subproblem", ["dual", "projected_gradient"])
def test_prox_linear_decreases_monotonically_and_certifies(subproblem: str) -> None:
    a, b = _toy_problem()
    x = torch.full((3,), 2.0, dtype=torch.float64, requires_grad=True)
    opt = ProxLinear([x], lr=0.01, outer="abs", subproblem=subproblem, inner_steps=2000)
    values, certs = [], []
    for _ in range(200):
        cert = opt.step(lambda: ((a @ x - b) ** 2).sum().reshape(1) - 1.0)
        values.append(cert.value)
        certs.append(cert)
        assert cert.model_value <= cert.value + 1e-9  # the model at x_{k+1} is below f(c(x_k))
    assert all(b2 <= b1 + 1e-9 for b1, b2 in zip(values, values[1:])), values[:20]
    assert values[-1] < 1e-6 and certs[-1].gradient_mapping < 1e-3
    if subproblem == "dual":
        assert max(c.duality_gap for c in certs) <= 1e-6


def test_prox_linear_subproblem_solution_is_optimal() -> None:
    """One step against a brute-force solve of the convex subproblem (scipy on its epigraph form)."""
    from scipy.optimize import minimize

    import numpy as np

    a, b = _toy_problem()
    x0 = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    t = 0.05
    cvec = lambda x: torch.stack([(a @ x - b)[0] ** 2 - 1.0, (a @ x - b)[1] - 0.5, x.sum() - 1.0])  # noqa: E731
    x = x0.clone().requires_grad_(True)
    opt = ProxLinear([x], lr=t, outer="hinge", h_value=lambda y: 0.5 * y.abs().sum(),
                     h_subgradient=lambda y: 0.5 * torch.sign(y))
    opt.step(lambda: cvec(x))
    jac = torch.autograd.functional.jacobian(cvec, x0).numpy()
    c0 = cvec(x0).numpy()
    xi = 0.5 * np.sign(c0)

    def model(d):
        return np.maximum(c0 + jac @ d, 0).sum() - xi @ (jac @ d) + d @ d / (2 * t)

    best = minimize(model, np.zeros(3), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12,
                                                                        "maxiter": 20000}).x
    step = (x.detach() - x0).numpy()
    assert model(step) <= model(best) + 1e-8
    assert np.allclose(step, best, atol=1e-4)


def test_prox_linear_capped_l1_reaches_a_critical_point() -> None:
    x = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = ProxLinear([x], lr=0.05, outer="capped_l1", cap=0.5)
    for _ in range(300):
        cert = opt.step(lambda: torch.stack([x[0] - 1.0, x[0] + x[1]]))
    # min min(|x0 - 1|, .5) + min(|x0 + x1|, .5): the point stays where both terms are capped or reaches 0
    assert cert.gradient_mapping < 1e-6
    assert cert.value <= 1.0 + 1e-9


def test_prox_linear_errors() -> None:
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="outer must be one of"):
        ProxLinear([x], lr=0.1, outer="huber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both h_value and h_subgradient"):
        ProxLinear([x], lr=0.1, h_value=lambda y: y.sum())
    with pytest.raises(ValueError, match="capped_l1"):
        ProxLinear([x], lr=0.1, outer="capped_l1", h_value=lambda y: y.sum(), h_subgradient=torch.sign)
    with pytest.raises(ValueError, match="subproblem"):
        ProxLinear([x], lr=0.1, subproblem="newton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr.*-1"):
        ProxLinear([x], lr=-1.0)
