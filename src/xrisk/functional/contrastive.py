"""Pure kernels of the global contrastive losses (SogCLR, iSogCLR, FastCLIP, NUCLR, GloFND).

Notation shared by every kernel. One *anchor* ``i`` (a row) is compared with ``C`` candidate
columns ``j``; ``mask[i, j]`` says whether column ``j`` is a negative of anchor ``i``.

* ``diff[i, j] = s(x_i, z_j) - s(x_i, x_i^+)``: cosine similarity of the anchor with column ``j``
  minus its similarity with its positive (so the positive sits at ``diff = 0``).
* ``tau``: temperature (a float or a tensor broadcastable to the anchor shape ``diff.shape[:-1]``).
* ``g_i = (1/|N_i|) sum_{j in N_i} exp(diff_ij / tau)``: the inner mean over the negatives ``N_i``
  of the anchor (over the whole data set in the objective, over the batch in an estimate).
* Moving-average estimators are kept in **log space** (``log u``), so ``tau = 0.01`` never
  overflows: every exponential below is of a quantity ``<= log |N_i| - log gamma``.

No kernel keeps state; the modules in :mod:`xrisk.losses` read and write the per-sample state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "masked_log_mean_exp",
    "log_moving_average",
    "gcl_objective",
    "gcl_fcco",
    "nuclr_objective",
    "nuclr_fcco",
    "quantile_threshold_step",
    "masked_upper_quantile",
]


def _as_anchor(t: Tensor | float, ref: Tensor) -> Tensor | float:
    """Broadcast a per-anchor tensor ``[...]`` against ``ref [..., C]``."""
    return t.unsqueeze(-1) if isinstance(t, Tensor) and t.dim() > 0 else t


def masked_log_mean_exp(logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``log((1/|N_i|) sum_{j: mask_ij} exp(logits_ij))`` computed stably, and ``|N_i|``.

    Args:
        logits: ``[..., C]`` values to exponentiate.
        mask: ``[..., C]`` bool, the entries that enter the mean.

    Returns:
        ``(log_mean [...], count [...])``; rows without any entry get ``log_mean = 0`` (callers
        must ignore them: ``count == 0``).
    """
    count = mask.sum(-1)
    filled = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(filled, dim=-1)
    empty = count == 0
    lse = torch.where(empty, torch.zeros_like(lse), lse)
    return lse - torch.log(count.clamp_min(1).to(logits.dtype)), count


def log_moving_average(log_old: Tensor, log_new: Tensor, gamma: float, seen: Tensor) -> Tensor:
    """Moving average in log space: ``log((1-gamma) exp(log_old) + gamma exp(log_new))``.

    ``gamma`` is the weight on the new value (xrisk convention). Entries with ``seen = False``
    (first visit) take ``log_new`` as is.
    """
    if gamma >= 1.0:
        return log_new.clone()
    mixed = torch.logaddexp(log_old + math.log1p(-gamma), log_new + math.log(gamma))
    return torch.where(seen, mixed, log_new)


def gcl_objective(diff: Tensor, mask: Tensor, tau: Tensor | float, *, eps: float = 0.0, rho: float = 0.0) -> Tensor:
    """Exact per-anchor robust GCL term ``tau * log(eps + g_i(tau)) + rho * tau`` (differentiable).

    With ``rho = 0`` this is the GCL term of SogCLR/FastCLIP; with ``rho > 0`` the KL-DRO dual of
    iSogCLR / FastCLIP-v3 (RGCL). Used by the oracles and the float64 gradchecks.

    Args:
        diff: ``[..., C]`` similarity differences; mask: ``[..., C]`` negatives.
        tau: float or tensor ``[...]``; eps: the ``eps`` inside the log; rho: the DRO radius.

    Returns:
        ``[...]`` per-anchor objective.
    """
    t = _as_anchor(tau, diff)
    log_g, _ = masked_log_mean_exp(diff / t, mask)
    if eps > 0.0:
        log_g = torch.logaddexp(log_g, torch.full_like(log_g, math.log(eps)))
    tau_a = tau if not isinstance(tau, Tensor) else tau.expand_as(log_g)
    return tau_a * log_g + rho * tau_a


def gcl_fcco(
    diff: Tensor, mask: Tensor, tau: Tensor | float, log_u: Tensor, *, eps: float = 0.0, rho: float = 0.0
) -> tuple[Tensor, Tensor]:
    """FCCO surrogate of the (robust) GCL term and the estimated ``d/dtau`` of it.

    With ``p_ij = exp(diff_ij / tau) / (|N_i| (eps + u_i))`` (detached; ``u_i = exp(log_u_i)`` the
    moving-average estimate of ``g_i``):

    * ``surrogate_i = sum_{j in N_i} p_ij * diff_ij``; its gradient ``sum_j p_ij grad diff_ij`` is the
      FCCO estimator of ``grad_w [tau log(eps + g_i)]`` (exact when ``u_i = g_i``).
    * ``tau_grad_i = log(eps + u_i) - sum_j p_ij diff_ij / tau + rho``: the derivative of
      ``tau log(eps + g_i(tau)) + rho tau`` with respect to ``tau`` with ``u_i`` in place of ``g_i``.

    Args:
        diff: ``[..., C]``; mask: ``[..., C]`` bool; tau: float or ``[...]``; log_u: ``[...]``.

    Returns:
        ``(surrogate [...], tau_grad [...])``; ``tau_grad`` is detached.
    """
    t = _as_anchor(tau, diff)
    with torch.no_grad():
        logits = diff.detach() / (t.detach() if isinstance(t, Tensor) else t)
        log_den = log_u if eps <= 0.0 else torch.logaddexp(log_u, torch.full_like(log_u, math.log(eps)))
        count = mask.sum(-1).clamp_min(1).to(diff.dtype)
        p = torch.exp(logits - log_den.unsqueeze(-1)).masked_fill(~mask, 0.0) / count.unsqueeze(-1)
        tau_grad = log_den - (p * logits).sum(-1) + rho
    return (p * diff).sum(-1), tau_grad


def nuclr_objective(diff: Tensor, mask: Tensor, zeta: Tensor, tau: float, log_pos: Tensor | float) -> Tensor:
    """Exact per-anchor NUCLR term ``tau * log(exp(log_pos) + mean_{j in N_i} exp((diff_ij - zeta_j)/tau))``.

    ``zeta [..., C]`` is the learned normaliser of each column; ``log_pos = -xi/tau - log(n-1)`` carries
    the positive's term of the MIS normaliser (``xi``: the positive's normaliser, ``n``: data-set size).
    Differentiable in ``diff`` and ``zeta`` (oracles, gradchecks).
    """
    log_g, _ = masked_log_mean_exp((diff - zeta) / tau, mask)
    lp = log_pos if isinstance(log_pos, Tensor) else torch.full_like(log_g, float(log_pos))
    return tau * torch.logaddexp(log_g, lp.expand_as(log_g))


def nuclr_fcco(
    diff: Tensor, mask: Tensor, zeta: Tensor, tau: float, log_u: Tensor, log_pos: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """FCCO surrogate of the NUCLR term and the per-pair weights for the ``zeta`` gradient.

    With ``log Z_i = logaddexp(log_pos, log u_i)`` (``u_i`` estimates ``mean_j exp((diff_ij - zeta_j)/tau)``)
    and ``w_ij = exp((diff_ij - zeta_j)/tau - log Z_i)`` on the negatives (detached):

    * ``surrogate_i = sum_j w_ij diff_ij / |N_i|`` (gradient = FCCO estimator of ``grad_w`` of the term);
    * ``w [..., C]``: ``1 - mean_{i: j in N_i} w_ij`` estimates ``n * dL/dzeta_j``.

    Returns:
        ``(surrogate [...], w [..., C], log_Z [...])``.
    """
    with torch.no_grad():
        logits = (diff.detach() - zeta) / tau
        lp = log_pos if isinstance(log_pos, Tensor) else torch.full_like(log_u, float(log_pos))
        log_z = torch.logaddexp(log_u, lp.expand_as(log_u))
        w = torch.exp(logits - log_z.unsqueeze(-1)).masked_fill(~mask, 0.0)
        count = mask.sum(-1).clamp_min(1).to(diff.dtype)
    return (w * diff).sum(-1) / count, w, log_z


def quantile_threshold_step(sim: Tensor, mask: Tensor, lam: Tensor, *, alpha: float, lr: float) -> Tensor:
    """One stochastic subgradient step on the pinball loss whose minimiser is the ``(1-alpha)`` quantile.

    ``lambda_i = argmin_l alpha * l + mean_{j in N_i} (s_ij - l)_+`` (GloFND); the batch subgradient is
    ``alpha - mean_{j in N_i} 1[s_ij > lambda_i]`` and ``lambda_i <- clip(lambda_i - lr * grad, -1, 1)``.

    Args:
        sim: ``[..., C]`` cosine similarities; mask: ``[..., C]`` negatives; lam: ``[...]`` thresholds.

    Returns:
        ``[...]`` updated thresholds (rows without negatives are returned unchanged).
    """
    count = mask.sum(-1)
    above = ((sim > lam.unsqueeze(-1)) & mask).sum(-1).to(lam.dtype)
    grad = alpha - above / count.clamp_min(1).to(lam.dtype)
    new = (lam - lr * grad).clamp(-1.0, 1.0)
    return torch.where(count > 0, new, lam)


def masked_upper_quantile(sim: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """Per-row ``(1 - alpha)`` quantile of ``sim`` over the entries of ``mask`` (lower order statistic).

    Returns ``[...]``: the value with ``floor(alpha * |N_i|)`` masked entries above it (rows without
    entries get ``1.0``, i.e. nothing above the threshold).
    """
    vals = sim.masked_fill(~mask, float("-inf")).sort(-1, descending=True).values
    count = mask.sum(-1)
    k = torch.minimum((alpha * count).floor().long(), (count - 1).clamp_min(0))
    out = vals.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    return torch.where(count > 0, out, torch.ones_like(out))
