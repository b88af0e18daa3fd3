"""PDSCA: primal-dual stochastic compositional adaptive method for :class:`xrisk.losses.CompositionalAUCLoss`."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor

from xrisk._validate import check_positive, validation_enabled
from xrisk.losses.compositional_auc import CompositionalAUCLoss
from xrisk.optim._core import (
    AUCOptimizer, device_counter, dual_ascent_, proximal_direction, proximal_direction_foreach, record_iterate,
)

__all__ = ["PDSCA", "pdsca_update", "pdsca_update_masked_foreach"]


def pdsca_update(
    p: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    phase: Literal["ce", "auc"],
    lr: float,
    lr0: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    epoch_decay: float,
    clip_value: float | None,
) -> None:
    """One PDSCA step of a primal parameter ``p`` in place (see :class:`PDSCA` for the math).

    ``state`` holds ``ref``, ``iterate_avg``, ``avg_count``, ``weight_avg`` (the inner estimate
    ``u``, after the first CE step) and ``grad_avg`` (``z``, after the first AUC step).
    """
    d = proximal_direction(p, grad, state, clip_value=clip_value, weight_decay=weight_decay,
                           epoch_decay=epoch_decay)
    _unset_device_averages(state)
    if phase == "ce":
        p.add_(d, alpha=-lr0)
        u = state.get("weight_avg")
        if u is None:
            u = state["weight_avg"] = p.detach().clone()
        else:
            u.mul_(1.0 - beta1).add_(p, alpha=beta1)
        p.copy_(u)
    else:
        z = state.get("grad_avg")
        if z is None:
            z = state["grad_avg"] = d.clone()
        else:
            z.mul_(1.0 - beta2).add_(d, alpha=beta2)
        p.add_(z, alpha=-lr)
    record_iterate(p, state)


def _unset_device_averages(state: dict[str, Any]) -> None:
    """Drop the averages :func:`pdsca_update_masked_foreach` allocated but never set (host read: validation on only)."""
    for key in ("weight_avg", "grad_avg"):
        flag = state.get(key + "_set")
        if flag is not None:
            if not bool(flag):
                del state[key]
            del state[key + "_set"]


def pdsca_update_masked_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    ce: Tensor,
    frozen_in_ce: bool,
    lr: float,
    lr0: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    epoch_decay: float,
    clip_value: float | None,
) -> None:
    """:func:`pdsca_update` of a list of parameters (one ``frozen_in_ce``, one set of hyper-parameters) with the
    phase as a 0-dim bool tensor ``ce`` (validation off: no host read), in ``torch._foreach_*`` list ops.

    Both phases' updates are computed and the current one selected through ``lerp`` with 0/1 weights
    (``lerp(y, x, 1) = x``, ``lerp(y, x, 0) = y`` exactly for finite values); ``frozen_in_ce``: the parameters are
    not updated in the CE phase (the loss's ``a``, ``b``). The averages ``weight_avg``/``grad_avg`` are allocated
    at once, with device flags ``weight_avg_set``/``grad_avg_set`` for "set by a step" (a later validated step
    drops unset ones), and the counter is a device tensor. Equal to :func:`pdsca_update` up to rounding."""
    d = proximal_direction_foreach(params, grads, states, clip_value=clip_value, weight_decay=weight_decay,
                                   epoch_decay=epoch_decay)
    for key, init in (("weight_avg", params), ("grad_avg", d)):
        for st, x in zip(states, init):
            if key not in st:
                st[key] = x.detach().clone()
                st[key + "_set"] = torch.zeros((), dtype=torch.bool, device=x.device)
            elif key + "_set" not in st:
                st[key + "_set"] = torch.ones((), dtype=torch.bool, device=x.device)
    n = len(params)
    dtype = params[0].dtype
    u, z = [st["weight_avg"] for st in states], [st["grad_avg"] for st in states]
    u_set, z_set = [st["weight_avg_set"] for st in states], [st["grad_avg_set"] for st in states]
    flags = torch.stack([*u_set, *z_set]).to(dtype).unbind()
    ce_w = ce.to(dtype)
    auc_w = 1.0 - ce_w
    stepped = torch._foreach_add(params, d, alpha=-lr0)  # p - lr0 d
    u_new = torch._foreach_lerp(stepped, torch._foreach_lerp(u, stepped, beta1), list(flags[:n]))
    z_new = torch._foreach_lerp(d, torch._foreach_lerp(z, d, beta2), list(flags[n:]))
    p_auc = torch._foreach_add(params, z_new, alpha=-lr)
    torch._foreach_lerp_(u, u_new, [ce_w] * n)  # the CE phase moves u, the AUC phase z
    torch._foreach_lerp_(z, z_new, [auc_w] * n)
    for st in states:
        st["weight_avg_set"].logical_or_(ce)
        st["grad_avg_set"].logical_or_(~ce)
    torch._foreach_lerp_(p_auc, params if frozen_in_ce else u_new, [ce_w] * n)
    torch._foreach_copy_(params, p_auc)
    counts = [device_counter(st, "avg_count", p) for st, p in zip(states, params)]
    moved = auc_w if frozen_in_ce else torch.ones_like(ce_w)  # the iterate is recorded unless the parameter was frozen
    torch._foreach_add_(counts, [moved.to(counts[0].dtype)] * n)
    weights = torch._foreach_reciprocal(torch._foreach_clamp_min(counts, 1))
    weights = torch._foreach_mul(weights if weights[0].dtype == dtype else [w.to(dtype) for w in weights], moved)
    torch._foreach_lerp_([st["iterate_avg"] for st in states], params, list(weights))


class PDSCA(AUCOptimizer):
    """Primal-dual stochastic compositional adaptive method for compositional AUC training.

    Optimises the compositional objective of :class:`~xrisk.losses.CompositionalAUCLoss`
    (``v = (w, a, b)``, ``eta_0`` = ``lr0``)

    .. math::

        \\min_{v}\\, \\max_{\\alpha \\ge 0}\\;
            F_{\\mathrm{AUC}}\\big(w - \\eta_0 \\nabla L_{\\mathrm{CE}}(w),\\, a,\\, b,\\, \\alpha\\big),

    following the loss's alternation (:meth:`~xrisk.losses.CompositionalAUCLoss.last_phase`). With
    the proximal direction of :class:`PESG` (``c`` = ``clip_value``, ``lambda_0`` =
    ``epoch_decay``, ``lambda`` = ``weight_decay``)

    .. math::

        d = \\operatorname{clip}(g, \\pm c) + \\lambda_0 (v - v_{\\mathrm{ref}}) + \\lambda v,

    each step is one of (``beta_1`` = ``beta1``, ``beta_2`` = ``beta2``, ``eta`` = ``lr``,
    ``eta_alpha`` = ``alpha_lr``):

    .. math::

        \\begin{aligned}
        \\text{CE step:}\\quad & w \\leftarrow w - \\eta_0 d,\\quad
            u \\leftarrow (1 - \\beta_1)\\, u + \\beta_1 w,\\quad w \\leftarrow u; \\\\
        \\text{AUC step:}\\quad & z \\leftarrow (1 - \\beta_2)\\, z + \\beta_2 d,\\quad
            v \\leftarrow v - \\eta z,\\quad
            \\alpha \\leftarrow \\max\\big(0,\\, \\alpha + \\eta_\\alpha\\, \\partial F / \\partial \\alpha\\big).
        \\end{aligned}

    * **CE step** (inner function): the first CE step sets ``u = w``; ``loss.a, loss.b,
      loss.alpha`` are not touched.
    * **AUC step** (outer function, gradient taken at ``u``): the first sets ``z = d``; the dual
      ascent uses ``loss.alpha.grad`` (exact batch gradient, see :class:`PESG`).

    ``beta1`` and ``beta2`` are **weights on the new value** (as ``gamma`` everywhere in xrisk,
    and as in LibAUC; ``beta = 1`` disables the averaging). This is LibAUC's practical form of the
    paper's Algorithm 1, where the weights hold the inner estimate ``u`` after each CE step and
    the AUC gradient at ``u`` updates them directly.

    :meth:`update_regularizer` divides ``lr`` by ``decay_factor`` and ``lr0`` by
    ``decay_factor0`` (each if given) and resets the reference points to the mean of the iterates,
    as :class:`PESG` does. Parameter groups, the ``a, b`` group and the last ``"dual"`` group of
    ``alpha`` work as in :class:`PESG` (``params`` may contain the loss's parameters, e.g.
    ``model.parameters()`` with the loss as a submodule).

    State (``optimizer.state``, in ``state_dict``): per primal parameter ``ref``,
    ``iterate_avg``, ``avg_count``, ``weight_avg``, ``grad_avg``. The phase counter is the loss's
    ``num_steps`` buffer (checkpoint the loss too). Device follows the parameters; no device
    argument (LibAUC defaulted to ``device='cuda'``).

    Args:
        params: model parameters or parameter groups.
        loss: the :class:`~xrisk.losses.CompositionalAUCLoss` being optimised.
        lr: ``eta``, step size of the AUC steps and of the dual ascent.
        lr0: ``eta_0``, step size of the CE steps (``None``: ``lr``).
        beta1: weight on the new weights in ``u`` (in ``(0, 1]``).
        beta2: weight on the new direction in ``z`` (in ``(0, 1]``).
        clip_value, weight_decay, epoch_decay: as in :class:`PESG`.
        alpha_lr: step size of the dual ascent (``None``: ``lr``).

    Example:
        >>> import torch
        >>> from xrisk.losses import CompositionalAUCLoss
        >>> from xrisk.optim import PDSCA
        >>> model = torch.nn.Linear(3, 1)
        >>> loss_fn = CompositionalAUCLoss(k=1)
        >>> opt = PDSCA(model.parameters(), loss=loss_fn, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> for _ in range(2):  # one CE step, then one AUC step
        ...     opt.zero_grad(); loss_fn(torch.sigmoid(model(x)).squeeze(1), y).backward(); opt.step()

    Paper: Yuan, Guo, Chawla, Yang, "Compositional Training for End-to-End Deep AUC
    Maximization", ICLR 2022 (openreview gPvB4pdu_Z).
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        loss: CompositionalAUCLoss,
        lr: float = 0.1,
        lr0: float | None = None,
        beta1: float = 0.99,
        beta2: float = 0.999,
        clip_value: float | None = 1.0,
        weight_decay: float = 1e-5,
        epoch_decay: float = 2e-3,
        alpha_lr: float | None = None,
    ) -> None:
        if not isinstance(loss, CompositionalAUCLoss):
            raise TypeError(f"PDSCA optimises a CompositionalAUCLoss, got {type(loss).__name__}")
        for name, v in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 < float(v) <= 1.0:
                raise ValueError(f"{name} (weight on the new value) must be in (0, 1], got {v!r}")
        defaults = dict(
            lr=check_positive("lr", lr),
            lr0=check_positive("lr0", lr if lr0 is None else lr0),
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=check_positive("weight_decay", weight_decay, allow_zero=True),
            epoch_decay=check_positive("epoch_decay", epoch_decay, allow_zero=True),
            clip_value=None if clip_value is None else check_positive("clip_value", clip_value),
        )
        super().__init__(params, loss, defaults, alpha_lr)
        self._compositional = loss

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Apply the CE or the AUC update, whichever phase produced the current gradients."""
        out = None
        if closure is not None:
            with torch.enable_grad():
                out = closure()
        loss = self._compositional
        aux = {id(loss.a), id(loss.b)}
        if not validation_enabled():
            self._step_masked(loss.last_phase_is_ce(), aux)
            return out
        phase = loss.last_phase()
        for group in self.param_groups:
            if group["dual"]:
                if phase == "auc":
                    self._dual_step(group)
                continue
            for p in group["params"]:
                if p.grad is None or (phase == "ce" and id(p) in aux):
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PDSCA does not support sparse gradients")
                pdsca_update(
                    p, p.grad, self._init_proximal(p), phase=phase, lr=group["lr"], lr0=group["lr0"],
                    beta1=group["beta1"], beta2=group["beta2"], weight_decay=group["weight_decay"],
                    epoch_decay=group["epoch_decay"], clip_value=group["clip_value"],
                )
        return out

    def _step_masked(self, ce: Tensor, aux: set[int]) -> None:
        """:meth:`step` with the phase on the device (validation off): no host read."""
        for group in self.param_groups:
            if group["dual"]:
                for p in group["params"]:
                    if p.grad is not None:
                        ascended = p.detach().clone()
                        dual_ascent_(ascended, p.grad, group["lr"])
                        p.copy_(torch.where(ce, p, ascended))
                continue
            buckets: dict[tuple[bool, torch.dtype, torch.device], tuple[list, list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PDSCA does not support sparse gradients")
                bucket = buckets.setdefault((id(p) in aux, p.dtype, p.device), ([], [], []))
                bucket[0].append(p)
                bucket[1].append(p.grad)
                bucket[2].append(self._init_proximal(p))
            for (frozen, _, _), (params, grads, states) in buckets.items():
                pdsca_update_masked_foreach(
                    params, grads, states, ce=ce, frozen_in_ce=frozen, lr=group["lr"], lr0=group["lr0"],
                    beta1=group["beta1"], beta2=group["beta2"], weight_decay=group["weight_decay"],
                    epoch_decay=group["epoch_decay"], clip_value=group["clip_value"],
                )

    @torch.no_grad()
    def update_regularizer(  # type: ignore[override]
        self, decay_factor: float | None = None, decay_factor0: float | None = None
    ) -> None:
        """Divide ``lr`` by ``decay_factor`` and ``lr0`` by ``decay_factor0`` (each if given), then
        move every reference point to the mean of the iterates since the last call."""
        if decay_factor0 is not None:
            self._divide("lr0", decay_factor0, "decay_factor0")
        super().update_regularizer(decay_factor)

    def update_lr(  # type: ignore[override]
        self, decay_factor: float | None = None, decay_factor0: float | None = None
    ) -> None:
        """Divide ``lr`` by ``decay_factor`` and ``lr0`` by ``decay_factor0`` (each if given);
        reference points unchanged."""
        if decay_factor0 is not None:
            self._divide("lr0", decay_factor0, "decay_factor0")
        if decay_factor is not None:
            super().update_lr(decay_factor)
