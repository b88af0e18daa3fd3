"""PESG: proximal epoch stochastic gradient descent-ascent for :class:`xrisk.losses.AUCMLoss`."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor

from xrisk._validate import check_choice, check_positive, validation_enabled
from xrisk.losses.aucm import AUCMLoss
from xrisk.optim._core import (
    AUCOptimizer,
    proximal_direction_foreach,
    record_iterate_foreach,
)

__all__ = ["PESG", "pesg_update_foreach"]

_HYPER = ("lr", "mode", "momentum", "dampening", "betas", "eps", "weight_decay", "epoch_decay", "clip_value")


def pesg_update_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    mode: str,
    momentum: float,
    dampening: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    epoch_decay: float,
    clip_value: float | None,
) -> None:
    """One PESG step of a list of primal parameters in place with ``torch._foreach_*`` ops (see
    :class:`PESG` for the math). The parameters must share ``avg_count`` and, in adam mode, ``adam_step``; in sgd
    mode either all or none have a ``momentum_buffer`` (:meth:`PESG.step` buckets them so)."""
    if mode == "sgd" and _fusable(params):
        _sgd_fused(params, grads, states, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                   epoch_decay=epoch_decay, clip_value=clip_value)
        record_iterate_foreach(params, states)
        return
    d = proximal_direction_foreach(params, grads, states, clip_value=clip_value, weight_decay=weight_decay,
                                   epoch_decay=epoch_decay)
    if mode == "sgd":
        if momentum != 0.0:
            if "momentum_buffer" not in states[0]:
                for st, di in zip(states, d):
                    st["momentum_buffer"] = di.clone()
            else:
                bufs = [st["momentum_buffer"] for st in states]
                if momentum == dampening:  # u <- mu u + (1 - mu) d is a lerp (LibAUC's convention)
                    torch._foreach_lerp_(bufs, d, 1.0 - momentum)
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, d, alpha=1.0 - dampening)
            d = [st["momentum_buffer"] for st in states]
        torch._foreach_add_(params, d, alpha=-lr)
    else:
        beta1, beta2 = betas
        if "adam_step" not in states[0]:
            for st, p in zip(states, params):
                st["adam_step"] = 0 if validation_enabled() else torch.zeros((), dtype=torch.int64, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if isinstance(states[0]["adam_step"], Tensor):  # device counters (validation off): no host read
            _adam_device(params, d, states, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
            record_iterate_foreach(params, states)
            return
        t = states[0]["adam_step"] + 1
        for st in states:
            st["adam_step"] = t
        exp_avg = [st["exp_avg"] for st in states]
        exp_avg_sq = [st["exp_avg_sq"] for st in states]
        torch._foreach_lerp_(exp_avg, d, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, d, d, value=1.0 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(1.0 - beta2**t))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, value=-lr / (1.0 - beta1**t))
    record_iterate_foreach(params, states)


def _fusable(params: list[Tensor]) -> bool:
    """Whether the sgd update may run as ``torch._fused_sgd_`` (one kernel call for the whole list): eager mode,
    parameters on the CPU or CUDA (where torch's ``SGD(fused=True)`` runs)."""
    return (not torch.compiler.is_compiling() and all(p.device.type in ("cpu", "cuda") for p in params)
            and _fused_sgd_available(params[0].device.type))


@functools.cache
def _fused_sgd_available(device_type: str) -> bool:
    """Whether this torch build has ``torch._fused_sgd_`` for ``device_type`` (a private kernel: CPU support came
    after torch 2.3, the oldest torch xrisk accepts); probed once per device type on one-element tensors."""
    if not hasattr(torch, "_fused_sgd_") or (device_type == "cuda" and not torch.cuda.is_available()):
        return False
    try:
        p, g, b = (torch.zeros(1, device=device_type) for _ in range(3))
        torch._fused_sgd_([p], [g], [b], weight_decay=0.0, momentum=0.5, lr=0.1, dampening=0.0, nesterov=False,
                          maximize=False, is_first_step=True)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def _sgd_fused(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], *, lr: float, momentum: float,
               dampening: float, weight_decay: float, epoch_decay: float, clip_value: float | None) -> None:
    """The sgd branch of :func:`pesg_update_foreach` with the last three of its list ops in one
    ``torch._fused_sgd_`` call: ``clip(g) - epoch_decay ref`` is formed with ``_foreach`` ops (the gradients are
    not modified), and the fused kernel adds ``(epoch_decay + weight_decay) v``, updates the momentum buffer
    (``u <- mu u + (1 - delta) d``; ``u = d`` on the first step) and the parameter (``v <- v - eta u``) in one pass
    per tensor. Equal to the list ops up to float rounding (``mu u + (1-delta) d`` instead of the ``lerp`` that
    the list ops use when ``mu = delta``)."""
    if clip_value is not None:
        d = torch._foreach_clamp_min(grads, -clip_value)
        torch._foreach_clamp_max_(d, clip_value)
        if epoch_decay != 0.0:
            torch._foreach_add_(d, [st["ref"] for st in states], alpha=-epoch_decay)
    elif epoch_decay != 0.0:
        d = torch._foreach_add(grads, [st["ref"] for st in states], alpha=-epoch_decay)
    else:
        d = grads  # the fused kernel reads them only
    first = False
    bufs: list[Tensor] = []
    if momentum != 0.0:
        first = "momentum_buffer" not in states[0]
        if first:
            for st, di in zip(states, d):
                st["momentum_buffer"] = torch.empty_like(di)
        bufs = [st["momentum_buffer"] for st in states]
    torch._fused_sgd_(params, list(d), bufs, weight_decay=epoch_decay + weight_decay, momentum=momentum, lr=lr,
                      dampening=dampening, nesterov=False, maximize=False, is_first_step=first)


def _adam_device(params: list[Tensor], d: list[Tensor], states: list[dict[str, Any]], *, lr: float, beta1: float,
                 beta2: float, eps: float) -> None:
    """The adam branch of :func:`pesg_update_foreach` with ``adam_step`` as 0-dim tensors (no host read; equal up to
    rounding: the bias corrections are tensors)."""
    steps = [st["adam_step"] for st in states]
    torch._foreach_add_(steps, 1)
    exp_avg = [st["exp_avg"] for st in states]
    exp_avg_sq = [st["exp_avg_sq"] for st in states]
    torch._foreach_lerp_(exp_avg, d, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, d, d, value=1.0 - beta2)
    for p, m, v, t in zip(params, exp_avg, exp_avg_sq, steps):
        tf = t.to(p.dtype)
        denom = v.sqrt().div_(torch.sqrt(1.0 - beta2**tf)).add_(eps)
        p.addcdiv_(m, denom * (1.0 - beta1**tf), value=-lr)


class PESG(AUCOptimizer):
    """Proximal epoch stochastic gradient (descent-ascent) for the AUC-M min-max problem.

    Solves ``min_{w, a, b} max_{alpha >= 0} F(w, a, b, alpha)`` of :class:`~xrisk.losses.AUCMLoss`.
    Each :meth:`step`, for every primal parameter ``v`` (model weights, ``loss.a``, ``loss.b``)
    with a gradient ``g``:

    .. math::

        d = \\operatorname{clip}(g, \\pm c) + \\lambda_0 (v - v_{\\mathrm{ref}}) + \\lambda v,
        \\qquad \\text{sgd: } u \\leftarrow \\mu u + (1 - \\delta) d,\\; v \\leftarrow v - \\eta u

    (``c`` = ``clip_value`` element-wise, ``lambda_0`` = ``epoch_decay``, ``lambda`` =
    ``weight_decay``, ``mu`` = ``momentum``, ``delta`` = ``dampening``, ``eta`` = the group's
    ``lr``; the first step sets ``u = d``; ``mode="adam"`` runs bias-corrected Adam on ``d``
    instead), and for the dual variable projected gradient **ascent**

    .. math::

        \\alpha \\leftarrow \\max\\big(0, \\alpha + \\eta_\\alpha\\, \\partial F / \\partial \\alpha\\big).

    ``dF/dalpha`` is the exact batch gradient autograd leaves in ``loss.alpha.grad``:
    ``2 (m + mean_- f - mean_+ f) - 2 alpha`` for ``v2`` and
    ``2 (p(1-p) m + p q_- mean_- f - (1-p) q_+ mean_+ f) - 2 p(1-p) alpha`` for ``v1`` (``q_+-``
    the batch class fractions; this is ``p(1-p)`` times the ``v2`` value when ``p`` is the batch
    ratio), divided by the number of contributing tasks in multi-label mode
    (:func:`xrisk.functional.aucm.aucm_alpha_grad`). LibAUC instead plugs ``a, b`` in place of the
    class means (``2 (m + b - a) - 2 alpha`` for both versions); ``alpha`` is not clipped, has no
    momentum and no decay.

    **Momentum convention.** ``momentum`` follows ``torch.optim.SGD``: ``u <- mu u + (1-delta) d``.
    LibAUC's PESG uses the inverted ``u <- (1 - m) u + m d`` (``m = 0.9`` puts 0.9 on the *new*
    gradient). LibAUC's ``momentum=m`` is reproduced exactly (first step included) by
    ``momentum=1-m, dampening=1-m``; e.g. LibAUC's default 0.9 is ``momentum=0.1,
    dampening=0.1`` here. The default here (``momentum=0.9, dampening=0``) is torch's heavy ball,
    whose effective step is ``lr / (1 - momentum)``.

    **Stagewise proximal point.** Call :meth:`update_regularizer` (e.g. at fixed epochs) to
    divide every group's ``lr`` by ``decay_factor`` and move each ``v_ref`` to the mean of the
    iterates since the previous call. ``v_ref`` starts at the initial weights (LibAUC: random
    ``N(0, 0.01^2)`` noise).

    Parameter groups are honoured: every option may differ per group. ``loss.a, loss.b`` join a
    group of their own with the defaults unless ``params`` already contains them; ``loss.alpha``
    always forms the last group (``"dual": True``, ``lr = alpha_lr or lr``). ``params`` may contain
    the loss's parameters, e.g. ``PESG(model.parameters(), loss=model.loss)`` with the loss as a
    submodule of the model (the Lightning pattern): ``a, b`` then stay in their group and ``alpha``
    is moved to the dual group, so each is updated once, by its own rule (the result is the same as
    with the loss outside the model).

    Implementation: each :meth:`step` buckets the primal parameters of all groups by equal
    hyper-parameters and counters and updates every bucket with one set of ``torch._foreach_*``
    ops (:func:`pesg_update_foreach`, like ``torch.optim.SGD``/``Adam``'s foreach path); in sgd mode on the CPU or
    CUDA (eager) the decay, momentum and parameter update of a bucket are one ``torch._fused_sgd_`` call (the kernel
    of ``torch.optim.SGD(fused=True)``).

    State (``optimizer.state``, in ``state_dict``): per primal parameter ``ref``,
    ``iterate_avg``, ``avg_count`` and ``momentum_buffer`` (sgd) or ``adam_step``, ``exp_avg``,
    ``exp_avg_sq`` (adam). Device follows the parameters (no device argument). Under
    ``torch.distributed`` no communication is needed: DDP averages the model gradients and
    ``AUCMLoss`` computes the global-batch loss, so ``a, b, alpha`` get identical gradients on
    every rank.

    Args:
        params: model parameters or parameter groups (dicts).
        loss: the :class:`~xrisk.losses.AUCMLoss` whose ``a, b, alpha`` are optimised.
        lr: learning rate ``eta`` (> 0).
        momentum: ``mu`` in ``[0, 1)`` (sgd mode).
        dampening: ``delta`` in ``[0, 1)`` (sgd mode).
        weight_decay: ``lambda >= 0``.
        epoch_decay: ``lambda_0 >= 0``, weight of the proximal term.
        clip_value: element-wise gradient clip ``c > 0``, or ``None`` for no clipping.
        mode: ``"sgd"`` or ``"adam"``.
        betas, eps: Adam's coefficients (adam mode).
        alpha_lr: step size of the dual ascent (``None``: ``lr``).

    Example:
        >>> import torch
        >>> from xrisk.losses import AUCMLoss
        >>> from xrisk.optim import PESG
        >>> model = torch.nn.Linear(3, 1)
        >>> loss_fn = AUCMLoss()
        >>> opt = PESG(model.parameters(), loss=loss_fn, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> opt.zero_grad(); loss_fn(torch.sigmoid(model(x)).squeeze(1), y).backward(); opt.step()
        >>> opt.update_regularizer(decay_factor=10)

    Paper: Yuan, Yan, Sonka, Yang, "Large-scale Robust Deep AUC Maximization: A New Surrogate
    Loss and Empirical Studies on Medical Image Classification", ICCV 2021, arXiv:2012.03173.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        loss: AUCMLoss,
        lr: float = 0.1,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 1e-5,
        epoch_decay: float = 2e-3,
        clip_value: float | None = 1.0,
        mode: Literal["sgd", "adam"] = "sgd",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        alpha_lr: float | None = None,
    ) -> None:
        if not isinstance(loss, AUCMLoss):
            raise TypeError(f"PESG optimises an AUCMLoss, got {type(loss).__name__}")
        for name, v in (("momentum", momentum), ("dampening", dampening), ("beta1", betas[0]), ("beta2", betas[1])):
            if not 0.0 <= float(v) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        defaults = dict(
            lr=check_positive("lr", lr),
            momentum=float(momentum),
            dampening=float(dampening),
            weight_decay=check_positive("weight_decay", weight_decay, allow_zero=True),
            epoch_decay=check_positive("epoch_decay", epoch_decay, allow_zero=True),
            clip_value=None if clip_value is None else check_positive("clip_value", clip_value),
            mode=check_choice("mode", mode, ("sgd", "adam")),
            betas=(float(betas[0]), float(betas[1])),
            eps=check_positive("eps", eps, allow_zero=True),
        )
        super().__init__(params, loss, defaults, alpha_lr)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One descent step on the primal groups and one ascent step on ``alpha``."""
        out = None
        if closure is not None:
            with torch.enable_grad():
                out = closure()
        for group in self.param_groups:
            if group["dual"]:
                self._dual_step(group)
            else:
                check_choice("mode", group["mode"], ("sgd", "adam"))
        for group, params, grads, states in self._primal_buckets(_HYPER, ("momentum_buffer", "adam_step")):
            pesg_update_foreach(
                params, grads, states, lr=group["lr"], mode=group["mode"], momentum=group["momentum"],
                dampening=group["dampening"], betas=group["betas"], eps=group["eps"],
                weight_decay=group["weight_decay"], epoch_decay=group["epoch_decay"],
                clip_value=group["clip_value"],
            )
        return out
