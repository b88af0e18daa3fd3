"""One-way partial AUC (FPR in ``[0, max_fpr]``): SOPA (exact CVaR) and SOPA-s (KL-DRO)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from xrisk._validate import check_choice, check_positive, check_unit_interval
from xrisk.functional.pauc import (
    cvar_step,
    kl_logits,
    log_ema,
    log_mean_exp_by_index,
    log_mean_exp_inner,
    pauc_kl_weights,
    pauc_risk,
)
from xrisk.functional.surrogates import SHORTFALL_LOSSES, SURROGATES, SurrogateName, pair_kernel
from xrisk.losses._partial_auc_base import PartialAUCLossBase
from xrisk.losses.ap import _update_column
from xrisk._tensors import as_state_rows, constant, like_tensor, on_device
from xrisk.sharding import Placement
from xrisk.state import Cause, PendingWrites, SampleState, column_views, flat_column, masked_update_rows

__all__ = ["OneWayPartialAUCLoss"]


class OneWayPartialAUCLoss(PartialAUCLossBase):
    """One-way partial-AUC loss: the hardest ``max_fpr`` share of negatives of every positive.

    With positives ``i`` (``n+``), negatives ``j`` (``n-``) and ``L_ij = ell(m, f_i - f_j)``
    (``f`` = ``scores``, ``m`` = ``margin``, ``ell`` = ``surrogate``), the pAUC over FPR in
    ``[0, beta]`` (``beta`` = ``max_fpr``) is maximised by minimising, per positive, a
    distributionally robust average of its pairwise losses:

    ``method="cvar"`` (SOPA, exact): the CVaR form of the hardest ``beta`` share of negatives,

    .. math::

        \\min_{w,\\, s}\\; F(w, s) = \\frac{1}{n_+} \\sum_{i=1}^{n_+} \\Big[ s_i
            + \\frac{1}{\\beta\\, n_-} \\sum_{j=1}^{n_-} \\big(L_{ij}(w) - s_i\\big)_+ \\Big],
        \\qquad L_{ij}(w) = \\ell\\big(m, f_w(x_i) - f_w(x_j)\\big),

    whose minimum over the thresholds ``s`` is the mean over positives of the average ``L_ij``
    over the top ``beta`` share of negatives. The model descends
    ``mean_ij 1[L_ij > s_i] L_ij / beta`` (indicator detached). The thresholds ``s_i`` (state
    ``threshold``, initialised at 0) take their own SGD step on every visit, computed at the
    thresholds used for the loss (``N`` = batch negatives, ``eta`` = ``eta``):

    .. math::

        s_i \\leftarrow s_i - \\eta \\Big(1 - \\frac{\\#\\{j \\in \\text{batch negatives}:
            L_{ij} > s_i\\}}{\\beta N}\\Big).

    This is the per-positive subgradient, so ``eta`` here is the paper's step size for ``s``
    multiplied by ``n+`` (the ``1/n+`` of ``dF/ds_i`` is folded in). Differences from LibAUC's
    ``pAUC_CVaR_Loss``: its step is taken inside the loss with the loss's ``eta`` (the ``eta``
    given to its ``SOPA`` optimiser is never used), and the ``1/n+`` scaling is
    release-dependent (absent in 2.0.1 per our reference study, ``eta / pos_len`` in later
    sources); here the rule above is the only one.

    ``method="kl"`` (SOPA-s, smooth): the KL-DRO form (``tau`` = LibAUC's ``Lambda``; smaller
    ``tau`` focuses on harder negatives, like a smaller ``beta``), with the per-positive
    estimator ``u_i`` (``gamma`` = ``gamma``, the weight on the new value),

    .. math::

        \\begin{aligned}
        &\\min_w\\; F(w) = \\frac{1}{n_+} \\sum_{i=1}^{n_+} \\tau \\log\\Big( \\frac{1}{n_-}
            \\sum_{j=1}^{n_-} \\exp\\big(L_{ij}(w) / \\tau\\big) \\Big), \\\\
        &u_i \\leftarrow (1 - \\gamma)\\, u_i + \\gamma\\, \\frac{1}{N}
            \\sum_{j \\in \\text{batch negatives}} \\exp(L_{ij} / \\tau),
        \\end{aligned}

    and the model descends ``mean_ij p_ij L_ij`` with ``p_ij = exp(L_ij / tau) / u_i``
    detached. ``log u_i`` is stored and every step runs in log space, so ``L / tau`` of any size
    stays finite (LibAUC overflows). ``max_fpr`` does not enter the gradient here; it sets the
    objective.

    :meth:`objective` (``objective_name = "pauc_surrogate_risk"``, both methods): the batch
    estimate ``mean_i CVaR_beta(L_i.)``, the mean surrogate loss of each positive against its
    hardest ``beta`` share of batch negatives (lower is better), averaged over tasks.

    Args:
        num_samples: data-set size ``n``.
        num_tasks: number of labels ``T``.
        method: ``"cvar"`` (SOPA) or ``"kl"`` (SOPA-s).
        max_fpr: ``beta`` in ``(0, 1]``.
        margin: ``m`` of the surrogate (``>= 0``).
        surrogate: pairwise surrogate name (:mod:`xrisk.functional.surrogates`).
        eta: step size of the CVaR thresholds (``method="cvar"``), ``> 0``.
        tau: KL temperature (``method="kl"``), ``> 0``.
        gamma: moving-average weight on the new value (``method="kl"``), in ``(0, 1]``.
        state_placement: ``"replicated"`` (default), ``"sharded"`` or ``"sharded_local"`` (sharded, each rank's
            indices in its own shard: one collective round per step): how the per-sample state is held under
            ``torch.distributed`` (same results; see :class:`~xrisk.losses.base.ScoreLoss`, :mod:`xrisk.sharding`).

    Shapes: ``scores``, ``targets`` ``[B]`` or ``[B, T]``; ``index`` ``[B]``.

    State: ``threshold`` (cvar) or ``log_u`` (kl), a :class:`~xrisk.state.SampleState`
    ``[n, T]``; entry ``(i, t)`` is written only when ``i`` is a positive of task ``t`` and the
    batch has negatives for ``t``. Duplicated positives: their new values are averaged and one
    step is applied (the mean of their threshold steps; for ``log_u`` the mean is taken of
    ``u``, not of ``log u``), and every occurrence then uses the merged estimate. Under
    ``torch.distributed`` the loss runs on the gathered global batch: every rank applies the
    same update. Written in training mode only (in ``eval()`` a call returns the same value from a copy of the
    update and writes nothing), all at once after every task's update was checked: a NaN/inf update
    (e.g. scores that overflow the surrogate) raises :class:`FloatingPointError` naming the cause and
    changes nothing.

    Multi-label: the mean over tasks with both positives and negatives in the batch; others
    contribute a graph-connected zero and keep their state.

    Example:
        >>> import torch
        >>> from xrisk.losses import OneWayPartialAUCLoss
        >>> loss_fn = OneWayPartialAUCLoss(num_samples=100, method="kl", tau=0.5)
        >>> scores = torch.sigmoid(torch.randn(8, requires_grad=True))
        >>> targets = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> loss_fn(scores, targets, torch.arange(8)).backward()
        >>> bool(loss_fn.objective() >= 0)
        True

    Paper: Zhu, Li, Wang, Wu, Yang, "When AUC meets DRO: Optimizing Partial AUC for Deep
    Learning with Non-Convex Convergence Guarantee", ICML 2022, arXiv:2203.00176.
    """

    uses_index = True
    objective_name = "pauc_surrogate_risk"

    def __init__(
        self,
        num_samples: int,
        *,
        num_tasks: int = 1,
        method: Literal["cvar", "kl"] = "cvar",
        max_fpr: float = 0.3,
        margin: float = 1.0,
        surrogate: SurrogateName = "squared_hinge",
        eta: float = 0.1,
        tau: float = 1.0,
        gamma: float = 0.9,
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__(num_tasks=num_tasks, state_placement=state_placement)
        self.num_samples = num_samples
        self.method = check_choice("method", method, ("cvar", "kl"))
        self.max_fpr = check_unit_interval("max_fpr", max_fpr)
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.surrogate = check_choice("surrogate", surrogate, tuple(SURROGATES))
        self.eta = check_positive("eta", eta)
        self.tau = check_positive("tau", tau)
        self.gamma = check_unit_interval("gamma", gamma)
        self._checks_value = self.method == "cvar"  # the thresholds stay finite whatever the losses
        if self.method == "cvar":
            self.threshold = SampleState(num_samples, (num_tasks,), placement=state_placement)
        else:
            self.log_u = SampleState(num_samples, (num_tasks,), placement=state_placement)

    def extra_repr(self) -> str:
        knobs = f"eta={self.eta}" if self.method == "cvar" else f"tau={self.tau}, gamma={self.gamma}"
        return (f"num_samples={self.num_samples}, num_tasks={self.num_tasks}, method={self.method!r}, "
                f"max_fpr={self.max_fpr}, margin={self.margin}, surrogate={self.surrogate!r}, {knobs}")

    def _task_weights(self, task: int, n_pos: int, index_pos: Tensor, losses: Tensor, cause: Cause) -> Tensor:
        writes, unique = self._writes, self._index_unique
        if self.method == "cvar":
            state = self._modules["threshold"]
            value, seen = column_views(state, task)  # type: ignore[arg-type]
            i = on_device(index_pos, value.device)
            s = like_tensor(value.index_select(0, i), losses)  # = threshold[index_pos, task]
            step, weights = cvar_step(losses, s, self.max_fpr)  # pauc_cvar_surrogate's weights
            new = s - step.mul_(constant(self.eta, step))  # = s - eta * step (step is a new tensor)
            if unique:  # one threshold per row: overwrite
                writes.stage_tensors(value, seen, i, as_state_rows(new, i), cause=cause)
            else:  # duplicates: the mean of their steps
                _update_column(state, index_pos, task, new, 1.0, writes=writes, cause=cause)  # type: ignore[arg-type]
            return weights
        z = kl_logits(losses, self.tau)
        log_u = _log_ema_column(self.log_u, index_pos, task, log_mean_exp_inner(losses, self.tau, scaled=z),
                                self.gamma, writes, cause, unique)
        return pauc_kl_weights(losses, log_u, self.tau, scaled=z)  # pauc_kl_surrogate's weights

    def _masked_task_weights(self, task: int, index: Tensor, scores: Tensor, losses: Tensor, pos: Tensor,
                             neg: Tensor, rows: Tensor, n_pos: Tensor, n_neg: Tensor, group: Tensor,
                             scratch: dict | None) -> tuple[Tensor, Tensor | None, Tensor, dict]:
        if self.method == "cvar":
            value, seen, i = flat_column(self._modules["threshold"], task, index)  # type: ignore[arg-type]
            s = like_tensor(value.index_select(0, i), losses)  # [B]
            above = pair_kernel(losses, s, None, None, 1.0, scratch=scratch)  # [B, B] 0/1: L_ij > s_i
            count = torch.mv(above, neg)  # over the negative columns
            grad = 1.0 - count / (self.max_fpr * n_neg.clamp_min(1).to(losses.dtype))
            new = as_state_rows(s - self.eta * grad, i)
            masked_update_rows(value, seen, i, new, rows, group, _overwrite, writes=self._writes)
            return pos / self.max_fpr, neg, above, {"threshold": s}
        exp_z, log_new, kernel = masked_exp_logits(losses, scores, neg, n_neg, self.tau, self.margin, self.surrogate,
                                                   scratch)
        log_u = like_tensor(masked_log_ema_column(self.log_u, index, task, log_new, rows, group, self.gamma,
                                                  self._writes), exp_z)
        # p_ij = exp(L_ij / tau - log u_i) = exp_z_ij exp(shift_i - log u_i)
        a = torch.where(rows, torch.exp(kernel["shift"] - log_u), 0.0)
        return a, None, exp_z, kernel

    def _risk(self) -> tuple[Callable[..., Tensor], tuple[object, ...]]:
        return pauc_risk, (self.max_fpr,)


def _overwrite(old: Tensor, merged: Tensor, seen: Tensor) -> Tensor:
    """The state step of a threshold: the merged new value replaces the old one."""
    return merged


def masked_exp_logits(losses: Tensor, scores: Tensor, cols: Tensor, count: Tensor, tau: float, margin: float,
                      surrogate: str, scratch: dict | None) -> tuple[Tensor, Tensor, dict]:
    """The overflow-free exponentials of the KL-DRO estimators over a whole batch: ``(E [B, B], log_mean [B],
    kernel)`` with ``E_ij = exp(L_ij / tau - shift_i)`` on the columns ``cols`` (``[B]`` 0/1, ``count`` of them; the
    exponent floored at ``-EXP_FLOOR``, see :func:`~xrisk.functional.surrogates.pair_kernel`) and exactly 0 elsewhere, ``shift_i = max_{j in cols} L_ij / tau`` (0 without columns), ``log_mean_i = log mean_{j in
    cols} exp(L_ij / tau)``, and ``kernel`` the :func:`~xrisk.functional.surrogates.pair_kernel` arguments of ``E``.
    ``losses`` are ``ell(margin - (f_i - f_j))`` of ``scores [B]`` (same dtype); every surrogate is convex in the
    shortfall, so the row maximum over ``cols`` is at the largest or smallest score of ``cols`` and ``shift`` costs
    ``O(B)``. One ``exp`` over the matrix (in the scratch matrix ``"k"``), no mask matrix."""
    has = cols > 0
    far = torch.finfo(scores.dtype).max
    base = torch.rsub(scores, margin)
    loss = SHORTFALL_LOSSES[surrogate]
    shift = torch.maximum(loss(base + torch.where(has, scores, -far).amax()),
                          loss(base + torch.where(has, scores, far).amin())) / tau
    shift = torch.where(count > 0, shift, torch.zeros_like(shift))
    kernel = {"shift": shift, "cols_mask": cols.to(scores.dtype), "inv_tau": 1.0 / tau}
    exp_z = pair_kernel(losses, None, scratch=scratch, **kernel)
    assert exp_z is not None
    log_mean = torch.log(exp_z.sum(1)) + shift - torch.log(count.clamp_min(1).to(exp_z.dtype))
    return exp_z, log_mean, kernel


def masked_log_ema_column(state: SampleState, index: Tensor, task: int, log_new: Tensor, rows: Tensor, group: Tensor,
                          gamma: float, writes: PendingWrites) -> Tensor:
    """:func:`_log_ema_column` over the whole batch (validation off): the rows ``rows [B]`` are merged in log space
    (duplicates by their :func:`~xrisk.state.duplicate_groups` ids ``group``) and stepped; returns ``[B]`` ``log u``
    (the old value where not in ``rows``)."""
    value, seen, i = flat_column(state, task, index)
    new, _ = masked_update_rows(value, seen, i, as_state_rows(log_new, i), rows, group,
                                lambda old, merged, seen_rows: log_ema(old, merged, gamma, seen_rows), log_space=True,
                                writes=writes)
    return new


def _log_ema_column(state: SampleState, idx: Tensor, task: int, log_new: Tensor, gamma: float,
                    writes: PendingWrites, cause: Cause, unique: bool = False, implied: bool = False) -> Tensor:
    """Log-space moving average of ``u = exp(state)`` in column ``task``; returns the merged ``log u`` ``[P]``
    (the value the state will hold).

    Duplicates are merged first (mean of ``exp(log_new)``), then one step per index is staged in ``writes``
    with ``gamma = 1`` so the state will hold exactly the log-space result. ``unique``: the caller knows that
    ``idx`` has no duplicate (else it is checked). ``implied``: the caller stages a value that is finite only if these
    rows are (:meth:`~xrisk.state.PendingWrites.stage_tensors`).
    """
    value, seen_all = column_views(state, task)
    i = on_device(idx, value.device)
    direct = unique  # every index once, known: the new entries are staged directly
    if not unique:
        unique = torch.unique(i).numel() == i.numel()
    merged = (log_new.detach() if log_new.requires_grad else log_new) if unique else log_mean_exp_by_index(idx, log_new)
    old = value.index_select(0, i)  # = value[idx, task]
    seen = seen_all.index_select(0, i)
    if old.dtype != merged.dtype or old.device != merged.device:
        old, seen = old.to(merged), seen.to(merged.device)
    new = log_ema(old, merged, gamma, seen)
    if not direct:  # SampleState's update (an overwrite: duplicates already hold the same merged value)
        return _update_column(state, idx, task, new, 1.0, assume_unique=unique, writes=writes, cause=cause)
    rows = as_state_rows(new, i)
    writes.stage_tensors(value, seen_all, i, rows, cause=cause, implied=implied)
    return like_tensor(rows, new)
