"""Rank-based metrics of binary and multi-label scores: AUROC, average precision, partial AUROC.

Pure torch (no scikit-learn at run time), computed in float64 on the inputs' device, with
ties handled exactly like scikit-learn.

**ROC curve.** For one task with ``P`` positives and ``N`` negatives, sort the distinct score
values ``v_1 > v_2 > ... > v_m`` and let ``TP_k`` / ``FP_k`` be the number of positives /
negatives with score ``>= v_k``. The ROC curve is the polyline through
``(0, 0), (FP_1/N, TP_1/P), ..., (FP_m/N, TP_m/P) = (1, 1)``. A group of tied scores holding
both classes is a *diagonal* segment, which is what makes a tied positive-negative pair count
``1/2`` (scikit-learn's ``roc_curve`` + trapezoid rule, the Mann-Whitney statistic).

* :func:`auroc`: the area under that polyline,
  ``(1/(P N)) sum_{i pos} sum_{j neg} [1(s_i > s_j) + 1/2 1(s_i = s_j)]``.
* :func:`average_precision`: scikit-learn's step-wise (non-interpolated) definition
  ``AP = sum_k (R_k - R_{k-1}) P_k`` with recall ``R_k = TP_k / P``, precision
  ``P_k = TP_k / (TP_k + FP_k)`` at each distinct threshold ``v_k`` and ``R_0 = 0``.
* :func:`partial_auroc`: the area of the ROC region with ``FPR <= max_fpr`` and
  ``TPR >= min_tpr``, normalised by its maximum (see the function).

**Shapes and tasks.** ``scores`` is ``[B]`` (one task) or ``[B, T]`` (``T`` tasks, multi-label);
``targets`` has the same shape and holds 0/1 (bool, int or float). A task is *valid* when its
column holds at least one positive and one negative. ``average="macro"`` returns the mean over
the valid tasks (invalid tasks are skipped); ``average="none"`` returns the ``[T]`` per-task
values with ``NaN`` for invalid tasks. **When no task is valid** (e.g. a batch with a single
class) the result is ``NaN``; no exception is raised, so an evaluation loop over a
single-class split does not crash, and the ``NaN`` is visible in the logs.

Bad input: NaN/inf scores raise :class:`ValueError` (message contains "NaN/inf"); targets that
are not 0/1 or shapes that do not match raise :class:`ValueError`.

Example:
    >>> import torch
    >>> from xrisk.metrics import auroc, average_precision, partial_auroc
    >>> s = torch.tensor([0.9, 0.8, 0.7, 0.7, 0.2]); y = torch.tensor([1, 0, 1, 0, 0])
    >>> round(float(auroc(s, y)), 4)   # (3 + 0 + 1/2 + 1) / 6
    0.75
    >>> round(float(average_precision(s, y)), 4)   # thresholds 0.9 (P=1, R=1/2), 0.7 (P=1/2, R=1)
    0.75
    >>> round(float(partial_auroc(s, y, max_fpr=1 / 3)), 4)
    0.5
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from xrisk._validate import check_binary_inputs, check_choice

__all__ = ["auroc", "average_precision", "partial_auroc", "roc_curve", "mcclish_to_normalized",
           "normalized_to_mcclish"]

Average = Literal["macro", "none"]


def _prepare(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, T]`` float64 scores and bool targets, validated."""
    if isinstance(scores, Tensor) and not scores.is_floating_point() and scores.dtype != torch.bool:
        scores = scores.to(torch.float64)
    num_tasks = scores.shape[1] if isinstance(scores, Tensor) and scores.dim() == 2 else 1
    s, y = check_binary_inputs(scores, targets, num_tasks)
    return s.to(torch.float64), y


def roc_curve(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ROC curve of one task, one point per distinct score value (scikit-learn's ``roc_curve``
    with ``drop_intermediate=False``).

    Args:
        scores: ``[B]`` scores (higher = more positive).
        targets: ``[B]`` 0/1 labels with at least one positive and one negative.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``[m + 1]`` float64: the curve starts at ``(0, 0)`` with
        threshold ``+inf`` and ends at ``(1, 1)``; ``thresholds`` decrease.

    Raises:
        ValueError: one class only, non-binary targets, NaN/inf scores, wrong shapes.
    """
    s, y = _prepare(scores, targets)
    if s.shape[1] != 1:
        raise ValueError(f"roc_curve takes one task ([B] scores), got shape {tuple(scores.shape)}")
    fps, tps, thr = _cumulative_counts(s[:, 0], y[:, 0])
    if tps.numel() == 0 or tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("roc_curve needs at least one positive and one negative target")
    zero = torch.zeros(1, dtype=torch.float64, device=s.device)
    fpr = torch.cat([zero, fps / fps[-1]])
    tpr = torch.cat([zero, tps / tps[-1]])
    return fpr, tpr, torch.cat([zero + math.inf, thr])


def _cumulative_counts(s: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(FP_k, TP_k, v_k)`` at the distinct score values ``v_1 > ... > v_m`` (float64 ``[m]``)."""
    if s.numel() == 0:
        empty = s.new_zeros(0)
        return empty, empty, empty
    order = torch.argsort(s, descending=True, stable=True)
    s_sorted = s[order]
    y_sorted = y[order].to(torch.float64)
    # last position of every group of equal scores
    change = torch.nonzero(s_sorted[1:] != s_sorted[:-1]).flatten()
    last = torch.cat([change, torch.tensor([s.numel() - 1], device=s.device)])
    tps = torch.cumsum(y_sorted, 0)[last]
    fps = (last + 1).to(torch.float64) - tps
    return fps, tps, s_sorted[last]


def _roc_region_area(fpr: Tensor, tpr: Tensor, max_fpr: float, min_tpr: float) -> Tensor:
    """Exact integral of ``max(TPR(f) - min_tpr, 0)`` over ``f in [0, max_fpr]`` for the polyline
    through ``(fpr, tpr)`` (non-decreasing in both coordinates)."""
    f0, f1, t0, t1 = fpr[:-1], fpr[1:], tpr[:-1], tpr[1:]
    # clip every segment to f <= max_fpr (linear interpolation of t at max_fpr)
    width = f1 - f0
    frac = torch.where(width > 0, ((max_fpr - f0) / torch.where(width > 0, width, 1.0)).clamp(0.0, 1.0),
                       (f0 <= max_fpr).to(torch.float64))
    t1c = t0 + frac * (t1 - t0)
    f1c = f0 + frac * width
    wc = f1c - f0
    h0, h1 = t0 - min_tpr, t1c - min_tpr
    both = wc * (h0 + h1) / 2  # trapezoid when the segment lies above min_tpr
    # segment crossing min_tpr from below (TPR increases): triangle above the level
    rise = h1 - h0
    tri = wc * h1.clamp_min(0) ** 2 / (2 * torch.where(rise > 0, rise, 1.0))
    area = torch.where(h0 >= 0, both, torch.where(h1 > 0, tri, torch.zeros_like(both)))
    return area.sum()


def _per_task(s: Tensor, y: Tensor, kind: str, max_fpr: float = 1.0, min_tpr: float = 0.0) -> Tensor:
    """``[T]`` float64 values of one metric; NaN for tasks without both classes."""
    out = torch.full((s.shape[1],), math.nan, dtype=torch.float64, device=s.device)
    for t in range(s.shape[1]):
        fps, tps, _ = _cumulative_counts(s[:, t], y[:, t])
        if tps.numel() == 0 or tps[-1] == 0 or fps[-1] == 0:
            continue
        num_pos, num_neg = tps[-1], fps[-1]
        if kind == "ap":
            recall = tps / num_pos
            precision = tps / (tps + fps)
            d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
            out[t] = (d_recall * precision).sum()
            continue
        zero = s.new_zeros(1)
        fpr = torch.cat([zero, fps / num_neg])
        tpr = torch.cat([zero, tps / num_pos])
        if kind == "auroc":
            out[t] = torch.trapezoid(tpr, fpr)
        else:
            out[t] = _roc_region_area(fpr, tpr, max_fpr, min_tpr) / ((1.0 - min_tpr) * max_fpr)
    return out


def _reduce(values: Tensor, average: str) -> Tensor:
    check_choice("average", average, ("macro", "none"))
    if average == "none":
        return values
    valid = ~torch.isnan(values)
    if not valid.any():
        return values.new_tensor(math.nan)
    return values[valid].mean()


def auroc(scores: Tensor, targets: Tensor, *, average: Average = "macro") -> Tensor:
    """Area under the ROC curve, ties counted 1/2 (equal to scikit-learn's ``roc_auc_score``).

    .. math::

        \\mathrm{AUROC} = \\frac{1}{PN}\\sum_{i:\\,y_i=1}\\sum_{j:\\,y_j=0}
        \\Big[\\mathbb 1(s_i > s_j) + \\tfrac12 \\mathbb 1(s_i = s_j)\\Big]

    with ``s = scores``, ``y = targets``, ``P``/``N`` the numbers of positives/negatives of the task.

    Args:
        scores: ``[B]`` or ``[B, T]`` real scores (any monotone transform gives the same value).
        targets: same shape, 0/1.
        average: ``"macro"``: mean over valid tasks (both classes present), a 0-dim tensor;
            ``"none"``: ``[T]`` per-task values (``T = 1`` for ``[B]`` inputs), NaN for invalid tasks.

    Returns:
        float64 tensor on the inputs' device; NaN when no task is valid (see the module docstring).

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.7500, dtype=torch.float64)
    """
    s, y = _prepare(scores, targets)
    return _reduce(_per_task(s, y, "auroc"), average)


def average_precision(scores: Tensor, targets: Tensor, *, average: Average = "macro") -> Tensor:
    """Average precision, scikit-learn's step-wise definition (``average_precision_score``).

    .. math::

        \\mathrm{AP} = \\sum_{k=1}^{m} (R_k - R_{k-1})\\, P_k, \\qquad
        R_k = \\frac{TP_k}{P}, \\quad P_k = \\frac{TP_k}{TP_k + FP_k}, \\quad R_0 = 0,

    where ``TP_k``/``FP_k`` count the positives/negatives with score ``>= v_k`` and
    ``v_1 > ... > v_m`` are the distinct values of ``scores``: a group of tied scores is one
    threshold (no interpolation inside it). Without ties this is the mean over positives ``i``
    of the precision at ``s_i``, the quantity the AP losses (SOAP, Qi et al., NeurIPS 2021) optimise.

    Args:
        scores: ``[B]`` or ``[B, T]``.
        targets: same shape, 0/1.
        average: ``"macro"`` (mean over tasks with both classes) or ``"none"`` (``[T]``, NaN for
            invalid tasks). Note: scikit-learn gives 1.0 for a task without negatives; here such a
            task is skipped like in :func:`auroc`.

    Returns:
        float64 tensor; NaN when no task is valid.

    Example:
        >>> average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.8333, dtype=torch.float64)
    """
    s, y = _prepare(scores, targets)
    return _reduce(_per_task(s, y, "ap"), average)


def partial_auroc(
    scores: Tensor, targets: Tensor, *, max_fpr: float, min_tpr: float = 0.0, average: Average = "macro"
) -> Tensor:
    """Normalised one-way (``min_tpr = 0``) or two-way partial area under the ROC curve.

    With ``beta = max_fpr`` and ``alpha = min_tpr``, the raw area is that of the ROC region with
    ``FPR <= beta`` and ``TPR >= alpha``:

    .. math::

        A(\\alpha, \\beta) = \\int_0^{\\beta} \\max\\big(\\mathrm{TPR}(f) - \\alpha,\\, 0\\big)\\, df,
        \\qquad \\mathrm{pAUC} = \\frac{A(\\alpha, \\beta)}{(1 - \\alpha)\\,\\beta} \\in [0, 1].

    The divisor is the largest possible raw area (a perfect ranking): **one-way**
    (``alpha = 0``) ``area / max_fpr``; **two-way** ``area / ((1 - min_tpr) * max_fpr)``.
    ``TPR(f)`` is the ROC polyline of the module docstring (tie groups are diagonal segments,
    the point at ``f = beta`` is linearly interpolated, like scikit-learn), so ``max_fpr = 1,
    min_tpr = 0`` gives :func:`auroc`. A random ranking gives ``beta / 2`` (one-way).

    **Pairwise form** (Zhu et al., ICML 2022, arXiv:2203.00176; Yang et al., ICML 2021,
    arXiv:2106.01048): when ``(1 - alpha) P`` and ``beta N`` are integers and there are no ties at
    the two cut points, ``pAUC`` equals the fraction of correctly ordered pairs between the
    ``(1 - alpha) P`` *lowest*-scored positives and the ``beta N`` *highest*-scored negatives,
    ``1(s_i > s_j) + 1/2 1(s_i = s_j)``. Elsewhere the ROC-curve integral interpolates.

    **scikit-learn's** ``roc_auc_score(max_fpr=beta)`` returns the *McClish-standardised* one-way
    value ``0.5 * (1 + (A - beta^2/2) / (beta - beta^2/2))`` (0.5 for a random ranking, 1 for a
    perfect one), not ``A / beta``. With ``p = partial_auroc(..., max_fpr=beta)``:
    ``mcclish = 0.5 * (1 + (p - beta/2) / (1 - beta/2))`` and back
    ``p = beta/2 + (2 mcclish - 1)(1 - beta/2)``; see :func:`normalized_to_mcclish`.

    Args:
        scores: ``[B]`` or ``[B, T]``.
        targets: same shape, 0/1.
        max_fpr: ``beta`` in ``(0, 1]``.
        min_tpr: ``alpha`` in ``[0, 1)``; 0 gives the one-way pAUC.
        average: ``"macro"`` or ``"none"`` as in :func:`auroc`.

    Returns:
        float64 tensor; NaN when no task is valid.

    Example:
        >>> s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]); y = torch.tensor([1, 0, 1, 0, 1, 0])
        >>> partial_auroc(s, y, max_fpr=1 / 3)     # top negative (0.8) beats 1 of 3 positives
        tensor(0.3333, dtype=torch.float64)
        >>> partial_auroc(s, y, max_fpr=2 / 3, min_tpr=1 / 3)   # 2 lowest pos x 2 highest neg
        tensor(0.2500, dtype=torch.float64)
    """
    beta = float(max_fpr)
    alpha = float(min_tpr)
    if not (math.isfinite(beta) and 0.0 < beta <= 1.0):
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
    if not (math.isfinite(alpha) and 0.0 <= alpha < 1.0):
        raise ValueError(f"min_tpr must be in [0, 1), got {min_tpr!r}")
    s, y = _prepare(scores, targets)
    return _reduce(_per_task(s, y, "pauc", beta, alpha), average)


def normalized_to_mcclish(pauc: Tensor | float, max_fpr: float) -> Tensor | float:
    """Convert a one-way :func:`partial_auroc` value (``area / max_fpr``) to scikit-learn's
    McClish-standardised ``roc_auc_score(max_fpr=max_fpr)``:
    ``0.5 * (1 + (pauc - max_fpr/2) / (1 - max_fpr/2))``."""
    b = float(max_fpr)
    return 0.5 * (1.0 + (pauc - b / 2.0) / (1.0 - b / 2.0))


def mcclish_to_normalized(mcclish: Tensor | float, max_fpr: float) -> Tensor | float:
    """Inverse of :func:`normalized_to_mcclish`: ``max_fpr/2 + (2 mcclish - 1)(1 - max_fpr/2)``."""
    b = float(max_fpr)
    return b / 2.0 + (2.0 * mcclish - 1.0) * (1.0 - b / 2.0)
