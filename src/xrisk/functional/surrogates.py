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

__all__ = ["SURROGATES", "SURROGATE_SLOPES", "SurrogateName", "get_surrogate", "pairwise_surrogate",
           "weighted_pairwise_mean"]

SurrogateName = Literal["squared_hinge", "hinge", "logistic", "exponential", "square"]


def _squared_hinge(m: float, t: Tensor) -> Tensor:
    return torch.clamp(m - t, min=0) ** 2


def _hinge(m: float, t: Tensor) -> Tensor:
    return torch.clamp(m - t, min=0)


def _logistic(m: float, t: Tensor) -> Tensor:
    return F.softplus(m - t)


def _exponential(m: float, t: Tensor) -> Tensor:
    return torch.exp(m - t)


def _square(m: float, t: Tensor) -> Tensor:
    return (m - t) ** 2


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


# d ell(m, t) / d t of every surrogate (the slope autograd would give, kinks included: clamp passes
# the gradient at its boundary).
SURROGATE_SLOPES: dict[str, Callable[[float, Tensor], Tensor]] = {
    "squared_hinge": lambda m, t: torch.clamp(m - t, min=0) * -2.0,
    "hinge": lambda m, t: -((m - t) >= 0).to(t.dtype),
    "logistic": lambda m, t: -torch.sigmoid(m - t),
    "exponential": lambda m, t: -torch.exp(m - t),
    "square": lambda m, t: (m - t) * -2.0,
}


class _WeightedPairwiseMean(torch.autograd.Function):
    """``mean(W * ell(m, s_i - s_j))`` with ``W`` constant and the closed-form gradient
    ``d/ds_i = sum_j W_ij ell'_ij / numel``, ``d/ds_j = -sum_i W_ij ell'_ij / numel``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, scores_i: Tensor, scores_j: Tensor, weights: Tensor, losses: Tensor | None, margin: float, surrogate: str,
    ) -> Tensor:
        if losses is None:
            losses = get_surrogate(surrogate)(margin, scores_i.unsqueeze(-1) - scores_j.unsqueeze(-2))
        ctx.save_for_backward(scores_i, scores_j, weights)
        ctx.margin, ctx.surrogate = margin, surrogate
        return (weights * losses).mean()

    @staticmethod
    @once_differentiable  # first order only: a double backward raises instead of returning zeros
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        s_i, s_j, w = ctx.saved_tensors
        t = s_i.unsqueeze(-1) - s_j.unsqueeze(-2)
        g = SURROGATE_SLOPES[ctx.surrogate](ctx.margin, t) * w * (grad / t.numel())
        need = ctx.needs_input_grad
        return (g.sum(-1) if need[0] else None, -g.sum(-2) if need[1] else None, None, None, None, None)


def weighted_pairwise_mean(
    scores_i: Tensor,
    scores_j: Tensor,
    weights: Tensor,
    *,
    margin: float,
    surrogate: str = "squared_hinge",
    losses: Tensor | None = None,
) -> Tensor:
    """``mean_ab W[a, b] ell(margin, scores_i[a] - scores_j[b])`` with ``W`` = ``weights`` held constant.

    The value and gradient of ``(weights.detach() * pairwise_surrogate(...)).mean()``, the form of
    every stochastic pairwise estimator in xrisk (AP, pAUC), with a closed-form backward (one fused
    pass instead of autograd through each elementwise step). Shapes: ``scores_i`` ``[P]``,
    ``scores_j`` ``[N]``, ``weights`` ``[P, N]`` -> scalar. ``losses``: optionally the detached
    ``pairwise_surrogate`` of the same scores, if the caller already has it (saves recomputing it).
    """
    get_surrogate(surrogate)
    w = weights.detach()
    if w.dtype != scores_i.dtype:
        w = w.to(scores_i.dtype)
    if losses is not None:
        losses = losses.detach()
        if losses.dtype != scores_i.dtype:
            losses = losses.to(scores_i.dtype)
    out = _WeightedPairwiseMean.apply(scores_i, scores_j, w, losses, float(margin), surrogate)
    return out  # type: ignore[no-any-return]
