"""Pure kernels of SOAP, the stochastic optimiser of average precision (AP).

Average precision over a data set with positives :math:`S_+` and all samples :math:`S`,
written with a pairwise surrogate :math:`\\ell` of the indicator
:math:`1[h(x_j) \\ge h(x_i)]`, is

.. math::

    \\mathrm{AP} \\approx \\frac{1}{n_+} \\sum_{i \\in S_+}
        \\frac{g_{\\mathrm{pos}, i}(w)}{g_{\\mathrm{all}, i}(w)}, \\qquad
    g_{\\mathrm{all}, i} = \\frac{1}{n}\\sum_{j \\in S} L_{ij}, \\quad
    g_{\\mathrm{pos}, i} = \\frac{1}{n}\\sum_{j \\in S} L_{ij}\\, 1[y_j = 1],

with :math:`L_{ij} = \\ell(m, h(x_i) - h(x_j))` (``m`` = ``margin``). SOAP keeps moving
averages :math:`u_{\\mathrm{all}, i} \\approx g_{\\mathrm{all}, i}` and
:math:`u_{\\mathrm{pos}, i} \\approx g_{\\mathrm{pos}, i}` per positive and descends
:math:`-\\frac{1}{n_+}\\sum_i u_{\\mathrm{pos},i}/u_{\\mathrm{all},i}` with the chain rule,
whose gradient on a batch is :math:`\\operatorname{mean}_{ij} W_{ij} \\nabla L_{ij}` with the
detached weights

.. math::

    W_{ij} = \\frac{u_{\\mathrm{pos}, i} - u_{\\mathrm{all}, i}\\, 1[y_j = 1]}{u_{\\mathrm{all}, i}^2}.

The module :class:`xrisk.losses.APLoss` reads and writes the estimates; the kernels below only
compute. Paper: Qi, Luo, Xu, Ji, Yang, "Stochastic Optimization of Areas Under Precision-Recall
Curves with Provable Convergence", NeurIPS 2021, arXiv:2104.08736.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xrisk._tensors import constant
from xrisk.functional.surrogates import SHORTFALL_LOSSES, get_surrogate, pairwise_shortfall

__all__ = ["ap_inner_estimates", "ap_weights", "ap_surrogate", "ap_ratio"]

_TINY = 1e-12  # floor of u_all (only reached when every pairwise loss is exactly zero)


def ap_inner_estimates(
    scores_pos: Tensor,
    scores_all: Tensor,
    targets_all: Tensor,
    *,
    margin: float,
    surrogate: str = "squared_hinge",
    with_shortfall: bool = False,
) -> tuple[Tensor, ...]:
    """Pairwise losses and the batch estimates of the two inner functions of SOAP.

    Args:
        scores_pos: ``[P]`` scores of the positives (the anchors ``i``).
        scores_all: ``[B]`` scores of every sample of the batch (the ``j``; anchors included).
        targets_all: ``[B]`` ``y_j = 1`` (bool, or 0/1 in any floating dtype).
        margin: ``m`` of the surrogate ``ell(m, f_i - f_j)``.
        surrogate: a name of :data:`xrisk.functional.surrogates.SURROGATES`.
        with_shortfall: also return the detached shortfall ``R_ij = m - (f_i - f_j)`` (``L = ell(R)``).

    Returns:
        ``(L [P, B], g_all [P], g_pos [P])`` (and ``R [P, B]``) with ``g_all_i = mean_j L_ij`` and
        ``g_pos_i = mean_j L_ij 1[y_j = 1]``; ``L`` keeps the graph, the estimates are detached.

    Example:
        >>> L, ga, gp = ap_inner_estimates(torch.tensor([0.9]), torch.tensor([0.9, 0.1]),
        ...                                torch.tensor([True, False]), margin=1.0)
        >>> ga, gp
        (tensor([0.5200]), tensor([0.5000]))
    """
    get_surrogate(surrogate)
    shortfall = pairwise_shortfall(scores_pos, scores_all, margin=margin)
    losses = SHORTFALL_LOSSES[surrogate](shortfall)  # = pairwise_surrogate(scores_pos, scores_all, ...)
    d = losses.detach() if losses.requires_grad else losses
    n = d.shape[1]
    y = targets_all if targets_all.dtype in (d.dtype, torch.bool) else targets_all.to(d.dtype)  # bool: promoted
    c = constant(float(n), d)
    g_all = d.sum(1).div_(c)  # = d.mean(1), bit for bit (mean is sum / n), in half the time on CPU
    g_pos = (d * y).sum(1).div_(c)
    if with_shortfall:
        return losses, g_all, g_pos, shortfall.detach() if shortfall.requires_grad else shortfall
    return losses, g_all, g_pos


def ap_surrogate(losses: Tensor, targets_all: Tensor, u_all: Tensor, u_pos: Tensor) -> Tensor:
    """SOAP surrogate ``mean_ij W_ij L_ij`` whose gradient is the SOAP gradient estimator.

    Args:
        losses: ``[P, B]`` pairwise losses ``L_ij`` (with graph).
        targets_all: ``[B]`` bool labels of the ``j``.
        u_all: ``[P]`` current estimates of ``g_all`` for the anchors (treated as constants).
        u_pos: ``[P]`` current estimates of ``g_pos`` (treated as constants).

    Returns:
        Scalar; its value is not AP (it may be negative), its gradient estimates the gradient
        of ``-(1/n_+) sum_i g_pos_i / g_all_i``.
    """
    return (ap_weights(targets_all, u_all, u_pos, losses.dtype) * losses).mean()


def ap_weights(targets_all: Tensor, u_all: Tensor, u_pos: Tensor, dtype: torch.dtype) -> Tensor:
    """SOAP's detached weights ``W_ij = (u_pos_i - u_all_i 1[y_j = 1]) / u_all_i^2`` ``[P, B]``
    (``targets_all``: bool, or 0/1 in any floating dtype)."""
    ua = _as(u_all, dtype).clamp_min(_TINY).unsqueeze(1)
    y = targets_all if targets_all.dtype == torch.bool else _as(targets_all, dtype)  # bool: promoted, the same values
    # up - ua * y in one op (ua * y is exact for y in {0, 1}: the same rounding)
    return torch.addcmul(_as(u_pos, dtype).unsqueeze(1), ua, y, value=-1).div_(ua.pow(2))  # y [B] broadcasts


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` detached in ``dtype`` (no call for what already is)."""
    x = x.detach() if x.requires_grad else x
    return x if x.dtype == dtype else x.to(dtype)


def ap_ratio(u_all: Tensor, u_pos: Tensor) -> Tensor:
    """Smoothed AP of the anchors, ``mean_i u_pos_i / u_all_i`` (a scalar in ``[0, 1]``)."""
    return (u_pos / u_all.clamp_min(_TINY)).mean()
