"""NUCLR: contrastive learning as discriminative probabilistic modelling with learned normalisers."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._tensors import constant
from xrisk._validate import check_positive, check_unit_interval
from xrisk.functional.contrastive import ReferencePair, WeightedSum, nuclr_fcco, nuclr_fcco_square
from xrisk.losses._contrastive_base import (
    ContrastiveBatch, ContrastiveLossBase, as_state_rows, exp_limit, like_tensor, momentum_rows, on_device, sgd_rows,
)
from xrisk.losses.false_negatives import FalseNegativeDetector
from xrisk.sharding import Placement
from xrisk.state import SampleState, write_rows

__all__ = ["NUCLRLoss"]


def _nuclr_objective(tau: float, log_u_g: Tensor, log_pos: Tensor, zeta_g: Tensor, valid_g: Tensor | None) -> Tensor:
    """``(1/B) sum_iv tau log Z_iv + sum_v mean_j zeta_jv`` over the anchors ``valid_g`` (None: all; NaN if none)."""
    terms = tau * torch.logaddexp(log_u_g, log_pos.to(log_u_g).expand_as(log_u_g))
    n_g = log_u_g.shape[0]
    if valid_g is None:  # every anchor has a negative: no masking, never NaN
        return terms.sum() / n_g + zeta_g.mean(0).sum()
    return torch.where(
        valid_g.any(), terms.masked_fill(~valid_g, 0.0).sum() / n_g + zeta_g.mean(0).sum(), float("nan")
    )


def _zeta_grad(col_weight: Tensor, count: Tensor | int) -> Tensor:
    """``1 - col_weight / count``: ``n dL/dzeta`` of the columns, each a negative of ``count`` anchors (every
    count ``>= 1``)."""
    if isinstance(count, int):
        return torch.sub(constant(1.0, col_weight), col_weight, alpha=1.0 / count)  # rsub(x, 1.0, alpha) is this op
    return torch.div(col_weight, -count).add_(1.0)


class NUCLRLoss(ContrastiveLossBase):
    """Non-parametric multiple-importance-sampling contrastive objective with per-sample ``zeta`` (bimodal).

    Side ``v = 0``: image anchors ``x_i`` (``feats_a``) against text columns (``feats_b``), side 1 the
    reverse. With ``d_ij = s(x_i, t_j) - s(x_i, t_i)``, the learned normaliser ``zeta_jv`` of column
    ``j`` on side ``v`` and ``xi_v = max(max_j zeta_jv, xi_init)`` (refreshed when the epoch changes):

    .. math::

        L(w, \\zeta) = \\frac1n \\sum_{i} \\sum_{v} \\tau \\log\\Big( \\frac{1}{n-1}\\Big[ e^{-\\xi_v/\\tau}
            + \\sum_{j \\ne i} e^{(d_{ij} - \\zeta_{jv})/\\tau} \\Big]\\Big) + \\sum_v \\frac1n \\sum_j \\zeta_{jv}

    (``n = num_samples``, ``tau = tau``). A popular column (large ``zeta``) is down-weighted; at the
    optimum in ``zeta`` each column's total conditional probability over the anchors is 1.

    Updates per batch (anchors ``i``, negatives ``N_iv``, FCCO as in :class:`GlobalContrastiveLoss`):

    * ``u_iv <- (1-gamma) u_iv + gamma mean_{j in N_iv} exp((d_ij - zeta_jv)/tau)`` (log space);
      ``Z_iv = exp(-xi_v/tau)/(n-1) + u_iv``; surrogate ``sum_j stopgrad(w_ij) d_ij / |N_iv|`` with
      ``w_ij = exp((d_ij - zeta_jv)/tau) / Z_iv`` (gradient = FCCO estimator of ``grad_w L``);
    * from epoch ``zeta_start_epoch`` on (warm-up before): ``G_jv = 1 - mean_{i: j in N_iv} w_ij``
      (estimate of ``n dL/dzeta_jv``, anchors of all ranks), momentum
      ``z_jv <- (1-beta_zeta) z_jv + beta_zeta G_jv``, ``zeta_jv <- zeta_jv - eta_e z_jv`` with
      ``eta_e = zeta_lr_schedule(epoch)`` if given else ``lr_zeta``.

    Differences from the reference (``DGCL_Loss``): the positive always uses ``xi`` (its default,
    non-"vanilla" variant); the running shift is replaced by log-space storage; the image-side
    ``zeta`` step is not scaled by ``eta_I_ratio`` (pass a schedule to change the step size).

    :meth:`objective`: ``(1/B) sum_i sum_v tau log Z_iv + sum_v mean_j zeta_jv`` on the global batch.

    Reference model (DRRho, arXiv:2505.06699): ``loss(img, txt, index, ref_feats=(ref_img, ref_txt))`` replaces
    ``d_ij`` by ``d_ij - d_ij^ref`` everywhere above, as in :class:`~xrisk.losses.GlobalContrastiveLoss`.

    Args:
        num_samples: data-set size ``n`` (>= 2).
        tau: temperature (reference: 0.01).
        gamma, gamma_schedule: estimator moving-average weight on the new value / its epoch schedule.
        zeta_init: initial ``zeta`` (reference: -0.05); xi_init: floor of ``xi`` (reference: 0).
        lr_zeta, zeta_lr_schedule: step size of ``zeta`` (constant, or ``epoch -> step`` callable).
        beta_zeta: momentum weight on the new ``zeta`` gradient (reference ``theta`` = 0.9).
        zeta_start_epoch: first epoch at which ``zeta`` is updated (reference: 5).
        false_negatives: optional :class:`FalseNegativeDetector`.
        normalize: L2-normalise the features.
        state_placement: ``"replicated"``, ``"sharded"`` or ``"sharded_local"`` (each rank's indices in its own
            shard) per-sample state under torch.distributed (same results;
            :mod:`xrisk.sharding`; sharded, :meth:`set_epoch` is collective); the detector must match.

    Cost: per step ``O(B_local B_global d)``, independent of ``n``; an epoch change scans ``zeta``
    once (``O(n)``) to refresh ``xi``.

    State (``state_dict``, replicated on every rank): ``log_u``, ``zeta``, ``zeta_momentum``
    (``SampleState [n, 2]``), ``xi`` ``[2]``, ``epoch``, ``samples_seen``, ``epoch_is_set``. Under
    torch.distributed the per-column sums for the ``zeta`` gradient are all-reduced (``O(B_global)``
    floats), so every rank applies the same update. Written in training mode only (in ``eval()`` a call
    returns the same value from a copy of the update and writes nothing), all at once after every
    update of the step was checked (a NaN/inf update raises :class:`FloatingPointError` naming the
    cause and changes nothing). The epoch (warm-up, ``xi`` refresh, ``zeta_lr_schedule``) is inferred
    from the samples seen in training until :meth:`set_epoch` is first called (one warning); an
    explicit epoch always wins. Features of two dtypes are promoted to their common dtype.

    Example:
        >>> loss_fn = NUCLRLoss(1000, tau=0.05, zeta_start_epoch=0)
        >>> img, txt = torch.randn(8, 32, requires_grad=True), torch.randn(8, 32, requires_grad=True)
        >>> loss_fn(img, txt, torch.arange(8)).backward()

    Paper: Wang et al., "On Discriminative Probabilistic Modeling for Self-Supervised
    Representation Learning", ICLR 2025, arXiv:2410.09156.
    """

    objective_name = "NUCLR MIS objective (tau log Z + mean zeta, summed over sides)"
    _fp32_buffers = ("_objective", "xi")
    _paired_path = True
    xi: Tensor

    def __init__(
        self,
        num_samples: int,
        *,
        tau: float = 0.01,
        gamma: float = 0.8,
        gamma_schedule: Callable[[int], float] | None = None,
        zeta_init: float = -0.05,
        xi_init: float = 0.0,
        lr_zeta: float = 5e-6,
        zeta_lr_schedule: Callable[[int], float] | None = None,
        beta_zeta: float = 0.9,
        zeta_start_epoch: int = 5,
        false_negatives: FalseNegativeDetector | None = None,
        normalize: bool = True,
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__(
            num_samples, mode="bimodal", gamma=gamma, gamma_schedule=gamma_schedule,
            false_negatives=false_negatives, normalize=normalize, state_placement=state_placement,
        )
        self.tau = check_positive("tau", tau)
        self.lr_zeta = check_positive("lr_zeta", lr_zeta, allow_zero=True)
        if zeta_lr_schedule is not None and not callable(zeta_lr_schedule):
            raise TypeError("zeta_lr_schedule must be a callable epoch -> step size")
        self.zeta_lr_schedule = zeta_lr_schedule
        self.beta_zeta = check_unit_interval("beta_zeta", beta_zeta)
        if int(zeta_start_epoch) < 0:
            raise ValueError(f"zeta_start_epoch must be >= 0, got {zeta_start_epoch!r}")
        self.zeta_start_epoch = int(zeta_start_epoch)
        self.xi_init = float(xi_init)
        self.log_u = SampleState(num_samples, (2,), placement=state_placement)
        self.zeta = SampleState(num_samples, (2,), init=float(zeta_init), placement=state_placement)
        self.zeta_momentum = SampleState(num_samples, (2,), placement=state_placement)
        self.register_buffer("xi", torch.full((2,), max(float(zeta_init), self.xi_init)))

    def _shared_exp_zeta_min(self, dtype: torch.dtype, zeta_cols: Tensor, shifted: bool = False) -> Tensor | None:
        """The ``[2]`` per-side minimum of ``zeta_cols`` when one exponential pass is safe (the exponents of side
        ``v`` span ``(2 + max zeta_v - min zeta_v) / tau``, far inside the dtype's range; ``4 + ...`` with a
        reference offset, ``shifted``), else None."""
        limit = exp_limit(dtype)
        span = 4.0 if shifted else 2.0
        if not self.normalize or span / self.tau > limit:
            return None
        if not zeta_cols.numel():
            return zeta_cols.new_zeros(2)
        lo, hi = torch.aminmax(zeta_cols, dim=0)
        spread = max(torch.sub(hi, lo).tolist())  # one host read
        return lo if (span + spread) / self.tau <= limit else None

    def _epoch_dependence(self) -> list[str]:
        out = ["the per-epoch refresh of xi"]
        if self.zeta_start_epoch > 0:
            out.append(f"the zeta warm-up (zeta_start_epoch={self.zeta_start_epoch})")
        if self.zeta_lr_schedule is not None:
            out.append("zeta_lr_schedule")
        return out + super()._epoch_dependence()

    def _on_epoch(self, epoch: int) -> None:
        with torch.no_grad():
            self.xi.copy_(self.zeta.amax().clamp_min(self.xi_init).to(self.xi))  # collective when sharded
        self.__dict__.pop("_log_pos_cache", None)

    def _on_load(self) -> None:
        self.__dict__.pop("_log_pos_cache", None)  # xi was loaded

    def _log_pos(self, like: Tensor) -> Tensor:
        """``[2]`` log of the positive's term of ``Z``: ``-xi_v / tau - log(n - 1)`` on ``like``'s device and dtype
        (cached until ``xi`` changes: :meth:`set_epoch`, ``load_state_dict``; never modified in place)."""
        cache = self.__dict__.setdefault("_log_pos_cache", {})
        key = (like.device, like.dtype)
        out = cache.get(key)
        if out is None:
            xi = self.xi.to(like.device, like.dtype)
            out = cache[key] = xi.mul(-1.0 / self.tau).sub_(math.log(self.num_samples - 1))
        return out

    def _zeta_lr(self) -> float | None:
        """Step size of ``zeta`` at the current epoch (None during the warm-up)."""
        epoch = self.current_epoch()
        if epoch < self.zeta_start_epoch:
            return None
        return float(self.zeta_lr_schedule(epoch)) if self.zeta_lr_schedule else self.lr_zeta

    def _paired_step(
        self, sim: Tensor, index: Tensor, offset: Tensor | ReferencePair | None = None,
        weighted_sum: WeightedSum | None = None,
    ) -> Tensor:
        log_u, zeta = self._modules["log_u"], self._modules["zeta"]  # read once (nn.Module attribute reads are slow)
        zeta_value = zeta.tensors()[0]  # type: ignore[union-attr]
        i = on_device(index, zeta_value.device)
        zeta_g = zeta_value.index_select(0, i)  # [B, 2]: the columns are the anchors
        zeta_cols = like_tensor(zeta_g, sim)  # sim: the device and dtype of the kernel's tensors
        log_pos = self._log_pos(sim)
        estimator, rows = self._paired_estimator(log_u, i, sim)  # type: ignore[arg-type]
        zeta_min = self._shared_exp_zeta_min(sim.dtype, zeta_cols, offset is not None)
        step = nuclr_fcco_square(
            sim, zeta_cols, self.tau, log_pos, estimator, scale=1.0 / sim.shape[0], stable=zeta_min is None,
            zeta_min=zeta_min, offset=offset, weighted_sum=weighted_sum,
        )
        states = [log_u]
        eta = self._zeta_lr()
        if eta is not None:  # G_jv = 1 - col_weight / col_count, momentum SGD of the batch's columns
            grad = as_state_rows(_zeta_grad(step.col_weight, step.col_count), i)
            momentum = self._modules["zeta_momentum"]
            m = momentum_rows(momentum, i, grad, self.beta_zeta)  # type: ignore[arg-type]
            states += [momentum, zeta]
            rows += [m, sgd_rows(zeta_g, m, eta)]
        write_rows(states, i, rows, writes=self._writes)  # type: ignore[arg-type]  # staged: written at the commit
        self._record_objective(_nuclr_objective, self.tau, rows[0], log_pos, zeta_g, None)
        return step.surrogate

    def _loss(self, batch: ContrastiveBatch) -> Tensor:
        pos = batch.pos
        zeta_cols = self.zeta.value.index_select(0, batch.col_index.to(self.zeta.value.device))  # [C, 2]
        log_pos = self._log_pos(pos)
        glob: list[Tensor] = []

        def estimator(log_g: Tensor, valid: Tensor) -> Tensor:
            log_u, *rest = self._log_estimator_step(self.log_u, batch, log_g, valid, self.current_gamma())
            glob.extend(rest)
            return log_u

        zeta_cols = zeta_cols.to(pos.device, pos.dtype)
        step = nuclr_fcco(
            batch.sims, pos, zeta_cols, self.tau, log_pos, estimator, pos_offset=batch.pos_offset, count=batch.count,
            self_offset=batch.self_offset, neg=batch.neg, transposed=batch.transposed, scale=batch.scale,
            stable=(not batch.transposed or batch.groups is not None  # validation off: no host read for the gate
                    or self._shared_exp_zeta_min(pos.dtype, zeta_cols, batch.offset is not None) is None),
            offset=batch.offset,
        )
        self._finish(batch, zeta_cols, step.col_weight, step.col_count, *glob, log_pos)
        return step.surrogate

    def _finish(
        self, batch: ContrastiveBatch, zeta_g: Tensor, wsum: Tensor, cnt: Tensor | int, log_u_g: Tensor,
        valid_g: Tensor, log_pos: Tensor,
    ) -> None:
        """``zeta`` step from all ranks' column sums, then the batch's objective (same on every rank).

        ``zeta_g``: ``[C, 2]`` zeta of the columns before the step (bimodal: columns = the global batch).
        ``cnt``: per column the number of anchors of which it is a negative, or an int (the same for all).
        """
        zeta_g = zeta_g.to(log_u_g.device)
        eta = self._zeta_lr()
        if eta is not None:
            if isinstance(cnt, int):  # one process, unique indices, no detector: all_valid, no mask needed
                grad, has = _zeta_grad(wsum, cnt), valid_g
            else:
                if xdist.is_distributed():
                    stats = xdist.all_reduce_sum(torch.cat([wsum, cnt], 1).float().contiguous())  # [C, 4]
                    wsum, cnt = stats[:, :2], stats[:, 2:]
                has = cnt > 0
                grad = 1.0 - wsum / cnt.clamp_min(1.0)
                if not batch.all_valid:  # all_valid: every column is some anchor's negative (has is all True)
                    grad = torch.where(has, grad, torch.zeros_like(wsum))
            if batch.all_valid or batch.groups is not None or bool(has.any()):  # masked on the device
                self._momentum_sgd_step(self.zeta, self.zeta_momentum, batch, zeta_g, grad, self.beta_zeta, eta, has)
        batch.objective = functools.partial(
            _nuclr_objective, self.tau, log_u_g, log_pos, zeta_g, None if batch.all_valid else valid_g
        )

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, tau={self.tau}, zeta_start_epoch={self.zeta_start_epoch}"
