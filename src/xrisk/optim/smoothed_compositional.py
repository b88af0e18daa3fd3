"""Smoothing compositional gradient method for ``min f(c(x))`` with a non-smooth outer ``f`` (``SmoothedCompositionalGD``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from xrisk._validate import check_positive
from xrisk.functional.prox import PROXES, capped_l1, moreau_envelope, prox_capped_l1
from xrisk.optim._compositional import inner_value

__all__ = ["SmoothedCompositionalGD", "SmoothingCertificate"]


@dataclass(frozen=True)
class SmoothingCertificate:
    """The ``(epsilon, delta)``-stationarity certificate of the iterate a step started from.

    With ``y = c(x)``, ``z = prox_{mu f}(y)`` and ``xi = (y - z) / mu`` (a subgradient of ``f`` at
    ``z``): ``||z - y|| <= delta`` and ``||J_c(x)^T xi|| <= epsilon``, i.e. ``x`` is
    ``(epsilon, delta)``-stationary for the composition.

    Attributes:
        epsilon: ``||J_c(x)^T xi||``.
        delta: ``||z - c(x)||``.
        value: ``f(c(x))`` (NaN when the user's prox came without ``value``).
        envelope: ``f_mu(c(x))`` (NaN likewise).
    """

    epsilon: float
    delta: float
    value: float
    envelope: float


class SmoothedCompositionalGD(torch.optim.Optimizer):
    """Gradient descent on ``f_mu(c(x))``, the Moreau envelope of the outer function composed with ``c``.

    For ``min_x f(c(x))`` with a smooth map ``c`` and a Lipschitz, non-smooth, possibly non-convex ``f``
    that has an easy proximal map, each step is

    .. math::

        x_{k+1} = x_k - \\eta\\, J_c(x_k)^\\top \\frac{c(x_k) - \\operatorname{prox}_{\\mu f}(c(x_k))}{\\mu},

    the gradient of ``f_mu o c`` (``f_mu`` is ``1/mu``-smooth, so take ``eta`` proportional to ``mu``).
    ``step(closure)`` calls ``closure()``, which returns ``c(x)`` (computed with autograd), and returns
    the :class:`SmoothingCertificate` of the iterate it started from: ``z = prox_{mu f}(c(x))`` and
    ``xi = grad f_mu(c(x))`` certify ``(epsilon, delta)``-stationarity (``||z - c(x)|| <= delta``,
    ``xi`` a subgradient of ``f`` at ``z``, ``||J^T xi|| <= epsilon``). The note proves
    ``O(1 / (epsilon^2 delta))`` iterations with ``mu ~ delta`` and ``eta ~ mu``.

    Args:
        params: the variables ``x``.
        lr: step ``eta > 0``.
        mu: smoothing parameter ``mu > 0``.
        prox: a built-in separable ``f`` (``"hinge"``, ``"abs"``, ``"capped_l1"``;
            :mod:`xrisk.functional.prox`) or a callable ``(y, mu) -> prox_{mu f}(y)``.
        value: ``y -> f(y)`` for a callable ``prox`` (only for the certificate's values).
        cap: the cap of ``"capped_l1"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([3.0], requires_grad=True)
        >>> opt = SmoothedCompositionalGD([x], lr=0.05, mu=0.1, prox="abs")
        >>> for _ in range(200):
        ...     cert = opt.step(lambda: x * x - 1.0)     # min |x^2 - 1|
        >>> abs(float(x.detach()) ** 2 - 1) <= 0.1, cert.delta <= 0.1   # within mu of the zero set of f
        (True, True)

    Paper: Yao, Lin, Yang, "A Note on Complexity for Two Classes of Structured Non-Smooth Non-Convex
    Compositional Optimization", arXiv:2411.14342 (structure 1; update rule reconstructed from the
    abstract).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        mu: float,
        *,
        prox: str | Callable[[Tensor, float], Tensor] = "abs",
        value: Callable[[Tensor], Tensor] | None = None,
        cap: float = 1.0,
    ) -> None:
        lr = check_positive("lr", lr)
        mu = check_positive("mu", mu)
        cap = check_positive("cap", cap)
        if isinstance(prox, str):
            if prox not in PROXES:
                raise ValueError(f"prox must be one of {tuple(PROXES)} or a callable, got {prox!r}")
            if value is not None:
                raise ValueError("value= is only for a callable prox (the built-ins know their f)")
            if prox == "capped_l1":
                self._prox: Callable[[Tensor, float], Tensor] = lambda y, m: prox_capped_l1(y, m, cap)
                self._value: Callable[[Tensor], Tensor] | None = lambda y: capped_l1(y, cap)
            else:
                self._value, self._prox = PROXES[prox]
        elif callable(prox):
            self._prox, self._value = prox, value
        else:
            raise TypeError(f"prox must be a name or a callable, got {type(prox).__name__}")
        super().__init__(params, {"lr": lr, "mu": mu})
        self.last_certificate: SmoothingCertificate | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> SmoothingCertificate:  # type: ignore[override]
        """One step; ``closure()`` returns ``c(x)``. Returns the certificate of the starting iterate."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        c = inner_value(closure, type(self).__name__)
        mu = self.param_groups[0]["mu"]
        y = c.detach()
        if self._value is not None:
            env, xi, z = moreau_envelope(y, mu, self._prox, self._value)
            value, envelope = float(self._value(y)), float(env)
        else:
            z = self._prox(y, mu)
            xi, value, envelope = (y - z) / mu, math.nan, math.nan
        with torch.enable_grad():
            grads = torch.autograd.grad(c, params, grad_outputs=xi.to(c.dtype), allow_unused=True)
        total = 0.0
        offset = 0
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                g = grads[offset]
                offset += 1
                if g is None:
                    continue
                total += float(g.square().sum())
                p.add_(g, alpha=-group["lr"])
        self.last_certificate = SmoothingCertificate(math.sqrt(total), float((z - y).norm()), value, envelope)
        return self.last_certificate
