"""Prox-linear method for ``min g(c(x)) - h(c(x))`` with convex ``g``, ``h`` (``ProxLinear``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
from torch import Tensor

from xrisk._validate import check_choice, check_positive
from xrisk.optim._compositional import add_flat_, inner_value, jacobian

__all__ = ["ProxLinear", "ProxLinearCertificate"]


@dataclass(frozen=True)
class ProxLinearCertificate:
    """What a prox-linear step certifies about the iterate it started from.

    Attributes:
        gradient_mapping: ``||x_{k+1} - x_k|| / t``, the prox-linear gradient mapping: ``x_k`` is
            nearly ``epsilon``-critical when it is at most ``epsilon``.
        value: ``f(c(x_k)) = g(c(x_k)) - h(c(x_k))``.
        model_value: the convex model's value at ``x_{k+1}`` (``<= value``: the model decreases).
        duality_gap: primal minus dual value of the subproblem at the returned solution (``>= 0``;
            the subproblem is solved to this accuracy).
        inner_steps: projected-gradient steps the subproblem took.
    """

    gradient_mapping: float
    value: float
    model_value: float
    duality_gap: float
    inner_steps: int


def _g_value(y: Tensor, outer: str) -> Tensor:
    return y.abs().sum() if outer != "hinge" else y.clamp_min(0.0).sum()


class ProxLinear(torch.optim.Optimizer):
    """Prox-linear steps for a difference-of-convex outer function ``f = g - h`` composed with a smooth ``c``.

    With ``xi_k`` a subgradient of ``h`` at ``c(x_k)`` and ``J_k`` the Jacobian of ``c``, each step solves
    the convex subproblem

    .. math::

        x_{k+1} = \\arg\\min_x\\; g\\big(c(x_k) + J_k (x - x_k)\\big) - \\langle \\xi_k, J_k (x - x_k)\\rangle
                  + \\frac{\\|x - x_k\\|^2}{2t} .

    ``g`` is ``sum_j |y_j|`` (``outer="abs"``) or ``sum_j max(y_j, 0)`` (``"hinge"``), i.e.
    ``g(y) = max_{lambda in B} lambda^T y`` over the box ``B = [-1, 1]^k`` or ``[0, 1]^k``, so the
    subproblem's dual is the box-constrained concave quadratic

    .. math::

        \\max_{\\lambda \\in B}\\; \\lambda^\\top c(x_k) - \\frac{t}{2} \\|J_k^\\top(\\lambda - \\xi_k)\\|^2,
        \\qquad x_{k+1} = x_k - t J_k^\\top (\\lambda^\\star - \\xi_k).

    ``subproblem="dual"`` solves it by accelerated projected gradient until the duality gap is at most
    ``tol`` (relative; a certified solution); ``"projected_gradient"`` takes a fixed ``inner_steps``
    plain projected-gradient steps (the gap is still reported). ``outer="capped_l1"`` is
    ``min(|y|, cap) = |y| - max(|y| - cap, 0)``: ``g = |.|``, ``h = (|.| - cap)_+`` with the
    subgradient ``sign(y) 1[|y| > cap]``. Any other convex ``h`` comes as ``h_value`` and
    ``h_subgradient`` with ``outer="abs"`` or ``"hinge"``.

    ``step(closure)``: ``closure()`` returns ``c(x)`` ``[k]`` (with autograd); the Jacobian takes ``k``
    backward passes, so this is for small deterministic problems. Returns the
    :class:`ProxLinearCertificate` of the starting iterate. With ``t`` at most ``1 / (L_g beta_J)``
    (``L_g`` the Lipschitz constant of ``g``, ``beta_J`` that of the Jacobian) ``f(c(x_k))`` decreases
    monotonically; ``O(1/epsilon^2)`` steps reach a nearly ``epsilon``-critical point.

    Args:
        params: the variables ``x``.
        lr: the prox-linear step ``t > 0``.
        outer: ``"abs"``, ``"hinge"`` or ``"capped_l1"``.
        cap: the cap of ``"capped_l1"``.
        h_value, h_subgradient: a convex ``h`` (``y -> h(y)``, ``y -> xi``) for ``"abs"``/``"hinge"``.
        subproblem: ``"dual"`` or ``"projected_gradient"``.
        inner_steps: the cap (``"dual"``) or number (``"projected_gradient"``) of inner steps.
        tol: relative duality-gap tolerance of ``"dual"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([2.0, 1.0], requires_grad=True)
        >>> opt = ProxLinear([x], lr=0.2, outer="abs")
        >>> for _ in range(30):
        ...     cert = opt.step(lambda: (x * x).sum().reshape(1) - 1.0)   # min | ||x||^2 - 1 |
        >>> round(float((x * x).sum().detach()), 4), cert.gradient_mapping < 1e-3
        (1.0, True)

    Paper: Yao, Lin, Yang, "A Note on Complexity for Two Classes of Structured Non-Smooth Non-Convex
    Compositional Optimization", arXiv:2411.14342 (structure 2; reconstructed from the abstract).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        *,
        outer: Literal["abs", "hinge", "capped_l1"] = "abs",
        cap: float = 1.0,
        h_value: Callable[[Tensor], Tensor] | None = None,
        h_subgradient: Callable[[Tensor], Tensor] | None = None,
        subproblem: Literal["dual", "projected_gradient"] = "dual",
        inner_steps: int = 500,
        tol: float = 1e-9,
    ) -> None:
        lr = check_positive("lr", lr)
        self.outer = check_choice("outer", outer, ("abs", "hinge", "capped_l1"))
        self.cap = check_positive("cap", cap)
        self.subproblem = check_choice("subproblem", subproblem, ("dual", "projected_gradient"))
        if not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be a positive int, got {inner_steps!r}")
        self.inner_steps = inner_steps
        self.tol = check_positive("tol", tol)
        if (h_value is None) != (h_subgradient is None):
            raise ValueError("give both h_value and h_subgradient, or neither")
        if h_value is not None and outer == "capped_l1":
            raise ValueError("outer='capped_l1' defines its own h; give h_value/h_subgradient with 'abs' or 'hinge'")
        self._h_value, self._h_subgradient = h_value, h_subgradient
        super().__init__(params, {"lr": lr})
        self.last_certificate: ProxLinearCertificate | None = None

    def _h(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(h(y), a subgradient of h at y)``."""
        if self.outer == "capped_l1":
            return (y.abs() - self.cap).clamp_min(0.0).sum(), torch.sign(y) * (y.abs() > self.cap).to(y.dtype)
        if self._h_value is None or self._h_subgradient is None:
            return y.sum() * 0.0, torch.zeros_like(y)
        xi = self._h_subgradient(y).reshape(-1).to(y.dtype)
        if xi.shape != y.shape:
            raise ValueError(f"h_subgradient returned shape {tuple(xi.shape)} for c(x) of shape {tuple(y.shape)}")
        return self._h_value(y).reshape(()), xi

    def _box(self, y: Tensor) -> tuple[Tensor, Tensor]:
        lo = torch.zeros_like(y) if self.outer == "hinge" else -torch.ones_like(y)
        return lo, torch.ones_like(y)

    def _solve(self, c: Tensor, jac: Tensor, xi: Tensor, t: float) -> tuple[Tensor, float, int]:
        """Dual solution ``lambda`` of the subproblem, its duality gap and the inner steps taken."""
        lo, hi = self._box(c)
        gram = jac @ jac.t()
        lipschitz = t * float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-12))
        lam = ((lo + hi) / 2).clone()
        prev, momentum = lam.clone(), 1.0
        gap, steps = math.inf, 0
        for steps in range(1, self.inner_steps + 1):
            if self.subproblem == "dual":
                nxt = (1 + math.sqrt(1 + 4 * momentum * momentum)) / 2
                point = lam + ((momentum - 1) / nxt) * (lam - prev)
                momentum = nxt
            else:
                point = lam
            grad = c - t * (gram @ (point - xi))
            prev, lam = lam, torch.minimum(torch.maximum(point + grad / lipschitz, lo), hi)
            if self.subproblem == "dual" and (steps % 10 == 0 or steps == self.inner_steps):
                gap = self._gap(c, jac, xi, t, lam)
                if gap <= self.tol * max(1.0, abs(float(_g_value(c, self.outer)))):
                    break
        if self.subproblem == "projected_gradient":
            gap = self._gap(c, jac, xi, t, lam)
        return lam, gap, steps

    def _gap(self, c: Tensor, jac: Tensor, xi: Tensor, t: float, lam: Tensor) -> float:
        d = -t * (jac.t() @ (lam - xi))
        primal = _g_value(c + jac @ d, self.outer) - xi @ (jac @ d) + d.square().sum() / (2 * t)
        dual = lam @ c - (t / 2) * (jac.t() @ (lam - xi)).square().sum()
        return max(float(primal - dual), 0.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> ProxLinearCertificate:  # type: ignore[override]
        """One prox-linear step; ``closure()`` returns ``c(x)``. Returns the starting iterate's certificate."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        t = self.param_groups[0]["lr"]
        c = inner_value(closure, type(self).__name__)
        with torch.enable_grad():
            jac = jacobian(c, params).to(torch.float64)
        y = c.detach().to(torch.float64)
        h_val, xi = self._h(y)
        lam, gap, steps = self._solve(y, jac, xi, t)
        d = -t * (jac.t() @ (lam - xi))
        value = float(_g_value(y, self.outer) - h_val)
        model = float(_g_value(y + jac @ d, self.outer) - h_val - xi @ (jac @ d) + d.square().sum() / (2 * t))
        add_flat_(params, d)
        self.last_certificate = ProxLinearCertificate(float(d.norm()) / t, value, model, gap, steps)
        return self.last_certificate
