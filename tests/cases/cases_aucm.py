"""Conformance cases of the AUC-M family: AUCMLoss (v1, v2, multi-label) and CompositionalAUCLoss."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from cases import LossCase
from xrisk.functional.aucm import aucm_objective, aucm_surrogate
from xrisk.losses import AUCMLoss, CompositionalAUCLoss


def _batch(num_tasks: int) -> Callable[[int], tuple]:
    """Sigmoid scores (AUC-M expects [0, 1]) with both classes in every task; index passed, unused."""

    def batch(seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        scores = torch.sigmoid(torch.randn(12, num_tasks, generator=g))
        targets = torch.rand(12, num_tasks, generator=g) < 0.3
        targets[0], targets[1] = True, False
        index = torch.arange(12)
        if num_tasks == 1:
            return scores[:, 0], targets[:, 0].float(), index
        return scores, targets.float(), index

    return batch


def _empty(num_tasks: int) -> Callable[[], tuple]:
    def empty() -> tuple:
        shape = (6,) if num_tasks == 1 else (6, num_tasks)
        return torch.rand(shape), torch.zeros(shape), torch.arange(6)

    return empty


def _gradcheck() -> None:
    """float64 gradchecks (and gradgradchecks) of the AUC-M kernels w.r.t. scores, a, b and alpha (v1, v2, fixed p)."""
    g = torch.Generator().manual_seed(3)
    s = torch.rand(10, 3, generator=g, dtype=torch.float64)
    y = torch.rand(10, 3, generator=g) < 0.4
    y[0], y[1] = True, False
    a, b, al = (torch.rand(3, generator=g, dtype=torch.float64) for _ in range(3))
    # tasks=3 takes the einsum path, tasks=1 the addmv/dot path; both are native autograd ops, so
    # second derivatives are checked too
    for tasks in (3, 1):
        yt = y[:, :tasks]
        for version, p in (("v2", None), ("v1", None), ("v1", 0.2)):
            for reduction in ("none", "sum"):
                def fn(s_: Tensor, a_: Tensor, b_: Tensor, al_: Tensor, version: str = version,
                       p: float | None = p, reduction: str = reduction, yt: Tensor = yt) -> Tensor:
                    return aucm_surrogate(s_, yt, a_, b_, al_, margin=0.7, version=version, p=p,  # type: ignore[arg-type]
                                          reduction=reduction)  # type: ignore[arg-type]

                inputs = tuple(t[..., :tasks].clone().requires_grad_(True) for t in (s, a, b, al))
                assert torch.autograd.gradcheck(fn, inputs)
                assert torch.autograd.gradgradcheck(fn, inputs)
    for margin in (1.0, 0.05):  # hinge inactive / active
        assert torch.autograd.gradcheck(lambda s_, m=margin: aucm_objective(s_, y, margin=m),
                                        (s.clone().requires_grad_(True),))


CASES = [
    LossCase("AUCMLoss-v2", lambda: AUCMLoss(), _batch(1), empty_batch=_empty(1), gradcheck=_gradcheck),
    LossCase("AUCMLoss-v1", lambda: AUCMLoss(0.8, version="v1", imratio=0.25), _batch(1), empty_batch=_empty(1)),
    LossCase("AUCMLoss-v1-batch-ratio", lambda: AUCMLoss(version="v1"), _batch(1), empty_batch=_empty(1)),
    LossCase("AUCMLoss-T3", lambda: AUCMLoss(num_tasks=3), _batch(3), empty_batch=_empty(3)),
    LossCase("AUCMLoss-v1-T3", lambda: AUCMLoss(0.5, num_tasks=3, version="v1"), _batch(3), empty_batch=_empty(3)),
    LossCase("CompositionalAUCLoss", lambda: CompositionalAUCLoss(k=1), _batch(1), empty_batch=_empty(1)),
    LossCase("CompositionalAUCLoss-k2-T3", lambda: CompositionalAUCLoss(k=2, num_tasks=3, version="v1"),
             _batch(3), empty_batch=_empty(3)),
]
