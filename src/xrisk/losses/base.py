"""The template every score-based xrisk loss follows.

``loss(scores, targets, index)``:

1. **validate** shapes, dtypes, finiteness and the dataset index (clear errors, never NaN);
2. **gather** the global batch under ``torch.distributed`` (scores with the ``"sum"``
   gradient policy, targets and indices without gradient; see :mod:`xrisk.distributed`),
   so every rank computes the same global-batch loss and applies the same state update.
   The ranks first agree on the batch (:func:`xrisk.distributed.agree_on_batch`, in place of
   the size exchange): a bad batch on any rank, or ranks sending different dtypes or numbers of
   tasks, raises the same error on every rank before anything is gathered;
3. return a **graph-connected zero** and leave state untouched when the batch has no
   positive in any task;
4. call the subclass hook :meth:`ScoreLoss._loss`, which computes the surrogate, updates
   state and records the objective estimate with :meth:`ScoreLoss._record_objective`
   (lazily: a recipe over detached tensors, evaluated only when :meth:`ScoreLoss.objective`
   is called, so a training step never pays for it).

The returned value is a *surrogate*: its gradient is the method's stochastic gradient
estimator, but its value is not the objective (it can be negative). The current estimate
of the true objective is :meth:`ScoreLoss.objective`.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Union

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_binary_batch
from xrisk.state import ReplicatedStateModule, check_index

__all__ = ["ScoreLoss", "label_order"]

#: What a subclass records as the batch's objective estimate: a tensor, a zero-argument callable
#: over detached tensors (a ``functools.partial`` of a module-level function, so the module stays
#: picklable) evaluated on request, or ``None`` for "no estimate" (NaN).
ObjectiveRecord = Union[Tensor, Callable[[], Tensor], None]


class ScoreLoss(ReplicatedStateModule):
    """Base class of losses on real-valued scores and binary (multi-label) targets.

    Subclasses set ``uses_index`` (whether per-sample state needs dataset indices),
    ``objective_name`` (what :meth:`objective` estimates), and implement :meth:`_loss`.

    Args:
        num_tasks: number of labels ``T``; scores/targets are ``[B]`` or ``[B, T]``.
        gather: under ``torch.distributed``, compute the loss on the global batch
            (default True; needed for exactness of every global loss).
    """

    uses_index: ClassVar[bool] = True
    objective_name: ClassVar[str] = "objective"
    _objective: Tensor

    def __init__(self, *, num_tasks: int = 1, gather: bool = True) -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        self.num_tasks = num_tasks
        self.gather = bool(gather)
        self.register_buffer("_objective", torch.full((), float("nan")), persistent=False)

    def forward(self, scores: Tensor, targets: Tensor, index: Tensor | None = None) -> Tensor:
        """Surrogate loss of a batch (scalar tensor).

        Args:
            scores: ``[B]`` or ``[B, T]`` model outputs.
            targets: same shape, binary (bool / 0-1 int / 0-1 float).
            index: ``[B]`` dataset indices of the samples (required when the loss keeps
                per-sample state; ignored otherwise).
        """
        if self.gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
            (s, y, _, idx), layout = xdist.agree_on_batch(
                type(self).__name__, functools.partial(self._check_batch, scores, targets, index), _batch_tensors
            )
            s = xdist.all_gather(s, grad="sum", sizes=layout.sizes)
            y = xdist.all_gather_no_grad(y, sizes=layout.sizes)
            if idx is not None:
                idx = xdist.all_gather_no_grad(idx.to(s.device), sizes=layout.sizes)
            pos_counts = y.sum(0).tolist()  # of the global batch
        else:
            s, y, pos_counts, idx = self._check_batch(scores, targets, index)
        if not any(pos_counts):
            return s.sum() * 0.0
        return self._loss(s, y, idx, pos_counts)

    def _check_batch(
        self, scores: Tensor, targets: Tensor, index: Tensor | None
    ) -> tuple[Tensor, Tensor, list[int], Tensor | None]:
        """This rank's checks: ``(scores [B, T], targets [B, T] bool, positives per task, index or None)``."""
        s, y, pos_counts = check_binary_batch(scores, targets, self.num_tasks)  # one host read
        idx: Tensor | None = None
        if self.uses_index:
            if index is None:
                raise ValueError(f"{type(self).__name__} keeps per-sample state and needs `index` (dataset indices)")
            idx = check_index(index, self._num_samples(), batch_size=s.shape[0])
        return s, y, pos_counts, idx

    # ------------------------------------------------------------------ hooks for subclasses
    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: list[int]) -> Tensor:
        """Compute the surrogate on the (global) batch ``scores [B, T]``, ``targets [B, T]`` (bool).

        ``pos_counts[t]`` is the number of positives of task ``t`` in the batch (host ints).
        """
        raise TypeError(f"{type(self).__name__} must override _loss(scores, targets, index, pos_counts)")

    def _num_samples(self) -> int:
        n = getattr(self, "num_samples", None)
        if n is None:
            raise AttributeError(f"{type(self).__name__} uses an index but has no `num_samples`")
        return int(n)

    def _record_objective(self, value: ObjectiveRecord) -> None:
        """Record the batch's objective estimate (see :data:`ObjectiveRecord`); nothing is computed here."""
        # plain attributes, set past nn.Module.__setattr__ (this runs on every training step)
        self.__dict__["_pending_objective"] = value
        self.__dict__["_objective_ready"] = False

    def _record_objective_from(self, fn: Callable[..., Tensor], *args: object, **kwargs: object) -> None:
        """Record ``fn(*args, **kwargs)`` (tensors detached by the caller) to be evaluated on request."""
        self._record_objective(functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ public
    def objective(self) -> Tensor:
        """Estimate of the true objective from the last batch (``objective_name`` says which).

        NaN before the first forward pass or if the last batch had no positives. Computed on
        request from what the last forward pass saved (detached), then cached.
        """
        if not getattr(self, "_objective_ready", True):
            pending = self._pending_objective
            if pending is None:
                value = torch.full((), float("nan"))
            else:
                with torch.no_grad():
                    value = pending() if callable(pending) else pending
            self._objective = value.detach().to(self._objective.device, torch.float32).reshape(())
            self.__dict__["_pending_objective"] = None
            self.__dict__["_objective_ready"] = True
        return self._objective.clone()


def _batch_tensors(batch: tuple[Tensor, Tensor, list[int], Tensor | None]) -> dict[str, Tensor | None]:
    """What the score-loss template gathers, by name (for :func:`xrisk.distributed.agree_on_batch`)."""
    return {"scores": batch[0], "targets": batch[1], "index": batch[3]}


def label_order(pos: Tensor, n_pos: int) -> tuple[Tensor, Tensor]:
    """Positions of the positives and of the negatives of one task, each in batch order.

    ``pos`` is the ``[B]`` bool column, ``n_pos`` its number of positives (a host int the caller
    already has). One stable sort replaces a boolean mask per use (each costs a ``nonzero`` and a
    host synchronisation): ``x.index_select(0, pos_idx)`` equals ``x[pos]``.
    """
    order = torch.argsort(pos.to(torch.uint8), descending=True, stable=True)
    return order[:n_pos], order[n_pos:]
