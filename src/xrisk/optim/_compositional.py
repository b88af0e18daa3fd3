"""What the deterministic compositional methods share: the closure contract and parameter flattening.

Both :class:`~xrisk.optim.SmoothedCompositionalGD` and :class:`~xrisk.optim.ProxLinear` minimise
``f(c(x))`` over the optimizer's parameters ``x``: ``step(closure)`` calls ``closure()``, which must
return the inner map ``c(x)`` (any shape, flattened to ``[k]``) computed with autograd enabled.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["inner_value", "flat_params", "add_flat_", "jacobian"]


def inner_value(closure: Callable[[], Tensor] | None, name: str) -> Tensor:
    """``c(x)`` from the closure, flattened, checked to be a finite floating-point tensor with a graph."""
    if closure is None:
        raise ValueError(f"{name}.step needs a closure returning the inner map c(x)")
    with torch.enable_grad():
        c = closure()
        if isinstance(c, Tensor):
            c = c.reshape(-1)
    if not isinstance(c, Tensor) or not c.is_floating_point():
        raise TypeError(f"{name}: the closure must return a floating-point tensor c(x), got {type(c).__name__}")
    if not c.requires_grad:
        raise ValueError(f"{name}: c(x) returned by the closure does not depend on the parameters (no graph)")
    if not bool(torch.isfinite(c.detach()).all()):
        raise ValueError(f"{name}: c(x) holds NaN/inf values")
    return c


def flat_params(params: list[Tensor]) -> Tensor:
    """The parameters concatenated into one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def add_flat_(params: list[Tensor], step: Tensor) -> None:
    """``p += step`` for the parameters, ``step`` being the flat ``[n]`` vector."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.add_(step[offset:offset + n].view_as(p).to(p.dtype))
            offset += n


def jacobian(c: Tensor, params: list[Tensor]) -> Tensor:
    """``J = dc/dx`` as a ``[k, n]`` matrix (one backward pass per entry of ``c``; small ``k``)."""
    rows = []
    for j in range(c.numel()):
        grads = torch.autograd.grad(c[j], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows).detach()
