"""The per-task frame both partial-AUC losses share (``OneWayPartialAUCLoss``, ``TwoWayPartialAUCLoss``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from xrisk._tensors import on_device
from xrisk.functional.surrogates import (
    SHORTFALL_LOSSES, batch_shortfall, factored_pairwise_sum, pairwise_shortfall, scratch_matrix,
    shortfall_loss_and_slope, slope_ticket,
    weighted_pairwise_mean_of,
)
from xrisk.losses.ap import _mean_of
from xrisk.losses.base import ScoreLoss, overflow_cause
from xrisk.state import Cause, duplicate_groups

__all__ = ["PartialAUCLossBase"]


class PartialAUCLossBase(ScoreLoss):
    """For every task with positives and negatives in the batch: split the scores by label, compute
    the detached pairwise losses ``L [P, N]`` of positives against negatives, let the subclass update
    its state and return the estimator's weights (:meth:`_task_weights`), and take the weighted
    pairwise mean (:func:`~xrisk.functional.surrogates.weighted_pairwise_mean`). The loss is the mean
    over those tasks (a graph-connected zero if there is none); the objective estimate is
    :meth:`_risk` of each task's ``L``, averaged over them. Not public.

    Subclasses set ``margin`` and ``surrogate`` and implement :meth:`_task_weights` and :meth:`_risk`.
    """

    margin: float
    surrogate: str
    state_rows = "positives"  # the step reads and writes the state of positives only
    _checks_value: bool = False  #: the staged state can be finite while the value is not (CVaR): check the value too

    def _task_weights(self, task: int, n_pos: int, index_pos: Tensor, losses: Tensor, cause: Cause) -> Tensor:
        """Stage the state update of ``task`` from ``losses [P, N]`` (``index_pos [P]``: dataset indices of the
        positives) in ``self._writes`` and return the detached weights ``[P, N]`` of the stochastic estimator
        (``cause``: the message if the staged values are not finite)."""
        raise TypeError(f"{type(self).__name__} must override _task_weights")

    def _masked_task_weights(self, task: int, index: Tensor, scores: Tensor, losses: Tensor, pos: Tensor,
                             neg: Tensor, rows: Tensor, n_pos: Tensor, n_neg: Tensor, group: Tensor,
                             scratch: dict | None) -> tuple[Tensor, Tensor | None, Tensor, dict]:
        """:meth:`_task_weights` over the whole batch (no host read, no ``[B, B]`` mask): ``losses [B, B]`` the
        pairwise losses of every row against every column (in ``scratch``, which the hook may overwrite), ``scores
        [B]`` detached, ``pos``/``neg`` ``[B]`` 0/1 in the losses' dtype, ``rows [B]`` bool the rows whose state is
        updated (the positives, when the task has negatives), ``n_pos``/``n_neg`` device counts, ``group`` the
        :func:`~xrisk.state.duplicate_groups` of ``index``. Stages the masked update and returns the weights
        ``W = diag(a) K diag(b)`` as ``(a [B], b [B] or None for ones, K [B, B], kernel)``: ``K`` the matrix (the
        caller may overwrite it) and ``kernel`` the keyword arguments of
        :func:`~xrisk.functional.surrogates.pair_kernel` that rebuild it (``threshold``, ``shift``, ``cols_mask``,
        ``inv_tau``); ``a`` is zero outside the positives (and ``K`` zero on the columns outside the negatives when
        ``b`` is None)."""
        raise TypeError(f"{type(self).__name__} has no device path (_masked_task_weights)")

    def _risk(self) -> tuple[Callable[..., Tensor], tuple[object, ...]]:
        """``(fn, args)``: the objective estimate of one task is ``fn(L, *args)``."""
        raise TypeError(f"{type(self).__name__} must override _risk")

    def _masked_loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: Tensor) -> Tensor:
        """:meth:`_loss` over the whole batch: the pairwise losses ``L [B, B]`` of every row against every column, the
        pairs that count selected by row and column factors of the weights (never a ``[B, B]`` mask), the weighted
        sum and its gradient by :func:`~xrisk.functional.surrogates.factored_pairwise_sum`; no host read."""
        assert index is not None
        size = scores.shape[0]
        group = duplicate_groups(index)
        scratch = self._scratch()
        terms: list[Tensor] = []
        detached: list[tuple[Tensor, Tensor]] = []
        valid: list[Tensor] = []
        for t in range(self.num_tasks):
            pos = targets.select(1, t)
            col = self._score_column(scores, t)
            col_d = col.detach()
            losses, slope = shortfall_loss_and_slope(batch_shortfall(col_d, self.margin, scratch=scratch),
                                                        self.surrogate, scratch=scratch)
            n_pos = pos_counts[t]
            n_neg = size - n_pos
            ok = (n_pos > 0) & (n_neg > 0)
            pos_f = pos.to(losses.dtype)
            a, b, matrix, kernel = self._masked_task_weights(
                t, on_device(index, losses.device), col_d.to(losses.dtype), losses, pos_f, 1.0 - pos_f, pos & ok,
                n_pos, n_neg, group, scratch)
            # K o S for the backward (kept in the scratch matrix "g" while no later step overwrites it), then K o L
            ticket = slope_ticket(scratch, torch.mul(matrix, slope, out=scratch_matrix(scratch, "g", matrix)))
            kernel_losses = matrix.mul_(losses)
            loss_cols = kernel_losses.sum(1) if b is None else torch.mv(kernel_losses, b)
            scale = (n_pos * n_neg).clamp_min(1).to(a.dtype)  # the mean over the [P, N] pairs
            term = factored_pairwise_sum(col, (a / scale).unsqueeze(0), None if b is None else b.unsqueeze(0),
                                         loss_cols.unsqueeze(0), margin=self.margin, surrogate=self.surrogate,
                                         scratch=scratch, ticket=ticket, **kernel)
            if self._checks_value:
                self._writes.check(term, None)  # type: ignore[arg-type]
            terms.append(term)
            detached.append((col_d, pos))
            valid.append(ok)
        v = torch.stack(valid)
        fn, args = self._risk()
        self._record_objective_from(_masked_risk, fn, detached, v, self.margin, self.surrogate, *args)
        return torch.stack(terms).sum() / v.sum().clamp_min(1)

    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: list[int]) -> Tensor:
        assert index is not None  # uses_index: the base class enforces it
        size = scores.shape[0]
        terms: list[Tensor] = []
        detached: list[Tensor] = []
        for t, n_pos in enumerate(pos_counts):
            if not 0 < n_pos < size:  # needs both positives and negatives
                continue
            col = self._score_column(scores, t)
            pos_idx, neg_idx = self._label_positions(targets, t, n_pos)
            assert neg_idx is not None
            col_d = self._detached_column(scores, t)
            idx = index.index_select(0, on_device(pos_idx, index.device))  # = index[pos]
            # L = pairwise_surrogate(col[pos], col[~pos]) as a function of the shortfall R (kept for the backward)
            shortfall = pairwise_shortfall(col_d.index_select(0, pos_idx), col_d.index_select(0, neg_idx),
                                           margin=self.margin)
            losses, slope = shortfall_loss_and_slope(shortfall, self.surrogate)  # the backward reuses the slope
            cause = overflow_cause(self.surrogate, self.margin, col, t, losses, getattr(self, "tau", None))
            weights = self._task_weights(t, n_pos, idx, losses, cause)
            term = weighted_pairwise_mean_of(col, pos_idx, neg_idx, weights, losses=losses, slope=slope,
                                             surrogate=self.surrogate)
            if self._checks_value:  # the state stays finite whatever the losses: the value must be checked
                self._writes.check(term, cause)
            terms.append(term)
            detached.append(losses)
        if not terms:
            self._record_objective(None)
            return scores.sum() * 0.0
        fn, args = self._risk()
        self._record_objective_from(_mean_of, fn, detached, *args)
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


def _masked_risk(fn: Callable[..., Tensor], per_task: list[tuple[Tensor, Tensor]], valid: Tensor, margin: float,
                 surrogate: str, *args: object) -> Tensor:
    """The objective estimate of a whole-batch step from each task's detached scores and labels: ``fn(L, *args)`` of
    the ``[P, N]`` pairwise losses of each valid task, averaged (NaN when no task is valid). Evaluated on request,
    outside the step (it reads the masks on the host)."""
    values = [fn(SHORTFALL_LOSSES[surrogate](pairwise_shortfall(scores[pos], scores[~pos], margin=margin)), *args)
              for (scores, pos), ok in zip(per_task, valid.tolist()) if ok]
    if not values:
        return torch.full((), float("nan"))
    return torch.stack(values).mean()
