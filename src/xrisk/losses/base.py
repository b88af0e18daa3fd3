"""The template every score-based xrisk loss follows.

``loss(scores, targets, index)``:

1. **validate** shapes, dtypes, finiteness and the dataset index (clear errors, never NaN);
2. **gather** the global batch under ``torch.distributed`` (scores with the ``"sum"``
   gradient policy, targets and indices without gradient; see :mod:`xrisk.distributed`),
   so every rank computes the same global-batch loss and applies the same state update;
3. return a **graph-connected zero** and leave state untouched when the batch has no
   positive in any task;
4. call the subclass hook :meth:`ScoreLoss._loss`, which computes the surrogate, updates
   state and records the objective estimate with :meth:`ScoreLoss._record_objective`.

The returned value is a *surrogate*: its gradient is the method's stochastic gradient
estimator, but its value is not the objective (it can be negative). The current estimate
of the true objective is :meth:`ScoreLoss.objective`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk._validate import check_binary_inputs
from xrisk.state import check_index

__all__ = ["ScoreLoss"]


class ScoreLoss(nn.Module):
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
        s, y = check_binary_inputs(scores, targets, self.num_tasks)
        idx: Tensor | None = None
        if self.uses_index:
            if index is None:
                raise ValueError(f"{type(self).__name__} keeps per-sample state and needs `index` (dataset indices)")
            idx = check_index(index, self._num_samples(), batch_size=s.shape[0])
        if self.gather and xdist.is_distributed():
            s = xdist.all_gather(s, grad="sum")
            y = xdist.all_gather_no_grad(y)
            if idx is not None:
                idx = xdist.all_gather_no_grad(idx.to(s.device))
        if not bool(y.any()):
            return s.sum() * 0.0
        return self._loss(s, y, idx)

    # ------------------------------------------------------------------ hooks for subclasses
    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None) -> Tensor:
        """Compute the surrogate on the (global) batch ``scores [B, T]``, ``targets [B, T]`` (bool)."""
        raise NotImplementedError  # abstractmethod-like hook; every registered loss overrides it

    def _num_samples(self) -> int:
        n = getattr(self, "num_samples", None)
        if n is None:
            raise AttributeError(f"{type(self).__name__} uses an index but has no `num_samples`")
        return int(n)

    def _record_objective(self, value: Tensor) -> None:
        self._objective = value.detach().to(self._objective.device, torch.float32).reshape(())

    # ------------------------------------------------------------------ public
    def objective(self) -> Tensor:
        """Estimate of the true objective from the last batch (``objective_name`` says which).

        NaN before the first forward pass or if the last batch had no positives.
        """
        return self._objective.clone()
