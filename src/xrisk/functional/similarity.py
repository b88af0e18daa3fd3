"""Cosine-similarity matrices of L2-normalised rows as one autograd node each.

``cosine_similarity_matrix(a, b)`` is ``F.normalize(a) @ F.normalize(b).T`` and
``cosine_gram(a, b)`` is ``z @ z.T`` with ``z = F.normalize(cat([a, b]))``. Their values equal the
autograd compositions; what differs is the backward: one node with two (one) matrix products and
the normalisation's Jacobian written out,

.. math::

    \\frac{\\partial L}{\\partial x} = \\frac{g - \\hat x\\, \\langle \\hat x, g \\rangle}{\\max(\\lVert x \\rVert, \\epsilon)},
    \\qquad \\hat x = \\frac{x}{\\max(\\lVert x \\rVert, \\epsilon)}

for every row ``x`` with upstream row gradient ``g = dL/d\\hat x`` (rows with ``||x|| <= eps`` are
scaled, not projected: ``g / eps``, as ``F.normalize``), instead of the dozen small autograd nodes of
``F.normalize`` per input. For the Gram matrix ``S = Z Z^T`` the two products of ``mm``'s backward
fold into one, ``dL/dZ = (G + G^T) Z``. The global contrastive losses use them on one process; under
``torch.distributed`` they normalise, gather and multiply as separate steps (see
:mod:`xrisk.losses._contrastive_base`).

Both are differentiable once (the backward is not itself recorded; a second backward raises).

A loss that uses the similarities only through ``sum(stopgrad(W) * S)`` (every FCCO surrogate of
:mod:`xrisk.functional.contrastive`) can take ``S`` without a graph, ``(S, factors) =
cosine_similarity_detached(a, b)``, compute ``W``, and record one node of ``a`` and ``b``,
``cosine_weighted_sum(factors, W, value)``: its backward is ``W``'s two products and the normalisation's
Jacobian, without the ``[R, C]`` gradient of ``S`` and the nodes of a separate ``dot`` (a few us each at
``R = C = 128``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from xrisk._tensors import constant

__all__ = ["cosine_similarity_matrix", "cosine_gram", "cosine_similarity_detached", "cosine_weighted_sum",
           "CosineFactors"]

_EPS = 1e-12  # F.normalize's default


def _normalize(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x / n, n)`` with ``n = max(||x_i||, eps)`` per row (``[R, 1]``)."""
    n = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(_EPS)
    return x / n, n


def _normalize_backward(g: Tensor, xh: Tensor, n: Tensor, grad: Tensor | None = None) -> Tensor:
    """Gradient w.r.t. ``x`` of ``xh = x / max(||x||, eps)`` given ``g = dL/dxh`` (rows); ``grad``: a 0-dim factor
    of ``g`` left out of it (applied with the ``[R, 1]`` division)."""
    # <xh, g> per row: linalg.vecdot's own mul and sum for real inputs, keeping the dim (no wrapper, no unsqueeze)
    dot = torch.mul(xh, g).sum(1, keepdim=True).mul_(torch.gt(n, constant(_EPS, n)))  # clamped rows: a plain scaling
    out = torch.addcmul(g, xh, dot, value=-1.0)
    return out.div_(n) if grad is None else out.mul_(torch.div(grad, n))


class _CosineSimilarityMatrix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        ah, na = _normalize(a)
        bh, nb = _normalize(b)
        ctx.save_for_backward(ah, na, bh, nb)
        return ah @ bh.T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        ah, na, bh, nb = ctx.saved_tensors
        ga = _normalize_backward(grad @ bh, ah, na) if ctx.needs_input_grad[0] else None
        gb = _normalize_backward(grad.T @ ah, bh, nb) if ctx.needs_input_grad[1] else None
        return ga, gb


class _CosineGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        zh, nz = _normalize(torch.cat([a, b], 0))
        ctx.save_for_backward(zh, nz)
        ctx.split = a.shape[0]
        return zh @ zh.T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        zh, nz = ctx.saved_tensors
        gz = _normalize_backward(torch.add(grad, grad.T) @ zh, zh, nz)
        return gz[: ctx.split], gz[ctx.split :]


class CosineFactors(NamedTuple):
    """What :func:`cosine_weighted_sum` needs of :func:`cosine_similarity_detached`: the inputs ``a [R, d]``,
    ``b [C, d]``, their normalised rows ``ah``, ``bh`` and row norms ``na [R, 1]``, ``nb [C, 1]`` (clamped at eps)."""

    a: Tensor
    b: Tensor
    ah: Tensor
    na: Tensor
    bh: Tensor
    nb: Tensor


def cosine_similarity_detached(a: Tensor, b: Tensor) -> tuple[Tensor, CosineFactors]:
    """``(S, factors)``: ``S [R, C]`` the values of :func:`cosine_similarity_matrix` without autograd, and the
    factors with which :func:`cosine_weighted_sum` records ``sum(stopgrad(W) * S)`` as one node of ``a``, ``b``."""
    ah, na = _normalize(a.detach())  # detached inputs: nothing recorded (cheaper than entering torch.no_grad())
    bh, nb = _normalize(b.detach())
    return ah @ bh.T, CosineFactors(a, b, ah, na, bh, nb)


def _weighted_sum_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    w, ah, na, bh, nb = ctx.saved_tensors
    ga = _normalize_backward(w @ bh, ah, na, grad) if ctx.needs_input_grad[0] else None
    gb = _normalize_backward(w.T @ ah, bh, nb, grad) if ctx.needs_input_grad[1] else None
    return ga, gb, None, None, None, None, None, None


_weighted_sum_backward_once = torch.autograd.function.once_differentiable(_weighted_sum_backward)


class _CosineWeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, weights: Tensor, value: Tensor, ah: Tensor, na: Tensor, bh: Tensor,  # type: ignore[override]
                nb: Tensor) -> Tensor:
        ctx.save_for_backward(weights, ah, na, bh, nb)
        return value.detach().clone() if value.requires_grad else value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        # A plain backward runs with grad mode off, so the body records nothing; once_differentiable's wrapper (a
        # no_grad block, a few us per step) is needed only under create_graph=True, where it makes a second
        # differentiation raise
        if torch.is_grad_enabled():
            return _weighted_sum_backward_once(ctx, grad)
        return _weighted_sum_backward(ctx, grad)


def cosine_weighted_sum(factors: CosineFactors, weights: Tensor, value: Tensor) -> Tensor:
    """``sum(stopgrad(weights) * S)`` for ``S`` of :func:`cosine_similarity_detached` as one autograd node of
    ``factors.a`` and ``factors.b``, whose value is ``value`` (the caller's ``sum(weights * S)``, or any value it
    chooses: only the gradient is this sum's). ``weights``: ``[R, C]``, no gradient.

    Example:
        >>> a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
        >>> s, f = cosine_similarity_detached(a, b)
        >>> w = torch.rand(4, 4)
        >>> cosine_weighted_sum(f, w, (w * s).sum()).backward()  # a.grad = d sum(w * cos(a, b)) / da
    """
    return _CosineWeightedSum.apply(factors.a, factors.b, weights, value, factors.ah, factors.na, factors.bh,
                                    factors.nb)


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[R, C]`` cosine similarities ``normalize(a) @ normalize(b).T`` of ``a [R, d]`` and ``b [C, d]``.

    One autograd node; equal to ``F.normalize(a, dim=1) @ F.normalize(b, dim=1).T`` (see the module
    docstring for the backward).
    """
    return _CosineSimilarityMatrix.apply(a, b)


def cosine_gram(a: Tensor, b: Tensor) -> Tensor:
    """``[Ra + Rb, Ra + Rb]`` Gram matrix ``z @ z.T`` of ``z = normalize(cat([a, b]))`` (rows L2-normalised).

    One autograd node; ``a [Ra, d]``, ``b [Rb, d]``.
    """
    return _CosineGram.apply(a, b)
