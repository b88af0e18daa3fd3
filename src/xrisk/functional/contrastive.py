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

No kernel keeps state. The FCCO kernels :func:`gcl_fcco` and :func:`nuclr_fcco` hold each loss's
whole per-step math; between the exponential pass and the weights they call an ``estimator``
callback through which the module (:mod:`xrisk.losses`) refreshes its per-sample moving averages
(merging duplicates, gathering across ranks). They are built on :func:`row_exp` (one exponential
pass per matrix and side, no autograd) and a surrogate ``sum(stopgrad(W) * S)`` that is one autograd
node (a native ``dot``, :func:`detached_weights_dot` when its value is already known, or the caller's node of the
features, ``weighted_sum``: :func:`xrisk.functional.similarity.cosine_weighted_sum`). Every exponential pass over a
matrix is an ``exp2`` of base-2 logits (:data:`LOG2E` folded into the multiply that forms them). A one-process
image-text batch (one ``[B, B]`` matrix, side 1 along its columns) has its own straight-line kernels,
:func:`gcl_fcco_square` and :func:`nuclr_fcco_square`: at ``B = 128`` every tensor op, views included,
costs a few us, about as much as the arithmetic of a ``[B, B]`` pass. An anchor's positive
(and, with two views, its own column) sits on a diagonal of the similarity matrix, at column
``i + offset`` (:func:`anchor_diagonal`), so excluding and weighting them are strided views.
The exact objectives :func:`gcl_objective` / :func:`nuclr_objective` are the references the
kernels' gradients are tested against.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence, Union

import torch
from torch import Tensor

from xrisk._tensors import constant, finite_shift
from xrisk._validate import validation_enabled

__all__ = [
    "count_true",
    "masked_log_mean_exp",
    "log_moving_average",
    "gcl_objective",
    "gcl_fcco",
    "gcl_fcco_square",
    "GCLStep",
    "nuclr_objective",
    "nuclr_fcco",
    "nuclr_fcco_square",
    "NUCLRStep",
    "quantile_threshold_step",
    "quantile_subgradient",
    "masked_upper_quantile",
    "negatives_mask",
    "restrict_to_negatives",
    "row_exp",
    "anchor_diagonal",
    "detached_weights_dot",
    "reference_offset",
    "ReferencePair",
    "WeightedSum",
]


#: ``log2(e)`` and ``ln 2``: every exponential pass over a matrix is ``exp2(x * LOG2E)`` with the factor folded into
#: the multiply that forms ``x`` (torch's ``exp2`` is several times faster than ``exp`` on CPU: 0.3 vs 0.8 ns per
#: float32 entry here), and a shift taken in base 2 is turned back into natural log units with ``LN2``.
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


def _no_grad(x: Tensor) -> Tensor:
    """``x`` outside autograd: ``x.detach()`` when it requires grad, else ``x`` itself (no extra view)."""
    return x.detach() if x.requires_grad else x


def _as_anchor(t: Tensor | float, ref: Tensor) -> Tensor | float:
    """Broadcast a per-anchor tensor ``[...]`` against ``ref [..., C]``."""
    return t.unsqueeze(-1) if isinstance(t, Tensor) and t.dim() > 0 else t


def _scalar(x: Tensor | float, like: Tensor) -> Tensor | float:
    """A float operand as :func:`xrisk._tensors.constant` (no per-call conversion of a Python number; the same
    value, so the same result), a tensor as itself."""
    return constant(x, like) if isinstance(x, float) else x


def count_true(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of ``True`` entries of a bool ``mask`` along ``dim`` (``int64``), or in total (0-dim).

    Equal to ``mask.sum(dim)``, without its cost on CPU, where a bool ``sum`` first copies the whole
    mask into its ``int64`` accumulator type (32 MB for a ``[2048, 2048]`` mask; any widening
    ``dtype=`` copies too). For 2-D masks the bytes are summed as ``uint8`` in blocks of 128 entries
    (exact: at most 128 per block), along whichever axis is contiguous in memory (so transposed views
    cost the same), and the ``[rows, C / 128]`` block sums are added in ``int64``; at most 255 entries
    along ``dim`` are one ``uint8`` sum.
    """
    if dim is None:
        return torch.count_nonzero(mask)
    if mask.dim() != 2 or torch.compiler.is_compiling():  # compiled: the plain sum fuses with the mask's producer
        return mask.sum(dim)
    dim = dim % 2
    u = mask.view(torch.uint8)
    if mask.shape[dim] <= 255:  # one block: a uint8 sum cannot overflow (half the time of a bool sum at B = 128)
        return u.sum(dim, dtype=torch.uint8).long()
    if u.stride(dim) == 1:  # reduce along the contiguous axis: blocks of 128 consecutive bytes
        v = u if dim == 1 else u.T  # [other, n]
        n = v.shape[1]
        full = n - n % 128
        out = v[:, :full].reshape(v.shape[0], full // 128, 128).sum(2, dtype=torch.uint8).sum(1)
        return out + v[:, full:].sum(1) if full < n else out
    if u.stride(1 - dim) == 1:  # reduce across rows of contiguous memory: blocks of 128 rows
        v = u if dim == 0 else u.T  # [n, other]
        n = v.shape[0]
        full = n - n % 128
        out = v[:full].reshape(full // 128, 128, v.shape[1]).sum(1, dtype=torch.uint8).sum(0)
        return out + v[full:].sum(0) if full < n else out
    return mask.sum(dim)


def masked_log_mean_exp(logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``log((1/|N_i|) sum_{j: mask_ij} exp(logits_ij))`` computed stably, and ``|N_i|``.

    Args:
        logits: ``[..., C]`` values to exponentiate.
        mask: ``[..., C]`` bool, the entries that enter the mean.

    Returns:
        ``(log_mean [...], count [...])``; rows without any entry get ``log_mean = 0`` (callers
        must ignore them: ``count == 0``).
    """
    count = count_true(mask, -1)
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
    mixed = torch.logaddexp(torch.add(log_old, constant(math.log1p(-gamma), log_old)),
                            torch.add(log_new, constant(math.log(gamma), log_new)))
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


def nuclr_objective(diff: Tensor, mask: Tensor, zeta: Tensor, tau: float, log_pos: Tensor | float) -> Tensor:
    """Exact per-anchor NUCLR term ``tau * log(exp(log_pos) + mean_{j in N_i} exp((diff_ij - zeta_j)/tau))``.

    ``zeta [..., C]`` is the learned normaliser of each column; ``log_pos = -xi/tau - log(n-1)`` carries
    the positive's term of the MIS normaliser (``xi``: the positive's normaliser, ``n``: data-set size).
    Differentiable in ``diff`` and ``zeta`` (oracles, gradchecks).
    """
    log_g, _ = masked_log_mean_exp((diff - zeta) / tau, mask)
    lp = log_pos if isinstance(log_pos, Tensor) else torch.full_like(log_g, float(log_pos))
    return tau * torch.logaddexp(log_g, lp.expand_as(log_g))


def quantile_threshold_step(
    sim: Tensor, mask: Tensor | None, lam: Tensor, *, alpha: float, lr: float, count: Tensor | None = None,
    excluded: Sequence[tuple[int, int, int]] = (),
) -> Tensor:
    """One stochastic subgradient step on the pinball loss whose minimiser is the ``(1-alpha)`` quantile.

    ``lambda_i = argmin_l alpha * l + mean_{j in N_i} (s_ij - l)_+`` (GloFND); the batch subgradient is
    ``alpha - mean_{j in N_i} 1[s_ij > lambda_i]`` and ``lambda_i <- clip(lambda_i - lr * grad, -1, 1)``.

    Args:
        sim: ``[..., C]`` cosine similarities; lam: ``[...]`` thresholds.
        mask: ``[..., C]`` negatives, or None (2-D ``sim``): every column but the diagonals ``excluded``
            (blocks ``(first, count, offset)`` as in :func:`row_exp`; ``count`` must then be given).
        count: ``[...]`` number of negatives per row (``count_true(mask, -1)``), if the caller has it, or an int
            ``>= 1`` when every row has that many.

    Returns:
        ``[...]`` updated thresholds (rows without negatives are returned unchanged).
    """
    if count is None:
        if mask is None:
            raise ValueError("quantile_threshold_step without a mask needs count")
        count = count_true(mask, -1)
    grad = quantile_subgradient(sim, mask, lam, alpha=alpha, count=count, excluded=excluded)
    new = (lam - lr * grad).clamp_(-1.0, 1.0)
    return new if isinstance(count, int) else torch.where(count > 0, new, lam)


def quantile_subgradient(
    sim: Tensor, mask: Tensor | None, lam: Tensor, *, alpha: float, count: Tensor | int,
    excluded: Sequence[tuple[int, int, int]] = (),
) -> Tensor:
    """Batch subgradient ``alpha - mean_{j in N_i} 1[s_ij > lambda_i]`` of GloFND's pinball loss (``[...]``).

    Arguments as in :func:`quantile_threshold_step` (``count`` required); rows without negatives get ``alpha``.
    """
    above = count_true(restrict_to_negatives(torch.gt(sim, lam.unsqueeze(-1)), mask, excluded), -1)
    if isinstance(count, int):  # every row has count >= 1 negatives
        return torch.rsub(above.to(lam.dtype).div_(count), alpha)
    return alpha - above.to(lam.dtype) / count.clamp_min(1).to(lam.dtype)


def restrict_to_negatives(flags: Tensor, mask: Tensor | None, excluded: Sequence[tuple[int, int, int]]) -> Tensor:
    """``flags`` (bool ``[R, C]``, changed in place) restricted to the negatives: ``flags & mask``, or (``mask``
    None) with the diagonals ``excluded`` (blocks ``(first, count, offset)`` as in :func:`row_exp`) set False."""
    if mask is not None:
        return flags.bitwise_and_(mask)
    for first, count, offset in excluded:
        anchor_diagonal(flags, first, count, offset).fill_(False)
    return flags


def negatives_mask(shape: Sequence[int], excluded: Sequence[tuple[int, int, int]], device: torch.device) -> Tensor:
    """``[R, C]`` bool: every entry but the diagonals ``excluded`` (blocks ``(first, count, offset)``)."""
    return restrict_to_negatives(torch.ones(tuple(shape), dtype=torch.bool, device=device), None, excluded)


def masked_upper_quantile(sim: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """Per-row ``(1 - alpha)`` quantile of ``sim`` over the entries of ``mask`` (lower order statistic).

    Returns ``[...]``: the value with ``floor(alpha * |N_i|)`` masked entries above it (rows without
    entries get ``1.0``, i.e. nothing above the threshold).
    """
    vals = sim.masked_fill(~mask, float("-inf")).sort(-1, descending=True).values
    count = count_true(mask, -1)
    k = torch.minimum((alpha * count).floor().long(), (count - 1).clamp_min(0))
    out = vals.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    return torch.where(count > 0, out, torch.ones_like(out))


def row_exp(
    sim: Tensor,
    inv_tau: Tensor | float,
    row_bias: Tensor,
    *,
    col_bias: Tensor | None = None,
    neg: Tensor | None = None,
    excluded: Sequence[tuple[int, int, int]] = (),
    stable: bool = True,
    dim: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One exponential pass over a similarity matrix, restricted to each anchor's negatives (no autograd).

    Anchors are the rows of ``sim`` (``dim=1``: the candidates run along dimension 1) or its columns
    (``dim=0``, e.g. the text anchors of an image-by-text matrix, without transposing it). Below, for
    ``dim=1``: with ``l_ij = sim_ij * inv_tau_i + row_bias_i (+ col_bias_j)`` (for the GCL
    ``row_bias = -pos_i/tau_i``, so ``l_ij = diff_ij / tau_i``), returns ``E_ij = exp(l_ij - shift_i)`` on
    the negatives and 0 elsewhere, ``log_s_i = log sum_{j in N_i} exp(l_ij)`` (``-inf`` for anchors
    without negatives) and ``shift [R]`` (None with ``stable=False``: no shift). For ``dim=0`` swap the
    roles of ``i`` and ``j`` (``E`` keeps the layout of ``sim``; ``row_bias``, ``inv_tau``, ``shift``,
    ``log_s`` are per column).

    Negatives: ``neg`` bool in the layout of ``sim``, or (``neg=None``) every candidate except the positions
    ``excluded`` (the positive, and in unimodal mode the anchor itself): blocks ``(first, count, offset)``,
    anchor ``first + i`` (``i < count``) excludes candidate ``i + offset`` (a diagonal, see :func:`anchor_diagonal`).
    ``stable=True`` shifts every anchor by its largest negative logit (any temperature, any inputs);
    ``stable=False`` skips that pass (``shift`` None, i.e. 0): only for ``|l_ij|`` known to stay far from the
    dtype's exponent range (normalised features and a moderate temperature).

    Args:
        sim: ``[R, C]`` similarities (a view is fine, e.g. a transposed matrix).
        inv_tau: float or per-anchor inverse temperatures; row_bias: per anchor; col_bias: per candidate or None.
    """
    a = 1 - dim  # the anchor axis
    sim = _no_grad(sim)  # every input is detached: nothing below is recorded by autograd
    # the logits in base 2 (l * LOG2E; exp2 below); per-anchor vectors made contiguous: a strided broadcast operand
    # halves the speed of the pass
    row_bias = torch.mul(_no_grad(row_bias), LOG2E)
    if col_bias is None:
        bias = row_bias.unsqueeze(dim)
    else:
        bias = torch.add(row_bias.unsqueeze(dim), _no_grad(col_bias).unsqueeze(a), alpha=LOG2E)
    if isinstance(inv_tau, Tensor):
        logits = torch.addcmul(bias, sim, torch.mul(_no_grad(inv_tau), LOG2E).unsqueeze(dim))
    else:
        logits = torch.add(bias, sim, alpha=float(inv_tau) * LOG2E)
    if neg is not None:  # torch.where: 3x faster than masked_fill_ on CPU
        logits = torch.where(neg, logits, float("-inf"))
    else:
        for first, count, offset in excluded:
            anchor_diagonal(logits, first, count, offset, dim=dim).fill_(float("-inf"))
    shift = None
    if stable:
        shift = logits.amax(dim)
        shift = finite_shift(shift)
        logits.sub_(shift.unsqueeze(dim))
        shift = shift.mul_(LN2)  # natural log units
    e = logits.exp2_()
    log_s = e.sum(dim).log_()
    if shift is not None:
        log_s = log_s + shift
    return e, log_s, shift


def anchor_diagonal(x: Tensor, first: int, count: int, offset: int, *, dim: int = 1) -> Tensor:
    """View of the entries (anchor ``first + i``, candidate ``i + offset``), ``i < count``, of ``x``.

    Anchors run along the rows of ``x`` (``dim=1``, candidates along dimension 1) or its columns
    (``dim=0``). Every batch layout of the contrastive losses puts an anchor's positive (and, with two
    views, its own column) on such a diagonal, so masking and weighting them is one strided view.
    """
    if dim == 1:
        return x[first : first + count].diagonal(offset)
    return x[:, first : first + count].diagonal(-offset)


class _DetachedWeightsDot(torch.autograd.Function):
    """``value`` in forward, ``grad * weights`` for ``x`` in backward (weights and value precomputed)."""

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weights)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        # loss.backward(): the weights are the gradient (checked with validation on only: it reads grad)
        if validation_enabled() and grad.numel() == 1 and bool(grad == 1):
            return weights, None, None
        return weights * grad, None, None


def detached_weights_dot(x: Tensor, weights: Tensor, value: Tensor | None = None) -> Tensor:
    """``sum(stopgrad(weights) * x)`` as one autograd node: the gradient w.r.t. ``x`` is ``weights``.

    ``value`` (the forward result, ``sum(weights * x)``) may be passed when the caller already has it;
    the surrogate of every FCCO kernel is of this form, so backward is one multiply and the matmul
    backward of ``x``.
    """
    w = weights.detach()
    if value is None:
        with torch.no_grad():
            value = torch.linalg.vecdot(w, x.detach()).sum()
    return _DetachedWeightsDot.apply(x, w, value)


#: ``(weights, value) -> surrogate``: the caller's autograd node of ``sum(stopgrad(weights) * S)`` with the value
#: ``value`` (e.g. :func:`xrisk.functional.similarity.cosine_weighted_sum` of the features behind ``S``). Given to
#: a square kernel, it replaces the kernel's ``dot`` with ``sim``, which then needs no graph.
WeightedSum = Callable[[Tensor, Tensor], Tensor]


def _weights_dot(x: Tensor, weights: Tensor) -> Tensor:
    """``sum(weights * x)`` as one native ``dot`` (gradient ``weights`` w.r.t. ``x``); ``weights`` has no grad.

    For a surrogate whose value is not needed before this point: the dot is the forward pass (cheaper
    than :func:`detached_weights_dot`'s custom node when ``x`` is contiguous; a strided ``x`` is copied).
    """
    return torch.dot(weights.reshape(-1), x.reshape(-1))


def _shifted_weights_dot(x: Tensor, weights: Tensor, shifted: Tensor | None) -> Tensor:
    """``sum(stopgrad(weights) * x)`` as one autograd node (gradient ``weights``) whose value is
    ``sum(weights * shifted)`` (the similarities plus a per-pair offset), or :func:`_weights_dot` when ``shifted``
    is None."""
    if shifted is None:
        return _weights_dot(x, weights)
    return detached_weights_dot(x, weights, _weights_dot(shifted, weights))


class ReferencePair(NamedTuple):
    """DRRho-CLIP's offset in factored form, ``o = -ref_a ref_b^T`` (``[B, d_ref]`` each, detached): the kernels of a
    square batch add it inside the product (:func:`_shift`), so no ``[B, B]`` offset is made or added."""

    ref_a: Tensor
    ref_b: Tensor


def _shift(sd: Tensor, offset: Tensor | ReferencePair | None) -> Tensor:
    """``sd + offset`` (a new tensor), or ``sd`` itself without an offset; a :class:`ReferencePair` is one
    ``addmm`` (``sd - ref_a ref_b^T``: the reference similarities subtracted inside the product)."""
    if offset is None:
        return sd
    if isinstance(offset, ReferencePair):
        return torch.addmm(sd, _no_grad(offset.ref_a), _no_grad(offset.ref_b).T, alpha=-1.0)
    return sd + _no_grad(offset)


def reference_offset(ref_a: Tensor, ref_b: Tensor) -> Tensor:
    """The DRRho-CLIP offset ``o_ij = -s^ref_ij = -ref_a_i . ref_b_j`` (``[B_a, B_b]``, no autograd): the rows
    are negated before the product (``O(B d)``), so the offset costs one matrix product and no ``[B, B]`` pass.
    ``ref_a``, ``ref_b``: the reference model's (normalised) features."""
    return torch.mm(_no_grad(ref_a), torch.neg(_no_grad(ref_b)).T)


def _square_offset(offset: Offset) -> Tensor | None:
    """The ``[B, B]`` offset of a transposed (square) batch: ``offset`` itself or its first side."""
    if offset is None or isinstance(offset, Tensor):
        return offset
    return offset[0]


# ----------------------------------------------------------------------------- FCCO steps of the losses
Estimator = Callable[[Tensor, Tensor], Tensor]
#: A per-pair similarity offset: per side, one stacked/square matrix, or none (see :func:`gcl_fcco`).
Offset = Union[Sequence[Tensor], Tensor, None]


class GCLStep(NamedTuple):
    """Result of :func:`gcl_fcco`.

    surrogate: scalar whose gradient is the (scaled) FCCO estimator; log_u: ``[B, 2]`` refreshed
    estimator returned by the ``estimator`` callback; tau_grad: ``[B, 2]`` detached estimate of
    ``d/dtau_iv`` of the anchor's term (0 for anchors without negatives) when ``tau`` is per anchor,
    else None; valid: ``[B, 2]`` anchors with at least one negative.
    """

    surrogate: Tensor
    log_u: Tensor
    tau_grad: Tensor | None
    valid: Tensor


class NUCLRStep(NamedTuple):
    """Result of :func:`nuclr_fcco`.

    surrogate: scalar (gradient = scaled FCCO estimator); log_u: ``[B, 2]`` refreshed estimator;
    col_weight: ``[C, 2]`` per column and side, ``sum_{i: j in N_iv} w_ij`` (unscaled); col_count: ``[C, 2]``
    number of anchors of which column ``j`` is a negative, or an int when it is the same for every column
    and side (a square batch without masks, positives on the diagonal); valid: ``[B, 2]``.
    """

    surrogate: Tensor
    log_u: Tensor
    col_weight: Tensor
    col_count: Tensor | int
    valid: Tensor


Offsets = tuple[int, int]


def _excluded(n: int, pos_offset: Offsets, self_offset: Offsets | None, v: int) -> list[tuple[int, int, int]]:
    """:func:`row_exp` blocks of side ``v``'s ``n`` anchors: the positive's diagonal (and the anchor's own)."""
    return [(0, n, pos_offset[v])] + ([] if self_offset is None else [(0, n, self_offset[v])])


def _side_exps(
    sims: Sequence[Tensor], pos: Tensor, inv: Sequence[Tensor | float], pos_offset: Offsets,
    self_offset: Offsets | None, neg: Sequence[Tensor | None], col_bias: Sequence[Tensor | None], stable: bool,
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """:func:`row_exp` of both sides: exps, shifts ``[B]`` and ``log_s [B, 2]``."""
    exps, shifts, log_s = [], [], []
    for v in (0, 1):
        e, ls, shift = row_exp(
            sims[v], inv[v], -pos[:, v] * inv[v], col_bias=col_bias[v], neg=neg[v],
            excluded=_excluded(pos.shape[0], pos_offset, self_offset, v), stable=stable,
        )
        exps.append(e)
        shifts.append(shift)
        log_s.append(ls)
    return exps, shifts, torch.stack(log_s, 1)


def gcl_fcco(
    sims: Sequence[Tensor],
    pos: Tensor,
    tau: Tensor | float,
    estimator: Estimator,
    *,
    count: Tensor | int,
    pos_offset: Offsets = (0, 0),
    self_offset: Offsets | None = None,
    neg: Sequence[Tensor | None] = (None, None),
    transposed: bool = False,
    stacked: Tensor | None = None,
    eps: float = 0.0,
    rho: float = 0.0,
    scale: float = 1.0,
    stable: bool = True,
    offset: Offset = None,
) -> GCLStep:
    """One FCCO step of the (robust) global contrastive loss on both anchor sides.

    For side ``v`` and anchor ``i`` with ``d_ij = sims[v][i, j] - pos[i, v]`` and negatives ``N_iv``:

    1. ``log g_hat_iv = log((1/|N_iv|) sum_{j in N_iv} exp(d_ij / tau_iv))`` (one exponential pass);
    2. ``log_u = estimator(log_g_hat [B, 2], valid [B, 2])``: the caller's moving average (it may merge
       duplicates, gather across ranks, write state); ``valid = |N_iv| > 0``;
    3. weights ``p_ij = exp(d_ij / tau_iv) / (|N_iv| (eps + u_iv))`` (detached) and the surrogate
       ``scale * sum_iv sum_j p_ij d_ij`` as one autograd node per matrix (``dot`` with the detached weights): its gradient
       ``scale * sum_iv tau/(eps+u_iv) grad g_hat_iv / tau`` is the FCCO estimator of the gradient of
       ``sum_iv tau_iv log(eps + g_iv) + rho tau_iv`` (exact when ``u = g``);
    4. ``tau_grad_iv = log(eps + u_iv) - sum_j p_ij d_ij / tau_iv + rho``, the FCCO estimate of the
       ``tau``-derivative of the anchor's term. With a 0-dim ``tau`` tensor (one learnable temperature)
       the surrogate also gets ``scale * tau * sum_iv tau_grad_iv``, so its ``tau``-gradient is that sum.

    With ``transposed=True`` (``sims[1]`` is ``sims[0].T``, the positives on the main diagonal: a one-process
    image-text batch) this is :func:`gcl_fcco_square` on ``sims[0]`` (side 1 along its columns, no transposed
    copy; one exponential for both sides with a shared temperature and ``stable=False``). ``stacked``: a ``[2B, C]`` tensor whose
    row blocks are ``sims[0]`` and ``sims[1]`` (unimodal mode), processed as one matrix (half the
    operations); without it (and not transposed) the two sides are stacked by a copy.

    Args:
        sims: per side ``[B, C]`` similarities (with gradient).
        pos: ``[B, 2]`` detached similarity of each anchor with its positive, which for anchor ``i`` of side
            ``v`` sits at column ``i + pos_offset[v]`` of ``sims[v]`` (a diagonal: the layout of every batch).
        tau: float, 0-dim tensor (learnable, may require grad) or ``[B, 2]`` (per anchor).
        estimator: ``(log_g_hat [B, 2], valid [B, 2]) -> log_u [B, 2]``.
        count: ``[B, 2]`` number of negatives, or an int ``>= 1``: every anchor has that many (no masking of
            anchors without negatives is then needed); self_offset: the anchor's own column ``i + self_offset[v]``
            (two views: it is not a negative) or None.
        neg: per side ``[B, C]`` bool negatives, or None for "every column but the positive (and the anchor)".
        eps: the ``eps`` in ``log(eps + g)``; rho: the KL-DRO radius; scale: factor of the surrogate.
        stable: shift each row by its maximum before exponentiating (see :func:`row_exp`).
        offset: None, or a detached per-pair offset ``o`` added to every similarity before anything else,
            ``d_ij = (s_ij + o_ij) - (s_i+ + o_i+)`` (the positive's offset read at the positive's column), in
            the layout of the similarities: per side like ``sims``, one ``[2B, C]`` matrix like ``stacked``, or
            (``transposed``) one ``[B, B]`` matrix like ``sims[0]``. DRRho-CLIP passes ``o = -s^ref``, the
            reference model's similarities (see :func:`reference_offset`). The gradient flows through ``s``
            only; ``tau_grad`` and the tau term of a learnable temperature use the shifted ``d``; with a fixed
            temperature the surrogate's value is ``scale * sum p_ij (s_ij - s_i+)`` on the target's
            similarities (its gradient is the same; no extra pass). With an offset every entry of ``d`` lies in
            ``[-4, 4]`` for unit features (``[-2, 2]`` without).
    """
    if transposed:
        if pos_offset != (0, 0) or self_offset is not None:
            raise ValueError(f"transposed=True needs the positives on the main diagonal, got pos_offset={pos_offset}")
        return gcl_fcco_square(sims[0], tau, estimator, count=count, neg=neg, eps=eps, rho=rho, scale=scale,
                               stable=stable, offset=_square_offset(offset))
    pos = _no_grad(pos)  # with the detached estimates, only the surrogate's nodes below are recorded
    per_anchor, inv = _temperature_kind(tau)
    valid, some_empty, log_cnt = _anchor_counts(count, pos.shape[0], pos)
    out, log_u, log_den, value = _gcl_rows(
        sims, stacked, pos, tau, per_anchor, inv, estimator, pos_offset, self_offset, neg, valid, some_empty,
        log_cnt, eps, scale, stable, need_value=isinstance(tau, Tensor), offset=offset,
    )
    return _gcl_tau_terms(out, log_u, log_den, value, tau, per_anchor, inv, valid, some_empty, rho, scale)


def gcl_fcco_square(
    sim: Tensor,
    tau: Tensor | float,
    estimator: Estimator,
    *,
    count: Tensor | int | None = None,
    neg: Sequence[Tensor | None] = (None, None),
    eps: float = 0.0,
    rho: float = 0.0,
    scale: float = 1.0,
    stable: bool = True,
    offset: Tensor | ReferencePair | None = None,
    weighted_sum: WeightedSum | None = None,
) -> GCLStep:
    """:func:`gcl_fcco` of a one-process image-text batch: ``sim [B, B]`` (image ``i`` against text ``j``, with
    gradient), the positives on its main diagonal, side 0 its rows and side 1 its columns (``sims[1] = sim.T``,
    never copied). What :func:`gcl_fcco` runs for ``transposed=True``.

    ``count``: None (every anchor has the ``B - 1`` other columns as negatives; ``neg`` must be None) or as in
    :func:`gcl_fcco`; ``neg``: per side the bool negatives in that side's own layout (``neg[1]`` is a
    ``[B, B]`` mask over text anchors x images; ``neg[1] is neg[0]`` states that one symmetric mask serves
    both). Each side's exponentials ``e`` (zero off the negatives) come with a per-anchor log factor ``f``,
    ``exp(d_ij / tau_iv) = e_ij exp(f_iv)``: with a shared temperature and ``stable=False`` one
    ``exp(sim / tau)`` serves both sides (``f = -pos / tau``), else each side has its own pass over
    ``d / tau`` (``f`` = the shift of ``stable``, or 0). The two sides' weights
    ``p = e * scale exp(f - log(eps + u) - log |N|)`` are summed into one matrix, the positives weighted
    ``-sum_j p_ij``, so the surrogate is one ``dot`` with ``sim``. ``offset``: ``[B, B]`` detached per-pair
    offset as in :func:`gcl_fcco`, or a :class:`ReferencePair` (its factors: added inside one ``addmm``); every
    pass then runs on ``sim + offset``. ``weighted_sum``: see :data:`WeightedSum` (then ``sim`` has no graph).
    """
    n = sim.shape[0]
    if count is None:
        if neg[0] is not None or neg[1] is not None:
            raise ValueError("gcl_fcco_square: count=None means no masks, got a negatives mask")
        count = n - 1
    sd = _shift(_no_grad(sim), offset)
    p = sd.diagonal()
    per_anchor, inv = _temperature_kind(tau)
    valid, some_empty, log_cnt = _anchor_counts(count, n, sd)
    out, log_u, log_den, value = _gcl_square(
        sim, sd, p, tau, per_anchor, inv, estimator, neg, valid, some_empty, log_cnt, eps, scale, stable,
        need_value=isinstance(tau, Tensor), shifted=offset is not None and isinstance(tau, Tensor),
        weighted_sum=weighted_sum,
    )
    return _gcl_tau_terms(out, log_u, log_den, value, tau, per_anchor, inv, valid, some_empty, rho, scale)


def _temperature_kind(tau: Tensor | float) -> tuple[bool, float]:
    """``(per_anchor, 1 / tau)``: a ``[B, 2]`` tensor is per anchor (then ``inv = 0``, unused), else one shared value."""
    if isinstance(tau, Tensor) and tau.dim() > 0:
        return True, 0.0
    return False, 1.0 / float(_no_grad(tau) if isinstance(tau, Tensor) else tau)


def _gcl_tau_terms(
    out: Tensor, log_u: Tensor, log_den: Tensor, value: Tensor | None, tau: Tensor | float, per_anchor: bool,
    inv: float, valid: Tensor, some_empty: bool, rho: float, scale: float,
) -> GCLStep:
    """Step 4 of :func:`gcl_fcco`: ``tau_grad`` of per-anchor temperatures, or the term of one learnable ``tau``."""
    tau_grad = None
    if per_anchor:
        base = torch.add(log_den, constant(rho, log_den)) if rho else log_den
        tau_grad = torch.addcdiv(base, value, _no_grad(tau), value=-1.0 / scale)  # type: ignore[arg-type]
        if some_empty:
            tau_grad = torch.where(valid, tau_grad, 0.0)
    elif isinstance(tau, Tensor):  # one temperature: d/dtau of the surrogate is sum_iv tau_grad_iv
        terms = torch.where(valid, log_den + rho, 0.0) if some_empty else log_den + rho
        grad_sum = terms.sum() - out.detach() * (inv / scale)  # the surrogate's value is the sum of the values
        out = torch.addcmul(out, tau, grad_sum.detach(), value=scale)  # one autograd node
    return GCLStep(out, log_u, tau_grad, valid)


def _anchor_counts(count: Tensor | int, n: int, like: Tensor) -> tuple[Tensor, bool, Tensor | float]:
    """``(valid [n, 2], some anchor may lack negatives, log |N_iv|)`` from a count tensor or a constant
    (``like``: the dtype of the log count, the device of ``valid``)."""
    if isinstance(count, Tensor):
        return count > 0, True, torch.log(count.clamp_min(1).to(like.dtype))
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a [B, 2] tensor or an int >= 1, got {count!r}")
    return _all_true(n, like.device), False, math.log(count)


_TRUE: dict[tuple[int, torch.device], Tensor] = {}


def _all_true(n: int, device: torch.device) -> Tensor:
    """A read-only all-True bool ``[n, 2]`` tensor (a broadcast view of a 0-dim tensor, cached per size and device)."""
    key = (n, device)
    out = _TRUE.get(key)
    if out is None:
        if len(_TRUE) > 64:
            _TRUE.clear()
        out = _TRUE[key] = torch.ones((), dtype=torch.bool, device=device).expand(n, 2)
    return out


def _gcl_rows(
    sims: Sequence[Tensor], stacked: Tensor | None, pos: Tensor, tau: Tensor | float, per_anchor: bool,
    inv: Tensor | float,
    estimator: Estimator, pos_offset: Offsets, self_offset: Offsets | None, neg: Sequence[Tensor | None],
    valid: Tensor, some_empty: bool, log_cnt: Tensor | float, eps: float, scale: float, stable: bool, *,
    need_value: bool, offset: Offset = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`gcl_fcco` with one :func:`row_exp` over both sides' rows: the ``[2B, C]`` matrix ``stacked``
    (unimodal mode) or ``cat(sims)`` (a copy; autograd routes each block's gradient back to its side).

    Per-anchor ``[B, 2]`` quantities are laid out side-major (``[2B]``) to match the rows.
    Returns ``(surrogate, log_u, log(eps + u), value [B, 2])`` with ``value_iv = scale * sum_j p_ij d_ij``
    (None unless ``need_value``: a fixed temperature needs no ``tau`` derivative). With an ``offset`` the passes
    use the shifted similarities (and so does ``value``), the gradient goes to ``mat``.
    """
    n = pos.shape[0]
    mat = stacked if stacked is not None else torch.cat([sims[0], sims[1]], 0)
    md = _no_grad(mat)  # what the passes read: the detached similarities, shifted by the offset if any
    if offset is not None:
        off = offset if isinstance(offset, Tensor) else torch.cat([offset[0], offset[1]], 0)
        md = md + off
        pos = pos + torch.stack([anchor_diagonal(off, v * n, n, pos_offset[v]) for v in (0, 1)], 1)
    mask = None if neg[0] is None else torch.cat([neg[0], neg[1]], 0)  # type: ignore[list-item]

    def rows(x: Tensor) -> Tensor:  # [B, 2] -> [2B], side-major
        return x.T.reshape(-1)

    def unrows(x: Tensor) -> Tensor:  # [2B] -> [B, 2]
        return x.view(2, n).T

    iv = rows(tau.detach().reciprocal()) if per_anchor else inv  # type: ignore[union-attr]
    pos_r = rows(pos)
    blocks = [(v * n, n, pos_offset[v]) for v in (0, 1)]
    if self_offset is not None:
        blocks += [(v * n, n, self_offset[v]) for v in (0, 1)]
    e, log_s, shift = row_exp(md, iv, -pos_r * iv, neg=mask, excluded=blocks, stable=stable)
    log_g = unrows(log_s) - log_cnt
    log_u = _no_grad(estimator(log_g, valid))
    log_den = _log_den(log_u, eps)
    wrow = rows(_weight_sums(log_g, log_den, valid, some_empty, scale))  # sum_j p_ij (scaled)
    coef = rows(_weight_coef(None if shift is None else unrows(shift), log_den, log_cnt, scale))  # p = e * coef
    w = e.mul_(coef.unsqueeze(1))
    # sum_j p_ij d_ij = sum_j p_ij s_ij - pos_i sum_j p_ij; the positive enters with weight -1
    value = torch.linalg.vecdot(w, md) - pos_r * wrow if need_value else None
    for v in (0, 1):  # the positive enters with weight -sum_j p_ij
        anchor_diagonal(w, v * n, n, pos_offset[v]).copy_(wrow[v * n : (v + 1) * n]).neg_()
    if value is None:
        return _weights_dot(mat, w), log_u, log_den, None
    return detached_weights_dot(mat, w, value.sum()), log_u, log_den, unrows(value)


def _weight_coef(shift: Tensor | None, log_den: Tensor, log_cnt: Tensor | float, scale: float) -> Tensor:
    """``scale * exp(shift - log_den - log_cnt)`` per anchor and side: the factor turning :func:`row_exp`'s
    ``e_ij`` into the scaled weight ``p_ij`` (``shift`` None: 0)."""
    log_c = math.log(scale) - log_cnt  # a float for a constant count: two kernels in all
    c = constant(log_c, log_den) if isinstance(log_c, float) else log_c
    if shift is None:
        return torch.sub(c, log_den).exp_()
    return torch.sub(shift, log_den).add_(c).exp_()


def _log_den(log_u: Tensor, eps: float) -> Tensor:
    return log_u if eps <= 0.0 else torch.logaddexp(log_u, torch.full_like(log_u, math.log(eps)))


def _weight_sums(log_g: Tensor, log_den: Tensor, valid: Tensor, some_empty: bool, scale: float) -> Tensor:
    """``scale * exp(log_g - log_den)`` per anchor and side (the weights' row sums), 0 for anchors without
    negatives (``some_empty``: ``valid`` may hold False)."""
    wrow = torch.exp(log_g - log_den).mul_(scale)
    return torch.where(valid, wrow, 0.0) if some_empty else wrow


def _is_transpose_of(x: Tensor | None, y: Tensor | None) -> bool:
    """Whether ``x.T`` is ``y`` itself (a transposed view of the same memory); also accepts ``x is y``
    (the caller's statement that the mask is symmetric)."""
    if x is None or y is None:
        return False
    if x is not y and torch.compiler.is_compiling():  # no data pointers in a graph ("not known": still correct)
        return False
    return x is y or (
        x.data_ptr() == y.data_ptr() and x.shape == y.shape[::-1] and x.stride() == y.stride()[::-1]
    )


def _square_masks(neg: Sequence[Tensor | None]) -> tuple[Tensor | None, Tensor | None]:
    """Both sides' negative masks of a square batch in the layout of ``sim`` (side 1's transposed; the same
    object when one symmetric mask serves both, see :func:`_is_transpose_of`; None: all but the diagonal)."""
    m0 = neg[0]
    return m0, None if neg[1] is None else (m0 if _is_transpose_of(neg[1], m0) else neg[1].T)


def _shared_exp(sd: Tensor, inv: float, m0: Tensor | None, m1: Tensor | None) -> tuple[Tensor, Tensor]:
    """``exp(sd / tau)`` restricted to each side's negatives (masks from :func:`_square_masks`): one matrix for
    both sides when they share their negatives (zeroed diagonal in place without masks)."""
    k = torch.mul(sd, constant(inv * LOG2E, sd)).exp2_()
    if m0 is None:
        k.diagonal().zero_()
        return k, k
    e0 = torch.where(m0, k, 0.0)  # torch.where: 3x faster than masked_fill_ on CPU
    return e0, e0 if m1 is m0 else torch.where(m1, k, 0.0)  # type: ignore[arg-type]


def _square_exps(
    e0: Tensor, e1: Tensor, m0: Tensor | None, m1: Tensor | None, stable: bool, some_empty: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Both sides' logits of a square batch **in base 2** (``l * LOG2E``) in the layout of ``sim`` (side 0: anchor per
    row, side 1: anchor per column; masks from :func:`_square_masks`, None: all but the diagonal) restricted to their
    negatives and exponentiated in place (``exp2``: ``e = exp(l)``): ``(e0, e1, f)``, ``f [B, 2]`` each anchor's
    largest negative logit subtracted first, in natural log units (``stable``; ``some_empty``: an anchor may have no
    negative), or None."""
    if m0 is None:
        e0.diagonal().fill_(float("-inf"))
        e1.diagonal().fill_(float("-inf"))
    else:
        e0 = torch.where(m0, e0, float("-inf"))
        e1 = torch.where(m1, e1, float("-inf"))  # type: ignore[arg-type]
    f = None
    if stable:
        f0, f1 = e0.amax(1), e1.amax(0)
        if some_empty:  # an anchor without negatives: -inf, no shift
            f0, f1 = finite_shift(f0), finite_shift(f1)
        e0.sub_(f0.unsqueeze(1))  # each side's own contiguous shifts: a strided one stops vectorised code
        e1.sub_(f1)
        f = torch.stack([f0, f1], 1).mul_(LN2)
    return e0.exp2_(), e1.exp2_(), f


def _gcl_square(
    sim: Tensor, sd: Tensor, p: Tensor, tau: Tensor | float, per_anchor: bool, inv: float, estimator: Estimator,
    neg: Sequence[Tensor | None], valid: Tensor, some_empty: bool, log_cnt: Tensor | float, eps: float, scale: float,
    stable: bool, *, need_value: bool, shifted: bool = False, weighted_sum: WeightedSum | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The kernel of :func:`gcl_fcco_square` (``sd``: ``sim`` detached, shifted by the offset if any; ``p``: its
    diagonal; ``shifted``: the surrogate's value must be taken on ``sd``, as :func:`_gcl_rows` takes it for a
    learnable temperature, shared or per anchor).

    Returns ``(surrogate, log_u, log(eps + u), value [B, 2] or None)``: ``value_iv = scale sum_j p_ij d_ij``,
    computed when ``need_value`` and the temperature is per anchor; a shared learnable temperature needs only
    the sum of the values, which is the surrogate's value. Every tensor op counts at ``B = 128`` (a few us
    each, views included), hence the explicit layouts.
    """
    m0, m1 = _square_masks(neg)
    if not per_anchor and not stable:
        e0, e1 = _shared_exp(sd, inv, m0, m1)
        f: Tensor | None = (p * -inv).unsqueeze(1)  # both sides share the positive's factor exp(-pos / tau)
    else:
        if per_anchor:  # [2, B] rows, each contiguous (a strided broadcast operand halves the speed of the pass)
            ivt = _no_grad(tau).T.contiguous().reciprocal_().mul_(constant(LOG2E, sd))  # type: ignore[union-attr]
            # 1 / tau and the bias -pos / tau, both in base 2
            (iv0, iv1), (b0, b1) = ivt.unbind(0), torch.mul(ivt, p).neg_().unbind(0)
            # side 0: per row, as a multiply and an add (addcmul with [B, 1] operands is twice as slow on CPU)
            e0 = torch.mul(sd, iv0.unsqueeze(1)).add_(b0.unsqueeze(1))
            e1 = torch.addcmul(b1, sd, iv1)  # side 1: a [B] vector broadcasts along the columns
        else:
            b = p * (-inv * LOG2E)  # base 2
            e0 = torch.add(b.unsqueeze(1), sd, alpha=inv * LOG2E)
            e1 = torch.add(b, sd, alpha=inv * LOG2E)
        e0, e1, f = _square_exps(e0, e1, m0, m1, stable, some_empty)
    s = torch.stack([e0.sum(1), e1.sum(0)], 1)  # [B, 2]: sum_j e_ij over each anchor's negatives
    log_g = s.log() if f is None else s.log().add_(f)
    log_u = _no_grad(estimator(log_g.sub_(_scalar(log_cnt, log_g)), valid))
    log_den = _log_den(log_u, eps)
    coef = _weight_coef(f, log_den, log_cnt, scale)  # p_ij = e_ij * coef_i
    wrow = s.mul_(coef)  # sum_j p_ij = scale exp(log_g - log(eps + u))
    if some_empty:  # anchors without negatives: no weight
        wrow = torch.where(valid, wrow, 0.0)
    c1 = coef[:, 1].contiguous() if torch.compiler.is_compiling() else coef[:, 1]  # compiled: a strided column
    # operand makes the [B, B] product scalar code
    value = None
    if need_value and per_anchor:  # value_iv = coef_iv sum_{j != i} e_ij s_ij - (sum_j p_ij) s_ii (e: 0 on the diagonal)
        # per side sum_j e_ij s_ij: linalg.vecdot's own mul and sum for real inputs, without its wrapper
        value = torch.stack([torch.mul(e0, sd).sum(1), torch.mul(e1, sd).sum(0)], 1)
        value = value.mul_(coef).addcmul_(wrow, p.unsqueeze(1), value=-1.0)
    if e0 is e1:
        w = e0.mul_(coef[:, 0:1] + coef[:, 1])
    else:
        w = e0.mul_(coef[:, 0:1]).addcmul_(e1, c1)
    w.diagonal().sub_(wrow.sum(1))
    if weighted_sum is not None:  # sum(w * sd) is the sum of the per-anchor values when they were computed
        total = value.sum() if value is not None else _weights_dot(sd if shifted else sim, w)  # sim: no graph
        return weighted_sum(w, total), log_u, log_den, value
    if value is not None:  # with an offset the value is the sum of the per-anchor values, as in _gcl_rows
        return (detached_weights_dot(sim, w, value.sum()) if shifted else _weights_dot(sim, w)), log_u, log_den, value
    return _shifted_weights_dot(sim, w, sd if shifted else None), log_u, log_den, None


def nuclr_fcco(
    sims: Sequence[Tensor],
    pos: Tensor,
    zeta: Tensor,
    tau: float,
    log_pos: Tensor,
    estimator: Estimator,
    *,
    count: Tensor | int,
    pos_offset: Offsets = (0, 0),
    self_offset: Offsets | None = None,
    neg: Sequence[Tensor | None] = (None, None),
    transposed: bool = False,
    scale: float = 1.0,
    stable: bool = True,
    offset: Offset = None,
) -> NUCLRStep:
    """One FCCO step of the NUCLR term on both sides (see :func:`nuclr_objective` for the objective).

    For side ``v``, anchor ``i``, ``l_ij = (d_ij - zeta_jv) / tau`` over the negatives ``N_iv``:

    1. ``log g_hat_iv = log mean_{j in N_iv} exp(l_ij)``; ``log_u = estimator(log_g_hat, valid)``;
    2. ``log Z_iv = logaddexp(log_pos_v, log u_iv)`` and ``w_ij = exp(l_ij - log Z_iv)`` (detached);
    3. surrogate ``scale * sum_iv sum_j w_ij d_ij / |N_iv|``: its gradient is the FCCO estimator of
       the gradient of ``sum_iv tau log(exp(log_pos_v) + g_iv)`` (exact when ``u = g``);
    4. per column ``col_weight_jv = sum_{i: j in N_iv} w_ij`` and ``col_count_jv``, so that
       ``1 - col_weight / col_count`` estimates ``n dL/dzeta_jv``.

    With ``transposed=True`` (as in :func:`gcl_fcco`) and ``stable=False`` one ``exp(sims[0] / tau)`` serves
    both sides: ``exp(-zeta_j / tau)`` and ``exp(-pos_i / tau)`` are per-column / per-row factors, so the
    row sums and column weights are matrix-vector products. ``stable=False`` needs
    ``(2 + max zeta - min zeta) / tau`` far inside the exponent range.

    Args:
        sims: per side ``[B, C]``; pos: ``[B, 2]`` (positive at column ``i + pos_offset[v]``);
            zeta: ``[C, 2]`` per column; tau: temperature; log_pos: ``[2]`` or ``[B, 2]``, ``log`` of the
            positive's term of ``Z``;
        estimator, count, pos_offset, self_offset, neg, transposed, scale, stable, offset: as in :func:`gcl_fcco`
            (``offset``: per side, or one ``[B, B]`` matrix when ``transposed``).
    """
    if transposed:
        if pos_offset != (0, 0) or self_offset is not None:
            raise ValueError(f"transposed=True needs the positives on the main diagonal, got pos_offset={pos_offset}")
        return nuclr_fcco_square(sims[0], zeta, tau, log_pos, estimator, count=count, neg=neg, scale=scale,
                                 stable=stable, offset=_square_offset(offset))
    pos, zeta, log_pos = _no_grad(pos), _no_grad(zeta), _no_grad(log_pos)  # only the surrogate is recorded
    sd = [_no_grad(sims[0]), _no_grad(sims[1])]  # what the passes read (shifted by the offset if any)
    if offset is not None:
        if isinstance(offset, Tensor):  # one square matrix: side 1 is its transpose
            offset = [offset, offset.T]
        sd = [sd[0] + offset[0], sd[1] + offset[1]]
        pos = pos + torch.stack([anchor_diagonal(offset[v], 0, pos.shape[0], pos_offset[v]) for v in (0, 1)], 1)
    dtype = pos.dtype
    inv = 1.0 / tau
    valid, some_empty, log_cnt = _anchor_counts(count, pos.shape[0], pos)
    cnt = count.clamp_min(1).to(dtype) if isinstance(count, Tensor) else float(count)
    exps, shifts, log_s = _side_exps(
        sd, pos, [inv, inv], pos_offset, self_offset, neg, (-zeta[:, 0] * inv, -zeta[:, 1] * inv), True
    )
    log_g = log_s - log_cnt
    log_u = _no_grad(estimator(log_g, valid))
    out = pos.new_zeros(())
    n = pos.shape[0]
    col_weight, col_count = [], []
    log_z = torch.logaddexp(log_u, log_pos.expand_as(log_u))
    coef = torch.exp(torch.stack(shifts, 1) - log_z)  # w_ij = e_ij * coef_i
    wrow = _weight_sums(log_g, log_z, valid, some_empty, scale)  # sum_j w_ij / |N_iv| (scaled)
    for v in (0, 1):
        col_weight.append(exps[v].T @ coef[:, v])
        col_count.append(_column_counts(neg[v], n, pos_offset, self_offset, v, sims[v].shape[1], pos))
        w = exps[v].mul_((coef[:, v] * scale / (cnt[:, v] if isinstance(cnt, Tensor) else cnt)).unsqueeze(1))
        value = torch.linalg.vecdot(w, sd[v]) - pos[:, v] * wrow[:, v]
        anchor_diagonal(w, 0, n, pos_offset[v]).copy_(wrow[:, v]).neg_()
        out = out + detached_weights_dot(sims[v], w, value.sum())
    return NUCLRStep(out, log_u, torch.stack(col_weight, 1), torch.stack(col_count, 1), valid)


def _column_counts(
    neg: Tensor | None, n: int, pos_offset: Offsets, self_offset: Offsets | None, v: int, n_cols: int, like: Tensor
) -> Tensor:
    """``[C]`` number of the ``n`` anchors of side ``v`` of which each column is a negative (dtype of ``like``)."""
    if neg is not None:
        return count_true(neg, 0).to(like.dtype)
    out = torch.full((n_cols,), float(n), dtype=like.dtype, device=like.device)
    for _, count, offset in _excluded(n, pos_offset, self_offset, v):  # columns offset .. offset + n - 1
        out[max(offset, 0) : min(offset + count, n_cols)] -= 1.0
    return out


def nuclr_fcco_square(
    sim: Tensor,
    zeta: Tensor,
    tau: float,
    log_pos: Tensor,
    estimator: Estimator,
    *,
    count: Tensor | int | None = None,
    neg: Sequence[Tensor | None] = (None, None),
    scale: float = 1.0,
    stable: bool = True,
    zeta_min: Tensor | None = None,
    offset: Tensor | ReferencePair | None = None,
    weighted_sum: WeightedSum | None = None,
) -> NUCLRStep:
    """:func:`nuclr_fcco` of a one-process image-text batch (``sim [B, B]``, positives on the diagonal, side 1
    along the columns; ``count``, ``neg`` as in :func:`gcl_fcco_square`). What :func:`nuclr_fcco` runs for
    ``transposed=True``. ``zeta_min``: the ``[2]`` per-side minimum of ``zeta`` when the caller has it.

    With ``stable=False`` one ``exp(sim / tau)`` serves both sides: side 0 ``e0_ij = k_ij z0_j``, side 1
    (anchor ``j``, column ``i``) ``e1_ij = k_ij z1_i`` with ``k = exp(sim / tau)`` on the negatives and
    ``zv = exp(-(zeta_v - min zeta_v) / tau)``; the positive's ``exp(-pos / tau)`` and ``exp(-min zeta_v / tau)``
    are added in log space, so row sums and column weights are matrix-vector products. ``stable=True``: each
    side has its own pass over ``l = (d - zeta) / tau`` (rows for side 0, columns for side 1, both in the layout of
    ``sim``), shifted by each anchor's largest negative logit. ``offset``: ``[B, B]`` detached per-pair offset as in
    :func:`gcl_fcco`. ``weighted_sum``: see :data:`WeightedSum` (then ``sim`` has no graph).
    """
    n = sim.shape[0]
    if count is None:
        if neg[0] is not None or neg[1] is not None:
            raise ValueError("nuclr_fcco_square: count=None means no masks, got a negatives mask")
        count = n - 1
    sd = _shift(_no_grad(sim), offset)
    zeta, log_pos = _no_grad(zeta), _no_grad(log_pos)  # only the surrogate is recorded
    inv = 1.0 / tau
    p = sd.diagonal()
    valid, some_empty, log_cnt = _anchor_counts(count, n, sd)
    cnt = count.clamp_min(1).to(sd.dtype) if isinstance(count, Tensor) else float(count)
    m0, m1 = _square_masks(neg)
    if stable:  # each side's own pass over l = (d - zeta) / tau, shifted by its anchors' largest negative logit
        inv2 = inv * LOG2E  # the logits in base 2 (see _square_exps)
        zi = zeta * -inv2  # [B, 2]: -zeta / tau per column (side 0: text j; side 1: image i)
        e0 = torch.add(torch.sub(zi[:, 0], p.unsqueeze(1), alpha=inv2), sd, alpha=inv2)  # side 0: anchor i per row
        e1 = torch.add(torch.sub(zi[:, 1].unsqueeze(1), p, alpha=inv2), sd, alpha=inv2)  # side 1: anchor j per column
        k0, k1, f = _square_exps(e0, e1, m0, m1, True, some_empty)
        z = z0 = z1 = None
        shift = f.neg_()  # type: ignore[union-attr]  # log of the factor left out of k: exp(l) = k exp(-shift)
        s = torch.stack([k0.sum(1), k1.sum(0)], 1)  # [B, 2]: sum over each anchor's negatives
    else:  # one exp(sim / tau) for both sides; zv = exp(-(zeta_v - min zeta_v) / tau) per column
        k0, k1 = _shared_exp(sd, inv, m0, m1)
        zmin = zeta.amin(0) if zeta_min is None else zeta_min
        c_inv = constant(inv, sd)
        z = torch.sub(zmin, zeta).mul_(c_inv).exp_()  # [B, 2], in (0, 1]
        z0, z1 = z.unbind(1)
        shift = torch.add(p.unsqueeze(1), zmin).mul_(c_inv)  # log of exp(-(pos_i + min zeta_v) / tau), left out of k z
        s = torch.stack([torch.mv(k0, z0), torch.mv(k1.T, z1)], 1)  # [B, 2]: sum_j k_ij zv_j
    log_g = s.log().sub_(shift).sub_(_scalar(log_cnt, s))
    log_u = _no_grad(estimator(log_g, valid))
    a = torch.logaddexp(log_u, log_pos).add_(shift).neg_().exp_()  # the weights' per-anchor factor, 1 / Z e^shift
    a0, a1 = a.unbind(1)
    # side 0: w0_ij = k0_ij (z0_j) a0_i; side 1 (anchor j, column i): w1_ij = k1_ij (z1_i) a1_j
    col_weight = torch.stack([torch.mv(k0.T, a0), torch.mv(k1, a1)], 1)
    if z is not None:
        col_weight.mul_(z)
    b = a.mul_(constant(scale / cnt, a)) if isinstance(cnt, float) else a.mul_(scale).div_(cnt)  # in place: b is a
    wrow = s.mul_(b)  # sum_j w_ij / |N_iv| (scaled) = scale g / Z
    if some_empty:  # anchors without negatives: no weight
        wrow = torch.where(valid, wrow, 0.0)
    b0, b1 = a0, a1  # the columns of a, which was scaled in place into b
    if z is None:
        w = k0.mul_(b0.unsqueeze(1)).add_(k1.mul_(b1))
    elif k0 is k1:
        w = k0.mul_(torch.addr(torch.outer(b0, z0), z1, b1))
    else:
        w = k0.mul_(torch.outer(b0, z0)).add_(k1.mul_(torch.outer(z1, b1)))
    w.diagonal().sub_(wrow.sum(1))
    col_count: Tensor | int
    if m0 is None and m1 is None:
        col_count = n - 1  # every column is the positive of exactly one anchor per side
    else:
        col_count = torch.stack(
            [_column_counts(neg[0], n, (0, 0), None, 0, n, sd), _column_counts(neg[1], n, (0, 0), None, 1, n, sd)], 1
        )
    # with an offset the value is taken on the shifted similarities sd, as nuclr_fcco's rows take it
    shifted = sd if offset is not None else None
    if weighted_sum is None:
        out = _shifted_weights_dot(sim, w, shifted)
    else:
        out = weighted_sum(w, _weights_dot(sim if shifted is None else shifted, w))
    return NUCLRStep(out, log_u, col_weight, col_count, valid)
