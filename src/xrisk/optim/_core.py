"""What PESG and PDSCA share: parameter-group assembly, the proximal gradient, dual ascent, stagewise reset.

Every primal parameter ``w`` (model parameters and the loss's ``a, b``) uses the direction

.. math::

    d = \\operatorname{clip}(g, \\pm c) + \\lambda_0 (w - w_{\\mathrm{ref}}) + \\lambda w

(``c`` = ``clip_value``, element-wise; ``lambda_0`` = ``epoch_decay``, the proximal term of the
stagewise proximal-point scheme; ``lambda`` = ``weight_decay``). Per-parameter optimizer state
(all in ``optimizer.state``, so ``optimizer.state_dict()`` checkpoints it):

* ``ref``: the reference point ``w_ref``, initialised at the initial weights (LibAUC draws it
  from ``N(0, 0.01^2)`` instead, so before its first reset ``epoch_decay`` acts as a weight
  decay toward ~0);
* ``iterate_avg``, ``avg_count``: running mean of the iterates since the last reset.

The step counters (``avg_count``, PESG's ``adam_step``) are host ints; with validation off
(:func:`xrisk.set_validation`) a step turns them into 0-dim ``int64`` tensors on the parameter's device
(same values), so the step reads nothing back and ``torch.compile`` does not specialise on them (a
host int that changes every step would recompile every step). Both forms load and train.

:meth:`AUCOptimizer.update_regularizer` divides the learning rates and moves ``w_ref`` to the
running mean of the iterates (then resets the mean). The dual variable ``alpha`` of the loss
lives in its own parameter group (``"dual": True``) and takes projected gradient **ascent**
``alpha <- max(0, alpha + lr * dF/dalpha)`` on the gradient autograd left in ``alpha.grad``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from xrisk._validate import check_positive, validation_enabled

__all__ = [
    "AUCOptimizer",
    "proximal_direction",
    "proximal_direction_foreach",
    "record_iterate",
    "record_iterate_foreach",
    "dual_ascent_",
    "device_counter",
]


def device_counter(state: dict[str, Any], key: str, like: Tensor) -> Tensor:
    """``state[key]`` as a 0-dim ``int64`` tensor on ``like``'s device (a host int is converted once, in place)."""
    count = state[key]
    if not isinstance(count, Tensor):
        count = state[key] = torch.tensor(int(count), dtype=torch.int64, device=like.device)
    return count


def proximal_direction(
    p: Tensor, grad: Tensor, state: dict[str, Any], *, clip_value: float | None, weight_decay: float,
    epoch_decay: float,
) -> Tensor:
    """``clip(g, +-c) + epoch_decay (p - ref) + weight_decay p`` (a new tensor)."""
    d = grad.clamp(-clip_value, clip_value) if clip_value is not None else grad.clone()
    if epoch_decay != 0.0:
        d.add_(p - state["ref"], alpha=epoch_decay)
    if weight_decay != 0.0:
        d.add_(p, alpha=weight_decay)
    return d


def proximal_direction_foreach(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], *, clip_value: float | None,
    weight_decay: float, epoch_decay: float,
) -> list[Tensor]:
    """:func:`proximal_direction` of a list of parameters with ``torch._foreach_*`` ops (new tensors).

    ``epoch_decay (p - ref) + weight_decay p`` is applied as ``(epoch_decay + weight_decay) p -
    epoch_decay ref`` (two list ops instead of three; equal up to rounding).
    """
    if clip_value is not None:
        d = torch._foreach_clamp_min(grads, -clip_value)
        torch._foreach_clamp_max_(d, clip_value)
    else:
        d = torch._foreach_mul(grads, 1.0)
    if epoch_decay != 0.0:
        torch._foreach_add_(d, params, alpha=epoch_decay + weight_decay)
        torch._foreach_add_(d, [st["ref"] for st in states], alpha=-epoch_decay)
    elif weight_decay != 0.0:
        torch._foreach_add_(d, params, alpha=weight_decay)
    return list(d)


def record_iterate_foreach(params: list[Tensor], states: list[dict[str, Any]]) -> None:
    """:func:`record_iterate` of a list of parameters that share ``avg_count`` (one ``lerp`` list op)."""
    if isinstance(states[0]["avg_count"], Tensor):  # device counters (validation off): no host read
        counts = [st["avg_count"] for st in states]
        torch._foreach_add_(counts, 1)
        weights = torch._foreach_reciprocal(counts)  # float32 0-dim tensors
        if any(p.dtype != w.dtype for p, w in zip(params, weights)):
            weights = [w.to(p.dtype) for w, p in zip(weights, params)]
        torch._foreach_lerp_([st["iterate_avg"] for st in states], params, list(weights))
        return
    count = states[0]["avg_count"] + 1
    for st in states:
        st["avg_count"] = count
    torch._foreach_lerp_([st["iterate_avg"] for st in states], params, 1.0 / count)


def record_iterate(p: Tensor, state: dict[str, Any]) -> None:
    """Fold the new iterate ``p`` into the running mean ``iterate_avg`` (count ``avg_count``)."""
    if isinstance(state["avg_count"], Tensor):  # device counter (validation off): no host read
        state["avg_count"].add_(1)
        state["iterate_avg"].lerp_(p, (1.0 / state["avg_count"]).to(p.dtype))
        return
    state["avg_count"] += 1
    state["iterate_avg"].add_(p - state["iterate_avg"], alpha=1.0 / state["avg_count"])


def dual_ascent_(alpha: Tensor, grad: Tensor, lr: float) -> None:
    """In place ``alpha <- max(0, alpha + lr * grad)`` (projected gradient ascent)."""
    alpha.add_(grad, alpha=lr).clamp_(min=0.0)


def _as_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if isinstance(items[0], dict):
        groups = [dict(g) for g in items]
        for g in groups:
            ps = g["params"]
            g["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        return groups
    return [{"params": items}]


def _route_dual(groups: list[dict[str, Any]], alpha: Tensor) -> list[dict[str, Any]]:
    """``groups`` without the dual variable ``alpha``, which gets its own ascent group.

    ``params`` may contain the loss's parameters (e.g. ``model.parameters()`` when the loss is a
    submodule of the model, the Lightning pattern): ``a, b`` stay in the group they came in,
    ``alpha`` is taken out of it (a group left empty is dropped).
    """
    out = []
    for g in groups:
        kept = [p for p in g["params"] if p is not alpha]
        if len(kept) == len(g["params"]):
            out.append(g)
        elif kept:
            out.append({**g, "params": kept})
    if not out:
        raise ValueError("optimizer got no parameter besides loss.alpha")
    return out


class AUCOptimizer(torch.optim.Optimizer):
    """Base of PESG and PDSCA: groups, proximal state, ``update_regularizer``. Not public."""

    def __init__(self, params: Iterable[Any], loss: nn.Module, defaults: dict[str, Any],
                 alpha_lr: float | None) -> None:
        for name in ("a", "b", "alpha"):
            if not isinstance(getattr(loss, name, None), nn.Parameter):
                raise TypeError(
                    f"loss must be an AUCMLoss-like module with parameter `{name}`, got {type(loss).__name__}"
                )
        groups = _route_dual(_as_groups(params), loss.alpha)
        seen = {id(p) for g in groups for p in g["params"]}
        missing = [p for p in (loss.a, loss.b) if id(p) not in seen]
        if missing:
            groups.append({"params": missing})
        dual_lr = defaults["lr"] if alpha_lr is None else check_positive("alpha_lr", alpha_lr, allow_zero=True)
        groups.append({"params": [loss.alpha], "lr": dual_lr, "dual": True})
        super().__init__(groups, {**defaults, "dual": False})
        self.loss = loss
        for group in self.param_groups:
            if not group["dual"]:
                for p in group["params"]:
                    self._init_proximal(p)

    def _init_proximal(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if "ref" not in state:
            state["ref"] = p.detach().clone()
            state["iterate_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["avg_count"] = 0
        return state

    def _primal_buckets(
        self, keys: tuple[str, ...], state_keys: tuple[str, ...], skip: set[int] | None = None
    ) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[dict[str, Any]]]]:
        """Primal parameters with a gradient, bucketed across groups by equal hyper-parameters
        ``keys`` and equal per-parameter counters ``state_keys``: each bucket is
        ``(group, params, grads, states)`` and can be updated with one set of ``_foreach`` ops."""
        buckets: dict[tuple[Any, ...], tuple[dict[str, Any], list[Tensor], list[Tensor], list[dict[str, Any]]]] = {}
        flag, counters = state_keys[0], state_keys[1:]
        device = not validation_enabled()
        all_state = self.state
        for group in self.param_groups:
            if group["dual"]:
                continue
            hyper = tuple([group[k] for k in keys])
            for p in group["params"]:
                grad = p.grad
                if grad is None or (skip is not None and id(p) in skip):
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = all_state[p]
                if "ref" not in state:
                    state = self._init_proximal(p)
                if device:  # one bucket per hyper-parameters: the counters are per-parameter tensors
                    for k in ("avg_count", *counters):
                        if k in state:
                            device_counter(state, k, p)
                    key = (hyper, flag in state, *[k in state for k in counters])
                else:
                    key = (hyper, flag in state, state["avg_count"], *[state.get(k) for k in counters])
                bucket = buckets.get(key)
                if bucket is None:
                    bucket = buckets[key] = (group, [], [], [])
                bucket[1].append(p)
                bucket[2].append(grad)
                bucket[3].append(state)
        return list(buckets.values())

    def _dual_step(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            if p.grad is not None:
                dual_ascent_(p, p.grad, group["lr"])

    @torch.no_grad()
    def update_regularizer(self, decay_factor: float | None = None) -> None:
        """End a stage: divide every group's ``lr`` by ``decay_factor`` (if given) and set each
        reference point ``w_ref`` to the mean of the iterates since the last call (then reset it).

        Parameters that were never updated keep their reference point.
        """
        if decay_factor is not None:
            self._divide("lr", decay_factor, "decay_factor")
        for group in self.param_groups:
            if group["dual"]:
                continue
            for p in group["params"]:
                state = self._init_proximal(p)
                if state["avg_count"] > 0:
                    state["ref"].copy_(state["iterate_avg"])
                state["iterate_avg"].zero_()
                if isinstance(state["avg_count"], Tensor):
                    state["avg_count"].zero_()
                else:
                    state["avg_count"] = 0

    def update_lr(self, decay_factor: float) -> None:
        """Divide every group's ``lr`` by ``decay_factor`` (reference points unchanged)."""
        self._divide("lr", decay_factor, "decay_factor")

    def _divide(self, key: str, factor: float, name: str) -> None:
        f = check_positive(name, factor)
        for group in self.param_groups:
            group[key] = group[key] / f
