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
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SURROGATES", "SurrogateName", "get_surrogate", "pairwise_surrogate"]

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
