"""Gathering across processes, with an explicit gradient policy.

Every helper here is a no-op (returns its input) when ``torch.distributed`` is not
initialised or the world has one process, so single-process code needs nothing special.
Tensors of different lengths on different ranks (uneven last batches) are supported:
they are padded for the collective and trimmed afterwards.

Gradient policies of :func:`all_gather`:

``grad="none"``
    Concatenation without autograd (state, labels, indices).
``grad="sum"``
    Autograd-aware gather. In backward, the gradients that *all* ranks computed for the
    gathered tensor are summed (an ``all_reduce``) and each rank keeps the rows of its own
    input. This is the policy that makes a global loss exact under DDP:

    *Why it is exact.* Let every rank compute the same global-batch loss ``L`` from the
    gathered tensor. Rank ``k``'s input rows ``x_k`` then receive
    ``sum_r dL/dx_k = K * dL/dx_k`` (``K`` = world size), so its parameter gradient is
    ``K * (dL/dx_k)(dx_k/dtheta)``. DDP averages parameter gradients over ranks:
    ``(1/K) sum_k K (dL/dx_k)(dx_k/dtheta) = dL/dtheta``, the single-process gradient on the
    concatenated batch. Parameters outside DDP that enter ``L`` directly (e.g. the AUC-M
    ``a, b, alpha``) get ``dL/dtheta`` on every rank without any reduction.

    The same policy is exact when rank ``k`` computes only the part ``L_k`` of a loss with
    ``sum_k L_k = K * L`` (local anchors against gathered negatives, scaled by ``K``):
    then the summed gradients are again ``K * dL/dx_k``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "all_gather",
    "all_gather_no_grad",
    "all_reduce_sum",
    "gather_sizes",
    "local_slice",
]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Leading sizes of every rank's tensor, in rank order."""
    if not is_distributed():
        return [n]
    t = torch.tensor([n], dtype=torch.long, device=device or _comm_device())
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(o.item()) for o in out]


def local_slice(n: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's ``n`` rows inside a gathered tensor."""
    sizes = gather_sizes(n)
    start = sum(sizes[: rank()])
    return start, start + n


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` of every rank along dim 0 (sizes may differ)."""
    orig_device = x.device
    dev = _comm_device()
    xb = x.to(dev)
    if xb.dtype == torch.bool:
        xb = xb.to(torch.uint8)
    m = max(sizes)
    if xb.shape[0] < m:
        pad = torch.zeros((m - xb.shape[0], *xb.shape[1:]), dtype=xb.dtype, device=dev)
        xb = torch.cat([xb, pad], 0)
    bufs = [torch.empty_like(xb) for _ in sizes]
    dist.all_gather(bufs, xb.contiguous())
    out = torch.cat([b[:s] for b, s in zip(bufs, sizes)], 0)
    if x.dtype == torch.bool:
        out = out.to(torch.bool)
    return out.to(orig_device)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, without autograd."""
    if not is_distributed():
        return x
    with torch.no_grad():
        return _gather_padded(x.detach(), gather_sizes(x.shape[0]))


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (no autograd); returns ``x`` when not distributed."""
    if not is_distributed():
        return x
    y = x.detach().clone().to(_comm_device())
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


class _GatherSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        sizes = gather_sizes(x.shape[0])
        ctx.sizes = sizes
        ctx.rank = rank()
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        g = grad.contiguous().to(_comm_device())
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]].to(grad.device)


def all_gather(x: Tensor, *, grad: Literal["sum", "none"]) -> Tensor:
    """Concatenate ``x`` (``[B_k, ...]`` on rank ``k``) from all ranks along dim 0.

    Args:
        x: this rank's tensor; leading sizes may differ between ranks.
        grad: gradient policy, ``"sum"`` or ``"none"`` (see the module docstring).

    Returns:
        ``[sum_k B_k, ...]`` in rank order; ``x`` itself when not distributed.
    """
    if grad not in ("sum", "none"):
        raise ValueError(f"grad policy must be 'sum' or 'none', got {grad!r}")
    if not is_distributed():
        return x
    if grad == "none" or not x.requires_grad:
        return all_gather_no_grad(x)
    return _GatherSum.apply(x)
