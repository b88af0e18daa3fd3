"""Token budget and contrastive views of one stay's ``(time, variable, value)`` sequence.

All functions take the sequence length ``n`` or its tensors and a ``torch.Generator`` (so a run
seeded per epoch repeats exactly on resume) and keep the time order of the tokens.

* :func:`ordered_subsample`: the **token budget**. A stay longer than ``budget`` tokens keeps a
  uniformly random subset of ``budget`` tokens, in time order (the reference's 1024); shorter stays
  are kept whole.
* Local views (:func:`pretraining_views`; one of three, uniformly, per stay and step):
  a contiguous crop of ``crop`` tokens (:func:`contiguous_crop`), an ordered random subset of
  ``crop`` tokens (:func:`ordered_subsample`), or the whole sequence with jittered values
  (:func:`jitter_values`); ``crop = min(crop_size, max(n // 2, 1))`` as in the reference.
* Global view: the whole (budgeted) sequence; ``mask_fraction`` of its values are hidden for the
  masked-value imputation loss (:func:`value_mask`).

**The reference's jitter bug is not copied.** Its jitter view computes ``value + value + noise``
(doubling every value, so the "jittered" view is a different patient); here the view is
``value + noise`` with ``noise ~ N(0, sigma^2 std_v^2)``, ``sigma ~ U(0.1, 0.2)`` per stay and
``std_v`` the variable's standard deviation, i.e. the reference's intended noise of 0.1 to 0.2
standard deviations in normalised units, applied to raw values.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> idx = ordered_subsample(10, 4, g)
    >>> idx.tolist() == sorted(idx.tolist()), idx.numel()
    (True, 4)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Tokens", "ordered_subsample", "contiguous_crop", "jitter_values", "value_mask", "pretraining_views",
           "LOCAL_VIEWS"]

#: The kinds of local view, in the order of their ids.
LOCAL_VIEWS: tuple[str, ...] = ("crop", "subset", "jitter")


class Tokens(NamedTuple):
    """One stay's tokens: ``times [n]`` (float32 hours), ``variables [n]`` (int64 ids >= 1), ``values [n]``."""

    times: Tensor
    variables: Tensor
    values: Tensor

    def take(self, index: Tensor) -> Tokens:
        """The tokens at ``index``."""
        return Tokens(self.times[index], self.variables[index], self.values[index])


def ordered_subsample(n: int, budget: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of a uniformly random subset of ``min(n, budget)`` of ``range(n)``, sorted.

    ``n <= budget`` returns ``arange(n)`` without drawing random numbers.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if n <= budget:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:budget].sort().values


def contiguous_crop(n: int, size: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``start .. start + size - 1`` with a uniform ``start`` (``size <= n``)."""
    if not 1 <= size <= n:
        raise ValueError(f"crop size must be in [1, n={n}], got {size}")
    start = int(torch.randint(0, n - size + 1, (1,), generator=generator))
    return torch.arange(start, start + size)


def jitter_values(values: Tensor, scale: Tensor, generator: torch.Generator | None = None,
                  sigma: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """``values + s * scale * N(0, 1)`` with one ``s ~ U(sigma)`` for the sequence (``scale``: each token's
    variable standard deviation, ``[n]``)."""
    s = sigma[0] + (sigma[1] - sigma[0]) * float(torch.rand((), generator=generator))
    return values + s * scale * torch.randn(values.shape, generator=generator)


def value_mask(n: int, fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """``[n]`` bool, each entry True with probability ``fraction`` (the values to hide and impute)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"mask fraction must be in [0, 1), got {fraction!r}")
    return torch.rand(n, generator=generator) < fraction


def pretraining_views(
    tokens: Tokens,
    *,
    budget: int,
    crop_size: int,
    mask_fraction: float,
    value_std: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tokens, Tensor, Tokens, int]:
    """The global view (with its imputation mask) and a local view of one stay.

    Args:
        tokens: the stay's tokens (time order).
        budget: token budget of the global view (:func:`ordered_subsample`).
        crop_size: the local view's size cap (the reference's 512).
        mask_fraction: fraction of the global view's values hidden for imputation.
        value_std: ``[V + 1]`` standard deviation of each variable id (entry 0 unused), for the jitter.
        generator: the random source.

    Returns:
        ``(global_view, mask [n_global] bool, local_view, kind)`` with ``kind`` an index into
        :data:`LOCAL_VIEWS`. Both views keep time order; the local view is drawn from the budgeted
        global view (as in the reference), so it never holds more tokens than the global one.
    """
    n = int(tokens.times.numel())
    if n < 1:
        raise ValueError("a stay needs at least one token")
    view = tokens.take(ordered_subsample(n, budget, generator))
    m = int(view.times.numel())
    mask = value_mask(m, mask_fraction, generator)
    kind = int(torch.randint(0, len(LOCAL_VIEWS), (1,), generator=generator))
    size = min(crop_size, max(m // 2, 1))
    if kind == 0:
        local = view.take(contiguous_crop(m, size, generator))
    elif kind == 1:
        local = view.take(ordered_subsample(m, size, generator))
    else:
        local = Tokens(view.times, view.variables, jitter_values(view.values, value_std[view.variables], generator))
    return view, mask, local, kind
