"""Per-sample estimator state for finite-sum coupled compositional objectives.

An X-risk objective has the form ``(1/n) sum_i f(g_i(w))`` where the inner function
``g_i(w) = E_j[ell(w; x_i, x_j)]`` is an average over the whole data set. Stochastic
methods (SOAP, SOPA-s, SogCLR, ...) keep one running estimate ``u_i ~ g_i(w)`` per
sample and refresh it when sample ``i`` is in the batch:

.. math::

    u_i \\leftarrow (1 - \\gamma)\\, u_i + \\gamma\\, \\hat g_i(w_t)

Throughout xrisk ``gamma`` is **the weight on the new value** (``gamma = 1`` forgets the
past entirely), in every moving average of the library.

:class:`SampleState` owns those estimates as two tensors, ``value`` and ``seen``, that
``state_dict()`` checkpoints, ``load_state_dict()`` restores, ``.to(device)`` moves, and
``model.half()`` leaves in float32, like buffers; they are deliberately **not** entries of
``nn.Module``'s buffer registry (``named_buffers()`` does not list them), so that
``DistributedDataParallel`` does not broadcast ``O(num_samples)`` state from rank 0 before every
forward pass (its default ``broadcast_buffers=True``): the state is already identical on every
rank (see *Distributed sync* below). :class:`ReplicatedStateModule` implements this, for the
loss templates' scalar state too. Rules it enforces:

* **Index validation.** ``index`` must be an integer tensor of dataset indices in
  ``[0, num_samples)``; anything else raises :class:`IndexError` / :class:`TypeError`.
* **First visit.** A sample (and task) whose estimate was never written takes the new
  value as is (``gamma`` is treated as 1 for it), so the initial value never biases
  the estimator.
* **Duplicates.** When the same index occurs several times in one update (samplers that
  recycle positives produce this), its new values are **averaged** and one moving-average
  step is applied with that mean; every occurrence then reads the same updated value.
  The result does not depend on the order of the batch.
* **Masking.** An optional boolean ``mask`` (same shape as ``new``) restricts the update
  to some entries (e.g. the positives of each task); masked-out entries are untouched.
* **Distributed sync** (``sync="index_scatter"``): after every update all processes hold
  identical state. Losses in xrisk compute their update on the *global* batch on every
  rank, so every rank applies the same update; a caller that updates with rank-local
  indices passes ``local=True`` and the state all-gathers indices and values first.
* **Placement** (``placement=``): ``"replicated"`` (default) keeps all ``num_samples`` rows on every
  process; ``"sharded"`` splits them over the processes of ``torch.distributed`` (rank ``r`` owns a
  contiguous block of about ``num_samples / K`` rows) and fetches the rows of each global batch from
  their owners during a step, with the same results (see :mod:`xrisk.sharding`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Literal, Sequence, Union

import torch
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk._tensors import finite_shift
from xrisk._validate import all_finite, all_finite_async, assert_async, check_choice, validation_enabled
from xrisk.sharding import (
    Placement, PLACEMENTS, as_dtensor, close_window, fetch_rows, is_sharded, local_rows, open_window, shard_range,
    sorted_runs,
)

__all__ = ["PendingWrites", "ReplicatedStateModule", "SampleState", "check_index", "check_index_bounds",
           "check_index_unique", "column_views",
           "update_states", "write_rows", "check_index_async", "masked_update_columns", "masked_update_rows", "masked_update_state", "flat_column",
           "duplicate_groups", "merge_groups"]


def check_index(index: Tensor, num_samples: int, *, batch_size: int | None = None) -> Tensor:
    """Validate a tensor of dataset indices and return it as ``int64``.

    Args:
        index: ``[B]`` integer tensor of dataset indices.
        num_samples: size of the data set the state was built for.
        batch_size: if given, ``index`` must have exactly this many entries.

    Raises:
        TypeError: ``index`` is not an integer tensor.
        ValueError: wrong shape.
        IndexError: an entry is negative or ``>= num_samples``.
    """
    _check_index_type(index, batch_size)
    if index.numel():
        lo_t, hi_t = torch.aminmax(index)  # one reduction for both bounds
        _check_bounds(int(lo_t), int(hi_t), num_samples)
    return index.long()


def check_index_unique(index: Tensor, num_samples: int, *, batch_size: int | None = None) -> tuple[Tensor, bool]:
    """:func:`check_index` and whether every entry occurs once, with one host read. Returns
    ``(index as int64, unique)``.

    A small CPU index (``<= 256`` entries, a batch of one process) is read as a Python list (bounds and
    duplicates in Python: no tensor op, which at that size costs more than the work); otherwise one
    ``torch.unique`` gives both (the bounds are the first and last of its sorted values).
    """
    idx, unique, _ = check_index_bounds(index, num_samples, batch_size=batch_size)
    return idx, unique


def check_index_bounds(index: Tensor, num_samples: int, *,
                       batch_size: int | None = None) -> tuple[Tensor, bool, tuple[int, int] | None]:
    """:func:`check_index_unique` and the smallest and largest index it read on the host (None for an empty
    index), e.g. for :func:`xrisk.sharding.check_owned` (no second host read). Returns ``(index as int64, unique,
    bounds)``."""
    _check_index_type(index, batch_size)
    n = index.numel()
    if not n:
        return (index if index.dtype == torch.long else index.long()), True, None
    if n <= 256 and index.device.type == "cpu":
        values = index.tolist()
        lo, hi = min(values), max(values)
        _check_bounds(lo, hi, num_samples)
        return (index if index.dtype == torch.long else index.long()), len(set(values)) == n, (lo, hi)
    uniq = torch.unique(index)  # sorted
    bounds = uniq[:: max(uniq.numel() - 1, 1)].tolist()
    _check_bounds(bounds[0], bounds[-1], num_samples)
    return index.long(), uniq.numel() == n, (bounds[0], bounds[-1])


def check_index_async(index: Tensor, num_samples: int) -> Tensor:
    """:func:`check_index` without a host read: type and shape checked on the host (metadata), the bounds with
    :func:`~xrisk._validate.assert_async`. Returns ``index`` as ``int64``."""
    _check_index_type(index, None)
    index = index.long()
    if index.numel():
        assert_async(((index >= 0) & (index < num_samples)).all(),
                     f"a dataset index is out of range for a state built with num_samples={num_samples}")
    return index


def _check_index_type(index: Tensor, batch_size: int | None) -> None:
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor of dataset indices, got {type(index).__name__}")
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
        raise TypeError(f"index must be an integer tensor (dataset indices), got dtype {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D [B], got shape {tuple(index.shape)}")
    if batch_size is not None and index.numel() != batch_size:
        raise ValueError(f"index has {index.numel()} entries but the batch has {batch_size} samples")


def _check_bounds(lo: int, hi: int, num_samples: int) -> None:
    if lo < 0 or hi >= num_samples:
        bad = lo if lo < 0 else hi
        raise IndexError(f"dataset index {bad} is out of range for a state built with num_samples={num_samples}")


class ReplicatedStateModule(nn.Module):
    """Base of the xrisk modules that keep state: their buffers are *replicated state*.

    Under ``torch.distributed`` every xrisk loss computes its state update from the global batch, so
    after every step each rank holds the same state. ``DistributedDataParallel`` does not know that: by
    default (``broadcast_buffers=True``) it copies every buffer of the wrapped model from rank 0 before
    each forward pass, which for ``O(num_samples)`` per-sample state made a step several times slower
    and, for the scalars, still costs one collective per step. So in a subclass,
    :meth:`register_buffer` keeps the tensor out of ``nn.Module``'s buffer registry (it is a plain
    attribute, not listed by ``named_buffers()``, hence never broadcast by DDP) while giving it a
    buffer's behaviour everywhere else:

    * ``state_dict()`` saves it (unless ``persistent=False``) under the same key, ``load_state_dict()``
      restores it (``strict`` missing/unexpected keys, size checks and ``assign=True`` as for a buffer);
    * ``.to(device)`` / ``.cuda()`` / ``.cpu()`` move it; dtype casts (``.half()``, ``.double()``,
      ``.to(dtype)``) never change it (float32 estimates stay float32, counters stay integers).
    """

    def __init__(self) -> None:
        super().__init__()
        self._replicated: dict[str, bool] = {}  # name -> persistent

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register ``tensor`` as replicated state ``name`` (see the class docstring): a buffer for
        ``state_dict()``, ``load_state_dict()`` and ``.to()``, never cast, never broadcast by DDP."""
        if "_replicated" not in self.__dict__:
            raise AttributeError("cannot register state before ReplicatedStateModule.__init__() call")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"state name must be a non-empty string without '.', got {name!r}")
        if name not in self._replicated and hasattr(self, name):
            raise KeyError(f"attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to state '{name}' "
                            "(torch Tensor or None required)")
        self._replicated[name] = bool(persistent)
        self.__dict__[name] = tensor

    def __delattr__(self, name: str) -> None:
        self.__dict__.get("_replicated", {}).pop(name, None)
        super().__delattr__(name)

    # ----------------------------------------------------------------------------- device policy
    def _apply(  # type: ignore[override]
        self, fn: Callable[[Tensor], Tensor], recurse: bool = True
    ) -> "ReplicatedStateModule":
        super()._apply(fn, recurse)
        state = [(n, t) for n in self._replicated if isinstance(t := self.__dict__[n], Tensor)]
        if state:  # follow device moves, never dtype casts
            device = fn(torch.empty(0, device=state[0][1].device, dtype=torch.float32)).device
            for name, t in state:
                if t.device != device:
                    self.__dict__[name] = t.to(device)
        return self

    # ----------------------------------------------------------------------------- checkpoints
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, persistent in self._replicated.items():  # as nn.Module saves a persistent buffer
            t = self.__dict__[name]
            if persistent and t is not None:
                destination[prefix + name] = t if keep_vars else t.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        ours = [n for n, persistent in self._replicated.items() if persistent and self.__dict__[n] is not None]
        for name in ours:  # nn.Module's rules for a persistent buffer (and its messages)
            key = prefix + name
            current: Tensor = self.__dict__[name]
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            src = state_dict[key]
            if not isinstance(src, Tensor):
                error_msgs.append(f'While copying the parameter named "{key}", expected torch.Tensor or Tensor-like '
                                  f"object from checkpoint but received {type(src)}")
                continue
            if src.shape != current.shape:
                self._state_shape_mismatch(name, key, tuple(src.shape), tuple(current.shape))
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {src.shape} from checkpoint, "
                                  f"the shape in current model is {current.shape}.")
                continue
            try:
                with torch.no_grad():
                    if assign:  # keep the checkpoint's tensor (and device), in the state's dtype
                        self.__dict__[name] = src.to(current.dtype)
                    else:
                        current.copy_(src)
            except Exception as ex:  # noqa: BLE001 - reported like nn.Module does
                error_msgs.append(f'While copying the parameter named "{key}", whose dimensions in the model are '
                                  f"{current.size()} and whose dimensions in the checkpoint are {src.size()}, an "
                                  f"exception occurred : {ex.args}.")
        super()._load_from_state_dict(  # parameters, registered buffers, unexpected keys under this prefix
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name in self._replicated:
            if prefix + name in unexpected_keys:
                unexpected_keys.remove(prefix + name)

    def _state_shape_mismatch(self, name: str, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        """Hook: a checkpoint's ``key`` has shape ``got`` where state ``name`` has ``want``. Raise to stop the
        load with a clearer error (nothing of this module is loaded yet when the first state mismatches);
        returning lets ``load_state_dict`` report a size mismatch as for a buffer."""


class SampleState(ReplicatedStateModule):
    """Moving-average estimates ``u[i, ...]``, one per dataset sample (and per task).

    Args:
        num_samples: number of samples ``n`` in the data set (indices run over ``[0, n)``).
        shape: trailing shape of one sample's estimate, e.g. ``(num_tasks,)``; ``()`` for a scalar.
        init: value of never-visited entries (only visible through :meth:`read`).
        sync: distributed sync rule; only ``"index_scatter"`` exists (see module docstring).
        placement: ``"replicated"`` (every process holds all ``n`` rows) or ``"sharded"`` (under
            ``torch.distributed`` with ``K`` processes rank ``r`` holds the rows
            ``[shard_start, shard_stop)`` of :func:`xrisk.sharding.shard_range`, about ``n / K``; build it after
            ``init_process_group``). Both give the same training results; see :mod:`xrisk.sharding`.
            ``"sharded_local"`` holds the rows like ``"sharded"`` and tells the loss templates that every rank's
            batch indices lie in its own shard (one collective round per step; :mod:`xrisk.sharding`).

    State (in ``state_dict``; moved by ``.to()``, never cast; kept out of DDP's buffer broadcast,
    see :class:`ReplicatedStateModule`):
        ``value``: ``[n, *shape]`` float32 estimates.
        ``seen``: ``[n, *shape]`` bool, whether the entry has been written.
    Sharded over ``K > 1`` processes, the tensors hold the rank's ``shard_stop - shard_start`` rows and
    ``state_dict()`` returns them as ``DTensor`` shards of the ``[n, *shape]`` tensors.

    Example:
        >>> s = SampleState(10)
        >>> s.update(torch.tensor([3, 3, 5]), torch.tensor([1.0, 3.0, 4.0]), gamma=0.5)
        tensor([2., 2., 4.])
        >>> s.update(torch.tensor([3]), torch.tensor([4.0]), gamma=0.5)
        tensor([3.])
    """

    value: Tensor
    seen: Tensor

    def __init__(
        self,
        num_samples: int,
        shape: Sequence[int] = (),
        *,
        init: float = 0.0,
        sync: Literal["index_scatter"] = "index_scatter",
        placement: Placement = "replicated",
    ) -> None:
        super().__init__()
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"shape entries must be positive, got {shape}")
        if sync != "index_scatter":
            raise ValueError(f"sync must be 'index_scatter', got {sync!r}")
        self.num_samples = num_samples
        self.shape = shape
        self.sync = sync
        self.init = float(init)
        self.placement = check_choice("placement", placement, PLACEMENTS)
        #: processes the rows are split over (1: this process holds every row) and this rank's rows
        self.num_shards = xdist.world_size() if is_sharded(placement) else 1
        self.shard_rank = xdist.rank() if self.num_shards > 1 else 0
        self.shard_start, self.shard_stop = shard_range(num_samples, self.num_shards, self.shard_rank)
        rows = self.shard_stop - self.shard_start
        self.register_buffer("value", torch.full((rows, *shape), self.init, dtype=torch.float32))
        self.register_buffer("seen", torch.zeros((rows, *shape), dtype=torch.bool))
        self.__dict__["_window"] = None

    def extra_repr(self) -> str:
        where = ("" if self.placement == "replicated"
                 else f", placement={self.placement!r}, rows=[{self.shard_start}, {self.shard_stop})")
        return f"num_samples={self.num_samples}, shape={self.shape}, sync={self.sync!r}{where}"

    # ----------------------------------------------------------------------------- sharded steps
    @property
    def window_open(self) -> bool:
        """Whether a step's window is open (sharded state: ``value``/``seen`` are then the fetched batch rows)."""
        return self.__dict__.get("_window") is not None

    def shard_tensors(self) -> tuple[Tensor, Tensor]:
        """This process's rows ``(value, seen)`` (all rows unless sharded), also while a step's window is open."""
        window = self.__dict__.get("_window")
        return (self.value, self.seen) if window is None else (window[3], window[4])

    def _begin_window(self, uniq: Tensor | None, cuts: list[int] | None, value: Tensor, seen: Tensor,
                      own: Tensor | tuple[Tensor, Tensor, Tensor | None]) -> None:
        """Swap in the fetched rows ``value``/``seen`` of the step's distinct indices ``uniq`` (see
        :func:`xrisk.sharding.open_window`); ``own``: this rank's shard rows of the window positions
        ``[cuts[rank], cuts[rank + 1])`` (``uniq[lo:hi] - shard_start``), where :meth:`_end_window` writes back.
        ``cuts`` None: a fixed-capacity window (validation off, or owner-local batches), ``uniq`` the sorted entries
        and ``own`` the write-back plan ``(dest, src, any)`` of :func:`xrisk.sharding._fixed_fetch` (``any`` None:
        every ``dest`` is owned, :func:`xrisk.sharding.gather_owned`). ``uniq`` is not kept (None: an owner-local
        window of counted rows, whose global indices no rank gathers)."""
        d = self.__dict__
        if cuts is None:
            d["_window"] = (own, None, None, d["value"], d["seen"])
        else:
            d["_window"] = (own, cuts[self.shard_rank], cuts[self.shard_rank + 1], d["value"], d["seen"])
        d["value"], d["seen"] = value, seen

    def _end_window(self, write: bool) -> None:
        """Restore the shard; with ``write``, first copy the window rows this rank owns into it."""
        d = self.__dict__
        own, lo, hi, shard_value, shard_seen = d["_window"]
        value, seen = d["value"], d["seen"]
        d["value"], d["seen"], d["_window"] = shard_value, shard_seen, None
        if lo is None:  # fixed capacity: every slot writes (a rank without an owned slot: row 0 its own value)
            if write and shard_value.shape[0]:
                dest, src, has = own  # has None: every dest is owned (owner-local batches)
                for shard, rows in ((shard_value, value), (shard_seen, seen)):
                    new = rows.index_select(0, src)
                    if has is not None:
                        new = torch.where(has, new, shard.index_select(0, dest))
                    shard.index_copy_(0, dest, new)
            return
        if write and hi > lo:
            shard_value.index_copy_(0, own, value.narrow(0, lo, hi - lo))
            shard_seen.index_copy_(0, own, seen.narrow(0, lo, hi - lo))

    # ----------------------------------------------------------------------------- checkpoints
    def _state_shape_mismatch(self, name: str, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        if name == "value":  # checked first: nothing of this state is loaded
            want = (self.num_samples, *self.shape)
            raise ValueError(
                f"checkpoint state '{key}' has shape {got} (num_samples={got[0] if got else '?'}), "
                f"but this loss was built for shape {want} (num_samples={self.num_samples}); "
                "was the checkpoint made for another data set or another number of tasks?"
            )

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        if self.num_shards == 1 and not self.window_open:
            super()._save_to_state_dict(destination, prefix, keep_vars)
            return
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        for name, t in zip(("value", "seen"), self.shard_tensors()):
            t = t if keep_vars else t.detach()
            destination[prefix + name] = as_dtensor(t, self.num_samples) if self.num_shards > 1 else t

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        if self.window_open:
            raise RuntimeError("cannot load a SampleState during a step (its window is open)")
        if self.num_shards > 1:  # keep this rank's rows of a DTensor shard or of a full (replicated) tensor
            state_dict = dict(state_dict)
            for name in ("value", "seen"):
                key = prefix + name
                if isinstance(state_dict.get(key), Tensor):
                    state_dict[key] = local_rows(state_dict[key], self.num_samples, self.shard_start, self.shard_stop,
                                                 key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ----------------------------------------------------------------------------- access
    def tensors(self) -> tuple[Tensor, Tensor]:
        """The ``(value, seen)`` tensors themselves (for hot loops; plain attribute reads). For sharded state
        inside a step these are the window's rows, indexed by the remapped positions the loss receives."""
        return self.value, self.seen

    def read(self, index: Tensor) -> Tensor:
        """Return ``value[index]`` (float32, on the state's device) without changing anything.

        Sharded over several processes (outside a step) this is collective: every rank calls it, each with
        its own ``index``, and the rows are fetched from their owners."""
        if self.num_shards > 1 and not self.window_open and xdist.is_distributed():
            index = check_index(index, self.num_samples)
            sizes = xdist.gather_sizes(index.numel())
            start = sum(sizes[: xdist.rank()])
            both = xdist.all_gather_no_grad(index, sizes=sizes)
            positions = open_window((self,), both)[start : start + index.numel()]
            value = self.value.index_select(0, positions.to(self.value.device))
            close_window((self,), write=False)
            return value
        index = check_index(index, self.num_samples).to(self.value.device)
        return self.value.index_select(0, index)

    def amax(self) -> Tensor:
        """``[*shape]`` maximum of the estimates over all samples (never-written entries count with ``init``);
        sharded over several processes it is reduced over the ranks (collective)."""
        value = self.shard_tensors()[0]
        local = value.amax(0) if value.shape[0] else value.new_full(self.shape, float("-inf"))
        return xdist.all_reduce_max(local) if self.num_shards > 1 else local

    def reset(self) -> None:
        """Forget everything: every entry becomes unseen again."""
        value, seen = self.shard_tensors()
        value.fill_(self.init)
        seen.zero_()

    @torch.no_grad()
    def update(
        self,
        index: Tensor,
        new: Tensor,
        gamma: float | Tensor,
        *,
        mask: Tensor | None = None,
        local: bool = False,
    ) -> Tensor:
        """Apply ``u[i] <- (1 - gamma) u[i] + gamma * new_i`` and return the updated ``u[index]``.

        Args:
            index: ``[B]`` dataset indices.
            new: ``[B, *shape]`` new estimates (detached; any float dtype/device).
            gamma: weight on the new value, in ``(0, 1]``; a float, or a tensor broadcastable to
                ``[B, *shape]`` (e.g. a per-sample schedule).
            mask: optional bool ``[B, *shape]``; entries where it is False are not updated.
            local: ``index`` holds this rank's samples only; under ``torch.distributed`` indices and
                values of all ranks are gathered first, so every rank applies the same update.

        Returns:
            ``[B, *shape]`` updated estimates for ``index`` in ``new``'s dtype and device. Entries
            excluded by ``mask`` return their current (possibly never-seen) value.

        Sharded over several processes (outside a loss step) the call is collective: the rows of the
        (gathered) batch are fetched from their owners, updated and written back by their owners.
        """
        return update_states((self,), index, (new,), gamma, mask=mask, local=local)[0]


def _moving_average(old: Tensor, new: Tensor, gamma: float | Tensor, seen: Tensor, mask: Tensor | None) -> Tensor:
    """``(1 - g) old + g new`` where ``seen``, ``new`` where not (first visit), ``old`` outside ``mask``."""
    upd = torch.where(seen, torch.lerp(old, new, gamma), new)
    return upd if mask is None else torch.where(mask, upd, old)


def _finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one host read for all (see :func:`all_finite`)."""
    if len(tensors) == 1 and tensors[0].is_floating_point():
        x = tensors[0]
        return math.isfinite(float(x.sum())) or all_finite(x)  # an overflowing sum goes to the exact check
    if len(tensors) == 2 and tensors[0].dim() == 1 and tensors[0].shape == tensors[1].shape:
        a, b = tensors
        if a.dtype == b.dtype and a.is_floating_point():
            # sum_k a_k b_k is NaN/inf whenever an entry is (inf * 0 is NaN, NaN propagates, inf - inf is NaN);
            # a finite pair whose products overflow goes to the exact check
            return math.isfinite(float(torch.dot(a, b))) or all_finite(a, b)
    if len(tensors) > 1 and sum(x.numel() for x in tensors) <= 65536:  # small rows: one sum over them all
        shape, dtype = tensors[0].shape, tensors[0].dtype
        if all(x.shape == shape and x.dtype == dtype for x in tensors):  # a loss's rows: no reshape views
            return all_finite(torch.stack(list(tensors)))
        if all(x.dtype == dtype for x in tensors):
            return all_finite(torch.cat([x if x.dim() == 1 else x.reshape(-1) for x in tensors]))
    return all_finite(*tensors)


Cause = Union[str, Callable[[], str]]


class PendingWrites:
    """The state writes of one step, computed first and applied together: all or nothing.

    A loss step stages every update it computes (:meth:`stage`: new rows of a
    :class:`SampleState`, or of one column of it; :meth:`after`: any other write, e.g. a step counter),
    and may register further tensors that must be finite for the step to count (:meth:`check`, e.g. the
    pairwise losses behind a returned value). :meth:`commit` then checks every staged row and checked
    tensor for NaN/inf with one host read -- raising :class:`FloatingPointError` with the *cause*
    given at staging (what overflowed, e.g. "scores overflow the exponential surrogate") before anything
    is written -- and writes them all only when ``write`` is true (a loss passes ``self.training``: state
    changes in training mode only, like BatchNorm's running estimates).

    Rows of one state staged twice in a step must touch different entries (different columns, or a
    ``mask``); later stages win otherwise. A masked stage writes only the entries where ``mask`` is True
    (the others keep the value they have when the step is committed).

    Example:
        >>> s = SampleState(4)
        >>> w = PendingWrites("example")
        >>> w.stage(s, torch.tensor([1, 2]), torch.tensor([5.0, 6.0]))
        >>> s.value.tolist()  # nothing written yet
        [0.0, 0.0, 0.0, 0.0]
        >>> w.commit(write=True)
        >>> s.value.tolist()
        [0.0, 5.0, 6.0, 0.0]
    """

    __slots__ = ("cause", "_rows", "_checks", "_after", "_hold_old", "_implied")

    def __init__(self, cause: Cause = "a new state estimate is NaN/inf") -> None:
        self.cause = cause
        self._rows: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Cause | None]] = []
        self._hold_old: list[bool] = []  #: per staged row: ``rows_hold_old``
        self._implied: list[bool] = []  #: per staged row: ``implied``
        self._checks: list[tuple[Tensor, Cause]] = []
        self._after: list[Callable[[], None]] = []

    def stage(
        self, state: SampleState, index: Tensor, rows: Tensor, *, column: int | None = None,
        mask: Tensor | None = None, cause: Cause | None = None,
    ) -> None:
        """Stage ``state[index] = rows`` (``column``: ``state[index, column] = rows``), marking them seen.

        ``index``: validated, duplicate-free, on the state's device; ``rows``: ``[B, *shape]`` (``[B]`` with
        ``column``) ``float32`` on that device, finite (masked-out entries included); ``mask``: bool like
        ``rows`` (None: every entry). ``cause``: the message if these rows are not finite (default: the
        writes' ``cause``).
        """
        value, seen = state.tensors()
        if column is not None:
            value, seen = value.select(1, column), seen.select(1, column)
        self.stage_tensors(value, seen, index, rows, mask=mask, cause=cause)

    def stage_tensors(
        self, value: Tensor, seen: Tensor, index: Tensor, rows: Tensor, *, mask: Tensor | None = None,
        cause: Cause | None = None, rows_hold_old: bool = False, implied: bool = False,
    ) -> None:
        """:meth:`stage` into a state's ``(value, seen)`` buffers or views of them (e.g. one column the caller has
        already selected). ``rows_hold_old``: outside ``mask`` the rows already hold the buffer's current values
        (read at staging; no other stage of the step writes these entries), so they are written as they are.
        ``implied``: the rows are finite whenever the rows and checks staged without the flag are (e.g. a log-sum-exp
        over them is staged too): :meth:`verify`'s one-read probe leaves them out; a failing probe checks every row in
        order, so the error and its cause are the same."""
        self._rows.append((value, seen, index, rows.detach() if rows.requires_grad else rows, mask, cause))
        self._hold_old.append(rows_hold_old)
        self._implied.append(implied)

    def check(self, x: Tensor, cause: Cause) -> None:
        """Require ``x`` to be finite for the step to be written (raise ``FloatingPointError(cause)`` if not)."""
        self._checks.append((x.detach() if x.requires_grad else x, cause))

    def after(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` after the staged rows are written (only if they are: training mode, all finite)."""
        self._after.append(fn)

    def __len__(self) -> int:
        return len(self._rows) + len(self._after)

    def commit_on_device(self, *, write: bool) -> None:
        """:meth:`commit` without a host read: the finiteness of every staged row and checked tensor is one device
        flag, required with :func:`~xrisk._validate.assert_async` (on CPU a failure raises before anything is
        written; on an accelerator the device raises it later) and applied as a mask to every write (a step with
        a non-finite row writes nothing). The message is generic: the cause is named with validation on."""
        tensors = [x for x, _ in self._checks] + [r[3] for r in self._rows]
        ok = all_finite_async(tensors) if tensors else None
        if ok is not None:
            assert_async(ok, "xrisk: a new state estimate (or a checked value) of this step is NaN/inf; no state was "
                             "changed (validation is off, so the cause is not named: xrisk.set_validation(True) names it)")
            if ok.device.type == "cpu" and not torch.compiler.is_compiling():
                ok = None  # on CPU the assert has raised already if it failed: every write may go unmasked
        self._apply(write=write, ok=ok)

    def verify(self) -> None:
        """Raise :class:`FloatingPointError` naming the cause if a staged row or checked tensor is not finite."""
        # implied rows stay out of the one-read probe; a failing probe checks every row, in order
        tensors = [x for x, _ in self._checks] + [r[3] for r, imp in zip(self._rows, self._implied) if not imp]
        if not tensors or _finite(tensors):
            return
        for x, cause in [*self._checks, *((r[3], r[5] or self.cause) for r in self._rows)]:
            if not all_finite(x):
                raise FloatingPointError((cause() if callable(cause) else cause) + "; no state was changed")
        raise FloatingPointError((self.cause() if callable(self.cause) else self.cause) + "; no state was changed")

    def commit(self, *, write: bool, check: bool = True) -> None:
        """:meth:`verify` (unless ``check=False``: the caller proved every row finite), then, if ``write``,
        apply every staged write in order. The object is spent afterwards.

        With validation off (:func:`xrisk.set_validation`) nothing is read on the host: see
        :meth:`commit_on_device`."""
        if check and not validation_enabled():
            self.commit_on_device(write=write)
            return
        if check:
            self.verify()
        self._apply(write=write, ok=None)

    def _apply(self, *, write: bool, ok: Tensor | None) -> None:
        """If ``write``, apply every staged write in order, each row where its mask and ``ok`` (a device flag, or
        ``None``: no condition) hold; then spend the object."""
        if write:
            for (value, seen, index, rows, mask, _), hold_old in zip(self._rows, self._hold_old):
                keep = ok if mask is None else (mask if ok is None else mask & ok)
                if keep is None and value.shape[0] == 1 and index.shape[0] == 1:  # the only row (a scalar state)
                    value.copy_(rows)
                    seen.fill_(True)
                elif keep is None:
                    value.index_copy_(0, index, rows)
                    seen.index_fill_(0, index, True)
                elif hold_old and ok is None:  # rows hold the old values outside the mask
                    value.index_copy_(0, index, rows)
                    seen.index_copy_(0, index, seen.index_select(0, index) | keep)
                else:
                    value.index_copy_(0, index, torch.where(keep, rows, value.index_select(0, index)))
                    seen.index_copy_(0, index, seen.index_select(0, index) | keep)
            for fn in self._after:
                fn()
        self._rows, self._checks, self._after, self._hold_old, self._implied = [], [], [], [], []


def masked_update_rows(
    value: Tensor, seen: Tensor, index: Tensor, new: Tensor, mask: Tensor, group: Tensor,
    step: Callable[[Tensor, Tensor, Tensor], Tensor], *, log_space: bool = False, writes: PendingWrites | None = None,
    cause: Cause | None = None,
) -> tuple[Tensor, Tensor]:
    """A fixed-shape state update of rows ``index`` (validated, on the state's device; duplicates allowed) with
    no host read: ``(rows [B], written [B])``.

    ``value``/``seen``: a state's tensors or one column of them (:func:`flat_column`); ``new [B]`` float32 new
    values, used where ``mask [B]``; ``group``: :func:`duplicate_groups` of ``index``. Duplicates are merged first
    (:func:`merge_groups`, ``O(B)``), then ``step(old, merged, seen_rows)`` gives the new rows (e.g. the moving
    average ``torch.where(seen, torch.lerp(old, merged, gamma), merged)``); rows of indices without a masked
    occurrence keep their old value. With ``writes`` the rows are staged there (masked by ``written``). Every
    occurrence of an index holds the same row, so the result does not depend on which duplicate is written last.
    """
    merged, written = merge_groups(group, new, mask, log_space=log_space)
    return _step_rows(value, seen, index, merged, written, step, writes, cause), written


def masked_update_columns(
    columns: Sequence[tuple[Tensor, Tensor]], index: Tensor, new: Tensor, mask: Tensor, group: Tensor,
    step: Callable[[Tensor, Tensor, Tensor], Tensor], *, writes: PendingWrites | None = None,
) -> tuple[list[Tensor], Tensor]:
    """:func:`masked_update_rows` of several ``(value, seen)`` columns (e.g. two estimators always written together)
    at the same ``index`` with one ``mask [B]``: ``new [B, k]`` holds column ``k``'s new values; duplicates merged
    for all of them at once. Returns ``(rows of each column, written [B])``."""
    merged, written = merge_groups(group, new, mask.unsqueeze(1).expand_as(new))
    written = written.select(1, 0)
    rows = [_step_rows(value, seen, index, merged.select(1, k), written, step, writes, None)
            for k, (value, seen) in enumerate(columns)]
    return rows, written


def _step_rows(value: Tensor, seen: Tensor, index: Tensor, merged: Tensor, written: Tensor,
               step: Callable[[Tensor, Tensor, Tensor], Tensor], writes: PendingWrites | None,
               cause: Cause | None) -> Tensor:
    """``step`` of the rows ``index`` where ``written`` (the old rows elsewhere), staged in ``writes`` if given."""
    old, seen_rows = value.index_select(0, index), seen.index_select(0, index)
    rows = torch.where(written, step(old, merged, seen_rows), old)
    if writes is not None:
        writes.stage_tensors(value, seen, index, rows, mask=written, cause=cause, rows_hold_old=True)
    return rows


def duplicate_groups(index: Tensor) -> Tensor:
    """``[B]`` int64: for each entry of ``index``, the id in ``[0, B)`` of its group of equal entries (equal entries
    share an id, different ones differ). Fixed shape, no host read, ``O(B log B)`` (one sort): the duplicate
    structure of a batch for :func:`merge_groups` (no ``[B, B]`` equality mask)."""
    _, order, starts = sorted_runs(index)
    return torch.empty_like(order).scatter_(0, order, torch.cumsum(starts, 0) - 1)


def merge_groups(group: Tensor, values: Tensor, mask: Tensor, *, log_space: bool = False) -> tuple[Tensor, Tensor]:
    """:class:`SampleState`'s duplicate rule on the device, from :func:`duplicate_groups` ids: ``(merged, any)``
    shaped like ``values`` (``[B]`` or ``[B, T]``, each column merged on its own; ``mask`` like ``values``).

    Row ``r`` gets the mean of ``values`` over the rows of its group where ``mask`` holds (``log_space``: ``values``
    are logs and the mean is taken of their exponentials, shifted by the group maximum); ``any[r]``: some such row
    exists (then every occurrence of the index gets the same merged value and flag). Rows without one get 0.
    ``O(B)`` scatter work, fixed shape, no host read; without duplicates the merged value of a masked row is its
    own value bit for bit."""
    grid = group.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    count = torch.zeros_like(values).scatter_add_(0, grid, mask.to(values.dtype))
    if log_space:
        kept = torch.where(mask, values, float("-inf"))
        shift = torch.full_like(values, float("-inf")).scatter_reduce_(0, grid, kept, "amax")
        shift = finite_shift(shift)  # a group without entries: exp(-inf - min) = 0
        total = torch.zeros_like(values).scatter_add_(0, grid, torch.exp(kept - shift.gather(0, grid)))
        merged = torch.log(total.clamp_min(1e-38)) + shift - torch.log(count.clamp_min(1.0))
    else:  # 0 where the group has no masked entry (0 / 1)
        merged = torch.zeros_like(values).scatter_add_(0, grid, torch.where(mask, values, 0.0)) / count.clamp_min(1.0)
        return merged.gather(0, grid), (count > 0).gather(0, grid)
    found = count > 0
    return torch.where(found, merged, torch.zeros_like(merged)).gather(0, grid), found.gather(0, grid)


def masked_update_state(
    state: SampleState, index: Tensor, new: Tensor, mask: Tensor, group: Tensor,
    step: Callable[[Tensor, Tensor, Tensor], Tensor], *, log_space: bool = False, writes: PendingWrites | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`masked_update_rows` of whole rows of a state of shape ``(T,)``, duplicates merged with
    :func:`merge_groups` (``group``: :func:`duplicate_groups` of ``index``): ``new``, ``mask`` and the returned
    ``(rows, written)`` are ``[B, T]``. The rows are staged as one write per buffer into its flat view
    (``torch.compile`` updates that in place; a write per column would copy the whole buffer, see
    :func:`flat_column`). No host read, fixed shape. ``index``: validated, on the state's device."""
    value, seen = state.tensors()
    width = new.shape[1]
    merged, written = merge_groups(group, new, mask, log_space=log_space)
    old, seen_rows = value.index_select(0, index), seen.index_select(0, index)
    rows = torch.where(written, step(old, merged, seen_rows), old)
    if writes is not None:
        positions = (index.unsqueeze(1) * width + torch.arange(width, device=index.device)).view(-1)
        writes.stage_tensors(value.view(-1), seen.view(-1), positions, rows.reshape(-1), mask=written.reshape(-1))
    return rows, written


def flat_column(state: SampleState, column: int, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(value [N*T], seen [N*T], positions [B])``: the state's buffers as flat views and the positions of rows
    ``index`` of column ``column`` in them, so that ``value[positions]`` is ``value2d[index, column]``.

    For the fixed-shape device path: ``torch.compile`` writes ``index_copy_`` into a contiguous flat view in place
    (``O(B)``), but functionalises a write through a strided column view (:func:`column_views`) into a copy of the
    whole buffer (``O(N)`` per step)."""
    value, seen = state.tensors()
    width = value.shape[1] if value.dim() == 2 else 1
    i = index.to(value.device)
    return value.view(-1), seen.view(-1), i if width == 1 else i * width + column


def column_views(state: SampleState, column: int) -> tuple[Tensor, Tensor]:
    """Views ``(value[:, column], seen[:, column])`` of a state of shape ``(T,)``, made once per buffer pair
    (remade when ``.to()`` or ``load_state_dict(assign=True)`` replaces the buffers)."""
    value, seen = state.tensors()
    cache = state.__dict__.setdefault("_column_views", {})
    hit = cache.get(column)
    if hit is not None and hit[0] is value and hit[1] is seen:
        return hit[2], hit[3]
    views = value.select(1, column), seen.select(1, column)
    cache[column] = (value, seen, *views)
    return views


def write_rows(
    states: Sequence[SampleState], index: Tensor, rows: Sequence[Tensor], *, writes: PendingWrites | None = None,
) -> None:
    """Low level: ``states[k].value[index] = rows[k]`` and mark those rows seen (an overwrite, no averaging).

    For callers that computed the new rows themselves (the losses' state steps): ``index`` must be
    validated (:func:`check_index`), free of duplicates and on the states' device, ``rows[k]``
    ``float32`` ``[B, *shape]`` on that device. With ``writes`` the rows are staged there (written at its
    commit); without, they are checked to be finite (one host read for all, before any write) and written
    now. Everything else should use :func:`update_states`.
    """
    w = PendingWrites("refusing to store a non-finite estimate in SampleState") if writes is None else writes
    for st, r in zip(states, rows):
        w.stage(st, index, r)
    if writes is None:
        w.commit(write=True)


def _check_update(
    states: Sequence[SampleState], index: Tensor, news: Sequence[Tensor], gamma: float | Tensor,
    mask: Tensor | None, index_checked: bool, column: int | None = None, finite_cause: Cause | None = None,
) -> tuple[Tensor, Tensor | float, Tensor | None]:
    """The checks of :func:`update_states` (this rank's rows): ``(index int64, gamma, mask [B, *shape] or None)``.

    ``finite_cause``: also require the new values to be finite (raising ``FloatingPointError(finite_cause)``);
    otherwise the commit of the staged rows checks them."""
    first = states[0]
    if len(states) > 1 and any(st.num_samples != first.num_samples or st.shape != first.shape for st in states):
        raise ValueError("update_states needs states of the same num_samples and shape")
    if not index_checked:
        index = check_index(index, first.num_samples)
    if column is not None and not (len(first.shape) == 1 and 0 <= column < first.shape[0]):
        raise ValueError(f"column={column} needs states of shape (T,) with T > column, got shape {first.shape}")
    want = _row_shape(index, first, column)
    for new in news:
        if new.shape != want:
            raise ValueError(
                f"new values must have shape {want} for index of {index.numel()} entries, got {tuple(new.shape)}"
            )
    if isinstance(gamma, (float, int)):
        if not 0.0 < float(gamma) <= 1.0:
            raise ValueError(f"gamma (weight on the new value) must be in (0, 1], got {gamma}")
        gamma_t: Tensor | float = float(gamma)
    else:
        gamma_t = gamma.detach().to(torch.float32).expand(want).to(first.value.device)
    if finite_cause is not None and not _finite(news):
        raise FloatingPointError((finite_cause() if callable(finite_cause) else finite_cause) + "; no state was changed")
    m = None if mask is None else mask.detach().to(torch.bool).expand(want)
    return index, gamma_t, m


def _row_shape(index: Tensor, state: SampleState, column: int | None) -> tuple[int, ...]:
    """Shape of the new values of an update at ``index``: ``[B, *shape]``, or ``[B]`` for one ``column``."""
    return (index.numel(),) if column is not None else (index.numel(), *state.shape)


def update_states(
    states: Sequence[SampleState],
    index: Tensor,
    news: Sequence[Tensor],
    gamma: float | Tensor,
    *,
    mask: Tensor | None = None,
    local: bool = False,
    index_checked: bool = False,
    assume_unique: bool = False,
    column: int | None = None,
    writes: PendingWrites | None = None,
    cause: Cause | None = None,
) -> list[Tensor]:
    """:meth:`SampleState.update` of several states of one shape at the same ``index`` in one pass.

    ``news[k]`` goes to ``states[k]``; ``gamma``, ``mask`` and ``local`` as in
    :meth:`SampleState.update`, shared by all states. The index is validated, checked for
    duplicates and (under ``local``) gathered once; the result equals updating each state in turn.
    Returns the updated rows ``[B, *shape]`` of every state, in order.

    ``column``: update only entry ``column`` of each row of states of shape ``(T,)``; ``news``, ``mask``
    and the returned rows are then ``[B]``. ``writes``: stage the new rows in this
    :class:`PendingWrites` (with ``cause`` as the message if they are not finite) instead of checking and
    writing them now; the returned rows are what the state will hold once it is committed.

    Cost: without duplicated indices (detected from ``torch.unique``'s output size) every state
    takes one gather, one ``lerp``/``where`` and one ``index_copy_``; duplicates take the
    averaging path (``index_add_`` over the unique indices). ``index_checked=True`` tells that
    ``index`` already went through :func:`check_index` for this ``num_samples`` (as a loss's
    validated batch index does), which skips the bound check; ``assume_unique=True`` tells that
    the caller already found no duplicate in ``index`` (skips ``torch.unique``; ignored under
    ``local`` gathering).
    """
    if len(states) != len(news) or not states:
        raise ValueError(f"update_states needs one new tensor per state, got {len(news)} for {len(states)} states")
    first = states[0]
    out_dtype, out_device = news[0].dtype, news[0].device
    gathered = local and xdist.is_distributed()
    if gathered:  # every rank checks its rows, then all agree (same error everywhere) before the gathers
        (index, gamma_t, m), layout = xdist.agree_on_batch(
            "SampleState.update(local=True)",
            # the rows are checked before the gather, so a non-finite row raises the same error on every rank
            functools.partial(_check_update, states, index, news, gamma, mask, index_checked, column,
                              cause or "refusing to store a non-finite estimate in SampleState"),
            lambda checked: {  # news: gathered as float32 whatever their dtype, so only their shape must agree
                "index": checked[0], "new": torch.empty(news[0].shape, device="meta"),
                "mask": checked[2], "gamma": checked[1] if isinstance(checked[1], Tensor) else None,
            },
        )
        sizes = layout.sizes
        want = _row_shape(index, first, column)
        index = xdist.all_gather_no_grad(index, sizes=sizes)
        # float32 (the state's dtype) before the gather: ranks may send different float dtypes
        news = [xdist.all_gather_no_grad(new.detach().to(torch.float32), sizes=sizes) for new in news]
        m = xdist.all_gather_no_grad(
            torch.ones(want, dtype=torch.bool, device=index.device) if m is None else m, sizes=sizes
        )
        if isinstance(gamma_t, Tensor):
            gamma_t = xdist.all_gather_no_grad(gamma_t, sizes=sizes)
    else:
        index, gamma_t, m = _check_update(states, index, news, gamma, mask, index_checked, column)
        want = _row_shape(index, first, column)
    fetched = _sharded_outside_step(states, writes)
    if fetched:  # sharded state outside a loss step: fetch the batch's rows (collective), written back below
        index = open_window(states, index)
    try:
        outs = _update_rows(states, index, news, gamma_t, m, want, gathered, assume_unique, column, writes, cause)
    except BaseException:
        if fetched:
            close_window(states, write=False)
        raise
    if fetched:
        close_window(states, write=True)
    if gathered:  # return only this rank's rows
        outs = [o[layout.start : layout.stop] for o in outs]
    if out_device == first.value.device and out_dtype == torch.float32:
        return outs
    return [o.to(out_device, out_dtype) for o in outs]


def _sharded_outside_step(states: Sequence[SampleState], writes: PendingWrites | None) -> bool:
    """Whether an update of ``states`` must fetch its rows itself: they are split over processes and no loss step
    has opened their window. Refuses states of mixed placements and staged writes into such states."""
    if not xdist.is_distributed():
        return False
    split = [st.num_shards > 1 for st in states]
    if not any(split):
        return False
    if not all(split) or len({st.window_open for st in states}) > 1:
        raise ValueError("update_states needs states of one placement (all sharded or all replicated)")
    if states[0].window_open:
        return False
    if writes is not None:
        raise RuntimeError("staged writes into sharded SampleState need a step window "
                           "(xrisk.sharding.open_window / state_window, which the loss templates open)")
    return True


def _update_rows(
    states: Sequence[SampleState], index: Tensor, news: Sequence[Tensor], gamma_t: Tensor | float, m: Tensor | None,
    want: tuple[int, ...], gathered: bool, assume_unique: bool, column: int | None, writes: PendingWrites | None,
    cause: Cause | None,
) -> list[Tensor]:
    """The moving-average step of :func:`update_states` on checked (and gathered) rows: stages or writes them;
    returns the new rows of every state (float32, on the states' device)."""
    first = states[0]
    dev = first.value.device
    if index.device != dev:
        index = index.to(dev)
    # detached inputs keep every op below out of autograd (cheaper than a no_grad context per call)
    news = [new.detach() if new.device == dev and new.dtype == torch.float32 else new.detach().to(dev, torch.float32)
            for new in news]
    if m is not None and m.device != dev:
        m = m.to(dev)
    w = PendingWrites(cause or "refusing to store a non-finite estimate in SampleState") if writes is None else writes
    tensors = [st.tensors() for st in states]
    if column is not None:
        tensors = [(v.select(1, column), s.select(1, column)) for v, s in tensors]
    outs: list[Tensor] = []
    unique = assume_unique and not gathered
    if not unique:
        uniq, inv = torch.unique(index, return_inverse=True)
        unique = uniq.numel() == index.numel()
    if unique:  # no duplicates: gather, mix, stage
        overwrite = isinstance(gamma_t, float) and gamma_t == 1.0
        for st, (value, seen), new in zip(states, tensors, news):
            if overwrite:  # the new value where masked in (the old one elsewhere)
                upd = new if m is None else torch.where(m, new, value.index_select(0, index))
            else:
                upd = _moving_average(value.index_select(0, index), new, gamma_t, seen.index_select(0, index), m)
            w.stage(st, index, upd, column=column, mask=m, cause=cause)
            outs.append(upd.clone() if upd is new else upd)  # never alias the caller's tensor
    else:  # duplicates: average the new values (and gammas) of each index, one step per index
        shape_u = (uniq.numel(), *want[1:])
        mf = torch.ones(want, device=dev) if m is None else m.to(torch.float32)
        count = torch.zeros(shape_u, device=dev).index_add_(0, inv, mf)
        touched = count > 0
        denom = count.clamp_min(1.0)
        if isinstance(gamma_t, Tensor):
            g: Tensor | float = torch.zeros(shape_u, device=dev).index_add_(0, inv, gamma_t * mf) / denom
        else:
            g = gamma_t
        for st, (value, seen), new in zip(states, tensors, news):
            mean_new = torch.zeros(shape_u, device=dev).index_add_(0, inv, new * mf) / denom
            upd = _moving_average(value.index_select(0, uniq), mean_new, g, seen.index_select(0, uniq), touched)
            w.stage(st, uniq, upd, column=column, mask=None if m is None else touched, cause=cause)
            outs.append(upd[inv])
    if writes is None:
        w.commit(write=True)
    return outs
