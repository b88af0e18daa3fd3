"""Pure kernels of the constrained formulations (:mod:`xrisk.constrained`).

The problem is ``min_x F(x)`` subject to ``g_i(x) <= 0`` for ``i = 1..m``, where ``F`` and every
``g_i`` are expectations observed through samples ``g_i(x; xi)``. The single-loop hinge-penalty
method (Yang, Li, Hu, Lin, Yang, arXiv:2504.15243) minimises

.. math::

    \\Phi_\\beta(x) = F(x) + \\frac{\\beta}{m} \\sum_{i=1}^m \\psi\\big(g_i(x)\\big),
    \\qquad \\psi(u) = [u]_+ ,

with a constant ``beta``. Because ``psi`` is applied to an expectation, each ``g_i(x)`` is tracked
by a running estimate ``u_i`` (a compositional estimator), and the stochastic gradient is

.. math::

    \\nabla F(x; \\zeta) + \\frac{\\beta}{|S|} \\sum_{i \\in S} \\psi'(u_i)\\, \\nabla g_i(x; \\xi_i)

over the constraints ``S`` observed in the step. The kernels here compute the estimator updates and
the detached weights ``psi'(u_i)``; the modules in :mod:`xrisk.constrained` own the state.

**Reconstructed.** The paper's text was not available; the estimator updates (moving average and
MSVR), the ``beta / |S|`` scaling and the smoothed hinge follow the reference notes (the authors'
DevSafety code for the moving-average hinge penalty, the MSVR estimator of Jiang et al., ICML 2022,
and the Moreau-smoothed hinge of SONEX, arXiv:2506.02504). Every formula below is tested against a
closed form.

Throughout, ``gamma`` is the weight on the new value (``u <- (1 - gamma) u + gamma new``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "moving_average_estimate",
    "msvr_estimate",
    "msvr_correction",
    "hinge_weight",
    "smoothed_hinge",
    "squared_hinge_weight",
    "penalty_value",
]


def moving_average_estimate(old: Tensor, seen: Tensor, new: Tensor, gamma: float) -> Tensor:
    """Moving-average estimator ``u <- (1 - gamma) u + gamma new``; an entry never seen takes ``new``.

    Args:
        old: ``[k]`` current estimates ``u_i``.
        seen: ``[k]`` bool, whether ``u_i`` was ever written (first-visit rule otherwise).
        new: ``[k]`` new sample values ``g_i(x_t; xi_t)`` (detached).
        gamma: weight on the new value, in ``(0, 1]``.

    Example:
        >>> moving_average_estimate(torch.tensor([1.0, 5.0]), torch.tensor([True, False]),
        ...                         torch.tensor([3.0, 2.0]), 0.5)
        tensor([2., 2.])
    """
    return torch.where(seen, torch.lerp(old, new, gamma), new)


def msvr_estimate(old: Tensor, seen: Tensor, new: Tensor, new_prev: Tensor, gamma: float, correction: float) -> Tensor:
    """MSVR estimator: ``u <- (1 - gamma) u + gamma g(x_t) + correction * (g(x_t) - g(x_{t-1}))``.

    ``g(x_t)`` and ``g(x_{t-1})`` are the same sample ``xi_t`` evaluated at the current and the previous
    iterate (``new`` and ``new_prev``); an entry never seen takes ``new`` (first-visit rule).

    Args:
        old, seen, new: as in :func:`moving_average_estimate`.
        new_prev: ``[k]`` the same samples at the previous iterate (detached).
        gamma: weight on the new value, in ``(0, 1)``.
        correction: weight ``gamma'`` of the correction term (:func:`msvr_correction`).

    Example:
        >>> msvr_estimate(torch.tensor([1.0]), torch.tensor([True]), torch.tensor([3.0]),
        ...               torch.tensor([2.0]), 0.5, 0.5)
        tensor([2.5000])
    """
    ma = torch.lerp(old, new, gamma) + correction * (new - new_prev)
    return torch.where(seen, ma, new)


def msvr_correction(num_constraints: int, observed: int, gamma: float) -> float:
    """Default MSVR correction weight ``gamma' = (m - b) / (b (1 - gamma)) + (1 - gamma)``.

    ``m`` constraints, ``b`` of them observed in the step. With every constraint observed
    (``b = m``) it is ``1 - gamma``: the STORM-like recursive estimator. The formula is the
    MSVR choice of Jiang, Wang, Wang, Zhang, Yang (ICML 2022) as recalled in the reference notes
    (reconstructed, not read in 2504.15243).
    """
    if not 0 < observed <= num_constraints:
        raise ValueError(f"observed must be in [1, {num_constraints}], got {observed}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"MSVR needs gamma in (0, 1), got {gamma!r}")
    return (num_constraints - observed) / (observed * (1.0 - gamma)) + (1.0 - gamma)


def hinge_weight(u: Tensor, smooth: float | None = None) -> Tensor:
    """Derivative of the outer hinge at the estimates, ``psi'(u)`` (detached weights).

    ``smooth=None``: ``1[u > 0]`` (the subgradient 0 is taken at ``u = 0``).
    ``smooth=nu``: the derivative of the Moreau envelope ``psi_nu`` of the hinge,
    ``clip(u / nu, 0, 1)`` (:func:`smoothed_hinge`).

    Example:
        >>> hinge_weight(torch.tensor([-1.0, 0.0, 0.05, 2.0]), smooth=0.1)
        tensor([0.0000, 0.0000, 0.5000, 1.0000])
    """
    if smooth is None:
        return torch.heaviside(u, _zero(u))
    return (u / smooth).clamp(0.0, 1.0)


def _zero(like: Tensor) -> Tensor:
    """A 0-dim zero of ``like``'s dtype and device, made once per pair (a constant, never written)."""
    key = (like.dtype, like.device)
    z = _ZEROS.get(key)
    if z is None:
        z = _ZEROS[key] = torch.zeros((), dtype=like.dtype, device=like.device)
    return z


_ZEROS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def smoothed_hinge(u: Tensor, nu: float) -> Tensor:
    """Moreau envelope of the hinge, ``psi_nu(u) = min_z [z]_+ + (z - u)^2 / (2 nu)``.

    ``0`` for ``u <= 0``, ``u^2 / (2 nu)`` for ``0 < u <= nu``, ``u - nu / 2`` for ``u > nu``; its
    derivative is ``clip(u / nu, 0, 1)`` (:func:`hinge_weight` with ``smooth=nu``).
    """
    return torch.where(u <= 0, torch.zeros_like(u), torch.where(u <= nu, u * u / (2 * nu), u - nu / 2))


def squared_hinge_weight(u: Tensor) -> Tensor:
    """Derivative of ``psi(u) = [u]_+^2 / 2`` at the estimates: ``[u]_+`` (detached weights)."""
    return u.clamp_min(0.0)


def penalty_value(values: Tensor, beta: float, kind: str, smooth: float | None = None) -> Tensor:
    """The penalty ``(beta / m) sum_i psi(g_i)`` at given constraint values ``[m]`` (a scalar).

    ``kind``: ``"hinge"`` (``psi = [.]_+``, or its Moreau envelope with ``smooth``) or ``"squared"``
    (``psi = [.]_+^2 / 2``). Used for reports and tests, never for gradients.
    """
    if kind == "hinge":
        psi = values.clamp_min(0.0) if smooth is None else smoothed_hinge(values, smooth)
    elif kind == "squared":
        psi = values.clamp_min(0.0).square() / 2
    else:
        raise ValueError(f"kind must be 'hinge' or 'squared', got {kind!r}")
    return beta * psi.mean() if values.numel() else values.sum() * 0.0
