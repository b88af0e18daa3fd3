"""Pure kernels of the AUC-margin (AUC-M) min-max objective.

AUC-M (Yuan, Yan, Sonka, Yang, ICCV 2021) replaces the pairwise square loss of AUROC by a
margin version and writes it as a min-max problem over the model ``w``, two scalars ``a, b``
(which track the class means of the scores) and a dual variable ``alpha >= 0``. With
``f`` the scores, ``m`` the margin, ``mean_+`` / ``mean_-`` the means over the positives /
negatives of a batch, the class-balanced form (``version="v2"``) is

.. math::

    F_2(w, a, b, \\alpha) = \\operatorname{mean}_+ (f - a)^2 + \\operatorname{mean}_- (f - b)^2
        + 2\\alpha\\,(m + \\operatorname{mean}_- f - \\operatorname{mean}_+ f) - \\alpha^2 ,

and the original form weighted by the positive ratio ``p`` (``version="v1"``), with ``E`` the
mean over the whole batch of ``B`` samples, is

.. math::

    F_1 = (1-p)\\,E[(f-a)^2 1_+] + p\\,E[(f-b)^2 1_-]
        + 2\\alpha\\,(p(1-p)\\,m + E[p\\,f\\,1_- - (1-p)\\,f\\,1_+]) - p(1-p)\\,\\alpha^2 .

When ``p`` is the batch positive ratio, ``E[g 1_+] = p mean_+ g`` and ``F_1 = p(1-p) F_2``.

Solving the inner problems (``a = mean_+ f``, ``b = mean_- f``, ``alpha = (m - mean_+ f +
mean_- f)_+``) gives the AUC-M objective itself,

.. math::

    A(w) = \\operatorname{Var}_+ f + \\operatorname{Var}_- f
        + \\big(m - (\\operatorname{mean}_+ f - \\operatorname{mean}_- f)\\big)_+^2 ,

(population variances). When ``mean_+ f - mean_- f <= m`` (always true for scores in
``[0, 1]`` and ``m = 1``) this is exactly the mean over all positive-negative pairs of
``(m - (f_i - f_j))^2``, computed in ``O(B)``. :func:`aucm_objective` returns it.

Scores are expected in ``[0, 1]`` (sigmoid outputs) for the default margin ``m = 1``.

All means use boolean class masks (an exact zero score is still counted, unlike LibAUC's
``sum / count_nonzero``). Shapes: ``scores`` ``[B, T]``, ``targets`` ``[B, T]`` bool,
``a, b, alpha`` ``[T]``; kernels return one value per task ``[T]``. Tasks without both
classes in the batch get finite placeholder values (the caller masks them).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor

__all__ = ["aucm_surrogate", "aucm_objective", "aucm_alpha_grad"]


def _masks(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pos = targets.to(scores.dtype)
    neg = 1.0 - pos
    return pos, neg, pos.sum(0).clamp_min(1.0), neg.sum(0).clamp_min(1.0)


def _ratio(targets: Tensor, dtype: torch.dtype, p: float | None) -> Tensor:
    """Positive ratio ``p`` per task ``[T]``: the given constant or the batch ratio."""
    if p is not None:
        return torch.full((targets.shape[1],), float(p), dtype=dtype, device=targets.device)
    return targets.to(dtype).mean(0)


def _weights(
    targets: Tensor, dtype: torch.dtype, version: str, p: float | None, pos_counts: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor | float]:
    """Per-sample weights ``(w_+ [B, T], w_- [B, T], q)`` of the common form of ``F_1`` and ``F_2``:

    ``F = sum_b [w_+ (f - a)^2 + w_- (f - b)^2] + 2 alpha (q m + sum_b (w_- - w_+) f) - q alpha^2``.

    ``v2``: ``w_+ = 1_+ / n_+``, ``w_- = 1_- / n_-``, ``q = 1``. ``v1``: ``w_+ = (1 - p) 1_+ / B``,
    ``w_- = p 1_- / B``, ``q = p (1 - p)`` (the two ``E[.]`` of ``F_1`` written as sums).
    ``pos_counts`` (positives per task, host ints) spares the device reductions for ``v2``.
    """
    pos = targets.to(dtype)
    if version == "v2":
        if pos_counts is not None:  # host counts: scale by python scalars (T = 1) or one [T] tensor
            size = pos.shape[0]
            if len(pos_counts) == 1:
                inv_pos, inv_neg = 1.0 / max(pos_counts[0], 1), 1.0 / max(size - pos_counts[0], 1)
            else:
                inv_pos = torch.tensor([1.0 / max(c, 1) for c in pos_counts], dtype=dtype, device=pos.device)
                inv_neg = torch.tensor([1.0 / max(size - c, 1) for c in pos_counts], dtype=dtype, device=pos.device)
            w_pos = pos * inv_pos
            return w_pos, (1.0 - pos) * inv_neg, 1.0
        n_pos = pos.sum(0)
        return pos / n_pos.clamp_min(1.0), (1.0 - pos) / (pos.shape[0] - n_pos).clamp_min(1.0), 1.0
    neg = 1.0 - pos
    if version != "v1":
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    size = pos.shape[0]
    if p is not None:
        pf = float(p)
        return pos * ((1.0 - pf) / size), neg * (pf / size), pf * (1.0 - pf)
    pr = pos.mean(0)
    return pos * ((1.0 - pr) / size), neg * (pr / size), pr * (1.0 - pr)


class _AUCMSurrogate(torch.autograd.Function):
    """``F`` of :func:`_weights`'s form with its closed-form gradient (one fused pass each way).

    ``dF/df = 2 w_+ (f - a) + 2 w_- (f - b) + 2 alpha (w_- - w_+)``,
    ``dF/da = -2 sum_b w_+ (f - a)``, ``dF/db = -2 sum_b w_- (f - b)``,
    ``dF/dalpha = 2 (q m + sum_b (w_- - w_+) f) - 2 q alpha``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, f: Tensor, a: Tensor, b: Tensor, alpha: Tensor, w_pos: Tensor, w_neg: Tensor, q: Tensor | float,
        margin: float,
    ) -> Tensor:
        da, db = f - a, f - b
        ga, gb = w_pos * da, w_neg * db
        r = w_neg - w_pos
        dual = (r * f).sum(0) + q * margin  # q m + sum_b (w_- - w_+) f
        sq = torch.addcmul(ga * da, gb, db).sum(0)
        ctx.save_for_backward(ga, gb, r, alpha, dual)
        ctx.q = q
        return torch.addcmul(sq, alpha, dual - q * alpha * 0.5, value=2.0)

    @staticmethod
    @once_differentiable  # first order only: a double backward raises instead of returning zeros
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ga, gb, r, alpha, dual = ctx.saved_tensors
        g2 = grad * 2.0
        need = ctx.needs_input_grad
        grad_f = torch.addcmul(ga + gb, r, alpha) * g2 if need[0] else None
        grad_a = ga.sum(0) * -g2 if need[1] else None
        grad_b = gb.sum(0) * -g2 if need[2] else None
        grad_alpha = (dual - ctx.q * alpha) * g2 if need[3] else None
        return grad_f, grad_a, grad_b, grad_alpha, None, None, None, None


def aucm_surrogate(
    scores: Tensor,
    targets: Tensor,
    a: Tensor,
    b: Tensor,
    alpha: Tensor,
    *,
    margin: float,
    version: Literal["v1", "v2"] = "v2",
    p: float | None = None,
    pos_counts: list[int] | None = None,
) -> Tensor:
    """Per-task min-max value ``F(w, a, b, alpha)`` of AUC-M (module docstring, ``F_1``/``F_2``).

    Args:
        scores: ``[B, T]`` scores ``f`` (expected in ``[0, 1]``).
        targets: ``[B, T]`` bool labels.
        a, b: ``[T]`` primal auxiliaries (tracking the class means).
        alpha: ``[T]`` dual variable.
        margin: ``m``.
        version: ``"v2"`` (class-balanced ``F_2``) or ``"v1"`` (``F_1`` with ``p``).
        p: positive ratio for ``v1``; ``None`` uses the batch ratio of each task.
        pos_counts: optional number of positives of each task (host ints, as the loss module
            already knows them); must match ``targets``.

    Returns:
        ``[T]``; differentiable in ``scores``, ``a``, ``b`` and ``alpha`` (closed-form backward,
        first order).

    Example:
        >>> s = torch.tensor([[0.9], [0.2], [0.4]])
        >>> y = torch.tensor([[True], [False], [False]])
        >>> z = torch.zeros(1)
        >>> aucm_surrogate(s, y, z, z, torch.ones(1), margin=1.0)
        tensor([0.7100])
    """
    dtype = torch.promote_types(scores.dtype, a.dtype)
    w_pos, w_neg, q = _weights(targets, dtype, version, p, pos_counts)
    out = _AUCMSurrogate.apply(scores.to(dtype), a.to(dtype), b.to(dtype), alpha.to(dtype), w_pos, w_neg, q,
                               float(margin))
    return out  # type: ignore[no-any-return]


def aucm_alpha_grad(
    scores: Tensor,
    targets: Tensor,
    alpha: Tensor,
    *,
    margin: float,
    version: Literal["v1", "v2"] = "v2",
    p: float | None = None,
) -> Tensor:
    """Closed-form ``dF/dalpha`` per task ``[T]`` (what PESG/PDSCA ascend; equals autograd's).

    ``v2``: ``2 (m + mean_- f - mean_+ f) - 2 alpha``.
    ``v1``: ``2 (p(1-p) m + p q_- mean_- f - (1-p) q_+ mean_+ f) - 2 p(1-p) alpha`` with
    ``q_+-`` the batch class fractions (``= p(1-p) * v2`` when ``p`` is the batch ratio).
    LibAUC instead uses ``2 (m + b - a) - 2 alpha`` for both versions, with ``a, b`` standing in
    for the class means.
    """
    dtype = torch.promote_types(scores.dtype, alpha.dtype)
    f = scores.detach().to(dtype)
    al = alpha.detach().to(dtype)
    w_pos, w_neg, q = _weights(targets, dtype, version, p)
    return 2.0 * (q * margin + ((w_neg - w_pos) * f).sum(0)) - 2.0 * q * al


def aucm_objective(scores: Tensor, targets: Tensor, *, margin: float) -> Tensor:
    """Batch estimate of the AUC-M objective ``A(w)`` per task ``[T]`` (module docstring).

    ``Var_+ f + Var_- f + (m - mean_+ f + mean_- f)_+^2``; equal to the mean over
    positive-negative pairs of ``(m - (f_i - f_j))^2`` whenever ``mean_+ f - mean_- f <= m``.

    Example:
        >>> s = torch.tensor([[0.9], [0.2], [0.4]])
        >>> y = torch.tensor([[True], [False], [False]])
        >>> aucm_objective(s, y, margin=1.0)  # pairs: (1 - 0.7)^2, (1 - 0.5)^2
        tensor([0.1700])
    """
    f = scores
    pos, neg, n_pos, n_neg = _masks(f, targets)
    mu_pos = (f * pos).sum(0) / n_pos
    mu_neg = (f * neg).sum(0) / n_neg
    var_pos = ((f - mu_pos) ** 2 * pos).sum(0) / n_pos
    var_neg = ((f - mu_neg) ** 2 * neg).sum(0) / n_neg
    return var_pos + var_neg + torch.clamp(margin - mu_pos + mu_neg, min=0.0) ** 2
