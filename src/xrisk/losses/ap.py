"""SOAP: stochastic optimisation of average precision (``APLoss``)."""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from xrisk._validate import check_choice, check_positive, check_unit_interval
from xrisk.functional.ap import _TINY, ap_inner_estimates, ap_ratio, ap_weights
from xrisk.functional.surrogates import (
    SURROGATES, SurrogateName, batch_shortfall, factored_pairwise_sum, shortfall_loss_and_slope, slope_ticket,
    weighted_pairwise_mean_of,
)
from xrisk.losses.base import ScoreLoss, overflow_cause
from xrisk._tensors import as_state_rows, like_tensor, on_device
from xrisk.sharding import Placement
from xrisk.state import (
    Cause, PendingWrites, SampleState, column_views, duplicate_groups, flat_column, masked_update_columns, update_states,
)

__all__ = ["APLoss"]


class APLoss(ScoreLoss):
    """Average-precision loss optimised by SOAP (one estimator per task).

    For a task with positives ``S+`` (``n+`` of them) and all samples ``S`` (``n``), SOAP
    maximises the smoothed average precision

    .. math::

        \\mathrm{AP}_\\ell = \\frac{1}{n_+} \\sum_{i \\in S_+}
            \\frac{\\sum_{j \\in S} L_{ij}\\, 1[y_j = 1]}{\\sum_{j \\in S} L_{ij}}, \\qquad
        L_{ij} = \\ell(m, f_i - f_j),

    where ``f`` are the ``scores``, ``m`` is ``margin`` and ``ell`` the ``surrogate`` (a smooth
    stand-in for ``1[f_j >= f_i]``). For every positive ``i`` of the batch it refreshes

    ``u_all[i] <- (1 - gamma) u_all[i] + gamma mean_j L_ij`` and
    ``u_pos[i] <- (1 - gamma) u_pos[i] + gamma mean_j L_ij 1[y_j = 1]``

    (``j`` runs over the whole batch, ``i`` itself included; ``gamma`` weighs the new value),
    and returns ``mean_ij W_ij L_ij`` with the detached weights
    ``W_ij = (u_pos[i] - u_all[i] 1[y_j = 1]) / u_all[i]^2``: its gradient is SOAP's estimator
    of the gradient of ``-AP_ell``. The returned value is a surrogate (it can be negative).

    :meth:`objective` (``objective_name = "smoothed_ap"``) is the smoothed-AP estimate
    ``mean_i u_pos[i] / u_all[i]`` over the batch positives after the update, averaged over the
    tasks that had positives (higher is better, in ``[0, 1]``).

    Args:
        num_samples: data-set size ``n`` (``index`` runs over ``[0, n)``).
        num_tasks: number of labels ``T``; ``scores``/``targets`` are ``[B]`` or ``[B, T]``.
        gamma: moving-average weight on the new value, in ``(0, 1]``.
        margin: ``m`` of the surrogate (``>= 0``).
        surrogate: pairwise surrogate name (:mod:`xrisk.functional.surrogates`).
        state_placement: ``"replicated"`` (default), ``"sharded"`` or ``"sharded_local"`` (sharded, each rank's
            indices in its own shard: one collective round per step): how the per-sample state is held under
            ``torch.distributed`` (same results; see :class:`~xrisk.losses.base.ScoreLoss`, :mod:`xrisk.sharding`).

    Shapes: ``scores``, ``targets`` ``[B]`` or ``[B, T]``; ``index`` ``[B]`` (the dataset index of
    every sample; only the positives' entries are used).

    State: ``u_all``, ``u_pos`` are :class:`~xrisk.state.SampleState` ``[n, T]``; entry
    ``(i, t)`` is written only when sample ``i`` is a positive of task ``t`` in the batch.
    Duplicated indices follow SampleState's rule (their new values are averaged, one moving-average
    step) and every occurrence uses the merged value in ``W``. Under ``torch.distributed`` the
    loss is computed on the gathered global batch, so every rank applies the same update.
    Written in training mode only (in ``eval()`` a call returns the same value from a copy of the
    update and writes nothing), all at once after every task's update was checked: a NaN/inf update
    (e.g. scores that overflow the surrogate) raises :class:`FloatingPointError` naming the cause and
    changes nothing.

    Multi-label: the loss is the mean over tasks with at least one positive in the batch
    (negatives are not required); other tasks contribute a graph-connected zero.

    Example:
        >>> import torch
        >>> from xrisk.losses import APLoss
        >>> loss_fn = APLoss(num_samples=100)
        >>> scores = torch.sigmoid(torch.randn(8, requires_grad=True))
        >>> targets = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> loss = loss_fn(scores, targets, torch.arange(8))
        >>> loss.backward()
        >>> bool(0.0 <= loss_fn.objective() <= 1.0)
        True

    Paper: Qi, Luo, Xu, Ji, Yang, "Stochastic Optimization of Areas Under Precision-Recall Curves
    with Provable Convergence", NeurIPS 2021, arXiv:2104.08736.
    """

    uses_index = True
    objective_name = "smoothed_ap"
    state_rows = "positives"  # the step reads and writes the state of positives only

    def __init__(
        self,
        num_samples: int,
        *,
        num_tasks: int = 1,
        gamma: float = 0.9,
        margin: float = 1.0,
        surrogate: SurrogateName = "squared_hinge",
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__(num_tasks=num_tasks, state_placement=state_placement)
        self.num_samples = num_samples
        self.gamma = check_unit_interval("gamma", gamma)
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.surrogate = check_choice("surrogate", surrogate, tuple(SURROGATES))
        self.u_all = SampleState(num_samples, (num_tasks,), placement=state_placement)
        self.u_pos = SampleState(num_samples, (num_tasks,), placement=state_placement)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, num_tasks={self.num_tasks}, gamma={self.gamma}, "
                f"margin={self.margin}, surrogate={self.surrogate!r}")

    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: list[int]) -> Tensor:
        assert index is not None  # uses_index: the base class enforces it
        terms: list[Tensor] = []
        estimates: list[tuple[Tensor, Tensor]] = []
        for t, n_pos in enumerate(pos_counts):
            if not n_pos:
                continue
            pos = targets.select(1, t)
            col = self._score_column(scores, t)
            pos_idx, _ = self._label_positions(targets, t, n_pos, negatives=False)
            col_d = self._detached_column(scores, t)
            losses, g_all, g_pos, shortfall = ap_inner_estimates(
                col_d.index_select(0, pos_idx), col_d, pos, margin=self.margin, surrogate=self.surrogate,
                with_shortfall=True,
            )
            u_all, u_pos = self._update(index.index_select(0, on_device(pos_idx, index.device)), t, g_all, g_pos,
                                        overflow_cause(self.surrogate, self.margin, col, t))
            # = ap_surrogate(L, pos, u_all, u_pos) with L carrying the graph; closed-form backward
            weights = ap_weights(pos, u_all, u_pos, losses.dtype)
            terms.append(weighted_pairwise_mean_of(col, pos_idx, None, weights, losses=losses, shortfall=shortfall,
                                                   surrogate=self.surrogate))
            estimates.append((u_all, u_pos))
        self._record_objective_from(_mean_ratio, estimates)
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()

    def _masked_loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: Tensor) -> Tensor:
        """:meth:`_loss` over the whole batch as anchors (``L [B, B]``, every row against every column), the rows of
        the negatives masked out of the state update and, as zero row factors, out of the weights, which are never
        formed: ``W = u_0 1^T + u_1 y^T`` (:func:`~xrisk.functional.surrogates.factored_pairwise_sum`, matrix-vector
        products only); no host read."""
        assert index is not None
        size = scores.shape[0]
        group = duplicate_groups(index)
        scratch = self._scratch()
        step = functools.partial(_moving_average_step, self.gamma)
        terms: list[Tensor] = []
        estimates: list[tuple[Tensor, Tensor, Tensor]] = []
        for t in range(self.num_tasks):
            pos = targets.select(1, t)
            col = self._score_column(scores, t)
            losses, slope = shortfall_loss_and_slope(batch_shortfall(col, self.margin, scratch=scratch, name="g"),
                                                        self.surrogate, scratch=scratch)
            y = pos.to(losses.dtype)
            sums = torch.stack((losses.sum(1), torch.mv(losses, y)))  # size * (g_all, g_pos)
            va, sa, i = flat_column(self.u_all, t, index)  # type: ignore[arg-type]
            vp, sp, _ = flat_column(self.u_pos, t, index)  # type: ignore[arg-type]
            (new_all, new_pos), _ = masked_update_columns(((va, sa), (vp, sp)), i, as_state_rows(sums.t() / size, i),
                                                          pos, group, step, writes=self._writes)
            u_all, u_pos = like_tensor(new_all, losses), like_tensor(new_pos, losses)
            # W_ij = (u_pos_i - u_all_i y_j) / u_all_i^2 on the positives' rows, / (P B): the mean over [P, B]
            ua = u_all.clamp_min(_TINY)
            c = y / (pos_counts[t].clamp_min(1).to(losses.dtype) * size)
            rows = torch.stack((c * u_pos / (ua * ua), -c / ua))
            cols = torch.stack((torch.ones_like(y), y))
            terms.append(factored_pairwise_sum(col, rows, cols, sums, margin=self.margin, surrogate=self.surrogate,
                                               scratch=scratch, ticket=slope_ticket(scratch, slope)))
            estimates.append((u_all, u_pos, pos))
        self._record_objective_from(_masked_mean_ratio, estimates)
        valid = (pos_counts > 0).sum()
        return torch.stack(terms).sum() / valid.clamp_min(1)

    def _update(self, idx: Tensor, task: int, g_all: Tensor, g_pos: Tensor, cause: Cause) -> tuple[Tensor, Tensor]:
        """Stage the moving-average step of both estimators at the positives ``idx`` of ``task``; return the
        updated values ``[P]`` (in ``g_all``'s dtype and device)."""
        u_all, u_pos = self._modules["u_all"], self._modules["u_pos"]  # read once (nn.Module attribute reads are slow)
        if not self._index_unique:  # duplicates (or a gathered batch): merged by SampleState's rule
            return update_columns((u_all, u_pos), idx, task, (g_all, g_pos), self.gamma,  # type: ignore[arg-type]
                                  writes=self._writes, cause=cause)
        # every index once: SampleState's moving average written out (bit-identical), the seen flags read once
        # (both estimators are always written together, so their flags agree)
        va, sa = column_views(u_all, task)  # type: ignore[arg-type]
        vp, sp = column_views(u_pos, task)  # type: ignore[arg-type]
        i = on_device(idx, va.device)
        weight = torch.where(sa.index_select(0, i), *_gamma_or_one(self.gamma, va.device))  # first visit: the new value
        new_all = torch.lerp(va.index_select(0, i), as_state_rows(g_all, i), weight)
        new_pos = torch.lerp(vp.index_select(0, i), as_state_rows(g_pos, i), weight)
        self._writes.stage_tensors(va, sa, i, new_all, cause=cause)
        self._writes.stage_tensors(vp, sp, i, new_pos, cause=cause)
        return like_tensor(new_all, g_all), like_tensor(new_pos, g_pos)


def _gamma_or_one(gamma: float, device: torch.device, _cache: dict = {}) -> tuple[Tensor, Tensor]:
    """0-dim float32 ``gamma`` and ``1`` on ``device`` (made once; ``torch.where`` with tensors is the faster call)."""
    key = (gamma, device)
    out = _cache.get(key)
    if out is None:
        out = _cache[key] = (torch.tensor(gamma, device=device), torch.tensor(1.0, device=device))
    return out


def _moving_average_step(gamma: float, old: Tensor, new: Tensor, seen: Tensor) -> Tensor:
    """SampleState's moving average of one row: ``lerp(old, new, gamma)`` where seen, ``new`` on a first visit."""
    return torch.where(seen, torch.lerp(old, new, gamma), new)


def _masked_mean_ratio(estimates: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """:func:`_mean_ratio` from whole-batch rows ``(u_all, u_pos, pos)``: the mean over each task's positives, then
    over the tasks that have one (NaN when none has)."""
    ratios, valid = [], []
    for u_all, u_pos, pos in estimates:
        n_pos = pos.sum()
        ratio = torch.where(pos, u_pos / u_all.clamp_min(1e-12), 0.0).sum() / n_pos.clamp_min(1)
        ratios.append(ratio)
        valid.append(n_pos > 0)
    v = torch.stack(valid)
    return torch.where(v, torch.stack(ratios), 0.0).sum() / v.sum()


def _mean_ratio(estimates: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Mean over tasks of :func:`~xrisk.functional.ap.ap_ratio` (the smoothed-AP estimate)."""
    return torch.stack([ap_ratio(u_all, u_pos) for u_all, u_pos in estimates]).mean()


def _mean_of(fn: Callable[..., Tensor], per_task: list[Tensor], *args: object) -> Tensor:
    """Mean over tasks of ``fn(x, *args)`` for ``x`` in ``per_task`` (lazy objective recipes)."""
    if len(per_task) == 1:
        return fn(per_task[0], *args)
    return torch.stack([fn(x, *args) for x in per_task]).mean()


def update_columns(
    states: tuple[SampleState, ...], idx: Tensor, task: int, news: tuple[Tensor, ...], gamma: float, *,
    assume_unique: bool = False, writes: PendingWrites | None = None, cause: Cause | None = None,
) -> list[Tensor]:
    """Moving-average update of column ``task`` of each state at rows ``idx`` (validated dataset
    indices), all in one :func:`~xrisk.state.update_states` pass; returns the merged values ``[P]``.
    With ``writes`` the new entries are staged there (see :class:`~xrisk.state.PendingWrites`)."""
    return update_states(states, idx, news, gamma, index_checked=True, assume_unique=assume_unique, column=task,
                         writes=writes, cause=cause)


def _update_column(state: SampleState, idx: Tensor, task: int, new: Tensor, gamma: float, *,
                   assume_unique: bool = False, writes: PendingWrites | None = None,
                   cause: Cause | None = None) -> Tensor:
    """Moving-average update of column ``task`` of ``state`` at rows ``idx``; returns the merged values ``[P]``."""
    return update_columns((state,), idx, task, (new,), gamma, assume_unique=assume_unique, writes=writes,
                          cause=cause)[0]
