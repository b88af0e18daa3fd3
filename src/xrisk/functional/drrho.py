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
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from xrisk._tensors import constant
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
    state: the new ``log u`` (KL) or threshold ``s`` (CVaR); objective: the batch's objective estimate (both
    Python floats: NaN/inf when an input is, so the caller checks them before writing anything);
    weights: ``[B]`` detached ``w_i / B``, the surrogate's gradient with respect to ``excess``.
    """

    surrogate: Tensor
    state: float
    objective: float
    weights: Tensor


def _detached_float(x: Tensor) -> Tensor:
    """``x`` detached, in float32 when it is a half type (the weights and the state are float32 or wider)."""
    d = x.detach()
    return d if d.dtype in (torch.float32, torch.float64) else d.float()


def _surrogate(w: Tensor, excess: Tensor) -> Tensor:
    """``sum_i w_i x_i`` in ``excess``'s dtype (its gradient with respect to ``excess`` is ``w``)."""
    return torch.dot(w if w.dtype == excess.dtype else w.to(excess.dtype), excess)


def _nan_step(excess: Tensor, w: Tensor) -> DRRhoStep:
    """The step of a batch holding NaN/inf: every output NaN (the caller raises before writing anything)."""
    nan = float("nan")
    return DRRhoStep(excess.sum() * nan, nan, nan, w)


def _host(state: Tensor | float, seen: Tensor | bool) -> tuple[float, bool]:
    """The scalar state as Python values (two ``item()`` reads of 0-dim tensors: cheaper than any tensor op)."""
    return float(state), bool(seen)


# a sum of exponentials shifted by the stored log u inside this range loses nothing to under/overflow in float32
_SHIFT_RANGE = (1e-30, 1e30)
# a stored log u at most this far from 0 needs no shift: exp(x / tau) itself stays in the range above
_UNSHIFTED = 30.0


def drrho_kl(
    excess: Tensor, log_u: Tensor | float, seen: Tensor | bool, *, tau: float, gamma: float,
    shift: Literal["state", "max"] = "state",
) -> DRRhoStep:
    """One step of the KL DRRho risk ``tau log mean_i exp(x_i / tau)`` with a moving-average estimator.

    1. ``log g_hat = log (1/B) sum_i exp(x_i / tau)``, the exponentials shifted by a constant ``c``;
    2. ``log u_new = log((1 - gamma) exp(log_u) + gamma g_hat)``, or ``log g_hat`` on the first visit
       (``seen`` False);
    3. ``w_i = exp(x_i / tau - log u_new)`` (``<= B / gamma``, finite), surrogate ``(1/B) sum_i w_i x_i``;
    4. objective estimate ``tau log u_new``.

    ``shift="state"`` (default): ``c`` is the stored ``log u`` (the scale the exponentials had on the last
    batches; 0 when ``|log u| <= 30``, which saves the subtraction), so one pass gives both the sum and, rescaled
    in place, the weights: with ``r = (1/B) sum_i exp(x_i / tau - c) exp(c - log u)``, ``log u_new = log u +
    log((1 - gamma) + gamma r)`` and ``w_i = exp(x_i / tau - c) exp(c - log u) / (B ((1 - gamma) + gamma r))``.
    When that ratio leaves ``[1e-30, 1e30]`` (a batch far from the estimate, e.g. the first one
    at a small ``tau``) or an input is not finite, the step is recomputed with ``shift="max"``: ``c`` is the batch
    maximum (never overflows). Both give the same step up to rounding.

    The scalars (the sum, the surrogate's value, the state) are read on the host, so the estimator is updated in
    Python and an input holding NaN/inf shows in the returned floats (a few host reads: in a CPU training step
    each costs less than one more tensor operation).

    Args:
        excess: ``[B]`` excess losses ``x_i = l_i - l_ref_i`` (with gradient through ``l_i``), ``B >= 1``.
        log_u: stored ``log u`` (0-dim tensor or float); seen: whether it was ever written.
        tau: KL temperature ``> 0``; gamma: weight on the new value, in ``(0, 1]``.
        shift: ``"state"`` or ``"max"``, see above.
    """
    b = excess.shape[0]
    old, flag = _host(log_u, seen)
    xd = _detached_float(excess)
    inv = 1.0 / tau
    if shift == "state" and math.isfinite(old):
        c = old if abs(old) > _UNSHIFTED else 0.0  # |c - log u| <= 30: the sums below stay in range
        # the constants as cached 0-dim tensors of xd's dtype: the same kernel and bits as a Python number, without
        # wrapping and converting one on every call
        if c:
            e = torch.sub(xd, constant(tau * c, xd))
            if inv != 1.0:
                e.mul_(constant(inv, xd))
            e.exp_()
        else:  # one op fewer
            e = torch.mul(xd, constant(inv, xd)).exp_() if inv != 1.0 else torch.exp(xd)
        f = math.exp(c - old)
        r = e.sum().item() * f / b  # g_hat / u
        if _SHIFT_RANGE[0] < r < _SHIFT_RANGE[1]:  # (False for NaN)
            d = (1.0 - gamma) + gamma * r if flag else r  # u_new / u
            k = f / (b * d)  # exp(c - log u_new) / B
            if k < _SHIFT_RANGE[1]:
                w = e.mul_(k)
                surrogate = _surrogate(w, excess)
                if math.isfinite(surrogate.item()):  # an input at -inf has weight 0 and leaves the sum finite
                    new = old + math.log(d)
                    return DRRhoStep(surrogate, new, tau * new, w)
    xs = torch.mul(xd, inv)
    lo, hi = torch.aminmax(xs)
    e = torch.sub(xs, hi).exp_()
    m, low, total = torch.stack([hi, lo, e.sum()]).tolist()
    if not (math.isfinite(m) and math.isfinite(low)):
        return _nan_step(excess, torch.full_like(xd, float("nan")))
    log_g = math.log(total) + m - math.log(b)
    new = log_g
    if flag and gamma < 1.0:
        a, c = old + math.log1p(-gamma), log_g + math.log(gamma)
        new = max(a, c) + math.log1p(math.exp(-abs(a - c)))
    w = e.mul_(math.exp(m - new) / b)
    return DRRhoStep(_surrogate(w, excess), new, tau * new, w)


def upper_quantile(x: Tensor, alpha: float) -> Tensor:
    """The ``(1 - alpha)`` quantile of ``x [B]`` (``B >= 1``) with ``floor(alpha B)`` entries above it: the
    ``(floor(alpha B) + 1)``-th largest entry (the largest one when ``alpha B < 1``), a minimiser of the batch's
    Rockafellar-Uryasev objective at which ``1[x_i > s]`` selects the worst ``floor(alpha B)`` entries
    (detached, 0-dim)."""
    k = min(int(math.floor(alpha * x.shape[0] + 1e-9)) + 1, x.shape[0])
    return torch.topk(x.detach(), k, sorted=False).values.min()


def drrho_cvar(
    excess: Tensor, threshold: Tensor | float, seen: Tensor | bool, *, alpha: float, eta: float,
) -> DRRhoStep:
    """One step of the CVaR DRRho risk in Rockafellar-Uryasev form, the threshold ``s`` being state.

    1. ``s = threshold``, or on the first visit (``seen`` False) the batch's :func:`upper_quantile`;
    2. ``w_i = 1[x_i > s] / alpha``, surrogate ``(1/B) sum_i w_i x_i``;
    3. objective estimate ``s + (1/(alpha B)) sum_i (x_i - s)_+`` (unbiased for ``F(theta, s)``, which is
       at least the CVaR and equal to it at the optimal ``s``), read off the surrogate's value as
       ``s + surrogate - s count / (alpha B)``;
    4. new threshold ``s - eta (alpha - count / B)``, ``count = sum_i 1[x_i > s]``.

    ``alpha = 1``: the minimum over ``s`` is attained at any ``s <= min_i x_i``, where ``F`` is the mean;
    the kernel then uses that minimiser directly (``w_i = 1``, objective ``mean_i x_i``: exact, whatever the
    threshold), while the threshold keeps taking its step (it only descends; first visit: ``min_i x_i``).

    The scalars are read on the host one by one, as in :func:`drrho_kl`; an input holding NaN/inf makes the
    returned floats NaN.

    Args:
        excess: ``[B]`` excess losses (with gradient through ``l_i``), ``B >= 1``.
        threshold: stored ``s`` (0-dim tensor or float); seen: whether it was ever written.
        alpha: level in ``(0, 1]``; eta: threshold step size ``> 0``.
    """
    b = excess.shape[0]
    s_old, flag = _host(threshold, seen)
    xd = _detached_float(excess)
    if alpha >= 1.0:  # weights 1 whatever s is; s still takes its pinball step (towards min x, where F is the mean)
        w = torch.full_like(xd, 1.0 / b)
        surrogate = _surrogate(w, excess)
        mean = surrogate.item() if xd.dtype == excess.dtype else torch.dot(w, xd).item()  # NaN/inf if an entry is
        if not flag:
            s_old = xd.min().item()
        if not (math.isfinite(mean) and math.isfinite(s_old)):
            return _nan_step(excess, w)
        count = torch.count_nonzero(torch.gt(xd, s_old)).item()
        return DRRhoStep(surrogate, s_old - eta * (1.0 - count / b), mean, w)
    if flag:  # compare with the stored 0-dim tensor itself (the same value; no Python number to wrap)
        s = threshold if isinstance(threshold, Tensor) and threshold.device == xd.device else s_old
    else:
        s = upper_quantile(xd, alpha)
        s_old = s.item()
    c = 1.0 / (alpha * b)
    above = torch.gt(xd, s)
    w = torch.mul(above, constant(c, xd))  # in xd's dtype (a 0-dim float operand sets it)
    surrogate = _surrogate(w, excess)
    # sum_{x_i > s} x_i / (alpha B); NaN/inf when an entry is (weight 0 included: 0 * inf is NaN)
    top = surrogate.item() if xd.dtype == excess.dtype else torch.dot(w, xd).item()
    if not (math.isfinite(top) and math.isfinite(s_old)):
        return _nan_step(excess, w)
    count = torch.count_nonzero(above).item()
    objective = s_old + top - s_old * count * c  # s + sum_i (x_i - s)_+ / (alpha B)
    return DRRhoStep(surrogate, s_old - eta * (alpha - count / b), objective, w)


def drrho_kl_objective(excess: Tensor, tau: float) -> Tensor:
    """Exact KL DRRho risk of a full data set, ``tau log (1/n) sum_i exp(x_i / tau)`` (differentiable)."""
    return tau * (torch.logsumexp(excess / tau, 0) - math.log(excess.shape[0]))


def drrho_cvar_objective(excess: Tensor, alpha: float) -> Tensor:
    """Exact CVaR of a full data set at level ``alpha``: the mean of its largest ``alpha`` share (a
    fractional last entry counted partly), ``min_s s + (1/(alpha n)) sum_i (x_i - s)_+`` (differentiable)."""
    return top_fraction_mean(excess, alpha)
