"""Conformance case of FocalLoss (stateless; its value is the objective, so it has no ``objective()``)."""

from __future__ import annotations

import torch

from cases import LossCase
from xrisk.losses import FocalLoss


def _batch(seed: int) -> tuple:
    """Logits ``[12, 2]`` (any shape works) and 0/1 targets with both classes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, 2, generator=g) * 2
    targets = (torch.rand(12, 2, generator=g) < 0.3).float()
    targets[0], targets[1] = 1.0, 0.0
    return logits, targets


def _empty() -> tuple:
    """No entries at all (a batch without positives is an ordinary batch for a per-entry loss)."""
    return torch.empty(0, 2), torch.empty(0, 2)


def _gradcheck() -> None:
    """float64 gradcheck and gradgradcheck of the loss (a pure function of the logits), with and without alpha."""
    g = torch.Generator().manual_seed(11)
    z = (torch.randn(7, 3, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    y = (torch.rand(7, 3, generator=g) < 0.4).double()
    for loss in (FocalLoss(), FocalLoss(alpha=None, gamma=0.5), FocalLoss(alpha=0.7, gamma=0.0)):
        assert torch.autograd.gradcheck(lambda t, loss=loss: loss(t, y), (z,))
        assert torch.autograd.gradgradcheck(lambda t, loss=loss: loss(t, y), (z,))


CASES = [
    LossCase("FocalLoss", lambda: FocalLoss(), _batch, empty_batch=_empty, gradcheck=_gradcheck),
    LossCase("FocalLoss-no-alpha", lambda: FocalLoss(alpha=None, gamma=1.0), _batch, empty_batch=_empty),
]
