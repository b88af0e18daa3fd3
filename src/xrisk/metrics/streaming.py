"""Streaming versions of the rank metrics: accumulate scores batch by batch, compute once.

Rank metrics do not decompose over batches, so :class:`AUROC`, :class:`AveragePrecision` and
:class:`PartialAUROC` keep every ``(scores, targets)`` pair they are given (detached, on the CPU)
and :meth:`~StreamingRankMetric.compute` calls the one-shot function of
:mod:`xrisk.metrics.ranking` on their concatenation, so the result is *identical* to the
one-shot value on the whole data.

**State and sync.** The stored batches are the state (not an ``nn.Module``: a metric is rebuilt,
not checkpointed). Under ``torch.distributed`` with ``sync=True`` (default), ``compute()`` first
all-gathers every rank's scores and targets (ranks may hold different numbers of samples), so
every rank returns the value on the union of all ranks' data. ``compute()`` is then a collective
call: every rank must call it. ``sync=False`` computes on the local data only.

Example:
    >>> import torch
    >>> from xrisk.metrics import AUROC, auroc
    >>> m = AUROC()
    >>> s, y = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    >>> m.update(s[:2], y[:2]); m.update(s[2:], y[2:])
    >>> bool(m.compute() == auroc(s, y))
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_binary_inputs, check_choice
from xrisk.metrics.ranking import Average, auroc, average_precision, partial_auroc

__all__ = ["StreamingRankMetric", "AUROC", "AveragePrecision", "PartialAUROC"]


class StreamingRankMetric:
    """Base class: stores batches, gathers them across ranks, calls :meth:`_metric`.

    Args:
        average: ``"macro"`` or ``"none"``, as in :func:`xrisk.metrics.auroc`.
        sync: gather all ranks' data in :meth:`compute` under ``torch.distributed``.

    The number of tasks ``T`` is fixed by the first :meth:`update` (``[B]`` inputs: ``T = 1``);
    later batches must have the same number of tasks.
    """

    def __init__(self, *, average: Average = "macro", sync: bool = True) -> None:
        self.average: Average = check_choice("average", average, ("macro", "none"))  # type: ignore[assignment]
        self.sync = bool(sync)
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._num_tasks: int | None = None
        self._one_dim = True

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: ``scores`` ``[B]`` or ``[B, T]`` (float), ``targets`` same shape, 0/1.

        Raises:
            ValueError: NaN/inf scores, non-binary targets, mismatched shapes, or a number of
                tasks different from the earlier batches.
        """
        if isinstance(scores, Tensor) and not scores.is_floating_point() and scores.dtype != torch.bool:
            scores = scores.to(torch.float64)
        num_tasks = scores.shape[1] if isinstance(scores, Tensor) and scores.dim() == 2 else 1
        if self._num_tasks is not None and num_tasks != self._num_tasks:
            raise ValueError(
                f"this metric holds {self._num_tasks} task(s); got a batch of shape {tuple(scores.shape)}"
            )
        s, y = check_binary_inputs(scores, targets, num_tasks)
        if self._num_tasks is None:
            self._num_tasks = num_tasks
            self._one_dim = scores.dim() == 1
        self._scores.append(s.detach().to("cpu", copy=True))
        self._targets.append(y.detach().to("cpu", copy=True))

    def reset(self) -> None:
        """Forget every stored batch (and the number of tasks)."""
        self._scores.clear()
        self._targets.clear()
        self._num_tasks = None
        self._one_dim = True

    @property
    def num_samples(self) -> int:
        """Number of samples stored on this rank."""
        return sum(int(s.shape[0]) for s in self._scores)

    def _data(self) -> tuple[Tensor, Tensor]:
        """``[n, T]`` scores and bool targets (gathered over ranks when ``sync``)."""
        t = self._num_tasks or 1
        if self._scores:
            dtype = torch.promote_types(self._scores[0].dtype, torch.float32)
            for x in self._scores[1:]:
                dtype = torch.promote_types(dtype, x.dtype)
            s = torch.cat([x.to(dtype) for x in self._scores])
            y = torch.cat(self._targets)
        else:
            s = torch.zeros((0, t), dtype=torch.float64)
            y = torch.zeros((0, t), dtype=torch.bool)
        if self.sync and xdist.is_distributed():
            s = xdist.all_gather_no_grad(s.to(torch.float64))
            y = xdist.all_gather_no_grad(y)
        return s, y

    def compute(self) -> Tensor:
        """The metric on everything stored since the last :meth:`reset` (all ranks when ``sync``).

        Returns:
            float64 tensor: 0-dim for ``average="macro"``, ``[T]`` for ``"none"``; NaN when no
            task has both classes (e.g. nothing stored).
        """
        s, y = self._data()
        if s.shape[0] == 0:
            t = self._num_tasks or 1
            nan = torch.full((t,), math.nan, dtype=torch.float64)
            return nan if self.average == "none" else nan[0]
        if self._one_dim:
            s, y = s[:, 0], y[:, 0]
        return self._metric(s, y)

    def _metric(self, scores: Tensor, targets: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} must override _metric(scores, targets)")


class AUROC(StreamingRankMetric):
    """Streaming :func:`xrisk.metrics.auroc` (see :class:`StreamingRankMetric` for the state).

    Example:
        >>> m = AUROC(average="none")
        >>> m.update(torch.tensor([[0.2, 0.9], [0.7, 0.1]]), torch.tensor([[0, 1], [1, 0]]))
        >>> m.compute()
        tensor([1., 1.], dtype=torch.float64)
    """

    def _metric(self, scores: Tensor, targets: Tensor) -> Tensor:
        return auroc(scores, targets, average=self.average)


class AveragePrecision(StreamingRankMetric):
    """Streaming :func:`xrisk.metrics.average_precision` (see :class:`StreamingRankMetric`)."""

    def _metric(self, scores: Tensor, targets: Tensor) -> Tensor:
        return average_precision(scores, targets, average=self.average)


class PartialAUROC(StreamingRankMetric):
    """Streaming :func:`xrisk.metrics.partial_auroc` (see :class:`StreamingRankMetric`).

    Args:
        max_fpr: ``beta`` in ``(0, 1]``.
        min_tpr: ``alpha`` in ``[0, 1)`` (0: one-way pAUC).
        average, sync: as in :class:`StreamingRankMetric`.
    """

    def __init__(self, *, max_fpr: float, min_tpr: float = 0.0, average: Average = "macro",
                 sync: bool = True) -> None:
        super().__init__(average=average, sync=sync)
        partial_auroc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), max_fpr=max_fpr, min_tpr=min_tpr)  # validate
        self.max_fpr = float(max_fpr)
        self.min_tpr = float(min_tpr)

    def _metric(self, scores: Tensor, targets: Tensor) -> Tensor:
        return partial_auroc(scores, targets, max_fpr=self.max_fpr, min_tpr=self.min_tpr, average=self.average)
