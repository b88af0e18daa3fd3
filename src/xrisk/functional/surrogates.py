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

from typing import Callable, Literal, Union

import torch
from torch.autograd.function import once_differentiable
import torch.nn.functional as F
from torch import Tensor

from xrisk._tensors import constant

__all__ = ["SHORTFALL_LOSSES", "SHORTFALL_SLOPES", "SURROGATES", "SURROGATE_SLOPES", "SurrogateName", "get_surrogate",
           "pairwise_shortfall", "pairwise_surrogate", "weighted_pairwise_mean", "weighted_pairwise_mean_of",
           "EXP_FLOOR", "SLOPE_SCALE", "batch_shortfall", "factored_pairwise_sum", "slope_ticket", "greater",
           "pair_kernel", "scratch_matrix", "shortfall_loss_and_slope"]

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


def _slope_times(r: Tensor, w: Tensor, grad: Tensor, surrogate: str, *, base_given: bool = False) -> Tensor:
    """``SHORTFALL_SLOPES[surrogate](r) * w * (grad / r.numel())`` as a new tensor, bit for bit: the slope's factor
    (a power of two) goes into the scale ``grad / (numel / factor)``, which is exact. ``base_given``: ``r`` is already
    the slope's base (the ``S`` of :func:`shortfall_loss_and_slope`), not the shortfall."""
    base, factor = _SLOPE_PARTS[surrogate]
    b = r if base_given else base(r)
    g = torch.mul(b, w) if b is r else b.mul_(w)
    return g.mul_(grad / constant(r.numel() / factor, grad))


# the same as functions of (m, t)
SURROGATE_SLOPES: dict[str, Callable[[float, Tensor], Tensor]] = {
    name: (lambda m, t, slope=slope: slope(m - t)) for name, slope in SHORTFALL_SLOPES.items()
}


def pairwise_shortfall(scores_i: Tensor, scores_j: Tensor, *, margin: float) -> Tensor:
    """``R[..., a, b] = margin - (scores_i[..., a] - scores_j[..., b])``: every surrogate is ``ell = f(R)``
    (:data:`SHORTFALL_LOSSES`), so ``SHORTFALL_LOSSES[name](R)`` equals :func:`pairwise_surrogate` bit for bit."""
    # (s_j - s_i) + m: the same bits as m - (s_i - s_j) (IEEE subtraction is antisymmetric and a - b = a + (-b)),
    # two calls less than forming the difference then subtracting it
    row = scores_j if scores_j.dim() == 1 else scores_j.unsqueeze(-2)  # [N] broadcasts as [1, N] already
    return torch.sub(row, scores_i.unsqueeze(-1)).add_(constant(margin, scores_i))


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
    its gradient scattered into ``scores`` directly (no index node per side).

    Everything but ``scores`` comes in one tuple ``(i_index, j_index, weights, losses, r, surrogate, slope_given)``
    (``r``: the shortfall, or the slope's base when ``slope_given``): ``apply`` then handles one argument instead of
    seven, and the detached tensors the backward needs are kept on ``ctx`` (they are no inputs of the node, so no
    saved-variable packing and unpacking; they are freed with the graph, a second backward with ``retain_graph``
    works)."""

    @staticmethod
    def forward(ctx, scores: Tensor, rest: tuple) -> Tensor:  # type: ignore[override]
        ctx.rest, ctx.size = rest, scores.shape[0]
        prod = rest[2] * rest[3]  # weights * losses
        # = prod.mean() bit for bit (mean is sum / numel), a cheaper call
        return prod.sum().div_(constant(float(prod.numel()), prod))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        i_index, j_index, w, _, r, surrogate, slope_given = ctx.rest
        # = slope(r) * w * (grad / numel), _WeightedPairwiseMean's; r is the slope's base S when slope_given
        g = _slope_times(r, w, grad, surrogate, base_given=slope_given)
        if j_index is None:  # the j side is every score: -sum_i g_ij, then the i side added at its positions
            out = g.sum(-2).neg_()
        else:
            out = g.new_zeros(ctx.size).index_add_(0, j_index, g.sum(-2), alpha=-1)
        return out.index_add_(0, i_index, g.sum(-1)), None


def weighted_pairwise_mean_of(
    scores: Tensor,
    i_index: Tensor,
    j_index: Tensor | None,
    weights: Tensor,
    *,
    losses: Tensor,
    shortfall: Tensor | None = None,
    slope: Tensor | None = None,
    surrogate: str = "squared_hinge",
) -> Tensor:
    """:func:`weighted_pairwise_mean` of ``scores[i_index]`` against ``scores[j_index]`` (``j_index`` None: against
    every score), for pairs drawn from one score vector (AP: positives against the batch; pAUC: positives
    against negatives). The same value and gradient (up to the sign of zero entries), with one autograd node.

    ``losses`` and ``shortfall`` are the detached :data:`SHORTFALL_LOSSES` and :func:`pairwise_shortfall` of the
    selected scores (the caller has them; the margin is in the shortfall). Instead of ``shortfall`` the caller may
    give ``slope``, the ``S`` of :func:`shortfall_loss_and_slope` (``losses`` its ``L``): the backward then skips
    recomputing the slope's base from the shortfall (the same gradient bit for bit). Shapes: ``scores [B]``,
    ``i_index [P]``, ``j_index [N]`` (distinct positions each), ``weights [P, N]`` -> scalar.
    """
    get_surrogate(surrogate)
    if (shortfall is None) == (slope is None):
        raise ValueError("weighted_pairwise_mean_of needs exactly one of `shortfall` and `slope`")
    dtype = scores.dtype
    r = _constant(shortfall, dtype) if slope is None else _constant(slope, dtype)
    out = _WeightedPairwiseMeanOf.apply(scores, (i_index, j_index, _constant(weights, dtype), _constant(losses, dtype),
                                                 r, surrogate, slope is not None))
    return out  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- whole-batch pairwise sums (no masks)
Scratch = Union[dict, None]


def scratch_matrix(scratch: Scratch, name: str, like: Tensor) -> Tensor | None:
    """A ``[B, B]`` work matrix shaped like ``like``, kept in ``scratch`` (a dict the caller owns, e.g. one per loss
    module) and reused by every step: on CPU a fresh matrix of this size costs more in page faults than the pass
    that fills it. ``None`` without a scratch dict (under ``torch.compile``: the ops then allocate)."""
    if scratch is None:
        return None
    key = (name, tuple(like.shape), like.dtype, like.device)
    out = scratch.get(key)
    if out is None:
        out = scratch[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
    return out


def _detached_work(scores: Tensor) -> Tensor:
    """``scores`` detached, in at least float32 (the whole-batch matrices of half-precision scores are float32)."""
    d = scores.detach() if scores.requires_grad else scores
    return d if d.dtype in (torch.float32, torch.float64) else d.to(torch.promote_types(d.dtype, torch.float32))


def batch_shortfall(scores: Tensor, margin: float, *, scratch: Scratch = None, name: str = "r") -> Tensor:
    """``R[i, j] = margin - (f_i - f_j)`` of every ordered pair of one ``[B]`` score vector (detached), in one
    broadcast pass (``(m - f_i) + f_j``; equal to :func:`pairwise_shortfall` up to rounding), in at least float32;
    written into the ``scratch`` matrix ``"r"`` when given (:func:`scratch_matrix`)."""
    d = _detached_work(scores)
    col, row = torch.rsub(d, margin).unsqueeze(1), d.unsqueeze(0)
    if scratch is None:
        return col + row
    out = scratch_matrix(scratch, name, torch.empty((d.shape[0], d.shape[0]), dtype=d.dtype, device=d.device))
    return torch.add(col, row, out=out)


#: the constant ``c`` of :func:`shortfall_loss_and_slope` per surrogate: the slope is ``c * S``
SLOPE_SCALE: dict[str, float] = {name: factor for name, (_, factor) in _SLOPE_PARTS.items()}


def shortfall_loss_and_slope(shortfall: Tensor, surrogate: str, *, scratch: Scratch = None) -> tuple[Tensor, Tensor]:
    """``(L, S)`` of a shortfall matrix ``R``: ``L = SHORTFALL_LOSSES[surrogate](R)`` and the slope
    ``d ell / d t = c * S`` (``t = f_i - f_j``, :data:`SHORTFALL_SLOPES`) as a matrix ``S`` times the constant
    ``c = SLOPE_SCALE[surrogate]``, sharing the work: for the squared hinge ``C = max(R, 0)`` gives ``L = C * C`` and
    ``S = C``, ``c = -2``. With ``scratch`` (:func:`scratch_matrix`) ``R`` is overwritten and the results live in the
    scratch matrices."""
    l_out = scratch_matrix(scratch, "l", shortfall)
    if surrogate == "squared_hinge":
        c = shortfall.clamp_(min=0) if scratch is not None else torch.clamp(shortfall, min=0)
        return torch.mul(c, c, out=l_out), c
    if surrogate == "square":
        return torch.mul(shortfall, shortfall, out=l_out), shortfall
    if surrogate == "hinge":
        return torch.clamp(shortfall, min=0, out=l_out), (shortfall >= 0).to(shortfall.dtype)
    if surrogate == "exponential":
        e = torch.exp(shortfall, out=l_out)
        return e, e
    if surrogate == "logistic":
        return F.softplus(shortfall), torch.sigmoid(shortfall)
    raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {sorted(SURROGATES)}")


def greater(x: Tensor, y: Tensor, *, out: Tensor | None = None) -> Tensor:
    """``(x > y)`` as 0/1 in ``x``'s dtype (broadcast); in eager mode written straight into a float tensor (a bool
    result and its conversion cost several times more on CPU)."""
    if torch.compiler.is_compiling():
        return (x > y).to(x.dtype)
    if out is None:
        out = torch.empty(torch.broadcast_shapes(x.shape, y.shape), dtype=x.dtype, device=x.device)
    return torch.gt(x, y, out=out)


#: exponents of the whole-batch KL kernels are clamped to ``[-EXP_FLOOR, 0]``: no overflow, and no ``exp`` of a value
#: whose result is subnormal or of ``-inf`` (several times slower on CPU); ``exp(-80)`` is 2e-35 of the row maximum
EXP_FLOOR = 80.0


def pair_kernel(losses: Tensor, threshold: Tensor | None = None, shift: Tensor | None = None,
                cols_mask: Tensor | None = None, inv_tau: float = 1.0, *, scratch: Scratch = None) -> Tensor | None:
    """The matrix ``K`` of :func:`factored_pairwise_sum` from its vectors: ``1[L_ij > threshold_i]`` (``threshold``
    given), ``exp(min(L_ij * inv_tau - shift_i, 0)) * cols_mask_j`` (``shift`` and the 0/1 column mask given;
    ``shift_i`` the row maximum of ``L * inv_tau`` over the columns, so the clamp only removes rounding there, and the
    exponent is floored at ``-EXP_FLOOR``), or None (``K = 1``). In the scratch matrix ``"k"`` when given."""
    out = scratch_matrix(scratch, "k", losses)
    if threshold is not None:
        return greater(losses, threshold.to(losses.dtype).unsqueeze(1), out=out)
    if shift is None or cols_mask is None:
        return None
    z = torch.add(shift.neg().unsqueeze(1), losses, alpha=inv_tau, out=out)
    return z.clamp_(min=-EXP_FLOOR, max=0.0).exp_().mul_(cols_mask.unsqueeze(0))


def slope_ticket(scratch: Scratch, slope: Tensor) -> tuple[Tensor, int] | None:
    """Hand the step's slope matrix ``K o S`` (the scratch matrix ``"g"``, just written) to the backward of
    :func:`factored_pairwise_sum`: it is used there if no later step has written ``"g"`` since (a counter in
    ``scratch`` tells), else the backward rebuilds it. None without a scratch dict or when ``slope`` is not ``"g"``."""
    if scratch is None or scratch.get(("g", tuple(slope.shape), slope.dtype, slope.device)) is not slope:
        return None  # only "g" is written by nothing but a step's forward
    version = scratch["g_version"] = scratch.get("g_version", 0) + 1
    return slope, version


class _FactoredPairwiseSum(torch.autograd.Function):
    """``sum_ij W_ij ell_ij`` of one score vector against itself with ``W = K o (sum_k u_k v_k^T)``: the value from
    the given ``(K o L) v_k``; the backward rebuilds ``K o S`` from the saved vectors (nothing ``[B, B]`` is saved)
    and takes matrix-vector products."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, scores: Tensor, work: Tensor, rows: Tensor, cols: Tensor | None, loss_cols: Tensor,
        threshold: Tensor | None, shift: Tensor | None, cols_mask: Tensor | None, margin: float, surrogate: str,
        inv_tau: float, scratch: Scratch, ticket: tuple[Tensor, int] | None,
    ) -> Tensor:
        ctx.save_for_backward(work, rows, cols, threshold, shift, cols_mask)
        ctx.margin, ctx.surrogate, ctx.inv_tau, ctx.scratch, ctx.ticket = margin, surrogate, inv_tau, scratch, ticket
        ctx.dtype = scores.dtype
        return (rows * loss_cols).sum().to(scores.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        f, rows, cols, threshold, shift, cols_mask = ctx.saved_tensors
        scratch, ticket = ctx.scratch, ctx.ticket
        scale = SLOPE_SCALE[ctx.surrogate]
        if ticket is not None and scratch is not None and scratch.get("g_version") == ticket[1]:
            slope = ticket[0]  # the forward's K o S, not overwritten since
        else:
            losses, slope = shortfall_loss_and_slope(batch_shortfall(f, ctx.margin, scratch=scratch),
                                                        ctx.surrogate, scratch=scratch)
            kernel = pair_kernel(losses, threshold, shift, cols_mask, ctx.inv_tau, scratch=scratch)
            if kernel is not None:
                slope = kernel.mul_(slope)
        out = None
        for k in range(rows.shape[0]):
            u = rows[k]
            row = slope.sum(1) if cols is None else torch.mv(slope, cols[k])  # sum_j S_ij v_kj
            col = torch.mv(slope.t(), u)  # sum_i u_ki S_ij
            term = u * row - (col if cols is None else cols[k] * col)
            out = term if out is None else out + term
        return (out * (grad * scale)).to(ctx.dtype), None, None, None, None, None, None, None, None, None, None, None, None


def factored_pairwise_sum(
    scores: Tensor, rows: Tensor, cols: Tensor | None, loss_cols: Tensor, *, margin: float, surrogate: str,
    threshold: Tensor | None = None, shift: Tensor | None = None, cols_mask: Tensor | None = None,
    inv_tau: float = 1.0, scratch: Scratch = None, ticket: tuple[Tensor, int] | None = None,
) -> Tensor:
    """``sum_{i,j} W_ij ell(m, f_i - f_j)`` over every ordered pair of one batch with ``W = K o sum_k u_k v_k^T`` held
    constant: the value and gradient of ``(W.detach() * L).sum()`` with no ``[B, B]`` weight or mask matrix (masks
    and per-row/per-column factors live in the vectors) and nothing ``[B, B]`` kept for the backward.

    Args:
        scores: ``[B]`` scores ``f`` (the graph); ``L_ij = ell(margin - (f_i - f_j))``.
        rows: ``[r, B]`` the ``u_k`` (row factors; zero on rows that do not count).
        cols: ``[r, B]`` the ``v_k`` (column factors), or None for ``v_k = 1``.
        loss_cols: ``[r, B]`` the detached ``(K o L) v_k`` (the caller has them: the value is ``sum_k u_k . (K o L)
            v_k``).
        threshold, shift, cols_mask, inv_tau: the kernel ``K`` (:func:`pair_kernel`; none of them: ``K = 1``).
        scratch: work matrices of the backward (:func:`scratch_matrix`).
        ticket: the forward's ``K o S`` (:func:`slope_ticket`), used by the backward while still intact.

    Gradient: with ``d ell_ij / d(f_i - f_j) = c S_ij`` (:func:`shortfall_loss_and_slope`) and ``G = K o S``,
    ``df_i = c sum_k (u_ki (G v_k)_i - v_ki (G^T u_k)_i)``: the backward recomputes ``G`` in ``O(B^2)`` passes and
    takes ``2 r`` matrix-vector products.
    """
    work = _detached_work(scores)
    dtype = work.dtype

    def const(x: Tensor | None) -> Tensor | None:
        return None if x is None else _constant(x, dtype)

    out = _FactoredPairwiseSum.apply(scores, work, const(rows), const(cols), const(loss_cols), const(threshold),
                                     const(shift), const(cols_mask), float(margin), surrogate, float(inv_tau), scratch,
                                     ticket)
    return out  # type: ignore[no-any-return]
