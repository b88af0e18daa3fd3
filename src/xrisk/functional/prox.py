"""Proximal maps of simple non-smooth scalar functions and their Moreau envelopes.

For a function ``f`` and ``mu > 0`` the Moreau envelope and the proximal map are

.. math::

    f_\\mu(y) = \\min_z\\; f(z) + \\frac{\\|z - y\\|^2}{2\\mu}, \\qquad
    \\operatorname{prox}_{\\mu f}(y) = \\arg\\min_z\\; f(z) + \\frac{\\|z - y\\|^2}{2\\mu},

and wherever the proximal map is single-valued the envelope is differentiable with

.. math::

    \\nabla f_\\mu(y) = \\frac{y - \\operatorname{prox}_{\\mu f}(y)}{\\mu}.

Every function here is separable, ``f(y) = sum_j phi(y_j)``, so its proximal map acts entry by entry.
Built-in ``phi`` (:data:`PROXES`):

* ``"hinge"``: ``phi(y) = max(y, 0)`` (convex);
* ``"abs"``: ``phi(y) = |y|`` (convex; the prox is soft thresholding);
* ``"capped_l1"``: ``phi(y) = min(|y|, cap)`` (non-convex: the prox compares the two branches
  ``|z| <= cap`` and ``|z| >= cap`` and keeps the better; at the ties it picks the first).

Used by :class:`xrisk.optim.SmoothedCompositionalGD` (Yao, Lin, Yang, arXiv:2411.14342).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = ["hinge", "absolute", "capped_l1", "prox_hinge", "prox_abs", "prox_capped_l1", "moreau_envelope",
           "PROXES", "ProxName"]

ProxName = Literal["hinge", "abs", "capped_l1"]


def hinge(y: Tensor) -> Tensor:
    """``sum_j max(y_j, 0)``."""
    return y.clamp_min(0.0).sum()


def absolute(y: Tensor) -> Tensor:
    """``sum_j |y_j|``."""
    return y.abs().sum()


def capped_l1(y: Tensor, cap: float = 1.0) -> Tensor:
    """``sum_j min(|y_j|, cap)``."""
    return y.abs().clamp_max(cap).sum()


def prox_hinge(y: Tensor, mu: float) -> Tensor:
    """``prox_{mu max(., 0)}(y)``: ``y - mu`` above ``mu``, ``0`` on ``[0, mu]``, ``y`` below 0.

    Example:
        >>> prox_hinge(torch.tensor([-1.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    return torch.where(y > mu, y - mu, torch.where(y < 0, y, torch.zeros_like(y)))


def prox_abs(y: Tensor, mu: float) -> Tensor:
    """``prox_{mu |.|}(y)``: soft thresholding ``sign(y) max(|y| - mu, 0)``."""
    return torch.sign(y) * (y.abs() - mu).clamp_min(0.0)


def prox_capped_l1(y: Tensor, mu: float, cap: float = 1.0) -> Tensor:
    """``prox_{mu min(|.|, cap)}(y)`` (non-convex ``phi``; the better of the two branches).

    Branch 1 (``|z| <= cap``): soft thresholding clipped to ``[-cap, cap]``. Branch 2
    (``|z| >= cap``, where ``phi = cap`` is constant): ``z = y`` if ``|y| >= cap`` else ``sign(y) cap``.
    """
    sign = torch.where(y >= 0, torch.ones_like(y), -torch.ones_like(y))
    z1 = sign * (y.abs() - mu).clamp(0.0, cap)
    z2 = sign * y.abs().clamp_min(cap)
    v1 = z1.abs().clamp_max(cap) + (z1 - y).square() / (2 * mu)
    v2 = cap + (z2 - y).square() / (2 * mu)
    return torch.where(v1 <= v2, z1, z2)


#: Built-in separable functions: name -> (value ``f(y)``, prox ``(y, mu) -> z``); capped-l1 with ``cap=1``.
PROXES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, float], Tensor]]] = {
    "hinge": (hinge, prox_hinge),
    "abs": (absolute, prox_abs),
    "capped_l1": (capped_l1, prox_capped_l1),
}


def moreau_envelope(
    y: Tensor, mu: float, prox: Callable[[Tensor, float], Tensor], value: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Envelope value ``f_mu(y)``, its gradient ``(y - z) / mu`` and the proximal point ``z``.

    Args:
        y: ``[k]`` point (detached).
        mu: smoothing parameter ``mu > 0``.
        prox: ``(y, mu) -> prox_{mu f}(y)``.
        value: ``y -> f(y)`` (a scalar).

    Returns:
        ``(f_mu(y), grad [k], z [k])`` with ``f_mu(y) = f(z) + ||z - y||^2 / (2 mu)``.

    Example:
        >>> env, grad, z = moreau_envelope(torch.tensor([2.0]), 0.5, prox_abs, absolute)
        >>> float(env), grad.tolist(), z.tolist()
        (1.75, [1.0], [1.5])
    """
    z = prox(y, mu)
    return value(z) + (z - y).square().sum() / (2 * mu), (y - z) / mu, z
