"""DRRho risk minimisation: a distributionally robust risk of the excess loss over a reference model."""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_choice, check_finite, check_positive, check_unit_interval
from xrisk.checkpoint import default_checkpoint_settings
from xrisk.functional.drrho import drrho_cvar, drrho_kl
from xrisk.state import PendingWrites, ReplicatedStateModule

__all__ = ["DRRhoLoss"]


class DRRhoLoss(ReplicatedStateModule):
    """DRRho risk: a distributionally robust risk of the excess loss ``l(theta; z) - l(theta_ref; z)``.

    For any per-sample loss ``l`` (``losses``) of the target model and the same loss of a fixed
    reference model (``ref_losses``, computed by the caller under ``no_grad`` or read from a
    :class:`~xrisk.data.ReferenceCache`), with the excess loss ``x_i = l_i - l_ref_i`` over the
    ``n`` samples of the data set:

    .. math::

        F_{\\mathrm{KL}}(\\theta) = \\max_{p \\in \\Delta_n} \\sum_i p_i x_i - \\tau\\,\\mathrm{KL}(p, 1/n)
            = \\tau \\log \\frac1n \\sum_{i=1}^n \\exp(x_i / \\tau), \\qquad
        F_{\\mathrm{CVaR}}(\\theta) = \\min_s\\; s + \\frac{1}{\\alpha n} \\sum_{i=1}^n (x_i - s)_+

    (``tau = tau``, ``alpha = alpha``). Samples the reference already fits (low ``l_ref``) but the target
    does not get the most weight; samples that are hard for both (noisy, ambiguous) do not.

    ``divergence="kl"``: a compositional objective; the inner data-set mean ``g = (1/n) sum_i exp(x_i/tau)``
    is tracked by one moving-average estimator (stored as ``log u``: no overflow at small ``tau``),
    ``u <- (1 - gamma) u + gamma mean_batch exp(x_i / tau)`` (``gamma``: weight on the new value; the
    first step takes the batch value). The returned surrogate ``mean_i stopgrad(w_i) x_i`` with
    ``w_i = exp(x_i / tau) / u`` has the stochastic compositional gradient (SCGD/FCCO) as its
    gradient; with ``gamma = 1`` and the whole data set as the batch it is ``grad F`` exactly.

    ``divergence="cvar"``: the mean excess loss of the worst ``alpha`` share (the hard-selection
    limit of KL), in Rockafellar-Uryasev form with the threshold ``s`` as state: gradient weights
    ``w_i = 1[x_i > s] / alpha``; ``s`` starts at the first batch's ``(1 - alpha)`` quantile and then
    steps on the pinball loss ``alpha F``: ``s <- s - eta (alpha - mean_batch 1[x_i > s])``.

    Limits: ``tau -> inf`` (KL) and ``alpha = 1`` (CVaR, exact: the threshold is then unused) give the
    plain mean of the excess loss, i.e. ERM up to a constant. With ``ref_losses = 0`` (or ``None``) the
    same class is the plain KL-DRO / CVaR risk of ``l`` (no reference model).

    :meth:`objective` (``objective_name``): KL ``tau log u`` with the updated ``u``; CVaR
    ``s + mean_batch (x_i - s)_+ / alpha`` at the threshold used (an unbiased estimate of ``F(theta, s)``,
    which is the CVaR at the optimal ``s``).

    Args:
        divergence: ``"kl"`` or ``"cvar"``.
        tau: KL temperature ``> 0`` (smaller: closer to the worst case; ``kl`` only).
        alpha: CVaR level in ``(0, 1]`` (``cvar`` only).
        gamma: moving-average weight on the new value, in ``(0, 1]`` (``kl`` only).
        eta: threshold step size ``> 0`` (``cvar`` only).
        gather: under ``torch.distributed``, compute the risk of the global batch (default; exact).

    Shapes: ``losses [B]``, ``ref_losses [B]`` (or ``None``), ``index [B]`` or ``None`` -> scalar.
    ``index`` is validated when given but not needed: the estimator is one data-set level scalar,
    not a per-sample state.

    State (``state_dict``; replicated on every rank, kept out of DDP's buffer broadcast): ``log_u``
    (KL) or ``threshold`` (CVaR), a float32 scalar, and ``seen`` (bool, first-visit flag). Written in
    training mode only (``eval()``: same value, nothing written), all together after one finiteness
    check; an empty batch returns a connected zero and writes nothing.

    Distributed: ``losses`` are gathered with the ``"sum"`` gradient policy and ``ref_losses`` without
    gradient; every rank computes the risk of the global batch and applies the same state update, so
    gradients, state and objective equal one process on the concatenated batch (see
    :mod:`xrisk.distributed`).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> loss_fn = DRRhoLoss(divergence="kl", tau=0.5)
        >>> logits = torch.randn(8, 3, requires_grad=True)
        >>> ref_logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
        >>> l = F.cross_entropy(logits, y, reduction="none")
        >>> l_ref = F.cross_entropy(ref_logits, y, reduction="none")
        >>> loss_fn(l, l_ref).backward()
        >>> est = loss_fn.objective()

    Paper: Wei, Lin, Yang, "Model Steering: Learning with a Reference Model Improves Generalization
    Bounds and Scaling Laws", ICML 2025, arXiv:2505.06699.
    """

    objective_name = "DRRho risk of the excess loss (KL: tau log mean exp(x / tau); CVaR: worst alpha share)"
    log_u: Tensor
    threshold: Tensor
    seen: Tensor

    def __init__(
        self,
        *,
        divergence: Literal["kl", "cvar"] = "kl",
        tau: float = 1.0,
        alpha: float = 0.5,
        gamma: float = 0.9,
        eta: float = 0.05,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.divergence = check_choice("divergence", divergence, ("kl", "cvar"))
        self.tau = check_positive("tau", tau)
        self.alpha = check_unit_interval("alpha", alpha)
        self.gamma = check_unit_interval("gamma", gamma)
        self.eta = check_positive("eta", eta)
        self.gather = bool(gather)
        name = "log_u" if self.divergence == "kl" else "threshold"
        self.register_buffer(name, torch.zeros((), dtype=torch.float32))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self._last_objective = float("nan")  # the last batch's estimate; a tensor on request (objective())
        self._cause = f"the {self.divergence} DRRho state is not finite"  # fixed per instance: no f-string per step

    def checkpoint_settings(self) -> dict[str, Any]:
        """Structural settings stored with a checkpoint: the divergence fixes what the state means."""
        return {**default_checkpoint_settings(self), "divergence": self.divergence}

    def extra_repr(self) -> str:
        knobs = f"tau={self.tau}, gamma={self.gamma}" if self.divergence == "kl" else f"alpha={self.alpha}, eta={self.eta}"
        return f"divergence={self.divergence!r}, {knobs}"

    # ----------------------------------------------------------------------------- template
    def forward(self, losses: Tensor, ref_losses: Tensor | None, index: Tensor | None = None) -> Tensor:
        """Surrogate of the batch's DRRho risk (scalar; its gradient is the estimator, see :meth:`objective`).

        Args:
            losses: ``[B]`` per-sample losses of the target model (with gradient).
            ref_losses: ``[B]`` the reference model's losses on the same samples (detached here), or
                ``None`` for 0 (plain KL-DRO / CVaR).
            index: optional ``[B]`` dataset indices (validated; not used by the math).
        """
        if self.gather and xdist.is_distributed():
            (x, r), layout = xdist.agree_on_batch(
                type(self).__name__, functools.partial(_check_batch, losses, ref_losses, index),
                lambda checked: {"losses": checked[0], "ref_losses": checked[1]},
            )
            x = xdist.all_gather(x, grad="sum", sizes=layout.sizes)
            r = xdist.all_gather_no_grad(r, sizes=layout.sizes)
            checked_inputs = True
        else:
            x, r = _check_batch(losses, ref_losses, index, finite=False)
            checked_inputs = False
        if x.shape[0] == 0:
            return x.sum() * 0.0
        excess = x - r
        seen = bool(self.seen)
        if self.divergence == "kl":
            state = self.log_u
            step = drrho_kl(excess, state, seen, tau=self.tau, gamma=self.gamma)
        else:
            state = self.threshold
            step = drrho_cvar(excess, state, seen, alpha=self.alpha, eta=self.eta)
        if not (math.isfinite(step.state) and math.isfinite(step.objective)):  # the kernels read these anyway
            if not checked_inputs:
                check_finite("losses", x)
                check_finite("ref_losses", r)
            raise FloatingPointError(
                f"the excess losses overflow the {self.divergence} DRRho risk (tau={self.tau}); no state was changed"
            )
        writes = PendingWrites(self._cause)
        writes.after(functools.partial(_write_scalar, state, None if seen else self.seen, step.state))
        writes.commit(write=self.training)  # state changes in training mode only (the check above holds them)
        self.__dict__["_last_objective"] = step.objective  # a plain float: skips nn.Module.__setattr__'s lookups
        return step.surrogate

    def objective(self) -> Tensor:
        """Estimate of the DRRho risk from the last batch (``objective_name``; float32, on the state's device); NaN
        before the first batch."""
        return torch.tensor(self._last_objective, dtype=torch.float32, device=self.seen.device)


def _write_scalar(state: Tensor, seen: Tensor | None, value: float) -> None:
    """The step's writes: the new scalar state, and the first-visit flag (``seen``; None: already set)."""
    state.fill_(value)
    if seen is not None:
        seen.fill_(True)


def _check_batch(
    losses: Tensor, ref_losses: Tensor | None, index: Tensor | None, *, finite: bool = True
) -> tuple[Tensor, Tensor]:
    """This rank's checks: ``(losses [B], ref_losses [B] detached)``; ``finite=False`` leaves the NaN/inf check
    to the caller (after the step, before any state is written)."""
    if not isinstance(losses, Tensor) or not losses.dtype.is_floating_point:
        raise TypeError(f"losses must be a floating-point tensor, got {getattr(losses, 'dtype', type(losses))}")
    if losses.ndim != 1:
        raise ValueError(f"losses must have shape [B] (one loss per sample), got shape {tuple(losses.shape)}")
    if ref_losses is None:
        ref = torch.zeros_like(losses, requires_grad=False)
    else:
        if not isinstance(ref_losses, Tensor) or not ref_losses.dtype.is_floating_point:
            raise TypeError(
                f"ref_losses must be a floating-point tensor, got {getattr(ref_losses, 'dtype', type(ref_losses))}"
            )
        if ref_losses.shape != losses.shape:
            raise ValueError(
                f"ref_losses shape {tuple(ref_losses.shape)} does not match losses shape {tuple(losses.shape)}"
            )
        ref = ref_losses.detach() if ref_losses.requires_grad else ref_losses
        if ref.dtype != losses.dtype or ref.device != losses.device:
            ref = ref.to(losses.device, losses.dtype)
    if index is not None:
        if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise TypeError(f"index must be an integer tensor of dataset indices, got {getattr(index, 'dtype', index)}")
        if index.shape != losses.shape:
            raise ValueError(f"index shape {tuple(index.shape)} does not match losses shape {tuple(losses.shape)}")
    if finite:
        check_finite("losses", losses)
        check_finite("ref_losses", ref)
    return losses, ref
