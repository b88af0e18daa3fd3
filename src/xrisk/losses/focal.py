"""Binary focal loss on logits (a baseline for imbalanced classification)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk._validate import check_finite, check_positive, check_unit_interval

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    """Binary focal loss, averaged over all entries.

    .. math::

        \\mathrm{FL} = \\frac{1}{|S|} \\sum_{i \\in S} -\\alpha_t (1 - p_t)^{\\gamma} \\log p_t,
        \\qquad p_t = \\begin{cases} \\sigma(z_i) & y_i = 1 \\\\ 1 - \\sigma(z_i) & y_i = 0 \\end{cases},
        \\quad \\alpha_t = \\begin{cases} \\alpha & y_i = 1 \\\\ 1 - \\alpha & y_i = 0 \\end{cases}

    where ``z`` are the ``logits`` (not sigmoid scores), ``gamma`` down-weights easy examples
    (``gamma = 0`` and ``alpha = 0.5`` give half the binary cross-entropy) and ``alpha`` weighs
    the positive class (``alpha=None`` gives ``alpha_t = 1``). ``log p_t`` is computed as
    ``-BCEWithLogits`` for numerical stability. No state. An empty batch (no entries) gives a
    graph-connected zero, not the NaN of an empty mean.

    Args:
        alpha: weight of the positives in ``[0, 1]``, or ``None`` for no class weighting.
        gamma: focusing parameter ``>= 0``.

    Shapes: ``logits`` any shape, ``targets`` the same shape with 0/1 values; returns a scalar.

    Example:
        >>> import torch
        >>> from xrisk.losses import FocalLoss
        >>> FocalLoss()(torch.tensor([2.0, -1.0]), torch.tensor([1, 0])).shape
        torch.Size([])

    Paper: Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection", ICCV 2017
    (arXiv:1708.02002).
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = None if alpha is None else check_unit_interval("alpha", alpha, closed_left=True)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean focal loss of ``logits`` against binary ``targets`` (same shape)."""
        if not logits.is_floating_point():
            raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
        if targets.shape != logits.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}")
        check_finite("logits", logits)
        y = targets.to(logits.dtype)
        if not ((y == 0) | (y == 1)).all():
            raise ValueError("targets must be binary (0/1); got values outside {0, 1}")
        if logits.numel() == 0:  # the mean of nothing: a connected zero, like every xrisk loss
            return logits.sum() * 0.0
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # -log p_t
        p_t = torch.exp(-ce)
        loss = (1.0 - p_t).pow(self.gamma) * ce
        if self.alpha is not None:
            loss = (self.alpha * y + (1.0 - self.alpha) * (1.0 - y)) * loss
        return loss.mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
