"""Random token masking for Myna: keep ``N - int(r N)`` tokens per sample, a different subset each.

Myna's only augmentation is to drop a fraction ``r`` of the patch tokens of each view; the kept
tokens (with their positions) go through the transformer, so the cost of a step falls with the
number of kept tokens. These helpers draw the kept positions; :class:`~xrisk.models.audio.SpectrogramViT`
gathers them.

Example:
    >>> import torch
    >>> from xrisk.models.audio import num_kept_tokens, random_keep_indices
    >>> num_kept_tokens(48, 0.9)                       # 48 - int(43.2)
    5
    >>> random_keep_indices(3, 48, 0.9, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 5])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["num_kept_tokens", "random_keep_indices"]


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """``N - int(r N)``: the reference's count of kept tokens (``r = mask_ratio`` in ``[0, 1)``; at least one is kept).

    Raises:
        ValueError: ``mask_ratio`` outside ``[0, 1)`` or not finite, or ``num_tokens < 1``.
    """
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    r = float(mask_ratio)
    if not math.isfinite(r) or not 0.0 <= r < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio!r}")
    return max(1, num_tokens - int(r * num_tokens))


def random_keep_indices(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sorted positions of the kept tokens, ``[batch_size, N - int(r N)]`` (long), drawn independently per row.

    Each row is a uniformly random subset (the first ``K`` entries of a random permutation, the
    reference's ``torch.randperm`` per sample, drawn here as the ``K`` smallest of ``N`` uniform keys),
    sorted so the kept tokens keep their order. ``generator`` (on the CPU) makes the draw reproducible;
    the result is moved to ``device``.
    """
    k = num_kept_tokens(num_tokens, mask_ratio)
    keys = torch.rand(batch_size, num_tokens, generator=generator)
    idx = keys.argsort(dim=1)[:, :k].sort(dim=1).values
    return idx if device is None else idx.to(device)
