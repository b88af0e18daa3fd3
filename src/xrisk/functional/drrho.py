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

import numpy as np
import torch
from torch import Tensor

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


def _on_host(excess: Tensor, host: bool | None) -> np.ndarray | None:
    """The detached batch as a float64 numpy array when the statistics are computed on the host (``host``; None:
    for CPU tensors), else None. In a training step a dozen small torch operations cost far more than in a tight
    loop (each dispatch meets cold caches after the model's kernels); the same few numpy operations on ``B``
    values cost a fraction of that."""
    if host is False or (host is None and excess.device.type != "cpu"):
        return None
    d = excess.detach()
    if d.device.type != "cpu":
        d = d.cpu()
    return d.numpy().astype(np.float64) if d.dtype != torch.bfloat16 else d.float().numpy().astype(np.float64)


def _weights_tensor(w: np.ndarray, like: Tensor) -> Tensor:
    """Host weights as a tensor on ``like``'s device, float64 for a float64 batch and float32 otherwise (the dtype
    :func:`_detached_float` gives the torch path: half-precision batches get float32 weights on both paths)."""
    out = torch.from_numpy(w.astype(np.float64 if like.dtype == torch.float64 else np.float32))
    return out if like.device.type == "cpu" else out.to(like.device)


def _host(state: Tensor | float, seen: Tensor | bool) -> tuple[float, bool]:
    """The scalar state as Python values (two ``item()`` reads of 0-dim tensors: cheaper than any tensor op)."""
    return float(state), bool(seen)


def drrho_kl(
    excess: Tensor, log_u: Tensor | float, seen: Tensor | bool, *, tau: float, gamma: float, host: bool | None = None,
) -> DRRhoStep:
    """One step of the KL DRRho risk ``tau log mean_i exp(x_i / tau)`` with a moving-average estimator.

    1. ``log g_hat = log (1/B) sum_i exp(x_i / tau)`` (shifted by the batch maximum: never overflows);
    2. ``log u_new = log((1 - gamma) exp(log_u) + gamma g_hat)``, or ``log g_hat`` on the first visit
       (``seen`` False);
    3. ``w_i = exp(x_i / tau - log u_new)`` (``<= B / gamma``, finite), surrogate ``(1/B) sum_i w_i x_i``;
    4. objective estimate ``tau log u_new``.

    The batch statistics (extremes, sum of the exponentials) are read once on the host, so the scalar estimator is
    updated in Python and an input holding NaN/inf shows in the returned floats; with ``host`` (default for CPU
    tensors) they are computed in numpy (float64), else with torch operations and one host read.

    Args:
        excess: ``[B]`` excess losses ``x_i = l_i - l_ref_i`` (with gradient through ``l_i``), ``B >= 1``.
        log_u: stored ``log u`` (0-dim tensor or float); seen: whether it was ever written.
        tau: KL temperature ``> 0``; gamma: weight on the new value, in ``(0, 1]``.
        host: compute the batch statistics in numpy (None: for CPU tensors).
    """
    b = excess.shape[0]
    old, flag = _host(log_u, seen)
    arr = _on_host(excess, host)
    if arr is not None:
        xs_h = arr * (1.0 / tau)
        m, low = float(xs_h.max()), float(xs_h.min())
        e_h = np.exp(xs_h - m) if math.isfinite(m) and math.isfinite(low) else None
        total = float(e_h.sum()) if e_h is not None else float("nan")
    else:
        xs = torch.mul(_detached_float(excess), 1.0 / tau)
        lo, hi = torch.aminmax(xs)
        e = torch.sub(xs, hi).exp_()
        m, low, total = torch.stack([hi, lo, e.sum()]).tolist()
    if not (math.isfinite(m) and math.isfinite(low)):
        nan = float("nan")
        return DRRhoStep(excess.sum() * nan, nan, nan, torch.full_like(_detached_float(excess), nan))
    log_g = math.log(total) + m - math.log(b)
    new = log_g
    if flag and gamma < 1.0:
        a, c = old + math.log1p(-gamma), log_g + math.log(gamma)
        new = max(a, c) + math.log1p(math.exp(-abs(a - c)))
    factor = math.exp(m - new) / b
    w = _weights_tensor(e_h * factor, excess) if arr is not None else e.mul_(factor)
    return DRRhoStep(torch.dot(w.to(excess.dtype), excess), new, tau * new, w)


def upper_quantile(x: Tensor, alpha: float) -> Tensor:
    """The ``(1 - alpha)`` quantile of ``x [B]`` (``B >= 1``) with ``floor(alpha B)`` entries above it: the
    ``(floor(alpha B) + 1)``-th largest entry (the largest one when ``alpha B < 1``), a minimiser of the batch's
    Rockafellar-Uryasev objective at which ``1[x_i > s]`` selects the worst ``floor(alpha B)`` entries
    (detached, 0-dim)."""
    k = min(int(math.floor(alpha * x.shape[0] + 1e-9)) + 1, x.shape[0])
    return torch.topk(x.detach(), k, sorted=False).values.min()


def drrho_cvar(
    excess: Tensor, threshold: Tensor | float, seen: Tensor | bool, *, alpha: float, eta: float,
    host: bool | None = None,
) -> DRRhoStep:
    """One step of the CVaR DRRho risk in Rockafellar-Uryasev form, the threshold ``s`` being state.

    1. ``s = threshold``, or on the first visit (``seen`` False) the batch's :func:`upper_quantile`;
    2. ``w_i = 1[x_i > s] / alpha``, surrogate ``(1/B) sum_i w_i x_i``;
    3. objective estimate ``s + (1/(alpha B)) sum_i (x_i - s)_+`` (unbiased for ``F(theta, s)``, which is
       at least the CVaR and equal to it at the optimal ``s``);
    4. new threshold ``s - eta (alpha - (1/B) sum_i 1[x_i > s])``.

    ``alpha = 1``: the minimum over ``s`` is attained at any ``s <= min_i x_i``, where ``F`` is the mean;
    the kernel then uses that minimiser directly (``w_i = 1``, objective ``mean_i x_i``: exact, whatever the
    threshold), while the threshold keeps taking its step (it only descends; first visit: ``min_i x_i``).

    Args:
        excess: ``[B]`` excess losses (with gradient through ``l_i``), ``B >= 1``.
        threshold: stored ``s`` (0-dim tensor or float); seen: whether it was ever written.
        alpha: level in ``(0, 1]``; eta: threshold step size ``> 0``.
        host: compute the batch statistics in numpy (None: for CPU tensors), as in :func:`drrho_kl`.
    """
    b = excess.shape[0]
    s_old, flag = _host(threshold, seen)
    arr = _on_host(excess, host)
    if arr is not None:
        return _cvar_on_host(excess, arr, s_old, flag, alpha=alpha, eta=eta)
    xd = _detached_float(excess)
    if alpha >= 1.0:  # weights 1 whatever s is; s still takes its pinball step (towards min x, where F is the mean)
        w = torch.full_like(xd, 1.0 / b)
        if not flag:
            s_old = float(xd.min())
        lo, mean, count = torch.stack([xd.min(), xd.mean(), torch.gt(xd, s_old).sum().to(xd.dtype)]).tolist()
        bad = not (math.isfinite(lo) and math.isfinite(mean) and math.isfinite(s_old))
        new = float("nan") if bad else s_old - eta * (1.0 - count / b)
        return DRRhoStep(torch.dot(w.to(excess.dtype), excess), new, mean, w)
    if not flag:
        s_old = float(upper_quantile(xd, alpha))
    above = torch.gt(xd, s_old)
    w = torch.where(above, 1.0 / (alpha * b), 0.0).to(xd.dtype)
    over, count, lo = torch.stack([torch.sub(xd, s_old).clamp_min_(0.0).sum(), above.sum(), xd.min()]).tolist()
    if not (math.isfinite(over) and math.isfinite(lo) and math.isfinite(s_old)):
        nan = float("nan")
        return DRRhoStep(excess.sum() * nan, nan, nan, w)
    objective = s_old + over / (alpha * b)
    new = s_old - eta * (alpha - count / b)
    return DRRhoStep(torch.dot(w.to(excess.dtype), excess), new, objective, w)


def _cvar_on_host(excess: Tensor, a: np.ndarray, s_old: float, flag: bool, *, alpha: float, eta: float) -> DRRhoStep:
    """:func:`drrho_cvar` with the batch statistics computed in numpy (``a``: the batch, float64)."""
    b = a.shape[0]
    lo, total = float(a.min()), float(a.sum())
    if not (math.isfinite(lo) and math.isfinite(total) and math.isfinite(s_old)):
        nan = float("nan")
        return DRRhoStep(excess.sum() * nan, nan, nan, torch.full_like(_detached_float(excess), nan))
    if alpha >= 1.0:
        s_old = s_old if flag else lo
        new = s_old - eta * (1.0 - float(np.count_nonzero(a > s_old)) / b)
        w = _weights_tensor(np.full(b, 1.0 / b), excess)
        return DRRhoStep(torch.dot(w.to(excess.dtype), excess), new, total / b, w)
    if not flag:
        k = min(int(math.floor(alpha * b + 1e-9)) + 1, b)  # upper_quantile: the k-th largest entry
        s_old = float(np.partition(a, b - k)[b - k])
    above = a > s_old
    count = float(np.count_nonzero(above))
    objective = s_old + float(np.maximum(a - s_old, 0.0).sum()) / (alpha * b)
    w = _weights_tensor(above * (1.0 / (alpha * b)), excess)
    return DRRhoStep(torch.dot(w.to(excess.dtype), excess), s_old - eta * (alpha - count / b), objective, w)


def drrho_kl_objective(excess: Tensor, tau: float) -> Tensor:
    """Exact KL DRRho risk of a full data set, ``tau log (1/n) sum_i exp(x_i / tau)`` (differentiable)."""
    return tau * (torch.logsumexp(excess / tau, 0) - math.log(excess.shape[0]))


def drrho_cvar_objective(excess: Tensor, alpha: float) -> Tensor:
    """Exact CVaR of a full data set at level ``alpha``: the mean of its largest ``alpha`` share (a
    fractional last entry counted partly), ``min_s s + (1/(alpha n)) sum_i (x_i - s)_+`` (differentiable)."""
    return top_fraction_mean(excess, alpha)
