"""One-way partial AUC (FPR in ``[0, max_fpr]``): SOPA (exact CVaR) and SOPA-s (KL-DRO)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from xrisk._validate import check_choice, check_positive, check_unit_interval
from xrisk.functional.pauc import (
    cvar_threshold_grad,
    log_ema,
    log_mean_exp_by_index,
    log_mean_exp_inner,
    pauc_cvar_weights,
    pauc_kl_weights,
    pauc_risk,
)
from xrisk.functional.surrogates import SURROGATES, SurrogateName
from xrisk.losses._partial_auc_base import PartialAUCLossBase
from xrisk.losses.ap import _update_column
from xrisk.state import SampleState

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

    Shapes: ``scores``, ``targets`` ``[B]`` or ``[B, T]``; ``index`` ``[B]``.

    State: ``threshold`` (cvar) or ``log_u`` (kl), a :class:`~xrisk.state.SampleState`
    ``[n, T]``; entry ``(i, t)`` is written only when ``i`` is a positive of task ``t`` and the
    batch has negatives for ``t``. Duplicated positives: their new values are averaged and one
    step is applied (the mean of their threshold steps; for ``log_u`` the mean is taken of
    ``u``, not of ``log u``), and every occurrence then uses the merged estimate. Under
    ``torch.distributed`` the loss runs on the gathered global batch: every rank applies the
    same update.

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
    ) -> None:
        super().__init__(num_tasks=num_tasks)
        self.num_samples = num_samples
        self.method = check_choice("method", method, ("cvar", "kl"))
        self.max_fpr = check_unit_interval("max_fpr", max_fpr)
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.surrogate = check_choice("surrogate", surrogate, tuple(SURROGATES))
        self.eta = check_positive("eta", eta)
        self.tau = check_positive("tau", tau)
        self.gamma = check_unit_interval("gamma", gamma)
        if self.method == "cvar":
            self.threshold = SampleState(num_samples, (num_tasks,))
        else:
            self.log_u = SampleState(num_samples, (num_tasks,))

    def extra_repr(self) -> str:
        knobs = f"eta={self.eta}" if self.method == "cvar" else f"tau={self.tau}, gamma={self.gamma}"
        return (f"num_samples={self.num_samples}, num_tasks={self.num_tasks}, method={self.method!r}, "
                f"max_fpr={self.max_fpr}, margin={self.margin}, surrogate={self.surrogate!r}, {knobs}")

    def _task_weights(self, task: int, n_pos: int, index_pos: Tensor, losses: Tensor) -> Tensor:
        if self.method == "cvar":
            s = self.threshold.value[index_pos.to(self.threshold.value.device), task].to(losses)
            step = cvar_threshold_grad(losses, s, self.max_fpr)
            _update_column(self.threshold, index_pos, task, s - self.eta * step, 1.0)
            return pauc_cvar_weights(losses, s, self.max_fpr)  # pauc_cvar_surrogate's weights
        log_u = _log_ema_column(self.log_u, index_pos, task, log_mean_exp_inner(losses, self.tau), self.gamma)
        return pauc_kl_weights(losses, log_u, self.tau)  # pauc_kl_surrogate's weights

    def _risk(self) -> tuple[Callable[..., Tensor], tuple[object, ...]]:
        return pauc_risk, (self.max_fpr,)


def _log_ema_column(state: SampleState, idx: Tensor, task: int, log_new: Tensor, gamma: float) -> Tensor:
    """Log-space moving average of ``u = exp(state)`` in column ``task``; returns the merged ``log u`` ``[P]``.

    Duplicates are merged first (mean of ``exp(log_new)``), then one step per index is written
    with ``gamma = 1`` so the state stores exactly the log-space result.
    """
    dev = state.value.device
    idx_s = idx.to(dev)
    unique = torch.unique(idx_s).numel() == idx_s.numel()
    merged = log_new.detach() if unique else log_mean_exp_by_index(idx, log_new)
    old = state.value[idx_s, task]
    seen = state.seen[idx_s, task]
    if old.dtype != merged.dtype or old.device != merged.device:
        old, seen = old.to(merged), seen.to(merged.device)
    new = log_ema(old, merged, gamma, seen)
    return _update_column(state, idx, task, new, 1.0, assume_unique=unique)
