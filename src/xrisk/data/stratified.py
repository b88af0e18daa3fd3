"""Batches with the same number of rows from every stratum (e.g. every (group, label) cell).

A constraint on group rates (``TPR_a - TPR_b <= kappa``, ...) is a difference of means over small
cells of the data: the positives of group ``a``, its negatives, and so on. A plain shuffled batch
holds those cells in their data proportions, so the smallest cell (Adult's women with high income:
3.7 % of the rows, about 9 of a batch of 256) makes the batch's rate estimate noisy. Drawing the
constraint batch with ``k`` rows of every cell makes each cell's rate the mean of ``k`` rows (a
within-cell mean is unbiased under any allocation across cells), so the noise is set by ``k``, not
by the smallest cell's share.

**Draw.** Step ``t`` takes, from every stratum ``s`` with ``n_s`` rows, ``min(k, n_s)`` distinct rows
uniformly at random (all of them when ``n_s <= k``: that cell's rate is then exact); strata are
listed in increasing id order. Steps are drawn independently of each other.

**Randomness.** The batch of step ``t`` is a pure function of ``(seed, t)``, drawn from a private
``torch.Generator``; the global torch / numpy / Python RNGs are never touched. A resumed run that
asks for the same step numbers gets the same batches (there is no state to checkpoint).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["StratifiedBatches"]


class StratifiedBatches:
    """``per_stratum`` rows of every stratum per batch, drawn as a pure function of ``(seed, step)``.

    Args:
        strata: ``[n]`` integer stratum id of every data-set row (e.g. ``label + 2 * group``: the
            four (group, label) cells of a fairness constraint).
        per_stratum: rows drawn from each stratum per batch, ``k >= 1`` (a stratum with fewer rows
            gives all of them).
        seed: base seed, ``>= 0``.

    Attributes:
        strata_ids: ``[S]`` the stratum ids present, increasing.
        batch_size: rows per batch, ``sum_s min(k, n_s)`` (the same for every step).

    Example:
        >>> cells = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
        >>> b = StratifiedBatches(cells, 2, seed=0)
        >>> idx = b.batch(0)
        >>> cells[idx].tolist(), b.batch_size
        ([0, 0, 1, 1, 2, 2, 3], 7)
        >>> torch.equal(b.batch(5), StratifiedBatches(cells, 2, seed=0).batch(5))
        True
    """

    def __init__(self, strata: Tensor, per_stratum: int, *, seed: int = 0) -> None:
        if not isinstance(strata, Tensor) or strata.dim() != 1 or strata.dtype.is_floating_point \
                or strata.dtype.is_complex or strata.dtype == torch.bool:
            raise ValueError(f"strata must be a 1-D integer tensor, got {getattr(strata, 'dtype', type(strata))} "
                             f"of shape {tuple(getattr(strata, 'shape', ()))}")
        if strata.numel() == 0:
            raise ValueError("strata is empty: no rows to draw from")
        if isinstance(per_stratum, bool) or not isinstance(per_stratum, int) or per_stratum < 1:
            raise ValueError(f"per_stratum must be an integer >= 1, got {per_stratum!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        strata = strata.detach().cpu().long()
        self.strata_ids, counts = torch.unique(strata, sorted=True, return_counts=True)
        order = torch.argsort(strata, stable=True)  # rows of each stratum, in row order
        self._rows = list(order.split(counts.tolist()))
        self.per_stratum = per_stratum
        self.seed = seed
        self.batch_size = int(counts.clamp(max=per_stratum).sum())

    def batch(self, step: int) -> Tensor:
        """The ``[batch_size]`` row indices of step ``step`` (``>= 0``): each stratum's rows together, strata in
        increasing id order."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.cat([rows[torch.randperm(len(rows), generator=g)[:self.per_stratum]] for rows in self._rows])

    def __repr__(self) -> str:
        return (f"StratifiedBatches(strata={self.strata_ids.tolist()}, per_stratum={self.per_stratum}, "
                f"seed={self.seed})")
