"""Pure kernels of DRRho risk minimisation: distributionally robust risk of the excess loss.

Notation: a batch of ``B`` samples with per-sample losses ``l_i = l(theta; z_i)`` of the target
model and ``l_ref_i = l(theta_ref; z_i)`` of a fixed reference model; the **excess loss** (the
RHO loss) is ``x_i = l_i - l_ref_i``. Over the whole data set (``n`` samples):

* **KL** (``tau > 0``): ``F(theta) = max_p sum_i p_i x_i - tau KL(p, 1/n) = tau log (1/n) sum_i exp(x_i / tau)``.
  A compositional objective: the inner mean ``g = (1/n) sum_i exp(x_i / tau)`` is tracked by a
  moving-average estimator ``u ~ g`` kept in log space, ``log u <- log((1 - gamma) u + gamma g_hat)``
  (``gamma``: weight on the new value; first visit: ``u = g_hat``); the gradient estimator is
  ``(1/B) sum_i exp(x_i / tau) / u * grad l_i`` (``tau`` cancels), exact when ``u = g``.
* **CVaR** at level ``alpha``: the mean excess loss of the worst ``alpha`` share of the data, in
  Rockafellar-Uryasev form ``F(theta, s) = s + (1/alpha) (1/n) sum_i (x_i - s)_+`` minimised jointly
  over ``theta`` and the threshold ``s`` (``min_s F`` is the CVaR; the minimiser is the ``(1 - alpha)``
  quantile of ``x``). The gradient in ``theta`` is ``(1/(alpha B)) sum_i 1[x_i > s] grad l_i``; ``s``
  takes a step on ``alpha F`` (the pinball loss), ``s <- s - eta (alpha - (1/B) sum_i 1[x_i > s])``.

Limits: ``tau -> inf`` and ``alpha = 1`` give the plain mean of ``x``; with ``l_ref = 0`` both are
the plain KL-DRO / CVaR risks of ``l``.

Every kernel returns a *surrogate* ``(1/B) sum_i stopgrad(w_i) x_i`` whose gradient is the
method's estimator, the new state and the batch's objective estimate. The exact objectives
:func:`drrho_kl_objective` / :func:`drrho_cvar_objective` (differentiable) are what the oracle tests
compare against.

Paper: Wei, Lin, Yang, "Model Steering: Learning with a Reference Model Improves Generalization
Bounds and Scaling Laws", ICML 2025, arXiv:2505.06699.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from xrisk.functional.contrastive import log_moving_average
from xrisk.functional.pauc import top_fraction_mean

__all__ = [
    "DRRhoStep",
    "drrho_kl",
    "drrho_cvar",
    "drrho_kl_objective",
    "drrho_cvar_objective",
    "upper_quantile",
]


class DRRhoStep(NamedTuple):
    """Result of :func:`drrho_kl` / :func:`drrho_cvar`.

    surrogate: scalar, ``(1/B) sum_i w_i x_i`` with the weights detached (its gradient is the estimator);
    state: 0-dim, the new ``log u`` (KL) or threshold ``s`` (CVaR), detached, float32 or wider;
    objective: 0-dim detached objective estimate; weights: ``[B]`` detached ``w_i``.
    """

    surrogate: Tensor
    state: Tensor
    objective: Tensor
    weights: Tensor


def _state_dtype(x: Tensor) -> torch.dtype:
    """float32 for half inputs (the state is float32), else the input's dtype."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def drrho_kl(excess: Tensor, log_u: Tensor, seen: Tensor | bool, *, tau: float, gamma: float) -> DRRhoStep:
    """One step of the KL DRRho risk ``tau log mean_i exp(x_i / tau)`` with a moving-average estimator.

    1. ``log g_hat = log (1/B) sum_i exp(x_i / tau)`` (logsumexp, never overflows);
    2. ``log u_new = log((1 - gamma) exp(log_u) + gamma g_hat)``, or ``log g_hat`` on the first visit
       (``seen`` False);
    3. ``w_i = exp(x_i / tau - log u_new)`` (``<= B / gamma``, finite), surrogate ``(1/B) sum_i w_i x_i``;
    4. objective estimate ``tau log u_new``.

    Args:
        excess: ``[B]`` excess losses ``x_i = l_i - l_ref_i`` (with gradient through ``l_i``), ``B >= 1``.
        log_u: 0-dim stored ``log u``; seen: whether it was ever written.
        tau: KL temperature ``> 0``; gamma: weight on the new value, in ``(0, 1]``.
    """
    b = excess.shape[0]
    xs = excess.detach().to(_state_dtype(excess)) / tau
    log_g = torch.logsumexp(xs, 0) - math.log(b)
    seen_t = seen if isinstance(seen, Tensor) else torch.tensor(bool(seen))
    new = log_moving_average(log_u.to(log_g), log_g, gamma, seen_t.to(log_g.device))
    w = torch.exp(xs - new)
    surrogate = torch.dot(w.to(excess.dtype), excess) / b
    return DRRhoStep(surrogate, new, new * tau, w)


def upper_quantile(x: Tensor, alpha: float) -> Tensor:
    """The ``(1 - alpha)`` quantile of ``x [B]`` (``B >= 1``) with ``floor(alpha B)`` entries above it: the
    ``(floor(alpha B) + 1)``-th largest entry (the largest one when ``alpha B < 1``), a minimiser of the batch's
    Rockafellar-Uryasev objective at which ``1[x_i > s]`` selects the worst ``floor(alpha B)`` entries
    (detached, 0-dim)."""
    k = min(int(math.floor(alpha * x.shape[0] + 1e-9)) + 1, x.shape[0])
    return torch.topk(x.detach(), k, sorted=False).values.min()


def drrho_cvar(excess: Tensor, threshold: Tensor, seen: Tensor | bool, *, alpha: float, eta: float) -> DRRhoStep:
    """One step of the CVaR DRRho risk in Rockafellar-Uryasev form, the threshold ``s`` being state.

    1. ``s = threshold``, or on the first visit (``seen`` False) the batch's :func:`upper_quantile`;
    2. ``w_i = 1[x_i > s] / alpha``, surrogate ``(1/B) sum_i w_i x_i``;
    3. objective estimate ``s + (1/(alpha B)) sum_i (x_i - s)_+`` (unbiased for ``F(theta, s)``, which is
       at least the CVaR and equal to it at the optimal ``s``);
    4. new threshold ``s - eta (alpha - (1/B) sum_i 1[x_i > s])``.

    ``alpha = 1``: the minimum over ``s`` is attained at any ``s <= min_i x_i``, where ``F`` is the mean;
    the kernel then uses that minimiser directly (``w_i = 1``, objective ``mean_i x_i``) and returns the
    threshold unchanged.

    Args:
        excess: ``[B]`` excess losses (with gradient through ``l_i``), ``B >= 1``.
        threshold: 0-dim stored ``s``; seen: whether it was ever written.
        alpha: level in ``(0, 1]``; eta: threshold step size ``> 0``.
    """
    b = excess.shape[0]
    xd = excess.detach().to(_state_dtype(excess))
    if alpha >= 1.0:
        w = torch.ones_like(xd)
        return DRRhoStep(excess.sum() / b, threshold.to(xd).clone(), xd.mean(), w)
    if isinstance(seen, Tensor):  # no host read: the first-visit quantile is selected on the device
        s_old = torch.where(seen.to(xd.device), threshold.to(xd), upper_quantile(xd, alpha))
    else:
        s_old = threshold.to(xd) if seen else upper_quantile(xd, alpha)
    above = xd > s_old
    frac = above.to(xd.dtype).mean()
    w = above.to(xd.dtype) / alpha
    surrogate = torch.dot(w.to(excess.dtype), excess) / b
    objective = s_old + torch.relu(xd - s_old).mean() / alpha
    new = s_old - eta * (alpha - frac)
    return DRRhoStep(surrogate, new, objective, w)


def drrho_kl_objective(excess: Tensor, tau: float) -> Tensor:
    """Exact KL DRRho risk of a full data set, ``tau log (1/n) sum_i exp(x_i / tau)`` (differentiable)."""
    return tau * (torch.logsumexp(excess / tau, 0) - math.log(excess.shape[0]))


def drrho_cvar_objective(excess: Tensor, alpha: float) -> Tensor:
    """Exact CVaR of a full data set at level ``alpha``: the mean of its largest ``alpha`` share (a
    fractional last entry counted partly), ``min_s s + (1/(alpha n)) sum_i (x_i - s)_+`` (differentiable)."""
    return top_fraction_mean(excess, alpha)
