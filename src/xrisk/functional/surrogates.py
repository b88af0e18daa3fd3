"""Pairwise surrogate losses ``ell(m, t)`` of a score difference ``t = f(x_i) - f(x_j)``.

Every surrogate in the registry is a function of the shortfall ``m - t`` (``m`` = margin):

=================  =====================================
name               ``ell(m, t)``
=================  =====================================
``squared_hinge``  ``max(m - t, 0)^2`` (the default of SOAP/SOPA)
``hinge``          ``max(m - t, 0)``
``logistic``       ``log(1 + exp(m - t))``
``exponential``    ``exp(m - t)``
``square``         ``(m - t)^2`` (AUC-M, PDSCA)
=================  =====================================

All are non-increasing in ``t`` on the region that matters, so a positive scored above a
negative by at least the margin costs (almost) nothing.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch.autograd.function import once_differentiable
import torch.nn.functional as F
from torch import Tensor

from xrisk._tensors import constant

__all__ = ["SHORTFALL_LOSSES", "SHORTFALL_SLOPES", "SURROGATES", "SURROGATE_SLOPES", "SurrogateName", "get_surrogate",
           "pairwise_shortfall", "pairwise_surrogate", "weighted_pairwise_mean", "weighted_pairwise_mean_of"]

SurrogateName = Literal["squared_hinge", "hinge", "logistic", "exponential", "square"]


# ell(m, t) = f(r) of the shortfall r = m - t; the pairwise kernels keep r to reuse it for the slope
def _squared_hinge_of(r: Tensor) -> Tensor:
    return torch.clamp(r, min=0).pow(2)  # = ** 2 without Tensor.__pow__'s Python wrapper


def _hinge_of(r: Tensor) -> Tensor:
    return torch.clamp(r, min=0)


def _square_of(r: Tensor) -> Tensor:
    return r.pow(2)


SHORTFALL_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "squared_hinge": _squared_hinge_of,
    "hinge": _hinge_of,
    "logistic": F.softplus,
    "exponential": torch.exp,
    "square": _square_of,
}


def _squared_hinge(m: float, t: Tensor) -> Tensor:
    return _squared_hinge_of(m - t)


def _hinge(m: float, t: Tensor) -> Tensor:
    return _hinge_of(m - t)


def _logistic(m: float, t: Tensor) -> Tensor:
    return F.softplus(m - t)


def _exponential(m: float, t: Tensor) -> Tensor:
    return torch.exp(m - t)


def _square(m: float, t: Tensor) -> Tensor:
    return _square_of(m - t)


SURROGATES: dict[str, Callable[[float, Tensor], Tensor]] = {
    "squared_hinge": _squared_hinge,
    "hinge": _hinge,
    "logistic": _logistic,
    "exponential": _exponential,
    "square": _square,
}


def get_surrogate(name: str) -> Callable[[float, Tensor], Tensor]:
    """Look up a surrogate ``ell(m, t)`` by name (see the module table)."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}") from None


def pairwise_surrogate(
    scores_i: Tensor, scores_j: Tensor, *, margin: float, surrogate: str = "squared_hinge"
) -> Tensor:
    """``L[..., a, b] = ell(margin, scores_i[..., a] - scores_j[..., b])``.

    Shapes: ``scores_i`` ``[..., P]``, ``scores_j`` ``[..., N]`` -> ``[..., P, N]``.
    """
    fn = get_surrogate(surrogate)
    return fn(margin, scores_i.unsqueeze(-1) - scores_j.unsqueeze(-2))


# d ell(m, t) / d t of every surrogate as a function of the shortfall r = m - t (the slope autograd would give,
# kinks included: clamp passes the gradient at its boundary)
SHORTFALL_SLOPES: dict[str, Callable[[Tensor], Tensor]] = {
    "squared_hinge": lambda r: torch.mul(torch.clamp(r, min=0), constant(-2.0, r)),
    "hinge": lambda r: -(r >= 0).to(r.dtype),
    "logistic": lambda r: -torch.sigmoid(r),
    "exponential": lambda r: -torch.exp(r),
    "square": lambda r: torch.mul(r, constant(-2.0, r)),
}
# each slope as factor * base(r) with a power-of-two factor: the backward passes fold the factor into the gradient's
# scale (exact), one [P, N] op less; "square"'s base is r itself (not a new tensor)
_SLOPE_PARTS: dict[str, tuple[Callable[[Tensor], Tensor], float]] = {
    "squared_hinge": (lambda r: torch.clamp(r, min=0), -2.0),
    "hinge": (lambda r: (r >= 0).to(r.dtype), -1.0),
    "logistic": (torch.sigmoid, -1.0),
    "exponential": (torch.exp, -1.0),
    "square": (lambda r: r, -2.0),
}


def _slope_times(r: Tensor, w: Tensor, grad: Tensor, surrogate: str) -> Tensor:
    """``SHORTFALL_SLOPES[surrogate](r) * w * (grad / r.numel())`` as a new tensor, bit for bit: the slope's factor
    (a power of two) goes into the scale ``grad / (numel / factor)``, which is exact."""
    base, factor = _SLOPE_PARTS[surrogate]
    b = base(r)
    g = torch.mul(b, w) if b is r else b.mul_(w)
    return g.mul_(grad / constant(r.numel() / factor, grad))


# the same as functions of (m, t)
SURROGATE_SLOPES: dict[str, Callable[[float, Tensor], Tensor]] = {
    name: (lambda m, t, slope=slope: slope(m - t)) for name, slope in SHORTFALL_SLOPES.items()
}


def pairwise_shortfall(scores_i: Tensor, scores_j: Tensor, *, margin: float) -> Tensor:
    """``R[..., a, b] = margin - (scores_i[..., a] - scores_j[..., b])``: every surrogate is ``ell = f(R)``
    (:data:`SHORTFALL_LOSSES`), so ``SHORTFALL_LOSSES[name](R)`` equals :func:`pairwise_surrogate` bit for bit."""
    diff = scores_i.unsqueeze(-1) - scores_j.unsqueeze(-2)
    return torch.rsub(diff, constant(margin, diff))  # = margin - (...), one call less


class _WeightedPairwiseMean(torch.autograd.Function):
    """``mean(W * ell(m, s_i - s_j))`` with ``W`` constant and the closed-form gradient
    ``d/ds_i = sum_j W_ij ell'_ij / numel``, ``d/ds_j = -sum_i W_ij ell'_ij / numel``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, scores_i: Tensor, scores_j: Tensor, weights: Tensor, losses: Tensor | None, margin: float, surrogate: str,
        shortfall: Tensor | None,
    ) -> Tensor:
        if losses is None:
            losses = get_surrogate(surrogate)(margin, scores_i.unsqueeze(-1) - scores_j.unsqueeze(-2))
        if shortfall is None:
            ctx.save_for_backward(scores_i, scores_j, weights)
        else:  # the backward's slope comes from the saved shortfall (no second pairwise difference)
            ctx.save_for_backward(weights, shortfall)
        ctx.margin, ctx.surrogate, ctx.saved_shortfall = margin, surrogate, shortfall is not None
        prod = weights * losses
        return prod.sum().div_(constant(float(prod.numel()), prod))  # = prod.mean() bit for bit, a cheaper call

    @staticmethod
    @once_differentiable  # first order only: a double backward raises instead of returning zeros
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if ctx.saved_shortfall:
            w, r = ctx.saved_tensors
        else:
            s_i, s_j, w = ctx.saved_tensors
            r = pairwise_shortfall(s_i, s_j, margin=ctx.margin)
        g = _slope_times(r, w, grad, ctx.surrogate)  # = slope(r) * w * (grad / numel)
        need = ctx.needs_input_grad
        return (g.sum(-1) if need[0] else None, -g.sum(-2) if need[1] else None, None, None, None, None, None)


def weighted_pairwise_mean(
    scores_i: Tensor,
    scores_j: Tensor,
    weights: Tensor,
    *,
    margin: float,
    surrogate: str = "squared_hinge",
    losses: Tensor | None = None,
    shortfall: Tensor | None = None,
) -> Tensor:
    """``mean_ab W[a, b] ell(margin, scores_i[a] - scores_j[b])`` with ``W`` = ``weights`` held constant.

    The value and gradient of ``(weights.detach() * pairwise_surrogate(...)).mean()``, the form of
    every stochastic pairwise estimator in xrisk (AP, pAUC), with a closed-form backward (one fused
    pass instead of autograd through each elementwise step). Shapes: ``scores_i`` ``[P]``,
    ``scores_j`` ``[N]``, ``weights`` ``[P, N]`` -> scalar. ``losses``: optionally the detached
    ``pairwise_surrogate`` of the same scores, if the caller already has it (saves recomputing it);
    ``shortfall``: optionally the detached :func:`pairwise_shortfall` of the same scores (the backward then
    reuses it; the same gradient bit for bit).
    """
    get_surrogate(surrogate)
    dtype = scores_i.dtype
    w = _constant(weights, dtype)
    losses = None if losses is None else _constant(losses, dtype)
    shortfall = None if shortfall is None else _constant(shortfall, dtype)
    out = _WeightedPairwiseMean.apply(scores_i, scores_j, w, losses, float(margin), surrogate, shortfall)
    return out  # type: ignore[no-any-return]


def _constant(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` detached in ``dtype`` (no call for what already is)."""
    x = x.detach() if x.requires_grad else x
    return x if x.dtype == dtype else x.to(dtype)


class _WeightedPairwiseMeanOf(torch.autograd.Function):
    """:class:`_WeightedPairwiseMean` of ``scores[i_index]`` against ``scores[j_index]`` (None: all of ``scores``),
    its gradient scattered into ``scores`` directly (no index node per side)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, scores: Tensor, i_index: Tensor, j_index: Tensor | None, weights: Tensor, losses: Tensor,
        shortfall: Tensor, surrogate: str,
    ) -> Tensor:
        ctx.save_for_backward(weights, shortfall, i_index, j_index)
        ctx.surrogate, ctx.size = surrogate, scores.shape[0]
        prod = weights * losses
        # = prod.mean() bit for bit (mean is sum / numel), a cheaper call
        return prod.sum().div_(constant(float(prod.numel()), prod))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w, r, i_index, j_index = ctx.saved_tensors
        g = _slope_times(r, w, grad, ctx.surrogate)  # = slope(r) * w * (grad / numel), _WeightedPairwiseMean's
        if j_index is None:  # the j side is every score: -sum_i g_ij, then the i side added at its positions
            out = g.sum(-2).neg_()
        else:
            out = g.new_zeros(ctx.size).index_add_(0, j_index, g.sum(-2), alpha=-1)
        return out.index_add_(0, i_index, g.sum(-1)), None, None, None, None, None, None


def weighted_pairwise_mean_of(
    scores: Tensor,
    i_index: Tensor,
    j_index: Tensor | None,
    weights: Tensor,
    *,
    losses: Tensor,
    shortfall: Tensor,
    surrogate: str = "squared_hinge",
) -> Tensor:
    """:func:`weighted_pairwise_mean` of ``scores[i_index]`` against ``scores[j_index]`` (``j_index`` None: against
    every score), for pairs drawn from one score vector (AP: positives against the batch; pAUC: positives
    against negatives). The same value and gradient (up to the sign of zero entries), with one autograd node.

    ``losses`` and ``shortfall`` are the detached :data:`SHORTFALL_LOSSES` and :func:`pairwise_shortfall` of the
    selected scores (the caller has them; the margin is in the shortfall). Shapes: ``scores [B]``,
    ``i_index [P]``, ``j_index [N]`` (distinct positions each), ``weights [P, N]`` -> scalar.
    """
    get_surrogate(surrogate)
    dtype = scores.dtype
    out = _WeightedPairwiseMeanOf.apply(scores, i_index, j_index, _constant(weights, dtype), _constant(losses, dtype),
                                        _constant(shortfall, dtype), surrogate)
    return out  # type: ignore[no-any-return]
