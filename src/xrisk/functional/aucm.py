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

    Returns:
        ``[T]``; differentiable in ``scores``, ``a``, ``b`` and ``alpha``.

    Example:
        >>> s = torch.tensor([[0.9], [0.2], [0.4]])
        >>> y = torch.tensor([[True], [False], [False]])
        >>> z = torch.zeros(1)
        >>> aucm_surrogate(s, y, z, z, torch.ones(1), margin=1.0)
        tensor([0.7100])
    """
    dtype = torch.promote_types(scores.dtype, a.dtype)
    f = scores.to(dtype)
    a_, b_, al = a.to(dtype), b.to(dtype), alpha.to(dtype)
    pos, neg, n_pos, n_neg = _masks(f, targets)
    if version == "v2":
        sq_pos = ((f - a_) ** 2 * pos).sum(0) / n_pos
        sq_neg = ((f - b_) ** 2 * neg).sum(0) / n_neg
        gap = margin + (f * neg).sum(0) / n_neg - (f * pos).sum(0) / n_pos
        return sq_pos + sq_neg + 2.0 * al * gap - al**2
    if version != "v1":
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    pr = _ratio(targets, dtype, p)
    q = pr * (1.0 - pr)
    sq = (1.0 - pr) * ((f - a_) ** 2 * pos).mean(0) + pr * ((f - b_) ** 2 * neg).mean(0)
    cross = (pr * f * neg - (1.0 - pr) * f * pos).mean(0)
    return sq + 2.0 * al * (q * margin + cross) - q * al**2


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
    pos, neg, n_pos, n_neg = _masks(f, targets)
    if version == "v2":
        return 2.0 * (margin + (f * neg).sum(0) / n_neg - (f * pos).sum(0) / n_pos) - 2.0 * al
    pr = _ratio(targets, dtype, p)
    q = pr * (1.0 - pr)
    return 2.0 * (q * margin + (pr * f * neg - (1.0 - pr) * f * pos).mean(0)) - 2.0 * q * al


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
