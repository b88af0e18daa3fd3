"""Two-way partial AUC (TPR >= ``min_tpr``, FPR <= ``max_fpr``): SOTA-s (nested KL-DRO)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from xrisk._validate import check_choice, check_positive, check_unit_interval
from xrisk._tensors import as_state_rows, constant, like_tensor, on_device
from xrisk.functional.pauc import kl_logits, log_ema, log_mean_exp_inner, tpauc_kl_weights, tpauc_risk
from xrisk.functional.surrogates import SURROGATES, SurrogateName
from xrisk.losses._partial_auc_base import PartialAUCLossBase
from xrisk.losses.pauc_one_way import _log_ema_column, masked_exp_logits, masked_log_ema_column
from xrisk.sharding import Placement
from xrisk.state import Cause, SampleState, column_views

__all__ = ["TwoWayPartialAUCLoss"]


class TwoWayPartialAUCLoss(PartialAUCLossBase):
    """Two-way partial-AUC loss optimised by SOTA-s: hard negatives *and* hard positives.

    With positives ``i`` (``n+``), negatives ``j`` (``n-``), ``L_ij = ell(m, f_i - f_j)``
    (``f`` = ``scores``, ``m`` = ``margin``, ``ell`` = ``surrogate``), ``tau`` the inner and
    ``tau'`` = ``tau_outer`` the outer KL-DRO temperature, SOTA-s minimises

    .. math::

        F(w) = \\tau' \\log \\frac{1}{n_+} \\sum_i
            \\Big(\\frac{1}{n_-} \\sum_j \\exp(L_{ij} / \\tau)\\Big)^{\\tau / \\tau'}

    (smaller ``tau`` concentrates on the hardest negatives, smaller ``tau'`` on the hardest
    positives: a soft version of the region FPR <= ``max_fpr``, TPR >= ``min_tpr``). Estimators:

    * ``u_i <- (1 - gamma0) u_i + gamma0 mean_j exp(L_ij / tau)`` per positive (state ``log_u``);
    * ``w <- (1 - gamma1) w + gamma1 mean_{i in batch} u_i^(tau / tau')`` per task (state ``log_w``),
      with the freshly updated ``u_i``;

    and the model descends ``mean_ij p_ij L_ij`` with detached
    ``p_ij = u_i^(tau / tau' - 1) exp(L_ij / tau) / w``. ``log u`` and ``log w`` are stored and
    every step runs in log space, so no exponential is ever formed (LibAUC overflows for
    ``L / tau`` above about 88). A never-written ``u_i`` or ``w`` takes its first new value
    (LibAUC starts ``w`` at 0, which makes its first weights ``1 / gamma1`` times too large).

    ``min_tpr`` (``alpha``) and ``max_fpr`` (``beta``) do not enter the gradient; they define
    :meth:`objective` (``objective_name = "tpauc_surrogate_risk"``): the batch estimate of the
    surrogate risk over the hardest ``1 - alpha`` share of positives against the hardest ``beta``
    share of negatives, ``CVaR_{1-alpha}`` over positives of ``CVaR_beta`` over negatives of
    ``L`` (lower is better), averaged over tasks.

    Args:
        num_samples: data-set size ``n``.
        num_tasks: number of labels ``T``.
        min_tpr: ``alpha`` in ``[0, 1)``.
        max_fpr: ``beta`` in ``(0, 1]``.
        tau: inner (negatives) temperature, ``> 0`` (LibAUC's ``Lambda``).
        tau_outer: outer (positives) temperature, ``> 0`` (LibAUC's ``tau``).
        gamma0: moving-average weight on the new value for ``u``, in ``(0, 1]``.
        gamma1: moving-average weight on the new value for ``w``, in ``(0, 1]``.
        margin: ``m`` of the surrogate (``>= 0``).
        surrogate: pairwise surrogate name (:mod:`xrisk.functional.surrogates`).
        state_placement: ``"replicated"`` (default), ``"sharded"`` or ``"sharded_local"`` (sharded, each rank's
            indices in its own shard: one collective round per step): how the per-sample state is held under
            ``torch.distributed`` (same results; see :class:`~xrisk.losses.base.ScoreLoss`, :mod:`xrisk.sharding`).

    Shapes: ``scores``, ``targets`` ``[B]`` or ``[B, T]``; ``index`` ``[B]``.

    State: ``log_u`` (:class:`~xrisk.state.SampleState` ``[n, T]``, written for positives of tasks
    that have negatives in the batch; duplicates merged as the mean of ``u``, one step), and
    ``log_w`` (a ``SampleState`` with one row, ``[1, T]``: registered buffers that checkpoint,
    follow ``.to()`` and stay float32). The mean over batch positives in the ``w`` update counts
    every row of the batch, so a duplicated positive counts as often as it was sampled. Under
    ``torch.distributed`` the loss runs on the gathered global batch: every rank applies the same
    updates. Written in training mode only (in ``eval()`` a call returns the same value from a copy of the
    update and writes nothing), all at once after every task's update was checked: a NaN/inf update
    (e.g. scores that overflow the surrogate) raises :class:`FloatingPointError` naming the cause and
    changes nothing.

    Multi-label: the mean over tasks with both positives and negatives in the batch; others
    contribute a graph-connected zero and keep their state.

    Example:
        >>> import torch
        >>> from xrisk.losses import TwoWayPartialAUCLoss
        >>> loss_fn = TwoWayPartialAUCLoss(num_samples=100, tau=0.5, tau_outer=1.0)
        >>> scores = torch.sigmoid(torch.randn(8, requires_grad=True))
        >>> targets = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> loss_fn(scores, targets, torch.arange(8)).backward()
        >>> bool(loss_fn.objective() >= 0)
        True

    Paper: Zhu, Li, Wang, Wu, Yang, "When AUC meets DRO: Optimizing Partial AUC for Deep
    Learning with Non-Convex Convergence Guarantee", ICML 2022, arXiv:2203.00176.
    """

    uses_index = True
    objective_name = "tpauc_surrogate_risk"

    def __init__(
        self,
        num_samples: int,
        *,
        num_tasks: int = 1,
        min_tpr: float = 0.5,
        max_fpr: float = 0.5,
        tau: float = 1.0,
        tau_outer: float = 1.0,
        gamma0: float = 0.9,
        gamma1: float = 0.9,
        margin: float = 1.0,
        surrogate: SurrogateName = "squared_hinge",
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__(num_tasks=num_tasks, state_placement=state_placement)
        self.num_samples = num_samples
        self.min_tpr = check_unit_interval("min_tpr", min_tpr, closed_left=True, closed_right=False)
        self.max_fpr = check_unit_interval("max_fpr", max_fpr)
        self.tau = check_positive("tau", tau)
        self.tau_outer = check_positive("tau_outer", tau_outer)
        self.gamma0 = check_unit_interval("gamma0", gamma0)
        self.gamma1 = check_unit_interval("gamma1", gamma1)
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.surrogate = check_choice("surrogate", surrogate, tuple(SURROGATES))
        self.log_u = SampleState(num_samples, (num_tasks,), placement=state_placement)
        self.log_w = SampleState(1, (num_tasks,))

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, num_tasks={self.num_tasks}, min_tpr={self.min_tpr}, "
                f"max_fpr={self.max_fpr}, tau={self.tau}, tau_outer={self.tau_outer}, gamma0={self.gamma0}, "
                f"gamma1={self.gamma1}, margin={self.margin}, surrogate={self.surrogate!r}")

    def _task_weights(self, task: int, n_pos: int, index_pos: Tensor, losses: Tensor, cause: Cause) -> Tensor:
        z = kl_logits(losses, self.tau)
        # log u is finite whenever log w (a log-sum-exp over it, staged below) is: NaN/+inf propagate and log u is never
        # -inf (a log-mean-exp of L / tau >= 0), so the commit's finiteness probe reads log w only
        log_u = _log_ema_column(self.log_u, index_pos, task, log_mean_exp_inner(losses, self.tau, scaled=z),
                                self.gamma0, self._writes, cause, self._index_unique, implied=True)
        ratio = self.tau / self.tau_outer
        # log sum_i u_i^(tau / tau') of the P batch positives: the last entry of the running log-sum-exp, one call (a
        # third of logsumexp's time on a short vector; equal up to float rounding)
        lse = torch.logcumsumexp(log_u if ratio == 1.0 else log_u * constant(ratio, log_u), 0).select(0, -1)
        log_w = self._update_w(task, lse.sub_(constant(math.log(n_pos), lse)), cause)
        return tpauc_kl_weights(losses, log_u, log_w, self.tau, self.tau_outer, scaled=z)  # tpauc_kl_surrogate's

    def _masked_task_weights(self, task: int, index: Tensor, scores: Tensor, losses: Tensor, pos: Tensor,
                             neg: Tensor, rows: Tensor, n_pos: Tensor, n_neg: Tensor, group: Tensor,
                             scratch: dict | None) -> tuple[Tensor, Tensor | None, Tensor, dict]:
        exp_z, log_new, kernel = masked_exp_logits(losses, scores, neg, n_neg, self.tau, self.margin, self.surrogate,
                                                   scratch)
        log_u = like_tensor(masked_log_ema_column(self.log_u, index, task, log_new, rows, group, self.gamma0,
                                                  self._writes), exp_z)
        ratio = self.tau / self.tau_outer
        inner = torch.where(rows, log_u if ratio == 1.0 else ratio * log_u, float("-inf"))
        log_w_new = torch.logsumexp(inner, 0) - torch.log(n_pos.clamp_min(1).to(exp_z.dtype))
        any_row = rows.any()
        log_w = like_tensor(self._update_w(task, torch.where(any_row, log_w_new, torch.zeros_like(log_w_new)), None,
                                           mask=any_row.unsqueeze(0)), exp_z)
        # p_ij = u_i^(tau / tau' - 1) exp(L_ij / tau) / w = exp_z_ij exp((tau / tau' - 1) log u_i + shift_i - log w)
        log_a = kernel["shift"] - log_w
        if ratio != 1.0:
            log_a = log_a + (ratio - 1.0) * log_u
        a = torch.where(rows, torch.exp(log_a), 0.0)
        return a, None, exp_z, kernel

    def _risk(self) -> tuple[Callable[..., Tensor], tuple[object, ...]]:
        return tpauc_risk, (self.min_tpr, self.max_fpr)

    def _update_w(self, task: int, log_new: Tensor, cause: Cause | None, mask: Tensor | None = None) -> Tensor:
        """One log-space moving-average step of ``w`` for ``task`` (staged); returns the new ``log w`` ``[1]``."""
        value, seen = column_views(self._modules["log_w"], task)  # type: ignore[arg-type]  # [1]: the only row
        new = log_ema(like_tensor(value, log_new), log_new, self.gamma1, on_device(seen, log_new.device))
        zero = self.__dict__.get("_row0")
        if zero is None or zero.device != value.device:  # the index of the only row, made once
            zero = self.__dict__["_row0"] = torch.zeros(1, dtype=torch.long, device=value.device)
        self._writes.stage_tensors(value, seen, zero, as_state_rows(new, zero), mask=mask, cause=cause)
        return new
