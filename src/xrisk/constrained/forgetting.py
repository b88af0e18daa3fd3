"""Non-forgetting constraints for continual learning (``non_forgetting_constraints``)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_finite, check_positive
from xrisk.constrained.problem import Constraints

__all__ = ["non_forgetting_constraints"]


def _check_batch(losses_now: Tensor, losses_before: Tensor, groups: Tensor,
                 num_groups: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's checks: ``(losses_now, losses_before detached, groups int64)``."""
    if not isinstance(losses_now, Tensor) or not losses_now.is_floating_point():
        raise TypeError("losses_now must be a floating-point tensor")
    if losses_now.dim() != 1 or losses_before.shape != losses_now.shape or groups.shape != losses_now.shape:
        raise ValueError(f"losses_now, losses_before and groups must all be [B]; got {tuple(losses_now.shape)}, "
                         f"{tuple(losses_before.shape)}, {tuple(groups.shape)}")
    if groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise TypeError(f"groups must hold integer task ids, got dtype {groups.dtype}")
    check_finite("losses_now", losses_now)
    check_finite("losses_before", losses_before)
    groups = groups.long()
    if groups.numel():
        lo, hi = torch.aminmax(groups)
        lo, hi = int(lo), int(hi)
        if lo < 0 or (num_groups is not None and hi >= num_groups):
            raise IndexError(f"task id {lo if lo < 0 else hi} is out of range for num_groups={num_groups}")
    return losses_now, losses_before.detach().to(losses_now.device), groups


def non_forgetting_constraints(
    losses_now: Tensor,
    losses_before: Tensor,
    groups: Tensor,
    slack: float = 0.0,
    *,
    num_groups: int | None = None,
    gather: bool = True,
) -> Constraints:
    """One constraint per earlier task: its loss now is at most the earlier model's loss plus a slack.

    For each task (group) ``t`` present in the batch, with ``M_t`` its memory samples,

    .. math::

        g_t(x) = \\frac{1}{|M_t|} \\sum_{j \\in M_t} \\big(\\ell_j(x) - \\ell_j(x_{\\text{before}})\\big)
                 - \\text{slack} \\le 0 ,

    where ``ell_j(x_before)`` is the loss of sample ``j`` under the model saved when task ``t`` was
    learned (computed once, by the caller, under ``no_grad``). This is the "don't forget protected
    tasks" constraint of the authors' DevSafety code and of the continual-learning experiment of
    arXiv:2504.15243 (reconstructed).

    Args:
        losses_now: ``[B]`` per-sample losses of the current model (with graph).
        losses_before: ``[B]`` the same samples' losses under the earlier model (detached).
        groups: ``[B]`` int64 task id of each sample, in ``[0, num_groups)``.
        slack: allowed increase ``>= 0``.
        num_groups: number of tasks (constraint ids run over ``[0, num_groups)``); default: no bound
            check beyond ``>= 0``.
        gather: under ``torch.distributed``, compute on the global batch (``"sum"`` gradient policy).

    Returns:
        :class:`~xrisk.constrained.Constraints` ``(values [k], index [k])`` over the ``k`` tasks present,
        in increasing task order.

    Example:
        >>> now = torch.tensor([1.0, 2.0, 0.5])
        >>> c = non_forgetting_constraints(now, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 2]), 0.1)
        >>> [round(v, 4) for v in c.values.tolist()], c.index.tolist()
        ([0.4, -0.6], [0, 2])
    """
    slack = check_positive("slack", slack, allow_zero=True)
    check = functools.partial(_check_batch, losses_now, losses_before, groups, num_groups)
    if gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
        (now, before, groups), layout = xdist.agree_on_batch(
            "non_forgetting_constraints", check, lambda o: {"losses_now": o[0], "losses_before": o[1], "groups": o[2]})
        now = xdist.all_gather(now, grad="sum", sizes=layout.sizes)
        before = xdist.all_gather_no_grad(before, sizes=layout.sizes)
        groups = xdist.all_gather_no_grad(groups, sizes=layout.sizes)
    else:
        now, before, groups = check()
    if groups.numel() == 0:
        return Constraints(now.sum().reshape(1)[:0] * 0.0, groups)
    index, inverse = torch.unique(groups.long(), sorted=True, return_inverse=True)
    diff = now - before.to(now.dtype)
    sums = torch.zeros(index.numel(), dtype=diff.dtype, device=diff.device).index_add(0, inverse, diff)
    counts = torch.bincount(inverse, minlength=index.numel()).to(diff.dtype)
    return Constraints(sums / counts - slack, index)
