"""Pure kernels of discriminative fine-tuning (DFT, DFT2) of a language model.

Notation (one row ``i`` per prompt of the batch, ``m`` sampled negatives ``j`` per prompt):

* ``logp_pos [B]``: the score ``s(y_i, x_i)`` of the prompt's answer, the summed token log-probability
  ``log pi_theta(y_i | x_i)`` (DFT2: divided by the answer's number of tokens);
* ``logp_neg [B, m]``: the same score of each negative ``y'_ij`` (sampled from the base model);
* ``ref_logp_neg [B, m]``: ``log p_0(y'_ij | x_i)`` under the frozen base (reference) model, the
  sampling distribution of the importance-sampling estimate (DFT only; DFT2 has none);
* ``d_ij = logp_neg_ij / tau - ref_logp_neg_ij``: the log of one importance-sampling term of
  ``g_i = sum_{y'} exp(s(y', x_i) / tau) = E_{y' ~ p_0}[exp(s(y', x_i)/tau - log p_0(y' | x_i))]``;
* ``log_u [B]``: the per-prompt moving-average estimate of ``log g_i`` (kept in log space, so a
  large ``|d|`` never overflows: every exponential below is of ``d_ij - log_u_i <= log m - log gamma``).

The kernels keep no state; :class:`xrisk.losses.DFTLoss` reads and writes the estimates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xrisk.functional.contrastive import log_moving_average

__all__ = ["dft_log_terms", "dft_log_estimate", "dft_surrogate", "dft_objective"]


def dft_log_terms(logp_neg: Tensor, ref_logp_neg: Tensor | None, tau: float) -> tuple[Tensor, Tensor]:
    """The detached log importance terms ``d [B, m]`` and their log-mean ``log((1/m) sum_j exp(d_ij)) [B]``.

    ``d_ij = logp_neg_ij / tau - ref_logp_neg_ij`` (``ref_logp_neg=None``: ``d_ij = logp_neg_ij / tau``,
    DFT2). The log-mean is this batch's estimate of ``log g_i`` (see the module docstring).
    """
    d = logp_neg.detach() / tau
    if ref_logp_neg is not None:
        d = d - ref_logp_neg.detach().to(d.dtype)
    return d, torch.logsumexp(d, dim=-1) - math.log(d.shape[-1])


def dft_log_estimate(log_u_prev: Tensor, log_new: Tensor, gamma: float, seen: Tensor) -> Tensor:
    """``log u_i <- log((1 - gamma) u_i + gamma exp(log_new_i))``: the moving average of ``u`` in log space.

    ``gamma`` is the weight on the new value; an entry with ``seen = False`` takes ``log_new`` as is
    (xrisk's first-visit rule; pass ``seen`` all True to start from ``log_u_prev`` as the reference code's
    ``u_init`` does).
    """
    return log_moving_average(log_u_prev, log_new, gamma, seen)


def dft_surrogate(logp_pos: Tensor, logp_neg: Tensor, d: Tensor, log_u: Tensor) -> Tensor:
    """``mean_i [ -logp_pos_i + (1/m) sum_j w_ij logp_neg_ij ]`` with the detached weights ``w_ij = exp(d_ij - log_u_i)``.

    Its gradient is ``tau`` times the stochastic compositional gradient of :func:`dft_objective`
    (``tau * grad(-s_pos/tau + log g)``, ``g`` replaced by its estimate ``u``). ``d`` and ``log_u`` carry
    no gradient. Returns a scalar; the value is a surrogate (it is not the objective).
    """
    w = torch.exp(d - log_u.unsqueeze(-1)).to(logp_neg.dtype)
    return (torch.mul(w, logp_neg).mean(-1) - logp_pos).mean()


def dft_objective(logp_pos: Tensor, logp_neg: Tensor, ref_logp_neg: Tensor | None, tau: float) -> Tensor:
    """Per-prompt negative log discriminative likelihood ``-s_pos/tau + log((1/m) sum_j exp(d_ij))`` ``[B]``.

    Differentiable in ``logp_pos`` and ``logp_neg`` (the oracle and the gradchecks use it): with
    ``gamma = 1`` the gradient of :func:`dft_surrogate` equals ``tau`` times the gradient of its mean.
    """
    d = logp_neg / tau
    if ref_logp_neg is not None:
        d = d - ref_logp_neg
    return torch.logsumexp(d, dim=-1) - math.log(d.shape[-1]) - logp_pos / tau
