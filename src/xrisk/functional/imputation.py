"""Masked-value imputation loss: mean squared error over the hidden values only."""

from __future__ import annotations

import torch
from torch import Tensor

from xrisk._validate import check_finite

__all__ = ["masked_mse"]


def masked_mse(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of ``prediction`` against ``target`` over the entries where ``mask`` is True.

    .. math::

        L = \\frac{1}{|M|} \\sum_{k \\in M} (\\hat x_k - x_k)^2,\\qquad M = \\{k : \\text{mask}_k\\}

    Only the masked entries count: visible values and padding never enter the loss or its gradient
    (entries outside the mask may even hold NaN in ``target``). With an empty mask the result is a
    graph-connected zero. Shapes: ``prediction``, ``target``, ``mask`` alike (e.g. ``[B, L]``) -> scalar.

    Raises:
        ValueError: shapes differ, ``mask`` is not bool, or a masked entry is NaN/inf.

    Example:
        >>> p = torch.tensor([[1.0, 2.0], [0.0, 5.0]]); t = torch.tensor([[0.0, 2.0], [9.0, 3.0]])
        >>> float(masked_mse(p, t, torch.tensor([[True, False], [False, True]])))   # (1 + 4) / 2
        2.5

    Paper: the masked-value prediction objective of King et al., arXiv:2410.09199.
    """
    if prediction.shape != target.shape or mask.shape != prediction.shape:
        raise ValueError(
            f"prediction, target and mask must have one shape, got {tuple(prediction.shape)}, "
            f"{tuple(target.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    p, t = prediction[mask], target[mask]
    check_finite("prediction (masked entries)", p)
    check_finite("target (masked entries)", t)
    if p.numel() == 0:
        return p.sum()  # a connected zero (the sum of no entries)
    return (p - t).square().mean()
