"""Streaming (batch by batch) rank metrics: torchmetrics, and the two-way partial AUROC it lacks.

The one-shot functions :func:`~xrisk.metrics.auroc`, :func:`~xrisk.metrics.average_precision` and
:func:`~xrisk.metrics.partial_auroc` take the whole data at once. To accumulate over batches, log
from Lightning, checkpoint or sync across processes, use a ``torchmetrics.Metric`` (an
``nn.Module``: ``state_dict``, ``.to()``, ``reset()``, ``dist_reduce_fx`` sync):

| xrisk (one shot) | streaming (a ``torchmetrics.Metric``) |
|---|---|
| ``auroc(s, y)`` | ``torchmetrics.classification.BinaryAUROC()`` |
| ``average_precision(s, y)`` | ``torchmetrics.classification.BinaryAveragePrecision()`` |
| ``auroc(s, y)``, ``[B, T]`` inputs | ``MultilabelAUROC(num_labels=T, average="macro")`` (see below) |
| ``partial_auroc(s, y, max_fpr=b)`` (one-way) | ``BinaryAUROC(max_fpr=b)``, **McClish-standardised**: convert, see below |
| ``partial_auroc(s, y, max_fpr=b, min_tpr=a)`` (two-way) | :class:`TwoWayPartialAUROC` (this module, ``xrisk[metrics]``) |

Both torchmetrics and xrisk count a tied positive-negative pair ``1/2`` (scikit-learn's ROC curve),
so with ``thresholds=None`` (exact mode) the values agree up to float32 rounding (torchmetrics
computes in float32; about ``1e-7``). Two differences to know.

**One-way pAUC scale.** ``BinaryAUROC(max_fpr=b)`` returns the McClish-standardised value, like
scikit-learn's ``roc_auc_score(max_fpr=b)``: ``0.5`` for a random ranking, ``1`` for a perfect
one. :func:`~xrisk.metrics.partial_auroc` returns the raw area over ``FPR <= b`` divided by its
maximum ``b`` (``b/2`` for a random ranking, ``1`` for a perfect one), the quantity the pAUC
losses optimise. With ``p = partial_auroc(s, y, max_fpr=b)`` and ``m = BinaryAUROC(max_fpr=b)``:

.. math::

    m = \\frac12\\Big(1 + \\frac{p - b/2}{1 - b/2}\\Big), \\qquad
    p = \\frac b2 + (2m - 1)\\Big(1 - \\frac b2\\Big),

given by :func:`~xrisk.metrics.normalized_to_mcclish` and
:func:`~xrisk.metrics.mcclish_to_normalized`.

**Logits.** torchmetrics applies a sigmoid to predictions outside ``[0, 1]``; in float32 the
sigmoid rounds every logit above about 17 to ``1.0``, which creates ties and changes the value
(logits ``[20, 30, 25, 40]`` with targets ``[0, 1, 0, 1]``: ``0.5`` instead of ``1.0``). Pass
probabilities, or float64 logits; xrisk's functions use the scores as given.

Tasks without both classes: xrisk's ``average="macro"`` skips them (NaN in ``average="none"``);
torchmetrics' multilabel metrics warn and count them as 0.

:class:`TwoWayPartialAUROC` needs ``torchmetrics`` (``pip install 'xrisk[metrics]'``); the rest of
xrisk imports without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor

from xrisk._validate import check_binary_inputs
from xrisk.metrics.ranking import _roc_region_area, partial_auroc

try:
    from torchmetrics import Metric
    from torchmetrics.utilities.data import dim_zero_cat
    from torchmetrics.utilities.distributed import gather_all_tensors
except ImportError as err:  # pragma: no cover - exercised by a subprocess test without torchmetrics
    raise ImportError(
        "xrisk.metrics.TwoWayPartialAUROC needs torchmetrics: pip install 'xrisk[metrics]'"
    ) from err

__all__ = ["TwoWayPartialAUROC"]


def _binned_roc(pos_hist: Tensor, neg_hist: Tensor) -> tuple[Tensor, Tensor]:
    """ROC points ``(fpr, tpr)`` at the bin edges, from ``(0, 0)`` to ``(1, 1)`` (float64 ``[K + 2]``)."""
    tps = torch.cumsum(pos_hist.flip(0).to(torch.float64), 0)  # positives in the top bins
    fps = torch.cumsum(neg_hist.flip(0).to(torch.float64), 0)
    zero = tps.new_zeros(1)
    return torch.cat([zero, fps / fps[-1]]), torch.cat([zero, tps / tps[-1]])


class TwoWayPartialAUROC(Metric):
    """Streaming two-way partial AUROC (``FPR <= max_fpr``, ``TPR >= min_tpr``), exact or binned.

    The value is that of :func:`xrisk.metrics.partial_auroc` on every batch given to
    :meth:`update` since the last :meth:`reset` (across processes when synced):

    .. math::

        \\mathrm{pAUC} = \\frac{1}{(1 - \\alpha)\\,\\beta}\\int_0^{\\beta}
            \\max\\big(\\mathrm{TPR}(f) - \\alpha,\\, 0\\big)\\, df

    with ``beta = max_fpr`` and ``alpha = min_tpr`` (``min_tpr = 0``: xrisk's one-way pAUC,
    ``area / max_fpr``, not torchmetrics' McClish value; see the module docstring).

    **Exact mode** (``thresholds=None``): stores every score (float64) and target; memory grows
    with the data; states ``scores``/``targets`` sync by concatenation (``dist_reduce_fx="cat"``).
    :meth:`compute` equals ``partial_auroc`` on the concatenation exactly.

    **Binned mode** (``thresholds`` = an int ``K``: ``K`` thresholds evenly spaced on ``[0, 1]``,
    scores must then be probabilities; or a sorted sequence/tensor of thresholds): fixed memory,
    two ``[K + 1]`` int64 histograms ``pos_hist``/``neg_hist`` of how many positives/negatives
    have exactly ``k`` thresholds ``<=`` their score, summed across processes
    (``dist_reduce_fx="sum"``). The ROC curve is known exactly at the thresholds
    (``TPR = #{positives with score >= threshold} / P``, as torchmetrics) and joined by straight
    lines, so the value equals ``partial_auroc`` of the scores replaced by their bin number.

    **Error bound of the binned mode.** The exact ROC curve passes through the same points and is
    monotone in between, so on each bin it stays in the box of width ``df_k`` and height
    ``dt_k`` spanned by the neighbouring points. Hence, with ``g(t) = max(t - alpha, 0)``:

    .. math::

        \\begin{aligned}
        |\\mathrm{pAUC}_{\\mathrm{binned}} - \\mathrm{pAUC}_{\\mathrm{exact}}|
        &\\le \\frac{1}{(1-\\alpha)\\beta}\\sum_{k:\\, f_k < \\beta}
            \\big(\\min(f_{k+1}, \\beta) - f_k\\big)\\big(g(t_{k+1}) - g(t_k)\\big) \\\\
        &\\le \\min\\Big(\\frac{\\varepsilon_+}{1-\\alpha}, \\frac{\\varepsilon_-}{\\beta}\\Big),
        \\end{aligned}

    where ``eps_+``/``eps_-`` are the largest shares of the positives/negatives falling in one bin.
    :meth:`error_bound` returns the middle term from the histograms (0 in exact mode).

    Args:
        max_fpr: ``beta`` in ``(0, 1]``.
        min_tpr: ``alpha`` in ``[0, 1)``.
        thresholds: ``None`` (exact), an int ``K >= 2`` or increasing finite thresholds.
        sync_on_compute: gather/sum the state of every process before :meth:`compute` under
            ``torch.distributed`` (torchmetrics' argument; every rank must then call ``compute``).
        process_group: the process group to sync over (``None``: the default group).

    Shapes: ``update(scores, targets)`` with ``scores`` ``[B]`` floating (NaN/inf raise
    ``ValueError``) and ``targets`` ``[B]`` 0/1. One task: for ``[B, T]`` keep one metric per column.

    State: unlike torchmetrics' default, the states are *persistent*: they are in
    ``state_dict()``, so a mid-epoch checkpoint (e.g. Lightning's) resumes the metric; call
    ``persistent(False)`` to leave them out. ``thresholds`` is a buffer (in ``state_dict``,
    follows ``.to()``); loading a state of another mode or number of bins raises ``ValueError``.

    Example:
        >>> import torch
        >>> from xrisk.metrics import TwoWayPartialAUROC, partial_auroc
        >>> s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]); y = torch.tensor([1, 0, 1, 0, 1, 0])
        >>> m = TwoWayPartialAUROC(max_fpr=2 / 3, min_tpr=1 / 3)
        >>> m.update(s[:3], y[:3]); m.update(s[3:], y[3:])
        >>> bool(m.compute() == partial_auroc(s, y, max_fpr=2 / 3, min_tpr=1 / 3))
        True
        >>> b = TwoWayPartialAUROC(max_fpr=2 / 3, min_tpr=1 / 3, thresholds=101)
        >>> b.update(s, y); round(float(b.compute()), 12), float(b.error_bound())  # one score per bin: exact
        (0.25, 0.0)

    Paper (the two-way pAUC): Yang, Xu, Bao, Cao, Huang, "When All We Need is a Piece of the
    Pie: A Generic Framework for Optimizing Two-way Partial AUC", ICML 2021, arXiv:2106.01048.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        max_fpr: float,
        min_tpr: float = 0.0,
        thresholds: int | Sequence[float] | Tensor | None = None,
        sync_on_compute: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute, process_group=process_group)
        partial_auroc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), max_fpr=max_fpr, min_tpr=min_tpr)  # validate
        self.max_fpr = float(max_fpr)
        self.min_tpr = float(min_tpr)
        self.binned = thresholds is not None
        if thresholds is None:
            self.add_state("scores", default=[], dist_reduce_fx="cat", persistent=True)
            self.add_state("targets", default=[], dist_reduce_fx="cat", persistent=True)
            return
        th = _thresholds(thresholds)
        self.probabilities = isinstance(thresholds, int)
        self.register_buffer("thresholds", th)
        self.add_state("pos_hist", default=torch.zeros(th.numel() + 1, dtype=torch.long),
                       dist_reduce_fx="sum", persistent=True)
        self.add_state("neg_hist", default=torch.zeros(th.numel() + 1, dtype=torch.long),
                       dist_reduce_fx="sum", persistent=True)

    def update(self, scores: Tensor, targets: Tensor) -> None:  # type: ignore[override]
        """Add a batch: ``scores`` ``[B]`` floating, ``targets`` ``[B]`` 0/1.

        Raises:
            ValueError: NaN/inf scores, non-binary targets, shapes other than ``[B]``, or (int
                ``thresholds``) scores outside ``[0, 1]``.
        """
        if isinstance(scores, Tensor) and scores.dim() != 1:
            raise ValueError(f"TwoWayPartialAUROC takes [B] scores (one task), got shape {tuple(scores.shape)}")
        s, y = check_binary_inputs(scores, targets, 1)
        s, y = s.detach()[:, 0], y[:, 0]
        if not self.binned:
            self.scores.append(s.to(torch.float64, copy=True))
            self.targets.append(y.to(torch.uint8))
            return
        if self.probabilities and s.numel() and (s.min() < 0 or s.max() > 1):
            raise ValueError(
                f"thresholds={self.thresholds.numel()} bins [0, 1]: scores must be probabilities, got values in "
                f"[{float(s.min())}, {float(s.max())}]; pass torch.sigmoid(logits) or explicit thresholds"
            )
        bins = torch.bucketize(s.to(self.thresholds.dtype), self.thresholds, right=True)
        size = self.thresholds.numel() + 1
        self.pos_hist += torch.bincount(bins[y], minlength=size)
        self.neg_hist += torch.bincount(bins[~y], minlength=size)

    def _roc(self) -> tuple[Tensor, Tensor] | None:
        """Binned ROC points, ``None`` when a class is missing."""
        if int(self.pos_hist.sum()) == 0 or int(self.neg_hist.sum()) == 0:
            return None
        return _binned_roc(self.pos_hist, self.neg_hist)

    def compute(self) -> Tensor:
        """The two-way pAUC (float64 0-dim tensor); NaN until both classes have been seen."""
        if not self.binned:
            if isinstance(self.scores, list) and not self.scores:  # a list until synced, then a tensor
                return torch.tensor(math.nan, dtype=torch.float64, device=self.device)
            return partial_auroc(dim_zero_cat(self.scores), dim_zero_cat(self.targets),
                                 max_fpr=self.max_fpr, min_tpr=self.min_tpr)
        roc = self._roc()
        if roc is None:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.device)
        area = _roc_region_area(roc[0], roc[1], self.max_fpr, self.min_tpr)
        return area / ((1.0 - self.min_tpr) * self.max_fpr)

    def error_bound(self) -> Tensor:
        """Bound on ``|compute() - exact value|`` from the local histograms (see the class
        docstring); 0 in exact mode, NaN until both classes have been seen. Not synced: call it
        after :meth:`compute` on a synced metric, or sum the histograms first."""
        if not self.binned:
            return torch.tensor(0.0, dtype=torch.float64, device=self.device)
        roc = self._roc()
        if roc is None:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.device)
        fpr, tpr = roc
        width = (torch.minimum(fpr[1:], fpr.new_tensor(self.max_fpr)) - fpr[:-1]).clamp_min(0.0)
        rise = (tpr[1:] - self.min_tpr).clamp_min(0.0) - (tpr[:-1] - self.min_tpr).clamp_min(0.0)
        return (width * rise).sum() / ((1.0 - self.min_tpr) * self.max_fpr)

    def _sync_dist(self, dist_sync_fn: Callable[..., Any] = gather_all_tensors, process_group: Any = None) -> None:
        """A rank without data sends empty tensors of the stored dtypes (torchmetrics would send float32 ones,
        which gloo cannot gather with the other ranks' float64 scores)."""
        if not self.binned:
            for name, dtype in (("scores", torch.float64), ("targets", torch.uint8)):
                if isinstance(getattr(self, name), list) and not getattr(self, name):
                    setattr(self, name, [torch.zeros(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Check the mode and the number of bins before anything is loaded."""
        saved = state_dict.get(prefix + "thresholds")
        has_scores = prefix + "scores" in state_dict
        mine = self.thresholds if self.binned else None
        if (saved is None) != (mine is None) and (saved is not None or has_scores):
            raise ValueError(f"TwoWayPartialAUROC: the state was saved in {'binned' if saved is not None else 'exact'} "
                             f"mode, this metric is {'binned' if self.binned else 'exact'}")
        if saved is not None and mine is not None and saved.shape != mine.shape:
            raise ValueError(f"TwoWayPartialAUROC: the state has {saved.numel()} thresholds, this metric "
                             f"{mine.numel()}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _thresholds(thresholds: int | Sequence[float] | Tensor) -> Tensor:
    """The float64 thresholds: ``K`` evenly spaced on ``[0, 1]`` for an int, else validated as given."""
    if isinstance(thresholds, bool):
        raise TypeError("thresholds must be None, an int or a sequence of floats, got a bool")
    if isinstance(thresholds, int):
        if thresholds < 2:
            raise ValueError(f"thresholds must be an int >= 2 (number of thresholds), got {thresholds}")
        return torch.linspace(0.0, 1.0, thresholds, dtype=torch.float64)
    th = torch.as_tensor(thresholds, dtype=torch.float64).detach().clone()
    if th.dim() != 1 or th.numel() < 1:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {tuple(th.shape)}")
    if not torch.isfinite(th).all():
        raise ValueError("thresholds must be finite (no NaN/inf)")
    if th.numel() > 1 and not bool((th[1:] > th[:-1]).all()):
        raise ValueError("thresholds must be strictly increasing")
    return th
