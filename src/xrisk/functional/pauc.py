"""Pure kernels of partial-AUC optimisation: SOPA (CVaR), SOPA-s and SOTA-s (KL-DRO).

Notation: positives ``i`` (``P`` in the batch), negatives ``j`` (``N`` in the batch),
``L_ij = ell(m, f_i - f_j)`` the pairwise surrogate of ``1[f_j >= f_i]``.

* One-way pAUC with FPR in ``[0, beta]`` (``beta`` = ``max_fpr``) is, up to normalisation,
  the mean over positives of the **CVaR** of ``L_i.`` over negatives at level ``beta``
  (the average of the largest ``beta`` share):
  ``CVaR_beta(L_i.) = min_s s + E_j (L_ij - s)_+ / beta`` (SOPA learns one ``s_i`` per positive).
* Its smooth (KL-DRO) version replaces the CVaR by ``tau log E_j exp(L_ij / tau)`` (SOPA-s).
* Two-way pAUC (TPR >= ``alpha``, FPR <= ``beta``) nests a second KL-DRO over positives:
  ``tau' log E_i (E_j exp(L_ij / tau))^(tau / tau')`` (SOTA-s).

Every exponential is handled in log space (``log u`` is what gets stored), so a large
``L / tau`` never overflows; LibAUC computes ``exp(L / tau)`` directly and returns inf/NaN once
``L / tau`` exceeds about 88 in float32.

Paper: Zhu, Li, Wang, Wu, Yang, "When AUC meets DRO: Optimizing Partial AUC for Deep Learning
with Non-Convex Convergence Guarantee", ICML 2022, arXiv:2203.00176.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xrisk._tensors import constant

__all__ = [
    "top_fraction_mean",
    "pauc_risk",
    "tpauc_risk",
    "cvar_threshold_grad",
    "cvar_step",
    "pauc_cvar_surrogate",
    "pauc_cvar_weights",
    "pauc_kl_weights",
    "tpauc_kl_weights",
    "kl_logits",
    "log_mean_exp_inner",
    "log_mean_exp_by_index",
    "log_ema",
    "pauc_kl_surrogate",
    "tpauc_kl_surrogate",
]


def _detached_f32(x: Tensor) -> Tensor:
    """``x`` detached, in at least float32 (weights of half-precision scores are formed in float32)."""
    d = x.detach() if x.requires_grad else x
    return d if d.dtype in (torch.float32, torch.float64) else d.to(torch.promote_types(d.dtype, torch.float32))


def _const(x: Tensor, like: Tensor) -> Tensor:
    """``x`` detached, in ``like``'s dtype and device (no call for what already is)."""
    x = x.detach() if x.requires_grad else x
    return x if x.dtype == like.dtype and x.device == like.device else x.to(like)


def kl_logits(losses: Tensor, tau: float) -> Tensor:
    """``L / tau`` detached, in at least float32: what the KL-DRO kernels exponentiate (pass it as ``scaled`` to
    share it between them)."""
    d = _detached_f32(losses)
    return d if tau == 1.0 else d / constant(tau, d)  # x / 1 is x


# ----------------------------------------------------------------------------- risks (objectives)
def top_fraction_mean(values: Tensor, frac: float, dim: int = -1) -> Tensor:
    """Empirical CVaR: mean of the largest ``frac`` share of ``values`` along ``dim``.

    With ``n`` entries and ``k = frac * n`` (fractional), this is
    ``(1/k) sum_r min(max(k - r, 0), 1) v_(r)`` over the values sorted decreasingly
    (``r = 0, 1, ...``), which equals ``min_s s + sum_r (v_r - s)_+ / k``. For ``k <= 1`` it is
    the maximum; for ``frac = 1`` the mean. ``frac`` must lie in ``(0, 1]``.

    Example:
        >>> top_fraction_mean(torch.tensor([1.0, 4.0, 2.0, 3.0]), 0.5)
        tensor(3.5000)
    """
    v = values.movedim(dim, -1)
    n = v.shape[-1]
    k = frac * n
    srt = v.sort(dim=-1, descending=True).values
    ranks = torch.arange(n, device=v.device, dtype=v.dtype)
    w = (k - ranks).clamp(0.0, 1.0)
    return (srt * w).sum(-1) / k


def pauc_risk(losses: Tensor, max_fpr: float) -> Tensor:
    """One-way pAUC surrogate risk ``mean_i CVaR_beta(L_i.)`` of a ``[P, N]`` loss matrix.

    This is the mean surrogate loss of each positive against the hardest ``max_fpr`` share of
    negatives: the batch estimate of ``1 - pAUC(0, beta) / beta`` with ``1[.]`` replaced by ``ell``.
    """
    return top_fraction_mean(losses, max_fpr, dim=1).mean()


def tpauc_risk(losses: Tensor, min_tpr: float, max_fpr: float) -> Tensor:
    """Two-way pAUC surrogate risk: ``CVaR_{1 - alpha}`` over positives of ``CVaR_beta`` over negatives.

    The hardest ``1 - min_tpr`` share of positives against the hardest ``max_fpr`` share of
    negatives (the region TPR >= ``alpha``, FPR <= ``beta`` of the ROC curve).
    """
    per_pos = top_fraction_mean(losses, max_fpr, dim=1)
    return top_fraction_mean(per_pos, 1.0 - min_tpr, dim=0)


# ----------------------------------------------------------------------------- SOPA (exact CVaR)
def cvar_threshold_grad(losses: Tensor, threshold: Tensor, max_fpr: float) -> Tensor:
    """Stochastic (sub)gradient of ``psi_i(s) = s + mean_j (L_ij - s)_+ / beta`` at ``s = threshold_i``.

    ``d psi_i / d s = 1 - #{j : L_ij > s_i} / (beta N)``, in ``[1 - 1/beta, 1]``; it is zero in
    expectation when ``s_i`` is the ``(1 - beta)``-quantile of ``L_i.``.

    Shapes: ``losses`` ``[P, N]``, ``threshold`` ``[P]`` -> ``[P]`` (detached).
    """
    d = losses.detach()
    above = (d > threshold.to(d.dtype).unsqueeze(1)).to(d.dtype)
    return 1.0 - above.sum(dim=1) / (max_fpr * d.shape[1])


def cvar_step(losses: Tensor, threshold: Tensor, max_fpr: float) -> tuple[Tensor, Tensor]:
    """:func:`cvar_threshold_grad` and :func:`pauc_cvar_weights` of the same ``losses [P, N]`` and thresholds
    ``[P]`` from one comparison: ``(grad [P], weights [P, N])`` (detached; the same values bit for bit)."""
    d = losses.detach() if losses.requires_grad else losses
    above = (d > threshold.to(d.dtype).unsqueeze(1)).to(d.dtype)
    frac = above.sum(dim=1).div_(constant(max_fpr * d.shape[1], d))
    return torch.rsub(frac, constant(1.0, d)), above.div(constant(max_fpr, d))


def pauc_cvar_surrogate(losses: Tensor, threshold: Tensor, max_fpr: float) -> Tensor:
    """SOPA surrogate ``mean_ij 1[L_ij > s_i] L_ij / beta`` (indicator detached).

    Its gradient is the stochastic gradient of ``(1/n_+) sum_i (s_i + E_j (L_ij - s_i)_+ / beta)``
    with respect to the model at the current thresholds ``s`` (``threshold``, ``[P]``).
    """
    return (pauc_cvar_weights(losses, threshold, max_fpr) * losses).mean()


def pauc_cvar_weights(losses: Tensor, threshold: Tensor, max_fpr: float) -> Tensor:
    """SOPA's detached weights ``1[L_ij > s_i] / beta`` ``[P, N]``."""
    d = losses.detach()
    return (d > threshold.to(d.dtype).unsqueeze(1)).to(d.dtype) / max_fpr


# ----------------------------------------------------------------------------- KL-DRO (log space)
def log_mean_exp_inner(losses: Tensor, tau: float, *, scaled: Tensor | None = None) -> Tensor:
    """``log mean_j exp(L_ij / tau)`` for a ``[P, N]`` matrix -> ``[P]`` (detached, overflow-free; ``scaled``:
    :func:`kl_logits` of the same arguments, if the caller has it)."""
    d = kl_logits(losses, tau) if scaled is None else scaled
    out = torch.logsumexp(d, dim=1)
    c = constant(math.log(d.shape[1]), out)
    return out - c if out.requires_grad else out.sub_(c)


def log_mean_exp_by_index(index: Tensor, log_values: Tensor) -> Tensor:
    """Merge duplicates: row ``r`` gets ``log mean {exp(log_values[q]) : index[q] == index[r]}``.

    This is :class:`xrisk.state.SampleState`'s duplicate rule (average the new values of one
    index) carried out in log space. Shapes: ``index`` ``[R]``, ``log_values`` ``[R]`` -> ``[R]``.
    """
    v = log_values.detach()
    uniq, inv = torch.unique(index.to(v.device), return_inverse=True)
    shift = torch.full((uniq.numel(),), -math.inf, dtype=v.dtype, device=v.device)
    shift = shift.scatter_reduce(0, inv, v, reduce="amax", include_self=True)
    tot = torch.zeros_like(shift).index_add_(0, inv, torch.exp(v - shift[inv]))
    cnt = torch.zeros_like(shift).index_add_(0, inv, torch.ones_like(v))
    return (shift + torch.log(tot / cnt))[inv]


def log_ema(log_old: Tensor, log_new: Tensor, gamma: float, seen: Tensor) -> Tensor:
    """``log((1 - gamma) exp(log_old) + gamma exp(log_new))``, or ``log_new`` where not ``seen``.

    The xrisk moving average (``gamma`` weighs the new value; a never-written entry takes the
    new value) applied to ``u = exp(log u)`` without ever forming ``u``.
    """
    if gamma >= 1.0:
        return log_new.clone()
    mixed = torch.logaddexp(torch.add(log_old, constant(math.log1p(-gamma), log_old)),
                            torch.add(log_new, constant(math.log(gamma), log_new)))
    return torch.where(seen, mixed, log_new)


def pauc_kl_surrogate(losses: Tensor, log_u: Tensor, tau: float) -> Tensor:
    """SOPA-s surrogate ``mean_ij p_ij L_ij`` with ``p_ij = exp(L_ij / tau) / u_i`` detached.

    Its gradient estimates that of ``(1/n_+) sum_i tau log E_j exp(L_ij / tau)`` when
    ``u_i ~ E_j exp(L_ij / tau)``. Shapes: ``losses`` ``[P, N]``, ``log_u`` ``[P]``.
    """
    return (pauc_kl_weights(losses, log_u, tau).to(losses.dtype) * losses).mean()


def pauc_kl_weights(losses: Tensor, log_u: Tensor, tau: float, *, scaled: Tensor | None = None) -> Tensor:
    """SOPA-s's detached weights ``p_ij = exp(L_ij / tau - log u_i)`` ``[P, N]`` (at least float32; ``scaled``:
    :func:`kl_logits` of the same arguments, if the caller has it)."""
    d = kl_logits(losses, tau) if scaled is None else scaled
    return torch.exp(d - _const(log_u, d).unsqueeze(1))


def tpauc_kl_surrogate(losses: Tensor, log_u: Tensor, log_w: Tensor, tau: float, tau_outer: float) -> Tensor:
    """SOTA-s surrogate ``mean_ij p_ij L_ij`` with detached
    ``p_ij = u_i^(tau / tau' - 1) exp(L_ij / tau) / w``.

    Its gradient estimates that of ``tau' log E_i (E_j exp(L_ij / tau))^(tau / tau')`` when
    ``u_i ~ E_j exp(L_ij / tau)`` and ``w ~ E_i u_i^(tau / tau')``.
    Shapes: ``losses`` ``[P, N]``, ``log_u`` ``[P]``, ``log_w`` scalar; ``tau'`` = ``tau_outer``.
    """
    return (tpauc_kl_weights(losses, log_u, log_w, tau, tau_outer).to(losses.dtype) * losses).mean()


def tpauc_kl_weights(
    losses: Tensor, log_u: Tensor, log_w: Tensor, tau: float, tau_outer: float, *, scaled: Tensor | None = None,
) -> Tensor:
    """SOTA-s's detached weights ``p_ij = u_i^(tau / tau' - 1) exp(L_ij / tau) / w`` ``[P, N]`` (``scaled``:
    :func:`kl_logits` of ``losses`` and ``tau``, if the caller has it)."""
    d = kl_logits(losses, tau) if scaled is None else scaled
    if tau == tau_outer:  # u_i^0: the term is 0 (log u is finite in every step that is kept)
        return torch.exp(d - _const(log_w, d))
    lu = _const(log_u, d).unsqueeze(1)
    return torch.exp((tau / tau_outer - 1.0) * lu + d - _const(log_w, d))
