"""Samplers that put a fixed number of positives in every batch (imbalanced binary data).

Stochastic AUROC / AP / pAUC objectives need positives *and* negatives in every batch; with 1 %
positives a plain shuffled batch of 64 has none about half the time. :class:`DualSampler`
(the "DualSampler" of LibAUC, Yuan et al., 2023, arXiv:2306.03065) builds every batch from
``num_pos`` positives and ``batch_size - num_pos`` negatives.

**Epoch** (``P`` positives and ``N`` negatives in the data, ``k = batch_size - num_pos``):

* ``num_batches = ceil(N / k)``: the negatives are shuffled and cut into batches, so **every
  negative is seen once per epoch**. When ``k`` does not divide ``N``, the last batch is topped
  up with ``k - N mod k`` negatives drawn without replacement from the earlier batches of the
  epoch (those negatives are seen twice), so every batch is full.
* the positives are **cycled**: a shuffled pass over the positives, then another independently
  shuffled pass, ... until ``num_batches * num_pos`` draws; each positive is drawn
  ``floor`` or ``ceil`` of ``num_batches * num_pos / P`` times. When ``num_pos <= P`` no batch
  holds a positive twice (in a batch that straddles two passes, repeats are swapped with later
  positives of the new pass); when ``num_pos > P`` repeats are unavoidable.
* every batch lists its ``num_pos`` positives first, then its negatives.

**Randomness.** The epoch-``e`` batches are a pure function of ``(seed, e)``, drawn from a private
``torch.Generator``: the global torch / numpy / Python RNGs are never touched or read.
:meth:`DualSampler.set_epoch` selects the epoch (call it before every epoch, like PyTorch's
``DistributedSampler``); without it, successive iterations use epochs 0, 1, 2, ... . A resumed
run that calls ``set_epoch`` sees exactly the batches of the original run. The epoch is read when
the first index is drawn, not when ``iter()`` is called, so ``set_epoch`` also works between the
two (PyTorch Lightning creates the loader's iterator, then calls ``set_epoch``).

Differences from LibAUC's DualSampler (reference study §2.8): no global ``np.random.seed``, no
cursor that carries over between epochs (so no hidden state to checkpoint), every negative once
per epoch instead of ``max(P // num_pos, N // k)`` batches, exact ``__len__``, binary labels
validated, and ranks of :class:`DistributedDualSampler` receive disjoint, equally composed slices.

**Shard-local samplers** (:class:`ShardLocalSampler`, :class:`ShardLocalDualSampler`): rank ``r`` of ``K`` draws
only from the rows it owns, ``[start, stop) = xrisk.sharding.shard_range(num_samples, K, r)`` (at scale every rank
streams its own part of the data anyway), which is what a loss with ``state_placement="sharded_local"`` requires:
its step then makes one collective round, like replicated state (:mod:`xrisk.sharding`). Each epoch rank ``r``
shuffles its shard's indices (seeded by ``(seed, epoch, rank)``); every sample is still visited once per epoch, but
each rank's share of the global batch comes from its own shard rather than from the whole data set. **The one
requirement**: the partition must not correlate with the labels (or any other property the objective depends on).
A data set stored sorted by label, source or time puts whole classes into one shard, so every global batch would
mix the shards' different distributions in fixed shares; apply a fixed random permutation to the data set once
(store it permuted, or wrap it: ``Subset(ds, perm)``, the permutation the same on every rank and across restarts)
before training. With the rows shuffled once, a rank's part of a batch is a uniform draw from a random ``1/K`` of
the data, and the global batch is a stratified draw over the ``K`` shards (the same mean as a uniform draw).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from xrisk import distributed as xdist

__all__ = ["DualSampler", "DistributedDualSampler", "DualBatchSampler", "ShardLocalSampler", "ShardLocalDualSampler"]

_MIX_A = 6364136223846793005
_MIX_B = 1442695040888963407
_MIX_C = 2862933555777941757


def _binary_labels(labels: Any) -> Tensor:
    """``labels`` as a 1-D bool tensor; clear errors for anything else."""
    if isinstance(labels, Tensor):
        t = labels.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(labels))
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 1:
        raise ValueError(
            f"DualSampler needs binary labels of shape [N], got {tuple(t.shape)}; for multi-label data "
            "pass e.g. labels.any(dim=1) (a sample is positive when it is positive for any task)"
        )
    if t.dtype != torch.bool:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError("labels contain NaN/inf")
        bad = (t != 0) & (t != 1)
        if bad.any():
            values = torch.unique(t[bad])[:5].tolist()
            raise ValueError(
                f"DualSampler needs binary 0/1 labels, got other values {values}; for a multi-class data set "
                "pass (labels == positive_class)"
            )
        t = t != 0
    return t


def _resolve_num_pos(batch_size: int, pos_ratio: float | None, num_pos: int | None) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (at least one positive and one negative), got {batch_size!r}")
    if num_pos is not None and pos_ratio is not None:
        raise ValueError(f"give either pos_ratio or num_pos, not both (got {pos_ratio!r} and {num_pos!r})")
    if num_pos is None:
        ratio = 0.5 if pos_ratio is None else float(pos_ratio)
        if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
            raise ValueError(f"pos_ratio must be in (0, 1), got {pos_ratio!r}")
        return max(1, min(batch_size - 1, round(ratio * batch_size)))
    if not isinstance(num_pos, int) or isinstance(num_pos, bool) or not 1 <= num_pos <= batch_size - 1:
        raise ValueError(f"num_pos must be an int in [1, batch_size - 1] = [1, {batch_size - 1}], got {num_pos!r}")
    return num_pos


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * _MIX_A + int(epoch) * _MIX_B + 1) % (2**63))


def _no_repeat_at_junctions(order: list[int], n_pos: int, num_pos: int, draws: int) -> list[int]:
    """Swap, inside each new pass, the positives that would repeat one of the previous pass in the
    batch straddling the junction with later positives of the same pass (each pass stays a
    permutation). Possible whenever ``num_pos <= n_pos``."""
    for j in range(n_pos, draws, n_pos):  # first position of every pass after the first
        start = (j // num_pos) * num_pos
        if start == j:
            continue
        end = start + num_pos
        head = set(order[start:j])
        swap = end
        for q in range(j, end):
            if order[q] in head:
                while order[swap] in head:
                    swap += 1
                order[q], order[swap] = order[swap], order[q]
                swap += 1
    return order


def _plan(pos: Tensor, neg: Tensor, num_pos: int, num_neg: int, g: torch.Generator | None,
          num_batches: int | None = None) -> Tensor:
    """``[num_batches, num_pos + num_neg]`` dataset indices of one epoch (see the module docstring); ``num_batches``
    (at least ``ceil(N / num_neg)``, the default) tops up the negatives beyond one pass (shard-local samplers:
    every rank makes the same number of steps)."""

    def perm(n: int) -> Tensor:
        return torch.randperm(n, generator=g) if g is not None else torch.arange(n)

    n_neg = neg.numel()
    num_batches = max(math.ceil(n_neg / num_neg), num_batches or 0)
    neg_order = neg[perm(n_neg)]
    need = num_batches * num_neg - n_neg
    if need:
        earlier = neg_order[: (num_batches - 1) * num_neg]
        if earlier.numel() >= need:
            fill = earlier[perm(earlier.numel())[:need]]
        else:  # fewer negatives than one batch needs: repeat them
            fill = neg_order.repeat(math.ceil(need / n_neg))[:need]
        neg_order = torch.cat([neg_order, fill])
    draws = num_batches * num_pos
    n_pos = pos.numel()
    passes = math.ceil(draws / n_pos)
    pos_order = torch.cat([pos[perm(n_pos)] for _ in range(passes)])
    if g is not None and num_pos <= n_pos and passes > 1:
        pos_order = torch.tensor(_no_repeat_at_junctions(pos_order.tolist(), n_pos, num_pos, draws))
    pos_order = pos_order[:draws]
    return torch.cat([pos_order.view(num_batches, num_pos), neg_order.view(num_batches, num_neg)], dim=1)


class _DualBase(Sampler[int]):
    """Shared epoch bookkeeping of the two dual samplers."""

    def __init__(self, labels: Any, seed: int, shuffle: bool) -> None:
        y = _binary_labels(labels)
        self.num_samples = int(y.numel())
        self.positive_indices = torch.nonzero(y).flatten()
        self.negative_indices = torch.nonzero(~y).flatten()
        if self.positive_indices.numel() == 0 or self.negative_indices.numel() == 0:
            raise ValueError(
                f"DualSampler needs at least one positive and one negative label, got "
                f"{self.positive_indices.numel()} positive(s) and {self.negative_indices.numel()} negative(s)"
            )
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._epoch = 0

    # global batch layout, set by subclasses
    _global_pos: int
    _global_neg: int
    batch_size: int
    num_batches: int

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce the batches of ``epoch`` (a pure function of ``(seed, epoch)``)."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch = epoch

    def _global_batches(self, epoch: int) -> Tensor:
        g = _epoch_generator(self.seed, epoch) if self.shuffle else None
        return _plan(self.positive_indices, self.negative_indices, self._global_pos, self._global_neg, g)

    num_replicas: int = 1
    rank: int = 0

    def batches(self, epoch: int | None = None) -> Tensor:
        """``[num_batches, batch_size]`` int64 dataset indices of this rank for ``epoch`` (default: the
        next epoch), without advancing the epoch. Row ``b`` is batch ``b``: ``num_pos`` positives, then
        ``num_neg`` negatives."""
        full = self._global_batches(self._epoch if epoch is None else epoch)
        if self.num_replicas == 1:
            return full
        p, k, r = self._global_pos // self.num_replicas, self._global_neg // self.num_replicas, self.rank
        pos_cols = full[:, r * p:(r + 1) * p]
        neg_cols = full[:, self._global_pos + r * k:self._global_pos + (r + 1) * k]
        return torch.cat([pos_cols, neg_cols], dim=1)

    def __iter__(self) -> Iterator[int]:
        # a generator: the epoch is read at the first draw, not at iter(); Lightning creates the
        # loader's iterator before it calls set_epoch (a resumed run would replay epoch 0)
        epoch = self._epoch
        self._epoch = epoch + 1
        yield from self.batches(epoch).flatten().tolist()

    def __len__(self) -> int:
        """Indices per epoch: ``num_batches * batch_size`` (exact)."""
        return self.num_batches * self.batch_size

    @property
    def batch_sampler(self) -> "DualBatchSampler":
        """This sampler as a batch sampler: ``DataLoader(ds, batch_sampler=sampler.batch_sampler)``."""
        return DualBatchSampler(self)

    def state_dict(self) -> dict[str, int]:
        """What a resumed run needs: the next epoch (batches depend only on seed and epoch) and the layout."""
        return {"epoch": self._epoch, "seed": self.seed, "num_samples": self.num_samples,
                "batch_size": self.batch_size, "global_num_pos": self._global_pos,
                "num_positives": int(self.positive_indices.numel())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`; a state made for another data set or batch layout raises ``ValueError``."""
        mine = self.state_dict()
        for key in ("seed", "num_samples", "batch_size", "global_num_pos", "num_positives"):
            if key in state and int(state[key]) != mine[key]:
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {key}={mine[key]}; "
                    "was it saved for another data set or batch layout?"
                )
        self.set_epoch(int(state["epoch"]))


class DualSampler(_DualBase):
    """Indices of batches holding exactly ``num_pos`` positives and ``batch_size - num_pos`` negatives.

    See the module docstring for the epoch definition (every negative once per epoch, positives
    cycled, ``num_batches = ceil(N / (batch_size - num_pos))``) and the seeding.

    Args:
        labels: ``[N]`` binary labels of the data set (bool/int/float 0/1; tensor, array or list),
            e.g. ``dataset.targets == positive_class``. Multi-label ``[N, T]`` is refused: pass
            ``labels.any(dim=1)``.
        batch_size: samples per batch ``B`` (the ``DataLoader``'s ``batch_size``).
        pos_ratio: share of positives per batch; ``num_pos = round(pos_ratio * B)`` clipped to
            ``[1, B - 1]``. Default 0.5 when ``num_pos`` is not given either.
        num_pos: positives per batch (instead of ``pos_ratio``).
        seed: seed of the private generator.
        shuffle: ``False`` gives a deterministic order (index order, positives cycled).

    Attributes:
        num_pos, num_neg: positives / negatives per batch.
        num_batches: batches per epoch.
        num_samples: data-set size ``N + P``.

    Use either as a sampler (the loader's ``batch_size`` must equal ``batch_size``) or, safer,
    as a batch sampler::

        loader = DataLoader(IndexedDataset(ds), batch_sampler=sampler.batch_sampler)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for x, y, index in loader: ...

    Example:
        >>> import torch
        >>> y = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 0, 0])
        >>> s = DualSampler(y, 4, num_pos=1, seed=0)
        >>> len(s), s.num_batches          # 8 negatives, 3 per batch -> 3 batches of 4
        (12, 3)
        >>> b = s.batches(0); bool((y[b].sum(1) == 1).all())
        True
    """

    def __init__(
        self,
        labels: Tensor | np.ndarray | Sequence[int],
        batch_size: int,
        *,
        pos_ratio: float | None = None,
        num_pos: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.num_pos = _resolve_num_pos(batch_size, pos_ratio, num_pos)
        super().__init__(labels, seed, shuffle)
        self.batch_size = batch_size
        self.num_neg = batch_size - self.num_pos
        self._global_pos, self._global_neg = self.num_pos, self.num_neg
        self.num_batches = math.ceil(self.negative_indices.numel() / self.num_neg)

    def __repr__(self) -> str:
        return (f"DualSampler(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"num_pos={self.num_pos}, num_batches={self.num_batches}, seed={self.seed})")


class DistributedDualSampler(_DualBase):
    """:class:`DualSampler` for ``W`` processes: rank ``r`` gets its slice of every global batch.

    The global batch of ``W * batch_size_per_rank`` samples is built exactly as
    ``DualSampler(labels, W * batch_size_per_rank, num_pos=W * num_pos, seed=seed)`` builds it
    (same epochs, same batches); rank ``r`` takes positives ``r*num_pos .. (r+1)*num_pos - 1``
    and negatives ``r*num_neg .. (r+1)*num_neg - 1`` of each global batch. Hence:

    * every rank yields the same number of batches, ``ceil(N / (W * num_neg))`` (no rank waits);
    * every local batch has exactly ``num_pos`` positives, so the global batch keeps the share;
    * within a step the ranks hold disjoint samples (positives can only repeat across ranks
      when ``W * num_pos`` exceeds the number of positives);
    * over an epoch the ranks together cover every negative, like the single-process sampler.

    Args:
        labels: ``[N]`` binary labels (same on every rank).
        batch_size_per_rank: samples per batch on each rank.
        num_replicas: world size ``W`` (default: ``torch.distributed``'s, 1 when not initialised).
        rank: this process's rank (default: ``torch.distributed``'s, 0 when not initialised).
        pos_ratio, num_pos: positives per *local* batch, as in :class:`DualSampler`.
        seed: must be the same on every rank.
        shuffle: as in :class:`DualSampler`.

    Call :meth:`set_epoch` with the same epoch on every rank before each epoch.

    Example:
        >>> y = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 0, 0])
        >>> r0 = DistributedDualSampler(y, 4, num_replicas=2, rank=0, num_pos=1)
        >>> r1 = DistributedDualSampler(y, 4, num_replicas=2, rank=1, num_pos=1)
        >>> len(r0) == len(r1) == 8     # 2 steps of 4 per rank
        True
    """

    def __init__(
        self,
        labels: Tensor | np.ndarray | Sequence[int],
        batch_size_per_rank: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        pos_ratio: float | None = None,
        num_pos: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.num_pos = _resolve_num_pos(batch_size_per_rank, pos_ratio, num_pos)
        world = xdist.world_size() if num_replicas is None else num_replicas
        me = xdist.rank() if rank is None else rank
        if not isinstance(world, int) or isinstance(world, bool) or world < 1:
            raise ValueError(f"num_replicas must be a positive int, got {world!r}")
        if not isinstance(me, int) or isinstance(me, bool) or not 0 <= me < world:
            raise ValueError(f"rank must be an int in [0, {world - 1}], got {me!r}")
        super().__init__(labels, seed, shuffle)
        self.num_replicas = world
        self.rank = me
        self.batch_size = batch_size_per_rank
        self.num_neg = batch_size_per_rank - self.num_pos
        self._global_pos, self._global_neg = world * self.num_pos, world * self.num_neg
        self.num_batches = math.ceil(self.negative_indices.numel() / self._global_neg)

    def __repr__(self) -> str:
        return (f"DistributedDualSampler(num_samples={self.num_samples}, batch_size_per_rank={self.batch_size}, "
                f"num_pos={self.num_pos}, rank={self.rank}/{self.num_replicas}, num_batches={self.num_batches})")


class DualBatchSampler(Sampler[list[int]]):
    """Batch-sampler view of a dual sampler: yields one ``list[int]`` per batch.

    Shares the epoch with the sampler it wraps (``set_epoch`` on either selects the epoch).
    ``len()`` is the number of batches.
    """

    def __init__(self, sampler: _DualBase) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped sampler."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.epoch  # read at the first draw (a generator), see _DualBase.__iter__
        self.sampler.set_epoch(epoch + 1)
        yield from self.sampler.batches(epoch).tolist()

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.sampler.num_batches


# ----------------------------------------------------------------------------- shard-local samplers
def _rank_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * _MIX_A + int(epoch) * _MIX_B + int(rank) * _MIX_C + 1) % (2**63))


def _world_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    world = xdist.world_size() if num_replicas is None else num_replicas
    me = xdist.rank() if rank is None else rank
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ValueError(f"num_replicas must be a positive int, got {world!r}")
    if not isinstance(me, int) or isinstance(me, bool) or not 0 <= me < world:
        raise ValueError(f"rank must be an int in [0, {world - 1}], got {me!r}")
    return world, me


class _ShardLocalBase(Sampler[int]):
    """Epoch bookkeeping and the shard of the shard-local samplers."""

    def __init__(self, num_samples: int, num_replicas: int | None, rank: int | None, seed: int,
                 shuffle: bool) -> None:
        from xrisk.sharding import shard_range

        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_replicas, self.rank = _world_and_rank(num_replicas, rank)
        self.num_samples = num_samples
        self.shards = [shard_range(num_samples, self.num_replicas, r) for r in range(self.num_replicas)]
        empty = [r for r, (lo, hi) in enumerate(self.shards) if hi == lo]
        if empty:
            raise ValueError(f"num_samples={num_samples} over {self.num_replicas} processes leaves rank(s) {empty} "
                             "without rows (xrisk.sharding.shard_range): use fewer processes or more samples")
        self.shard_start, self.shard_stop = self.shards[self.rank]
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._epoch = 0

    num_batches: int

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce ``epoch``'s order (a pure function of ``(seed, epoch, rank)``)."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch = epoch

    def _generator(self, epoch: int) -> torch.Generator | None:
        return _rank_generator(self.seed, epoch, self.rank) if self.shuffle else None

    def _order(self, epoch: int) -> Tensor:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        epoch = self._epoch  # read at the first draw (see _DualBase.__iter__)
        self._epoch = epoch + 1
        yield from self._order(epoch).flatten().tolist()

    def _layout(self) -> dict[str, int]:
        return {"seed": self.seed, "num_samples": self.num_samples}

    def state_dict(self) -> dict[str, int]:
        """What a resumed run needs: the next epoch (the order depends only on seed, epoch and rank) and the
        layout. A run resumed on another number of processes keeps the epoch (the shards change with ``K``)."""
        return {"epoch": self._epoch, **self._layout()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`; a state made for another data set or batch layout raises ``ValueError``."""
        for key, mine in self._layout().items():
            if key in state and int(state[key]) != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {key}={mine}; "
                                 "was it saved for another data set or batch layout?")
        self.set_epoch(int(state["epoch"]))


class ShardLocalSampler(_ShardLocalBase):
    """Indices of this rank's own shard, shuffled every epoch: the batches ``state_placement="sharded_local"`` needs.

    Rank ``r`` of ``K`` owns ``[start, stop) = xrisk.sharding.shard_range(num_samples, K, r)`` (contiguous blocks of
    ``c = ceil(num_samples / K)`` rows; the partition of sharded per-sample state). Each epoch it yields a
    permutation of its shard (seeded by ``(seed, epoch, rank)``), then tops it up to ``c`` indices with indices of
    its shard drawn without replacement (only the last ranks, whose shard is shorter), so every rank yields the
    same number of indices: cut by one ``DataLoader(batch_size=B)`` each, the ranks make the same steps with batches
    of the same sizes (validation off needs that). Every sample is visited once per epoch (a few of the short
    shards' twice). See the module docstring for the one requirement: the partition must not correlate with the
    labels (permute a sorted data set once).

    Args:
        num_samples: data-set size (the loss's ``num_samples``).
        num_replicas: world size ``K`` (default: ``torch.distributed``'s, 1 when not initialised).
        rank: this process's rank (default: ``torch.distributed``'s).
        seed: the same on every rank.
        shuffle: ``False``: the shard in index order.

    Example:
        >>> s = ShardLocalSampler(10, num_replicas=4, rank=1, seed=0)
        >>> sorted(s.order(0).tolist()), len(s)
        ([3, 4, 5], 3)
    """

    def __init__(self, num_samples: int, *, num_replicas: int | None = None, rank: int | None = None,
                 seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(num_samples, num_replicas, rank, seed, shuffle)
        self.length = max(hi - lo for lo, hi in self.shards)

    def order(self, epoch: int | None = None) -> Tensor:
        """``[len(self)]`` int64 dataset indices of this rank for ``epoch`` (default: the next), without
        advancing the epoch."""
        return self._order(self._epoch if epoch is None else epoch)

    def _order(self, epoch: int) -> Tensor:
        g = self._generator(epoch)
        n = self.shard_stop - self.shard_start
        own = self.shard_start + (torch.randperm(n, generator=g) if g is not None else torch.arange(n))
        need = self.length - n
        while need > 0:  # a short shard: top up with its own indices
            more = own[torch.randperm(n, generator=g)[:need]] if g is not None else own[:need]
            own, need = torch.cat([own, more]), need - more.numel()
        return own

    def __len__(self) -> int:
        """Indices per epoch (the same on every rank)."""
        return self.length

    def __repr__(self) -> str:
        return (f"ShardLocalSampler(num_samples={self.num_samples}, rank={self.rank}/{self.num_replicas}, "
                f"shard=[{self.shard_start}, {self.shard_stop}), seed={self.seed})")


class ShardLocalDualSampler(_ShardLocalBase):
    """:class:`DistributedDualSampler` drawn from this rank's own shard: ``num_pos`` positives (oversampled) and
    ``batch_size_per_rank - num_pos`` negatives per local batch, for ``state_placement="sharded_local"``.

    Rank ``r`` builds its batches exactly as :class:`DualSampler` would on the samples of its shard
    (``xrisk.sharding.shard_range``; negatives shuffled and cut, every negative of the shard once per epoch;
    positives cycled), seeded by ``(seed, epoch, rank)``. Every rank makes the same number of batches, that of
    the shard with the most negatives (``max_r ceil(N_r / num_neg)``): the others top their negatives up. Every
    shard needs a positive and a negative: the partition must not correlate with the labels (module docstring).

    Args:
        labels: ``[num_samples]`` binary labels of the whole data set (the same on every rank).
        batch_size_per_rank, pos_ratio, num_pos: as in :class:`DistributedDualSampler`.
        num_replicas, rank, seed, shuffle: as in :class:`ShardLocalSampler`.

    Example:
        >>> y = torch.tensor([1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        >>> s = ShardLocalDualSampler(y, 3, num_replicas=2, rank=1, num_pos=1)
        >>> b = s.batches(0); bool(((b >= 5) & (b < 10)).all()), bool((y[b].sum(1) == 1).all())
        (True, True)
    """

    def __init__(self, labels: Tensor | np.ndarray | Sequence[int], batch_size_per_rank: int, *,
                 num_replicas: int | None = None, rank: int | None = None, pos_ratio: float | None = None,
                 num_pos: int | None = None, seed: int = 0, shuffle: bool = True) -> None:
        self.num_pos = _resolve_num_pos(batch_size_per_rank, pos_ratio, num_pos)
        y = _binary_labels(labels)
        super().__init__(int(y.numel()), num_replicas, rank, seed, shuffle)
        self.batch_size = batch_size_per_rank
        self.num_neg = batch_size_per_rank - self.num_pos
        counts = [(int(y[lo:hi].sum()), int(hi - lo - y[lo:hi].sum())) for lo, hi in self.shards]
        bad = [r for r, (p, n) in enumerate(counts) if p == 0 or n == 0]
        if bad:
            raise ValueError(
                f"ShardLocalDualSampler needs a positive and a negative in every rank's shard; rank(s) {bad} have "
                f"(positives, negatives) {[counts[r] for r in bad]}: the data set's order correlates with its "
                "labels; permute it once (the same fixed permutation on every rank) before training")
        own = y[self.shard_start:self.shard_stop]
        self.positive_indices = self.shard_start + torch.nonzero(own).flatten()
        self.negative_indices = self.shard_start + torch.nonzero(~own).flatten()
        self.num_batches = max(math.ceil(n / self.num_neg) for _, n in counts)

    def batches(self, epoch: int | None = None) -> Tensor:
        """``[num_batches, batch_size_per_rank]`` int64 dataset indices of this rank for ``epoch`` (default: the
        next), without advancing the epoch. Each row: ``num_pos`` positives, then the negatives."""
        return self._order(self._epoch if epoch is None else epoch)

    def _order(self, epoch: int) -> Tensor:
        return _plan(self.positive_indices, self.negative_indices, self.num_pos, self.num_neg,
                     self._generator(epoch), self.num_batches)

    def _layout(self) -> dict[str, int]:
        return {**super()._layout(), "batch_size": self.batch_size, "num_pos": self.num_pos}

    def __len__(self) -> int:
        """Indices per epoch: ``num_batches * batch_size_per_rank`` (the same on every rank)."""
        return self.num_batches * self.batch_size

    @property
    def batch_sampler(self) -> "DualBatchSampler":
        """This sampler as a batch sampler: ``DataLoader(ds, batch_sampler=sampler.batch_sampler)``."""
        return DualBatchSampler(self)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"ShardLocalDualSampler(num_samples={self.num_samples}, batch_size_per_rank={self.batch_size}, "
                f"num_pos={self.num_pos}, rank={self.rank}/{self.num_replicas}, num_batches={self.num_batches})")
