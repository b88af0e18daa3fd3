"""Detection metrics of one score vector and per group (domain, generator): AUROC, AP, one-way and two-way
partial AUROC and the TPR at a fixed FPR.

For flagging machine-written text the operating point matters: :func:`tpr_at_fpr` is the largest TPR on
the ROC curve (the polyline of :mod:`xrisk.metrics.ranking`, tie groups as diagonal segments, linearly
interpolated) at ``FPR <= max_fpr``,

.. math::

    \\mathrm{TPR@FPR}(\\beta) = \\max_{f \\le \\beta} \\mathrm{TPR}(f),

i.e. the share of machine texts caught when at most ``beta`` of the human texts are flagged.

**Groups.** :func:`grouped_detection_metrics` computes :func:`detection_metrics` on the samples of each group
(e.g. each domain: its machine and its human texts). With ``shared_negatives=True`` a group's positives are
scored against **all** negatives (e.g. each generator's machine texts against every human text, since human
texts have no generator). A group without a positive or a negative gets NaN metrics.

Example:
    >>> import torch
    >>> from xrisk.metrics.detection import tpr_at_fpr
    >>> s = torch.tensor([0.9, 0.8, 0.7, 0.6]); y = torch.tensor([1, 0, 1, 0])
    >>> float(tpr_at_fpr(s, y, max_fpr=0.0)), float(tpr_at_fpr(s, y, max_fpr=0.5))
    (0.5, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from xrisk.metrics.ranking import _prepare, auroc, average_precision, partial_auroc, roc_curve

__all__ = ["tpr_at_fpr", "detection_metrics", "grouped_detection_metrics", "DETECTION_METRICS", "spearman",
           "feature_separability"]

#: The names :func:`detection_metrics` returns.
DETECTION_METRICS: tuple[str, ...] = ("auroc", "ap", "pauc", "tpauc", "tpr_at_1pct_fpr")


def tpr_at_fpr(scores: Tensor, targets: Tensor, *, max_fpr: float = 0.01) -> Tensor:
    """Largest TPR of the ROC curve at ``FPR <= max_fpr`` (float64; NaN without both classes).

    Args:
        scores: ``[B]`` scores (higher = more likely positive).
        targets: ``[B]`` 0/1.
        max_fpr: ``beta`` in ``[0, 1]``.
    """
    if not (math.isfinite(float(max_fpr)) and 0.0 <= float(max_fpr) <= 1.0):
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr!r}")
    s, y = _prepare(scores, targets)
    s, y = s[:, 0], y[:, 0]
    if not (y.any() and (~y).any()):
        return torch.tensor(math.nan, dtype=torch.float64)
    fpr, tpr, _ = roc_curve(s, y)
    inside = fpr <= max_fpr
    best = tpr[inside].max()
    k = int(inside.sum())  # the first point past max_fpr: interpolate on its segment
    if k < fpr.numel() and fpr[k] > fpr[k - 1]:
        w = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        best = torch.maximum(best, tpr[k - 1] + w * (tpr[k] - tpr[k - 1]))
    return best


def detection_metrics(scores: Tensor, targets: Tensor, *, max_fpr: float = 0.1, min_tpr: float = 0.5,
                      operating_fpr: float = 0.01) -> dict[str, float]:
    """:data:`DETECTION_METRICS` of one score vector: ``auroc``, ``ap``, ``pauc`` (one-way, ``FPR <= max_fpr``,
    normalised to [0, 1]), ``tpauc`` (two-way, ``FPR <= max_fpr`` and ``TPR >= min_tpr``) and
    ``tpr_at_1pct_fpr`` (:func:`tpr_at_fpr` at ``operating_fpr``); NaN when a class is missing."""
    s = torch.as_tensor(scores).reshape(-1)
    y = torch.as_tensor(targets).reshape(-1)
    return {"auroc": float(auroc(s, y)), "ap": float(average_precision(s, y)),
            "pauc": float(partial_auroc(s, y, max_fpr=max_fpr)),
            "tpauc": float(partial_auroc(s, y, max_fpr=max_fpr, min_tpr=min_tpr)),
            "tpr_at_1pct_fpr": float(tpr_at_fpr(s, y, max_fpr=operating_fpr))}


def grouped_detection_metrics(scores: Tensor, targets: Tensor, groups: Sequence[str], *,
                              shared_negatives: bool = False, max_fpr: float = 0.1, min_tpr: float = 0.5,
                              operating_fpr: float = 0.01) -> dict[str, dict[str, float]]:
    """:func:`detection_metrics` per group, groups in order of first appearance among the samples considered.

    Args:
        scores, targets: ``[B]``.
        groups: the group of every sample.
        shared_negatives: score each group's positives against every negative (the group of a negative is
            then ignored: only positives' groups are listed).
    """
    s = torch.as_tensor(scores).reshape(-1)
    y = torch.as_tensor(targets).reshape(-1).bool()
    if len(groups) != s.numel() or y.numel() != s.numel():
        raise ValueError(f"scores, targets and groups differ in length: {s.numel()}, {y.numel()}, {len(groups)}")
    names = list(dict.fromkeys(g for g, pos in zip(groups, y.tolist()) if pos or not shared_negatives))
    out = {}
    for name in names:
        member = torch.tensor([g == name for g in groups], dtype=torch.bool)
        keep = (member | ~y) if shared_negatives else member
        out[name] = detection_metrics(s[keep], y[keep], max_fpr=max_fpr, min_tpr=min_tpr,
                                      operating_fpr=operating_fpr)
    return out


def feature_separability(features: Mapping[str, Tensor], targets: Tensor,
                         groups: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """How well each feature alone separates the classes in each group: ``out[group][feature]`` holds
    ``auroc`` (the feature value as the score of the positive class: 0.5 = no separation, below 0.5 = the
    negatives have larger values), ``mean_positive`` and ``mean_negative``, over the group's samples with a
    finite value (NaN entries when a class has none)."""
    y = torch.as_tensor(targets).reshape(-1).bool()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in dict.fromkeys(groups):
        member = torch.tensor([g == name for g in groups], dtype=torch.bool)
        row = {}
        for feat, values in features.items():
            v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
            keep = member & torch.isfinite(v)
            vp, vn = v[keep & y], v[keep & ~y]
            row[feat] = {"auroc": float(auroc(v[keep], y[keep])) if vp.numel() and vn.numel() else math.nan,
                         "mean_positive": float(vp.mean()) if vp.numel() else math.nan,
                         "mean_negative": float(vn.mean()) if vn.numel() else math.nan}
        out[name] = row
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (average ranks for ties; NaN for fewer than
    3 finite pairs or a constant sequence)."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan
