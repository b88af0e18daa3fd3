"""Sharded per-sample state: which process owns which rows, and how a training step reaches them.

A :class:`~xrisk.state.SampleState` built with ``placement="sharded"`` under ``torch.distributed``
with ``K`` processes keeps only the rows of its own **shard**:

* **Partition.** Rank ``r`` owns the contiguous rows ``[r c, min((r + 1) c, n))`` with
  ``c = ceil(n / K)`` (:func:`shard_range`; the layout of ``torch.chunk`` and of a ``DTensor`` with
  ``Shard(0)``). With ``n`` not divisible by ``K`` the last ranks own fewer rows (possibly none).
  The partition is fixed when the state is built (build the loss after ``init_process_group``).
* **A step** (:func:`open_window` / :func:`close_window`, called by the loss templates). Every
  xrisk loss computes its state update from the *global* batch on every rank. For sharded state the
  template takes the ``U <= B_global`` distinct indices of the global batch (sorted; only of the samples whose state
  the step uses, e.g. the positives of ``APLoss`` and the partial-AUC losses), **fetches** their
  rows from their owners with one ``all_gather`` of ``O(U)`` rows for all the loss's sharded states
  together (each rank sends the rows it owns; nothing of size ``n`` moves), and swaps them in as a
  **window**: for the rest of the step the state looks like a replicated state of ``U`` rows
  (``tensors()``, ``value``, ``seen``, :func:`~xrisk.state.update_states`,
  :class:`~xrisk.state.PendingWrites`), and the loss sees the batch's indices *remapped* to window
  positions (``index -> position of index among the U sorted distinct indices``). Equal indices stay
  equal and their order is kept, so the loss's arithmetic -- duplicate merging included -- is the
  replicated computation on the same numbers: the result is exactly the replicated result. Because
  every rank computes the same update of the window, :func:`close_window` writes the rows a rank owns
  back into its shard **without any communication**. A failed or ``eval()``-mode step writes nothing
  back.
* **Cost per step**: one ``all_gather`` of the ``U`` rows, ``5 s`` bytes per state (the float32 value and the bool
  seen flag travel as their bytes; ``s`` = entries per row) for all the states together, which in a score loss is the
  gather of the scores itself (:func:`gather_and_open`; the owners learn the indices from the round before, so the
  step makes one round trip more than with replicated state), plus ``K + 1`` integers read on the
  host (how many of the ``U`` rows each rank owns). The sort that finds the ``U`` indices also tells whether any
  repeats, so the step does not search the batch for duplicates again. The write-back is local: each rank copies
  the window rows it owns into its shard. Memory: the shard (``~n / K`` rows) plus the ``U``-row window.

Outside a step, the public :class:`~xrisk.state.SampleState` calls stay correct and become collective
(every rank must make them): :meth:`~xrisk.state.SampleState.read` and
:meth:`~xrisk.state.SampleState.update` fetch the rows they need, :meth:`~xrisk.state.SampleState.amax`
reduces over ranks. ``state_dict()`` holds ``DTensor`` shards (global shape ``[n, ...]``) for
:func:`xrisk.save_sharded_checkpoint` (``torch.distributed.checkpoint``); ``load_state_dict`` accepts
them, or a full ``[n, ...]`` tensor of a replicated checkpoint, of which it keeps its own rows.

**Validation off** (:func:`xrisk.set_validation`): the ``K + 1`` integers would be a host read, so the window
has a fixed capacity instead: one slot per entry of the global batch (``G``, sorted; a repeated index uses the
slot of its first occurrence). Every rank sends ``G`` rows (its shard's row where it owns the slot's index, any
row elsewhere), each slot takes its owner's row (``K x G`` rows received: ``K`` times the traffic), and the
write-back redirects every slot a rank does not own, and every repeat, to an owned first slot, so that each
write to a shard row carries one value (one ``index_copy_``). No host read; equal to the counted window.

**Owner-local batches** (``state_placement="sharded_local"``; :func:`gather_owned`): the state is held as with
``"sharded"``, and every rank's batch indices lie in its own shard (:func:`check_owned`: with validation on an
:class:`IndexError` naming the rank, the index and the shard; off, an on-device assert), e.g. drawn by
:class:`xrisk.data.ShardLocalSampler` / :class:`xrisk.data.ShardLocalDualSampler`. No rank then needs the others'
indices before it sends rows: each sends its own batch's rows in the one gather of scores (features), targets and
indices that a replicated step makes. Validation on (**counted rows**, :func:`owned_rows`): while it checks its
batch, a rank finds the sorted distinct indices of its entries whose rows the step uses (``U_r``; for ``APLoss`` and
the partial-AUC losses the positives' only) and how many, which travels in the header of the batch agreement
(:func:`xrisk.distributed.agree_on_batch`'s ``tag``); it then sends those ``U_r`` rows (values and flags in their
own dtypes) and its entries' window positions in place of the indices, and the gathered rows, rank after rank,
*are* the window of the ``U`` distinct indices sorted (the shards are in rank order): no global ``torch.unique``,
no row selection, no byte copies; the write-back copies each rank's contiguous window rows into its shard. Validation
off: every rank sends its ``B_r`` entries' rows (as bytes) and every rank opens ``G = B_global`` fixed slots, sorted
by index, a repeated index using the slot of its first occurrence (the fixed-capacity window), no host read; the
write-back copies the window rows of its own entries. Per step: ``O(B_global)`` rows received in the round the
replicated step makes anyway, no extra round; exactly the replicated result. A rank whose batch is empty
(validation on; off, every rank's batch has one size) sends and writes back no row. A
:class:`~xrisk.losses.FalseNegativeDetector` called on its own gathers its batch's rows with its indices (one round;
the replicated detector needs none). Requirement on the data: the partition must not
correlate with the labels (see :mod:`xrisk.data.samplers`).

One process (``K = 1``): a sharded state owns every row; there is no window and the step is the
replicated one.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import weakref
from typing import TYPE_CHECKING, Iterator, Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk._validate import validation_enabled

if TYPE_CHECKING:  # pragma: no cover
    from torch.distributed.device_mesh import DeviceMesh

    from xrisk.state import SampleState

__all__ = ["Placement", "PLACEMENTS", "is_sharded", "shard_range", "check_owned", "OwnedRows", "owned_rows",
           "owned_tag", "gather_owned", "sharded_states",
           "open_window", "close_window", "state_window",
           "fetch_rows", "gather_and_open", "as_dtensor", "local_rows", "sorted_runs"]

#: Where the rows of a :class:`~xrisk.state.SampleState` live: on every rank, or split over the ranks
#: (``"sharded_local"``: split like ``"sharded"``, and every rank's batch indices lie in its own shard).
Placement = Literal["replicated", "sharded", "sharded_local"]
PLACEMENTS: tuple[str, ...] = ("replicated", "sharded", "sharded_local")


def is_sharded(placement: str) -> bool:
    """Whether ``placement`` splits the rows over the ranks (``"sharded"`` or ``"sharded_local"``)."""
    return placement != "replicated"


def shard_range(num_samples: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``num_samples`` that rank ``rank`` of ``world`` owns.

    Contiguous blocks of ``ceil(num_samples / world)`` rows in rank order (``torch.chunk``'s layout,
    a ``DTensor`` ``Shard(0)``); the last ranks may own fewer rows, or none.

    Example:
        >>> [shard_range(10, 4, r) for r in range(4)]
        [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    chunk = -(-num_samples // world)
    start = min(rank * chunk, num_samples)
    return start, min(start + chunk, num_samples)


def sharded_states(module: nn.Module) -> list["SampleState"]:
    """The :class:`~xrisk.state.SampleState` submodules of ``module`` (itself included) that are split over
    several processes (``placement="sharded"`` under ``torch.distributed``)."""
    from xrisk.state import SampleState

    found: list[SampleState] = []
    stack, seen = [module], set()
    while stack:  # depth first, children in registration order (modules()' order, without its name bookkeeping)
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, SampleState) and m.num_shards > 1:
            found.append(m)
        stack.extend(c for c in reversed(m._modules.values()) if c is not None)
    return found


def _check_world(states: Sequence["SampleState"]) -> None:
    world = xdist.world_size()
    for st in states:
        if st.num_shards != world:
            raise RuntimeError(
                f"a sharded SampleState was built for {st.num_shards} process(es) but this run has {world}; build "
                "the loss after torch.distributed.init_process_group (to resume on another number of processes, "
                "load a checkpoint written by xrisk.save_sharded_checkpoint into the new loss)"
            )


# the shard starts of (num_samples, world) and num_samples on a device, as the tensor _cuts searches (plain data: no
# process group)
_BOUNDS: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}


def _cuts(uniq: Tensor, num_samples: int, world: int) -> list[int]:
    """Positions in the sorted ``uniq`` where each rank's rows begin, and its length: ``world + 1`` entries, one host
    read."""
    key = (num_samples, world, uniq.device, uniq.dtype)
    bounds = _BOUNDS.get(key)
    if bounds is None:
        starts = [shard_range(num_samples, world, r)[0] for r in range(world)] + [num_samples]
        bounds = _BOUNDS[key] = torch.tensor(starts, dtype=uniq.dtype, device=uniq.device)
    return torch.searchsorted(uniq, bounds).tolist()


def _row_bytes(states: Sequence["SampleState"], own: Tensor) -> Tensor:
    """What a rank's fetch sends: its shard rows ``own`` of every state's ``value`` and ``seen``, as the bytes of one
    ``[len(own), sum of their row bytes]`` ``uint8`` tensor (one tensor for the collective, whatever the states)."""
    parts = []
    for st in states:
        width = math.prod(st.shape)
        for t in st.shard_tensors():
            parts.append(t.index_select(0, own).view(own.numel(), width).view(torch.uint8))
    return torch.cat(parts, 1)


def _unpack_rows(states: Sequence["SampleState"], rows: Tensor) -> list[Tensor]:
    """The ``[value, seen, value, seen, ...]`` window rows of every state from the gathered bytes of
    :func:`_row_bytes` (``[U, row bytes]``)."""
    out, pos, count = [], 0, rows.shape[0]
    for st in states:
        for t in st.shard_tensors():
            nbytes = math.prod(st.shape) * t.element_size()
            # a fresh copy (contiguous() keeps the stride of a size-1 dim, which view(dtype) refuses)
            out.append(rows.narrow(1, pos, nbytes).clone(memory_format=torch.contiguous_format).view(t.dtype)
                       .view(count, *st.shape))
            pos += nbytes
    return out


def _fetch(states: Sequence["SampleState"], uniq: Tensor, cuts: list[int], scores: Tensor | None = None,
           sizes: Sequence[int] = ()) -> tuple[Tensor | None, list[Tensor], Tensor]:
    """The rows of every state at the sorted distinct indices ``uniq`` (cut by owner at ``cuts``, :func:`_cuts`), from
    their owners, in one collective (with the gather of ``scores``, ``grad="sum"``, if given): ``(gathered scores or
    None, [value, seen, value, seen, ...] of the U rows, this rank's shard rows of its part of the window)``. The
    rows travel as their bytes (:func:`_row_bytes`, :func:`xrisk.distributed.all_gather_with`): exact."""
    first = states[0]
    rank = first.shard_rank
    own = uniq[cuts[rank] : cuts[rank + 1]]
    own = (own if own.device == first.value.device else own.to(first.value.device)) - first.shard_start
    sent = _row_bytes(states, own)
    counts = [cuts[r + 1] - cuts[r] for r in range(first.num_shards)]
    if scores is None:
        return None, _unpack_rows(states, xdist.all_gather_many([sent], sizes=counts)[0]), own
    gathered, (rows,) = xdist.all_gather_with(scores, [sent], grad="sum", sizes=sizes, extra_sizes=counts)
    return gathered, _unpack_rows(states, rows), own


def fetch_rows(states: Sequence["SampleState"], uniq: Tensor) -> tuple[list[tuple[Tensor, Tensor]], list[int]]:
    """The rows ``(value [U, *shape], seen [U, *shape])`` of every state at the sorted distinct dataset indices
    ``uniq`` (the same on every rank), fetched from their owners with one ``all_gather`` for all the states
    (collective); also the cut positions of :func:`_cuts`. The states must share ``num_samples`` and the
    number of shards."""
    first = states[0]
    if any(st.num_samples != first.num_samples for st in states):
        raise ValueError("fetch_rows needs states of one num_samples")
    cuts = _cuts(uniq, first.num_samples, first.num_shards)
    _, fetched, _ = _fetch(states, uniq, cuts)
    return list(zip(fetched[::2], fetched[1::2])), cuts


def _begin(states: Sequence["SampleState"], uniq: Tensor, fetched: list[Tensor], cuts: list[int], own: Tensor) -> None:
    """Swap the fetched ``[value, seen, ...]`` rows of :func:`_fetch` in as each state's window."""
    for k, st in enumerate(states):
        st._begin_window(uniq, cuts, fetched[2 * k], fetched[2 * k + 1], own)


def _window_positions(states: Sequence["SampleState"], index: Tensor,
                      rows: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    """The start of every step window: the states fit this process group and none is in a step (checked for all of
    them before any window opens). Returns the sorted distinct indices ``uniq`` of ``index`` (of its entries where
    ``rows`` holds), each entry's position among them (``uniq.numel()``, one past the window, for an entry outside
    ``rows``: a use of it is rejected) and whether no index occurs twice among those entries (known from the sort,
    so the step need not look for duplicates). One ``torch.unique``."""
    _check_world(states)
    if any(st.window_open for st in states):
        raise RuntimeError("a sharded SampleState is already in a step (a window is open)")
    chosen = index if rows is None else index.masked_select(rows)
    uniq, inv = torch.unique(chosen, sorted=True, return_inverse=True)
    if rows is not None:
        inv = torch.full_like(index, uniq.numel()).masked_scatter_(rows, inv)
    return uniq, inv, uniq.numel() == chosen.numel()


# ----------------------------------------------------------------------------- fixed-capacity windows (validation off)
def _fixed_positions(states: Sequence["SampleState"], index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The start of a fixed-capacity window (validation off: no host read): ``(sorted, slots, first)``, ``sorted``
    the ``G`` entries of ``index`` in ascending order (window slot ``p`` holds the row of ``sorted[p]``), ``slots``
    every entry's window slot (the slot of the first occurrence of its value in ``sorted``: equal indices share
    one, order is kept) and ``first`` the same for every slot of ``sorted``. One sort, fixed shape."""
    _check_world(states)
    if any(st.window_open for st in states):
        raise RuntimeError("a sharded SampleState is already in a step (a window is open)")
    ordered, slots, first, _ = _sorted_slots(index)
    return ordered, slots, first


def sorted_runs(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sorted, order, starts)`` of ``[B]`` ``index``: one stable sort (``sorted = index[order]``) and the
    ``[B]`` bool mask of the positions of ``sorted`` where a new value begins (a run of equal indices). Fixed
    shape, no host read: the duplicate structure behind the fixed-capacity window and
    :func:`xrisk.state.duplicate_groups`."""
    ordered, order = torch.sort(index, stable=True)
    starts = torch.cat([torch.ones_like(ordered[:1], dtype=torch.bool), ordered[1:] != ordered[:-1]])
    return ordered, order, starts


def _sorted_slots(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_fixed_positions` without the checks, plus the sort's ``order`` (slot ``p`` holds entry
    ``order[p]``)."""
    ordered, order, starts = sorted_runs(index)
    ar = torch.arange(ordered.numel(), device=ordered.device)
    first = torch.cummax(torch.where(starts, ar, 0), 0).values
    return ordered, torch.empty_like(order).scatter_(0, order, first), first, order


def _fixed_fetch(states: Sequence["SampleState"], ordered: Tensor, first: Tensor, scores: Tensor | None = None,
                 sizes: Sequence[int] = ()) -> tuple[Tensor | None, list[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """:func:`_fetch` without a host read: every rank sends ``G`` rows (its shard's row where it owns ``sorted[p]``,
    any row elsewhere), so the gather's sizes are ``(G,) * K``, and slot ``p`` takes the owner's row (``K`` times the
    traffic of the counted fetch). Returns ``(gathered scores or None, [value, seen, ...] of the G slots, the
    write-back plan)``: ``(dest, src, any)``, this rank's shard rows ``dest [G]`` and the window slots ``src [G]``
    whose rows go there, ``any`` whether it owns a slot (otherwise ``dest`` is row 0 and gets its own value back).
    The slots this rank does not own are redirected to an owned slot, and a repeated index to its first slot, so
    every write to one shard row carries one value: one ``index_copy_`` per tensor, deterministic."""
    st0 = states[0]
    dev, world, count = st0.shard_tensors()[0].device, st0.num_shards, ordered.numel()
    o = ordered if ordered.device == dev else ordered.to(dev)
    start, stop = st0.shard_start, st0.shard_stop
    local = (o - start).clamp_(0, max(stop - start - 1, 0))
    if stop > start:
        sent = _row_bytes(states, local)
    else:  # this rank owns no row at all (num_samples < K): it sends placeholders
        width = sum(math.prod(st.shape) * t.element_size() for st in states for t in st.shard_tensors())
        sent = torch.zeros(count, width, dtype=torch.uint8, device=dev)
    counts = [count] * world
    if scores is None:
        gathered, rows = None, xdist.all_gather_many([sent], sizes=counts)[0]
    else:
        gathered, (rows,) = xdist.all_gather_with(scores, [sent], grad="sum", sizes=sizes, extra_sizes=counts)
    chunk = -(-st0.num_samples // world)
    owner = torch.div(o, chunk, rounding_mode="floor").clamp_(max=world - 1).to(rows.device)
    rows = rows.view(world, count, sent.shape[1])  # explicit width: G may be 0 (every rank's batch empty)
    rows = rows.gather(0, owner.view(1, count, 1).expand(1, count, rows.shape[2])).squeeze(0)
    lo, hi = (o < start).sum(), (o < stop).sum()  # this rank's slots are [lo, hi) (sorted: contiguous)
    owned = torch.clamp(torch.arange(count, device=dev), min=lo, max=hi - 1)
    has = hi > lo
    dest = torch.where(has, local.index_select(0, owned.clamp_min(0)), 0)
    src = torch.where(has, first.to(dev).index_select(0, owned.clamp_min(0)), 0)
    return gathered, _unpack_rows(states, rows), (dest, src, has)


def _open_fixed(states: Sequence["SampleState"], index: Tensor, scores: Tensor | None = None,
                sizes: Sequence[int] = ()) -> tuple[Tensor | None, Tensor]:
    """Open a fixed-capacity window of ``G = index.numel()`` slots on ``states`` (one ``num_samples``), fetching with
    the gather of ``scores`` if given: ``(gathered scores or None, index remapped to window slots)``."""
    ordered, slots, first = _fixed_positions(states, index)
    gathered, fetched, plan = _fixed_fetch(states, ordered, first, scores, sizes)
    for k, st in enumerate(states):
        st._begin_window(ordered, None, fetched[2 * k], fetched[2 * k + 1], plan)
    return gathered, slots


def gather_and_open(states: Sequence["SampleState"], index: Tensor, scores: Tensor, *, sizes: Sequence[int],
                    rows: Tensor | None = None) -> tuple[Tensor, Tensor, bool]:
    """:func:`open_window` for the global batch's ``index`` with the row fetch riding on the gather of this rank's
    ``scores`` (``xrisk.distributed.all_gather(scores, grad="sum", sizes=sizes)``): one collective for both, so a
    sharded step makes as many round trips as a replicated one. ``rows``: as in :func:`open_window`. Returns
    ``(gathered scores, index remapped to window positions, distinct)``, ``distinct``: no index occurs twice among
    the fetched entries (False when nothing was opened). States of several ``num_samples`` take the separate fetch."""
    if not states or not xdist.is_distributed():
        return xdist.all_gather(scores, grad="sum", sizes=sizes), index, False
    if len({st.num_samples for st in states}) > 1:
        gathered = xdist.all_gather(scores, grad="sum", sizes=sizes)
        return (gathered, *_open_window(states, index, rows))
    if not validation_enabled():  # a window of G slots: no host read (every entry's row fetched; rows unused)
        gathered, slots = _open_fixed(states, index, scores, sizes)
        return gathered, slots, False  # type: ignore[return-value]
    uniq, inv, distinct = _window_positions(states, index, rows)
    cuts = _cuts(uniq, states[0].num_samples, states[0].num_shards)
    gathered, fetched, own = _fetch(states, uniq, cuts, scores, sizes)
    _begin(states, uniq, fetched, cuts, own)
    return gathered, inv, distinct


# ----------------------------------------------------------------------------- owner-local batches (one round)
def check_owned(index: Tensor, num_samples: int, *, bounds: tuple[int, int] | None = None) -> None:
    """Require every entry of this rank's ``index`` (validated dataset indices) to lie in its own shard
    (:func:`shard_range`), the contract of ``state_placement="sharded_local"``. Validation on: one host read (none
    when ``bounds``, the index's smallest and largest entry, are known already, e.g. from
    :func:`xrisk.state.check_index_bounds`) and an :class:`IndexError` naming the rank, the first index outside and
    the shard range. Validation off: an on-device assert (:func:`~xrisk._validate.assert_async`), no host read. One
    process: nothing to check."""
    if not xdist.is_distributed() or not index.numel():
        return
    world, r = xdist.world_size(), xdist.rank()
    start, stop = shard_range(num_samples, world, r)
    advice = ("state_placement='sharded_local' needs every rank's batch drawn from the rows it owns "
              "(xrisk.data.ShardLocalSampler); use state_placement='sharded' for batches drawn from anywhere")
    if validation_enabled():
        lo, hi = bounds if bounds is not None else (int(v) for v in torch.stack(torch.aminmax(index)).tolist())
        if lo < start or hi >= stop:
            bad = int(index.masked_select((index < start) | (index >= stop))[0])
            raise IndexError(f"rank {r}: dataset index {bad} is outside its shard [{start}, {stop}) of "
                             f"num_samples={num_samples} over {world} processes; {advice}")
        return
    from xrisk._validate import assert_async

    assert_async(((index >= start) & (index < stop)).all(),
                 f"rank {r}: a dataset index is outside its shard [{start}, {stop}) of num_samples={num_samples} "
                 f"over {world} processes (turn validation on to see which); {advice}")


class OwnedRows(NamedTuple):
    """This rank's part of an owner-local window (:func:`owned_rows`), found while its batch is validated, before the
    ranks agree on it (the agreement carries :attr:`tag`, so every rank learns how many rows each one sends)."""

    #: ``[U_r]`` the sorted distinct shard rows (``index - shard_start``) of the entries in ``rows``
    shard_rows: Tensor
    #: each chosen entry's position among ``shard_rows`` (``torch.unique``'s inverse)
    positions: Tensor
    #: ``[B_r]`` bool, the entries whose state rows the step reads or writes (None: all)
    rows: Tensor | None
    #: no index occurs twice among the chosen entries
    distinct: bool

    @property
    def tag(self) -> int:
        """``2 U_r + (0 if distinct else 1)``: what :func:`xrisk.distributed.agree_on_batch` carries for
        :func:`gather_owned` (``tags``)."""
        return 2 * self.shard_rows.numel() + (0 if self.distinct else 1)


def owned_tag(module: nn.Module, _checked: object = None) -> int:
    """The agreement tag (:attr:`OwnedRows.tag`) of the :class:`OwnedRows` that ``module``'s last batch check stored
    as ``_checked_owned``; 0 without (a rank whose checks found no owner-local rows to send). The signature of
    :func:`xrisk.distributed.agree_on_batch`'s ``tag`` after ``functools.partial(owned_tag, module)``."""
    owned = module.__dict__.get("_checked_owned")
    return 0 if owned is None else owned.tag


def owned_rows(index: Tensor, num_samples: int, rows: Tensor | None = None) -> OwnedRows:
    """The state rows this rank sends in an owner-local step (validation on): the sorted distinct indices of the
    entries of its ``index`` (validated, in its own shard: :func:`check_owned`) where ``rows`` holds (all if None),
    as shard rows, and each such entry's position among them. One ``torch.unique`` of the local batch."""
    start = shard_range(num_samples, xdist.world_size(), xdist.rank())[0]
    chosen = index if rows is None else index.masked_select(rows)
    uniq, inv = torch.unique(chosen, sorted=True, return_inverse=True)
    return OwnedRows(uniq - start, inv, rows, uniq.numel() == chosen.numel())


def gather_owned(states: Sequence["SampleState"], x: Tensor | None, index: Tensor, extras: Sequence[Tensor], *,
                 sizes: Sequence[int], owned: OwnedRows | None = None,
                 tags: Sequence[int] = ()) -> tuple[Tensor | None, Tensor, list[Tensor], bool]:
    """The step of ``state_placement="sharded_local"``: every rank's ``index`` lies in its own shard (checked by
    :func:`check_owned` with the batch), so each rank sends its batch's state rows (exact) in the **one** gather
    of ``x`` (``grad="sum"``), ``index`` and ``extras`` (no gradient) that a replicated step makes, and opens on
    ``states`` (one ``num_samples``) a window of the global batch's rows sorted by index: the ``U`` distinct
    indices with counted rows (below), else (validation off, or no ``owned``) ``G = sum(sizes)`` slots of fixed
    shape (every entry's row sent as bytes; a repeat uses the slot of its first occurrence). Equal indices stay
    equal and order is kept, as in every window. The write-back is local: each rank copies the window rows of its
    own entries into its shard (every write to one shard row carries one value).

    Returns ``(gathered x, the global index remapped to window positions, gathered extras, distinct)``,
    ``distinct``: no index occurs twice among the global batch's chosen entries (from the tags; False in the
    fixed-slot window).
    ``x=None``: nothing to gather but ``index``, ``extras`` and the rows (a standalone
    :class:`~xrisk.losses.FalseNegativeDetector`); the first result is then None.

    A rank whose batch is empty (``sizes[rank] == 0``, validation on) sends no row and writes nothing back; the
    window holds the other ranks' rows, as the replicated step's global batch does.

    **Counted rows** (validation on, ``owned`` given: this rank's :func:`owned_rows`, found before the agreement,
    and ``tags`` every rank's :attr:`OwnedRows.tag` from it, :attr:`xrisk.distributed.BatchLayout.tags`): each rank
    sends only its ``U_r`` distinct chosen rows, sorted, in their own dtypes, and the window positions of its
    entries (in place of the indices, which nothing else needs); the gathered rows *are* the window (the shards are
    in rank order, so rank after rank is sorted), with no global ``torch.unique``, no row selection and no byte
    copies, and the write-back copies the contiguous window rows of this rank into its shard. Entries outside
    ``owned.rows`` are remapped one past the window (``U = sum U_r``), which any read or write rejects (as
    :func:`open_window`'s ``rows``); ``distinct`` is about the chosen entries, from the tags."""
    if not states or not xdist.is_distributed():
        x_g, e = _gather_with(x, [index, *extras], sizes)
        return x_g, e[0], e[1:], False
    first = states[0]
    if any(st.num_samples != first.num_samples for st in states):
        raise ValueError("state_placement='sharded_local' needs states of one num_samples")
    _check_world(states)
    if any(st.window_open for st in states):
        raise RuntimeError("a sharded SampleState is already in a step (a window is open)")
    dev = first.shard_tensors()[0].device
    if owned is not None and tags and validation_enabled():
        return _gather_counted(states, x, index, extras, sizes, owned, tags, dev)
    # fixed shape (validation off): G slots, a repeat uses the slot of its first occurrence
    local = (index if index.device == dev else index.to(dev)) - first.shard_start
    x_g, (index_g, *extras_g, rows) = _gather_with(x, [index, *extras, _row_bytes(states, local)], sizes)
    ordered, slots, _, pick = _sorted_slots(index_g)
    fetched = _unpack_rows(states, rows.index_select(0, pick.to(rows.device)))
    at = sum(sizes[: first.shard_rank])
    plan = (local, slots.narrow(0, at, index.numel()).to(dev), None)  # every entry of this rank's batch is owned
    for k, st in enumerate(states):
        st._begin_window(ordered, None, fetched[2 * k], fetched[2 * k + 1], plan)
    return x_g, slots, extras_g, False


def _gather_counted(states: Sequence["SampleState"], x: Tensor | None, index: Tensor, extras: Sequence[Tensor],
                    sizes: Sequence[int], owned: OwnedRows, tags: Sequence[int],
                    dev: torch.device) -> tuple[Tensor | None, Tensor, list[Tensor], bool]:
    """:func:`gather_owned` with counted rows (its docstring)."""
    counts = [t >> 1 for t in tags]  # the rows each rank sends
    cuts = [0, *itertools.accumulate(counts)]  # where each rank's rows begin in the window
    at, total = cuts[states[0].shard_rank], cuts[-1]
    positions = owned.positions + at if at else owned.positions
    if owned.rows is not None:
        positions = torch.full_like(index, total).masked_scatter_(owned.rows, positions)
    shard_rows = owned.shard_rows if owned.shard_rows.device == dev else owned.shard_rows.to(dev)
    sent = [t.index_select(0, shard_rows) for st in states for t in st.shard_tensors()]
    x_g, gathered = _gather_with(x, [positions, *extras], sizes, sent, counts)
    k = 1 + len(extras)
    for j, st in enumerate(states):
        st._begin_window(None, cuts, gathered[k + 2 * j], gathered[k + 2 * j + 1], shard_rows)
    return x_g, gathered[0], list(gathered[1:k]), not any(t & 1 for t in tags)


def _gather_with(x: Tensor | None, extras: list[Tensor], sizes: Sequence[int], more: Sequence[Tensor] = (),
                 more_sizes: Sequence[int] = ()) -> tuple[Tensor | None, list[Tensor]]:
    """One collective: ``x`` (``grad="sum"``; None: not gathered) and ``extras`` (no gradient), ``sizes`` rows each,
    then ``more`` (no gradient), ``more_sizes`` rows each."""
    if x is None:
        return None, xdist.all_gather_many(extras, sizes=sizes, more=more, more_sizes=more_sizes)
    return xdist.all_gather_with(x, extras, grad="sum", sizes=sizes, extra_sizes=sizes, more=more,
                                 more_sizes=more_sizes)


def open_window(states: Sequence["SampleState"], index: Tensor, *, rows: Tensor | None = None) -> Tensor:
    """Start a step on sharded ``states`` for the dataset indices ``index`` (validated; the same on every rank,
    e.g. the gathered global batch): fetch the rows of its distinct indices (collective) and swap them in as
    each state's window. Returns ``index`` remapped to window positions (see the module docstring).

    ``rows``: optional ``[B]`` bool, the entries of ``index`` whose state rows the step reads or writes (e.g. the
    positives of a loss that keeps state for positives only); only their rows are fetched, and the other entries
    are remapped to the position one past the window, which any read or write rejects.

    Not distributed, or no state: returns ``index`` unchanged and opens nothing.
    """
    if not states or not xdist.is_distributed():
        return index
    return _open_window(states, index, rows)[0]


def _open_window(states: Sequence["SampleState"], index: Tensor, rows: Tensor | None) -> tuple[Tensor, bool]:
    """:func:`open_window` (distributed, some state); also whether the fetched entries hold distinct indices."""
    groups: dict[int, list["SampleState"]] = {}
    for st in states:
        groups.setdefault(st.num_samples, []).append(st)
    if not validation_enabled() and len(groups) == 1:  # fixed capacity: no host read
        return _open_fixed(states, index)[1], False
    uniq, inv, distinct = _window_positions(states, index, rows)
    for group in groups.values():  # one fetch per num_samples (the shards, hence the cuts, differ)
        cuts = _cuts(uniq, group[0].num_samples, group[0].num_shards)
        _, fetched, own = _fetch(group, uniq, cuts)
        _begin(group, uniq, fetched, cuts, own)
    return inv, distinct


def close_window(states: Sequence["SampleState"], *, write: bool) -> None:
    """End the step of :func:`open_window`: with ``write``, copy the window rows this rank owns into its shard
    (local: every rank holds the same window); then restore the shards. A state without a window is skipped,
    so this is also the cleanup after a failed step (``write=False``)."""
    for st in states:
        if st.window_open:
            st._end_window(write)


@contextlib.contextmanager
def state_window(module: nn.Module, index: Tensor, *, local: bool, write: bool) -> Iterator[Tensor]:
    """Run a step of ``module`` on its sharded states: yields ``index`` remapped to window positions.

    ``index``: validated dataset indices, this rank's own (``local=True``: all ranks' are gathered first,
    and the yielded positions are this rank's) or the global batch (``local=False``). At a normal exit the
    window is written back if ``write`` (pass ``module.training``); after an exception nothing is written.
    Not distributed, or no sharded state: yields ``index`` itself.
    """
    states = sharded_states(module) if xdist.is_distributed() else []
    if not states:
        yield index
        return
    if local:
        sizes = xdist.gather_sizes(index.numel())
        start = sum(sizes[: xdist.rank()])
        positions = open_window(states, xdist.all_gather_no_grad(index, sizes=sizes))
        positions = positions[start : start + index.numel()]
    else:
        positions = open_window(states, index)
    try:
        yield positions
    except BaseException:
        close_window(states, write=False)
        raise
    close_window(states, write=write)


# ----------------------------------------------------------------------------- checkpoints
# The mesh of the default group by device type, while something (a state_dict's DTensors) still uses it. Weak
# values: a cached mesh holds its process group, and a group that outlives destroy_process_group is torn down
# during interpreter shutdown with gloo's threads still running (and a re-initialised group would get the old one).
_MESHES: "weakref.WeakValueDictionary[str, DeviceMesh]" = weakref.WeakValueDictionary()


def _mesh(device_type: str) -> "DeviceMesh":
    from torch.distributed.device_mesh import DeviceMesh

    group = torch.distributed.group.WORLD
    mesh = _MESHES.get(device_type)
    if mesh is None or mesh.get_group() is not group:
        mesh = DeviceMesh.from_group(group, device_type)
        _MESHES[device_type] = mesh
    return mesh


def as_dtensor(local: Tensor, num_samples: int) -> Tensor:
    """This rank's rows ``local`` of an ``[num_samples, ...]`` tensor as a ``DTensor`` sharded on dim 0 over all
    ranks (the layout of :func:`shard_range`; no copy): what ``torch.distributed.checkpoint`` saves and reshards."""
    from torch.distributed.tensor import DTensor, Shard

    shape = (num_samples, *local.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, _mesh(local.device.type), [Shard(0)], run_check=False,
                              shape=shape, stride=stride)


def local_rows(src: Tensor, num_samples: int, start: int, stop: int, key: str) -> Tensor:
    """The rows ``[start, stop)`` of a checkpoint entry ``src``: a ``DTensor`` (this rank's shard, which must
    have that layout) or a full ``[num_samples, ...]`` tensor (a copy of the rows); any other tensor as it is
    (the caller's shape check reports it)."""
    from torch.distributed.tensor import DTensor

    if isinstance(src, DTensor):
        local = src.to_local()
        if src.shape[0] == num_samples and local.shape[0] != stop - start:
            raise ValueError(
                f"checkpoint state '{key}' is a shard of {local.shape[0]} rows, this rank owns {stop - start}: it was "
                "sharded over another number of processes; load it with xrisk.load_sharded_checkpoint (which reshards)"
            )
        return local if src.shape[0] == num_samples else src.full_tensor()
    if src.dim() and src.shape[0] == num_samples:
        return src[start:stop].clone()
    return src
