"""ROC-fairness constraints: equal group TPR and FPR at a set of thresholds (``roc_fairness_constraints``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_finite, check_positive
from xrisk.constrained.problem import Constraints

__all__ = ["roc_fairness_constraints", "roc_fairness_num_constraints", "group_rates"]


def roc_fairness_num_constraints(num_thresholds: int) -> int:
    """``m = 4 |Gamma|``: two signs of the FPR gap and of the TPR gap per threshold."""
    return 4 * int(num_thresholds)


def group_rates(
    scores: Tensor, targets: Tensor, groups: Tensor, thresholds: Tensor, temperature: float | None,
    *, cell: Tensor | None = None, counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-group rates ``(rates [2, 2, K], counts [2, 2])``: ``rates[g, y, k]`` is the mean over the samples
    of group ``g`` and label ``y`` of ``sigma((s - theta_k) / temperature)`` (``1[s >= theta_k]`` when
    ``temperature`` is None), i.e. the FPR (``y = 0``) and TPR (``y = 1``) of group ``g`` at
    ``theta_k``; ``counts[g, y]`` the number of such samples (rates of empty cells are 0).

    ``cell = 2 groups + targets`` and ``counts`` (its ``bincount``, float) may be passed when known.
    """
    if cell is None:
        cell = groups.long() * 2 + targets.long()
    if counts is None:
        counts = torch.bincount(cell, minlength=4).to(scores.dtype)
    theta = thresholds.to(scores.dtype)
    if temperature is not None:
        soft = torch.sigmoid((scores.unsqueeze(1) - theta) / temperature)  # [B, K]
    else:
        soft = (scores.unsqueeze(1) >= theta).to(scores.dtype)
    sums = soft.new_zeros(4, theta.numel()).index_add_(0, cell, soft)  # [4, K]
    rates = sums / counts.clamp_min(1.0).unsqueeze(1)
    return rates.reshape(2, 2, -1), counts.reshape(2, 2)


def _check_batch(scores: Tensor, targets: Tensor, groups: Tensor,
                 theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[float]]:
    """This rank's checks with one host read: ``(scores [B], targets int64, groups int64, cell = 2 groups +
    targets, cell counts [4] as a tensor and as host numbers)``."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    scores = scores.reshape(-1) if scores.dim() == 2 and scores.shape[1] == 1 else scores
    if scores.dim() != 1 or targets.shape != scores.shape or groups.shape != scores.shape:
        raise ValueError(f"scores, targets and groups must all be [B]; got {tuple(scores.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(groups.shape)}")
    t, gr = targets.long(), groups.long()
    cell = gr * 2 + t
    counts = torch.bincount(cell.clamp(0, 3), minlength=4).to(scores.dtype)
    # one host read: the labels' range, the cell counts, and NaN if a score or threshold is not finite
    lo_hi = torch.aminmax(torch.stack((t, gr))) if t.numel() else (t.new_zeros(()), t.new_zeros(()))
    probe = (scores.detach().sum() + theta.sum()) * 0
    stats = torch.cat((torch.stack(lo_hi).to(scores.dtype), counts, probe.reshape(1))).tolist()
    if not math.isfinite(stats[-1]):
        check_finite("scores", scores)
        check_finite("thresholds", theta)
    if t.numel() and (stats[0] < 0 or stats[1] > 1):
        raise ValueError("targets and groups must be binary (0/1)")
    return scores, t, gr, cell, counts, stats[2:6]


def roc_fairness_constraints(
    scores: Tensor,
    targets: Tensor,
    groups: Tensor,
    thresholds: Sequence[float] | Tensor,
    kappa: float,
    *,
    temperature: float | None = 0.05,
    gather: bool = True,
) -> Constraints:
    """Group TPR and FPR gaps at each threshold as ``4 |Gamma|`` constraints ``<= 0``.

    For groups ``a`` (``groups == 1``) and ``b`` (``groups == 0``), with ``FPR_g(theta)`` the mean over
    the negatives of group ``g`` and ``TPR_g(theta)`` over its positives of
    ``sigma((s - theta) / temperature)`` (a smooth stand-in for ``1[s >= theta]``), the constraints at
    threshold ``theta_k`` (ids ``4k .. 4k+3``) are

    .. math::

        \\mathrm{FPR}_a - \\mathrm{FPR}_b - \\kappa \\le 0,\\;
        \\mathrm{FPR}_b - \\mathrm{FPR}_a - \\kappa \\le 0,\\;
        \\mathrm{TPR}_a - \\mathrm{TPR}_b - \\kappa \\le 0,\\;
        \\mathrm{TPR}_b - \\mathrm{TPR}_a - \\kappa \\le 0 ,

    i.e. ``|FPR_a - FPR_b| <= kappa`` and ``|TPR_a - TPR_b| <= kappa`` (ROC fairness: Vogel, Bellet,
    Clemencon, AISTATS 2021; the stochastic version of Yao, Lin, Yang, AISTATS 2023). A batch observes
    only the constraints whose rates it can estimate: the FPR pair needs a negative of each group, the
    TPR pair a positive of each group; the others are left out of ``index``.

    Args:
        scores: ``[B]`` model scores (e.g. probabilities, with thresholds in ``(0, 1)``).
        targets: ``[B]`` binary labels.
        groups: ``[B]`` binary protected attribute (1 = group ``a``).
        thresholds: the set ``Gamma`` of ``K`` thresholds.
        kappa: allowed gap ``kappa >= 0``.
        temperature: width of the sigmoid surrogate; ``None`` gives the exact (step-function, no
            gradient) rates, for evaluation.
        gather: under ``torch.distributed``, compute on the global batch (scores gathered with the
            ``"sum"`` gradient policy) so every rank returns the same values (the formulation's
            ``sync="replicated"``).

    Returns:
        :class:`~xrisk.constrained.Constraints` ``(values [k], index [k])`` with ``k <= 4K``.

    Example:
        >>> s = torch.tensor([0.9, 0.6, 0.3, 0.4])   # group a: TPR 1, FPR 1; group b: TPR 0, FPR 0
        >>> c = roc_fairness_constraints(s, torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 0, 0]),
        ...                              [0.5], kappa=0.25, temperature=None)
        >>> c.values.tolist(), c.index.tolist()
        ([0.75, -1.25, 0.75, -1.25], [0, 1, 2, 3])
    """
    kappa = check_positive("kappa", kappa, allow_zero=True)
    if temperature is not None:
        temperature = check_positive("temperature", temperature)
    theta = torch.as_tensor(thresholds, dtype=getattr(scores, "dtype", None), device=getattr(scores, "device", None))
    theta = theta.reshape(-1)
    k = theta.numel()
    if k == 0:
        raise ValueError("thresholds must hold at least one threshold")
    check = functools.partial(_check_batch, scores, targets, groups, theta)
    if gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
        (scores, t, gr, _, _, _), layout = xdist.agree_on_batch(
            "roc_fairness_constraints", check, lambda o: {"scores": o[0], "targets": o[1], "groups": o[2]})
        scores = xdist.all_gather(scores, grad="sum", sizes=layout.sizes)
        t = xdist.all_gather_no_grad(t, sizes=layout.sizes)
        gr = xdist.all_gather_no_grad(gr, sizes=layout.sizes)
        cell = gr * 2 + t
        counts = torch.bincount(cell, minlength=4).to(scores.dtype)
        present = counts.tolist()
    else:
        scores, t, gr, cell, counts, present = check()
    rates, _ = group_rates(scores, t, gr, theta, temperature, cell=cell, counts=counts)
    gaps = (rates[1] - rates[0])  # [label, K]: group a minus group b, FPR (label 0) and TPR (label 1)
    values = torch.stack((gaps, -gaps), 1).permute(2, 0, 1).reshape(-1) - kappa  # [K, label, sign]
    has_fpr = present[0] > 0 and present[2] > 0  # cells 2 group + label: (b, 0) and (a, 0)
    has_tpr = present[1] > 0 and present[3] > 0
    if has_fpr and has_tpr:
        return Constraints(values, torch.arange(4 * k, device=scores.device))
    kinds = torch.tensor([has_fpr, has_fpr, has_tpr, has_tpr], device=scores.device)
    index = torch.nonzero(kinds.repeat(k)).flatten()
    return Constraints(values.index_select(0, index), index)
