"""Global contrastive loss (SogCLR / FastCLIP / iSogCLR) with per-sample moving-average estimators."""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk._validate import check_choice, check_positive, check_unit_interval
from xrisk.functional.contrastive import GCLStep, ReferencePair, WeightedSum, gcl_fcco, gcl_fcco_square
from xrisk.losses._contrastive_base import (
    ContrastiveBatch, ContrastiveLossBase, Mode, as_state_rows, exp_limit, like_tensor, momentum_rows, on_device,
    sgd_rows,
)
from xrisk.losses.false_negatives import FalseNegativeDetector
from xrisk.sharding import Placement
from xrisk.state import SampleState, write_rows

__all__ = ["GlobalContrastiveLoss"]


class _MeanGradOverRanks(torch.autograd.Function):
    """Identity whose backward averages the gradient over ranks (for parameters outside DDP)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return xdist.all_reduce_sum(grad) / xdist.world_size()


def _gcl_objective(tau_g: Tensor | float, log_u_g: Tensor, rho: float, eps: float, valid_g: Tensor | None) -> Tensor:
    """``(1/B) sum_iv tau_iv (log(eps + u_iv) + rho)`` over the anchors ``valid_g`` (None: all) of the global
    batch; NaN when no anchor has a negative."""
    log_den = log_u_g if eps <= 0 else torch.logaddexp(log_u_g, torch.full_like(log_u_g, eps).log())
    terms = tau_g * (log_den + rho) if rho else tau_g * log_den
    n = log_u_g.shape[0]
    if valid_g is None:
        return terms.sum() / n
    return torch.where(valid_g.any(), torch.where(valid_g, terms, 0.0).sum() / n, float("nan"))


def _shifted_value(step: GCLStep, eps: float, rho: float, scale: float, tau: Tensor) -> Tensor:
    """``scale * sum_iv sum_j p_ij d_ij`` of a per-anchor step (the surrogate's value on the differences the kernel
    used), recovered from ``tau_grad_iv = log(eps + u_iv) + rho - value_iv / (scale tau_iv)``."""
    log_den = step.log_u if eps <= 0.0 else torch.logaddexp(step.log_u, torch.full_like(step.log_u, math.log(eps)))
    value = (log_den + rho - step.tau_grad) * (scale * tau.detach())  # type: ignore[operator]
    return torch.where(step.valid, value, 0.0).sum()


class GlobalContrastiveLoss(ContrastiveLossBase):
    """Global contrastive loss (GCL) optimised with per-sample moving-average estimators (FCCO).

    For anchor ``i`` and side ``v`` (see *Sides* below) with negatives ``S_iv`` (all other samples of
    the data set, minus detected false negatives), ``d_ij = s(x_i, z_j) - s(x_i, x_i^+)`` (cosine
    similarities of L2-normalised features) and

    .. math::

        g_{iv}(w, \\tau) = \\frac{1}{|S_{iv}|} \\sum_{j \\in S_{iv}} \\exp(d_{ij} / \\tau),\\qquad
        F(w, \\tau) = \\frac{1}{n} \\sum_{i=1}^n \\sum_{v=0,1}
            \\big[ \\tau_{iv} \\log(\\epsilon + g_{iv}(w, \\tau_{iv})) + \\rho\\, \\tau_{iv} \\big]

    (``n = num_samples``, ``eps = eps``, ``rho = rho``; the ``rho`` term is absent for
    ``temperature="fixed"``). Temperature modes:

    * ``"fixed"``: ``tau_iv = tau`` (SogCLR, FastCLIP-v1);
    * ``"global"``: one learnable ``tau`` (Parameter ``self.tau``, FastCLIP-v3 RGCL-g, objective
      ``... + 2 rho tau``); the returned surrogate's gradient w.r.t. ``self.tau`` is the FCCO estimate of
      ``dF/dtau = mean_i sum_v [log(eps + g_iv) - sum_j p_ij d_ij / tau] + 2 rho``
      (``p_ij = exp(d_ij/tau) / (|S_iv| (eps + u_iv))``), exact when ``u = g``. Step ``self.tau`` with your
      optimizer (own param group); it is projected onto ``[tau_min, tau_max]`` (in place) at every
      training-mode forward (an ``eval()``-mode call uses the projected value and leaves the parameter as it is).
    * ``"individual"``: per-sample ``tau_iv`` (iSogCLR's KL-DRO dual); updated inside the loss by
      momentum SGD: ``m <- (1 - beta_tau) m + beta_tau clip(dF_iv/dtau_iv, +-tau_grad_clip)``,
      ``tau_iv <- clip(tau_iv - lr_tau m, tau_min, tau_max)`` (a sample's first visit sets ``m`` to the
      gradient, the :class:`~xrisk.state.SampleState` rule; iSogCLR starts from ``m = 0``). The features'
      gradient carries no ``1/tau_iv`` factor (as in iSogCLR; FastCLIP-v2's surrogate has one).

    Estimator: ``u_iv ~ g_iv`` is refreshed when ``i`` is in the batch,
    ``u_iv <- (1 - gamma) u_iv + gamma g_hat_iv`` (``gamma``: weight on the new value, or
    ``gamma_schedule(epoch)``; first visit takes ``g_hat``). ``u`` is stored as ``log u``
    (``self.log_u``), so ``tau = 0.01`` never overflows.

    Returned value: a **surrogate** ``sum_iv sum_j stopgrad(p_ij) d_ij / B`` (+ the ``tau`` terms) whose
    gradient is the FCCO estimator ``mean_i sum_v tau/(eps + u_iv) grad g_hat_iv``; its value is not
    the objective. :meth:`objective` returns
    ``(1/B) sum_{i in batch} sum_v [tau_iv log(eps + u_iv) + rho tau_iv]`` with the updated ``u``
    (``rho`` term only for learnable temperatures), on the global batch.

    DRRho-CLIP (model steering with a reference model): ``loss(feats_a, feats_b, index, ref_feats=(ref_a, ref_b))``
    with a frozen reference model's features of the same pairs replaces every ``d_ij`` above by
    ``d_ij - d_ij^ref``, ``d_ij^ref = s_ref(x_i, z_j) - s_ref(x_i, x_i^+)`` (same temperature, every temperature
    mode, with or without GloFND, whose masks still come from the target's similarities): negatives the
    reference already finds similar are down-weighted. It enters the kernels once, as the detached per-pair
    offset ``-s_ref`` on the similarities (one more matrix product, no gradient). Without ``ref_feats`` the
    loss is unchanged. Paper: Wei, Lin, Yang, "Model Steering: Learning with a Reference Model Improves
    Generalization Bounds and Scaling Laws", ICML 2025, arXiv:2505.06699.

    Sides: ``mode="unimodal"`` (SogCLR): two augmented views; anchors from both views, negatives both
    views of every other sample (``2B - 2`` per anchor); one estimator per view (SogCLR averages the two
    views into one ``u``; keeping them apart makes ``gamma = 1``, full batch the exact GCL gradient).
    ``mode="bimodal"`` (FastCLIP): image anchors against texts, text anchors against images, separate
    image-side and text-side estimators.

    Args:
        num_samples: data-set size ``n``.
        mode: ``"unimodal"`` or ``"bimodal"``.
        temperature: ``"fixed"``, ``"global"`` or ``"individual"``.
        tau: the temperature (initial value when learnable).
        gamma: moving-average weight on the new value, in ``(0, 1]``.
        gamma_schedule: optional ``epoch -> gamma`` callable, e.g. ``CosineGammaSchedule`` (overrides ``gamma``).
        rho: KL-DRO radius of the learnable temperatures (must be below ``log`` of the number of
            negatives, else ``tau`` sinks to ``tau_min``; FastCLIP-v3 uses 6.5 on CC3M, iSogCLR 0.4 on CIFAR).
        tau_min, tau_max: box of the learnable temperatures.
        lr_tau, beta_tau, tau_grad_clip: step size, momentum weight (on the new gradient) and gradient
            clip of the individual temperatures.
        eps: the ``eps`` inside ``log(eps + g)`` (FastCLIP: 1e-14; 0 is the plain GCL).
        false_negatives: optional :class:`FalseNegativeDetector` (GloFND) removing detected false negatives.
        normalize: L2-normalise the features.
        state_placement: ``"replicated"``, ``"sharded"`` or ``"sharded_local"`` (each rank's indices in its own
            shard) per-sample state under torch.distributed (same results;
            :mod:`xrisk.sharding`); the detector must match.

    Shapes: ``feats_a [B, d]``, ``feats_b [B, d]``, ``index [B]``, optional ``ref_feats`` two ``[B, d_ref]`` -> scalar
    (features of two dtypes are promoted to their common dtype, in both modes; fewer than two distinct samples: a
    connected zero).

    State (``state_dict``; replicated on every rank, every rank applies the same global update):
    ``log_u`` (``SampleState [n, 2]``), ``epoch``; ``tau`` (Parameter, global mode);
    ``tau_individual``, ``tau_momentum`` (``SampleState [n, 2]``, individual mode); ``samples_seen``,
    ``epoch_is_set`` (the epoch is inferred from the samples seen until :meth:`set_epoch` is called; it
    drives ``gamma_schedule`` and the detector). The state lives where ``.to()`` puts the module (e.g.
    keep it on CPU while features are on an accelerator: the batch rows are moved to the feature
    device). Written in training mode only (in ``eval()`` a call returns the same value from a copy of
    the update and writes nothing, the learnable ``tau`` included), all at once after every update of
    the step (estimator, temperatures, detector thresholds) was checked: a NaN/inf update raises
    :class:`FloatingPointError` naming the cause and changes nothing.

    Distributed: exact under DDP (see :mod:`xrisk.losses._contrastive_base`); the gradient of the
    global ``tau`` is averaged over ranks inside backward, so every rank holds ``dL/dtau`` of the
    concatenated batch (a DDP wrapper around the loss would average identical values, harmless).
    Communication per step: the features
    (``O(B_global d)``) and ``O(B_global)`` scalars.

    Example:
        >>> loss_fn = GlobalContrastiveLoss(1000, mode="bimodal", temperature="global", tau=0.07)
        >>> img, txt = torch.randn(8, 32, requires_grad=True), torch.randn(8, 32, requires_grad=True)
        >>> loss = loss_fn(img, txt, torch.arange(8))
        >>> loss.backward()
        >>> est = loss_fn.objective()

    Papers: Yuan et al., "Provable Stochastic Optimization for Global Contrastive Learning: Small
    Batch Does Not Harm Performance", ICML 2022, arXiv:2202.12387 (SogCLR); Qiu et al., "Not All
    Semantics are Created Equal: Contrastive Self-supervised Learning with Automatic Temperature
    Individualization", ICML 2023, arXiv:2305.11965 (iSogCLR); Wei et al., "FastCLIP", arXiv:2407.01445.
    """

    objective_name = "global contrastive objective (tau log(eps + g) + rho tau, summed over sides)"
    _paired_path = True

    def __init__(
        self,
        num_samples: int,
        *,
        mode: Mode = "unimodal",
        temperature: Literal["fixed", "global", "individual"] = "fixed",
        tau: float = 0.1,
        gamma: float = 0.9,
        gamma_schedule: Callable[[int], float] | None = None,
        rho: float = 6.5,
        tau_min: float = 0.01,
        tau_max: float = 1.0,
        lr_tau: float = 0.03,
        beta_tau: float = 0.9,
        tau_grad_clip: float = 5.0,
        eps: float = 0.0,
        false_negatives: FalseNegativeDetector | None = None,
        normalize: bool = True,
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__(
            num_samples, mode=mode, gamma=gamma, gamma_schedule=gamma_schedule,
            false_negatives=false_negatives, normalize=normalize, state_placement=state_placement,
        )
        self.temperature = check_choice("temperature", temperature, ("fixed", "global", "individual"))
        tau = check_positive("tau", tau)
        self.rho = check_positive("rho", rho, allow_zero=True)
        self.tau_min = check_positive("tau_min", tau_min)
        self.tau_max = check_positive("tau_max", tau_max)
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min={tau_min} must be <= tau_max={tau_max}")
        if temperature != "fixed" and not self.tau_min <= tau <= self.tau_max:
            raise ValueError(f"tau={tau} must lie in [tau_min, tau_max] = [{tau_min}, {tau_max}]")
        self.lr_tau = check_positive("lr_tau", lr_tau, allow_zero=True)
        self.beta_tau = check_unit_interval("beta_tau", beta_tau)
        self.tau_grad_clip = check_positive("tau_grad_clip", tau_grad_clip)
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.log_u = SampleState(num_samples, (2,), placement=state_placement)
        self.tau: float | nn.Parameter
        if self.temperature == "global":
            self.tau = nn.Parameter(torch.tensor(tau, dtype=torch.float32))
        else:
            self.tau = tau
        if self.temperature == "individual":
            self.tau_individual = SampleState(num_samples, (2,), init=tau, placement=state_placement)
            self.tau_momentum = SampleState(num_samples, (2,), placement=state_placement)

    def _exp_is_safe(self, dtype: torch.dtype, tau_low: float, shifted: bool = False) -> bool:
        """``|d / tau| <= 2 / tau_low`` (``4 / tau_low`` with a reference offset, ``shifted``) stays far inside the
        exponent range: skip the row-max shift.

        ``tau_low``: the smallest temperature of this batch (its current value, not ``tau_min``).
        """
        limit = exp_limit(dtype)
        return self.normalize and (4.0 if shifted else 2.0) / tau_low <= limit

    def _temperatures(
        self, index_g: Tensor, start: int, like: Tensor, device: bool = False
    ) -> tuple[Tensor | float, Tensor | float, float]:
        """``(tau, tau_g, tau_low)``: the kernel's temperature (float, the 0-dim parameter, or ``[B, 2]`` rows of
        the local anchors ``index_g[start : start + B]`` on ``like``'s device/dtype), the temperatures of the global
        batch (state device, float32) and the smallest one (for the stability gate). ``device`` (validation off):
        nothing is read on the host, ``tau_g`` of the learnable global temperature is a detached copy and
        ``tau_low`` is ``tau_min``."""
        if isinstance(self.tau, nn.Parameter):
            if self.training:  # project the parameter onto its box (in place: the optimizer's next step starts there)
                with torch.no_grad():
                    self.tau.clamp_(self.tau_min, self.tau_max)
                tau = self.tau
            else:  # eval mode changes nothing: the same value, projected out of place
                tau = self.tau.clamp(self.tau_min, self.tau_max)
            if device:
                shared = _MeanGradOverRanks.apply(tau) if xdist.is_distributed() else tau
                return like_tensor(shared, like), tau.detach().clone(), self.tau_min
            value = float(tau.detach())
            tau = _MeanGradOverRanks.apply(tau) if xdist.is_distributed() else tau
            tau = like_tensor(tau, like)
            return tau, value, value  # a float tau_g: the parameter changes in place after the step
        if self.temperature == "individual":
            values = self._modules["tau_individual"].tensors()[0]  # type: ignore[union-attr]  # (a plain dict read)
            tau_g = values.index_select(0, index_g.to(values.device))
            tau = tau_g if start == 0 and tau_g.shape[0] == like.shape[0] else tau_g[start : start + like.shape[0]]
            tau = like_tensor(tau, like)
            if device:
                return tau, tau_g, self.tau_min
            return tau, tau_g, float(tau.min()) if tau.numel() else self.tau_min
        return self.tau, self.tau, self.tau  # type: ignore[return-value]

    def _paired_step(
        self, sim: Tensor, index: Tensor, offset: Tensor | ReferencePair | None = None,
        weighted_sum: WeightedSum | None = None,
    ) -> Tensor:
        rho = 0.0 if self.temperature == "fixed" else self.rho
        log_u = self._modules["log_u"]  # submodules and buffers read once (nn.Module attribute reads are slow)
        i = on_device(index, log_u.tensors()[0].device)  # type: ignore[union-attr]
        tau, tau_g, tau_low = self._temperatures(i, 0, sim)  # sim: the device and dtype of the kernel's tensors
        estimator, rows = self._paired_estimator(log_u, i, sim)  # type: ignore[arg-type]
        step = gcl_fcco_square(
            sim, tau, estimator, eps=self.eps, rho=rho, scale=1.0 / sim.shape[0],
            stable=not self._exp_is_safe(sim.dtype, tau_low, offset is not None), offset=offset,
            weighted_sum=weighted_sum,
        )
        states = [log_u]
        if step.tau_grad is not None:  # individual temperatures: momentum SGD of the batch's rows
            grad = as_state_rows(step.tau_grad.clamp_(-self.tau_grad_clip, self.tau_grad_clip), i)
            momentum = self._modules["tau_momentum"]
            m = momentum_rows(momentum, i, grad, self.beta_tau)  # type: ignore[arg-type]
            states += [momentum, self._modules["tau_individual"]]
            rows += [m, sgd_rows(tau_g, m, self.lr_tau, (self.tau_min, self.tau_max))]  # type: ignore[arg-type]
        write_rows(states, i, rows, writes=self._writes)  # type: ignore[arg-type]  # staged: written at the commit
        self._record_objective(_gcl_objective, tau_g, rows[0], rho, self.eps, None)
        return step.surrogate

    def _loss(self, batch: ContrastiveBatch) -> Tensor:
        pos = batch.pos
        rho = 0.0 if self.temperature == "fixed" else self.rho
        device = batch.groups is not None  # validation off: no host read
        tau, tau_g, tau_low = self._temperatures(batch.index_global, batch.start, pos, device)
        shared = isinstance(tau, Tensor) and tau.dim() == 0
        if device and shared:  # the kernel reads 1 / tau on the host for one temperature: pass it per anchor
            tau, shared_tau = tau.detach().expand(pos.shape), tau
        glob: list[Tensor] = []

        def estimator(log_g: Tensor, valid: Tensor) -> Tensor:
            log_u, *rest = self._log_estimator_step(self.log_u, batch, log_g, valid, self.current_gamma())
            glob.extend(rest)
            return log_u

        step = gcl_fcco(
            batch.sims, pos, tau, estimator, pos_offset=batch.pos_offset, count=batch.count, self_offset=batch.self_offset,
            neg=batch.neg, transposed=batch.transposed, stacked=batch.stacked, eps=self.eps, rho=rho, scale=batch.scale,
            stable=not self._exp_is_safe(pos.dtype, tau_low, batch.offset is not None), offset=batch.offset,
        )
        if device and shared:  # the one temperature's term: scale * tau * sum_iv tau_grad_iv (as gcl_fcco adds it)
            self._finish(batch, tau_g, None, *glob, rho)
            out = step.surrogate
            if batch.offset is not None:  # gcl_fcco's value is then taken on the shifted differences: the same here
                out = out + (_shifted_value(step, self.eps, rho, batch.scale, tau) - out).detach()
            return torch.addcmul(out, shared_tau, step.tau_grad.sum(), value=batch.scale)  # type: ignore[union-attr]
        self._finish(batch, tau_g, step.tau_grad, *glob, rho)
        return step.surrogate

    def _finish(
        self, batch: ContrastiveBatch, tau_g: Tensor | float, tau_grad: Tensor | None,
        log_u_g: Tensor, valid_g: Tensor, rho: float,
    ) -> None:
        """Update the individual temperatures and set the batch's objective (identically on every rank)."""
        if tau_grad is not None:  # individual temperatures; tau_g: [B_global, 2] before the step
            tau_g = tau_g.to(log_u_g.device)  # type: ignore[union-attr]
            grad_g = xdist.all_gather_no_grad(
                tau_grad.clamp(-self.tau_grad_clip, self.tau_grad_clip).float(), sizes=batch.sizes
            )
            self._momentum_sgd_step(
                self.tau_individual, self.tau_momentum, batch, tau_g, grad_g, self.beta_tau, self.lr_tau, valid_g,
                (self.tau_min, self.tau_max),
            )
        batch.objective = functools.partial(  # all_valid: every anchor has a negative (no masking, never NaN)
            _gcl_objective, tau_g, log_u_g, rho, self.eps, None if batch.all_valid else valid_g
        )

    def temperature_of(self, index: Tensor) -> Tensor:
        """Current temperatures ``[B, 2]`` (sides) of the samples ``index`` in every temperature mode."""
        if self.temperature == "individual":
            return self.tau_individual.read(index)
        val = float(self.tau.detach()) if isinstance(self.tau, Tensor) else float(self.tau)
        return torch.full((index.numel(), 2), val)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature!r}"
