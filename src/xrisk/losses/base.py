"""The template every score-based xrisk loss follows.

``loss(scores, targets, index)``:

1. **validate** shapes, dtypes, finiteness and the dataset index (clear errors, never NaN);
2. **gather** the global batch under ``torch.distributed`` (scores with the ``"sum"``
   gradient policy, targets and indices without gradient; see :mod:`xrisk.distributed`),
   so every rank computes the same global-batch loss and applies the same state update.
   The ranks first agree on the batch (:func:`xrisk.distributed.agree_on_batch`, in place of
   the size exchange): a bad batch on any rank, or ranks sending different dtypes or numbers of
   tasks, raises the same error on every rank before anything is gathered;
3. return a **graph-connected zero** and leave state untouched when the batch has no
   positive in any task;
4. call the subclass hook :meth:`ScoreLoss._loss`, which computes the surrogate, **stages** its
   state updates in ``self._writes`` (a :class:`~xrisk.state.PendingWrites`) and records the
   objective estimate with :meth:`ScoreLoss._record_objective` (lazily: a recipe over detached
   tensors, evaluated only when :meth:`ScoreLoss.objective` is called, so a training step never
   pays for it);
5. **commit**: every staged update of the step (all tasks, all states) is checked for NaN/inf at
   once -- a failure raises :class:`FloatingPointError` naming the cause (e.g. "scores overflow the
   exponential surrogate") and leaves every buffer as it was -- and written only in training mode.

**State changes in training mode only** (like BatchNorm's running estimates): in ``eval()`` mode
a call computes the same value from the staged (uncommitted) update and writes no state; this
holds under ``torch.no_grad()`` and ``torch.inference_mode()`` too (they do not change the rule:
in training mode the state is updated, in eval mode it is not). :meth:`ScoreLoss.objective` reports
the last call's estimate in both modes.

**Validation off** (:func:`xrisk.set_validation`): ``forward`` takes the fixed-shape device path
instead (:meth:`ScoreLoss._forward_unchecked`): no value is read on the host (shapes and dtypes are still
checked; index bounds and finite state rows with on-device asserts), the positive counts stay on the
device, the subclass hook :meth:`ScoreLoss._masked_loss` computes the same loss over the whole batch
(pairwise losses as ``[B, B]`` matrices whose pairs that count are selected by row and column factors of
the weights, :func:`~xrisk.functional.surrogates.factored_pairwise_sum`; duplicate indices merged through
group ids from one sort, :func:`~xrisk.state.duplicate_groups`), and a batch without positives gives a zero
through the same ops. The work
depends on the batch size only, so ``torch.compile(..., fullgraph=True)`` takes the step whole and does not
recompile when the number of positives changes. Equal to the default path up to float rounding (tested).
Under ``torch.distributed`` every rank's batch must have the same size: the ranks agree on shapes only
(:func:`xrisk.distributed.agree_on_shapes`, checked on the device) and gather without reading sizes; sharded
state opens a fixed-capacity window (:mod:`xrisk.sharding`). The targets and indices travel in the scores' gather
(one round, either setting).

**Dtypes.** The computation runs in the dtype of ``scores`` (any floating type); ``targets`` may be
bool, integer or floating of any dtype (only their 0/1 values matter); per-sample state is float32.

The returned value is a *surrogate*: its gradient is the method's stochastic gradient
estimator, but its value is not the objective (it can be negative). The current estimate
of the true objective is :meth:`ScoreLoss.objective`.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Literal, TypeVar, Union

import torch
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk._validate import (
    all_finite, binary_batch_unchecked, check_choice, inspect_binary_batch, validation_enabled,
)
from xrisk.sharding import (
    PLACEMENTS, Placement, check_owned, close_window, gather_and_open, gather_owned, is_sharded, owned_rows,
    owned_tag, sharded_states,
)
from xrisk.state import PendingWrites, ReplicatedStateModule, check_index_async, check_index_bounds

__all__ = ["ScoreLoss", "connected_zero", "label_order", "label_positions", "overflow_cause", "positions"]

_T = TypeVar("_T")

#: What a subclass records as the batch's objective estimate: a tensor, a zero-argument callable
#: over detached tensors (a ``functools.partial`` of a module-level function, so the module stays
#: picklable) evaluated on request, or ``None`` for "no estimate" (NaN).
ObjectiveRecord = Union[Tensor, Callable[[], Tensor], None]


class ScoreLoss(ReplicatedStateModule):
    """Base class of losses on real-valued scores and binary (multi-label) targets.

    Subclasses set ``uses_index`` (whether per-sample state needs dataset indices),
    ``objective_name`` (what :meth:`objective` estimates), and implement :meth:`_loss`.

    Args:
        num_tasks: number of labels ``T``; scores/targets are ``[B]`` or ``[B, T]``.
        gather: under ``torch.distributed``, compute the loss on the global batch
            (default True; needed for exactness of every global loss).
        state_placement: where the per-sample state lives under ``torch.distributed``: ``"replicated"``
            (every rank holds all rows) or ``"sharded"`` (each rank holds about ``num_samples / K`` rows and a
            step fetches the global batch's rows from their owners; the same results, see
            :mod:`xrisk.sharding`), or ``"sharded_local"``: sharded, and every rank's ``index`` lies in its own
            shard (:func:`xrisk.sharding.shard_range`, e.g. :class:`xrisk.data.ShardLocalSampler`; checked), so the
            rows travel in the scores' gather: one collective round per step, like replicated state. Needs
            ``gather=True``. Losses without per-sample state ignore it.
    """

    uses_index: ClassVar[bool] = True
    objective_name: ClassVar[str] = "objective"
    #: the samples whose per-sample state rows :meth:`_loss` reads or writes: ``"all"``, or ``"positives"`` (the samples
    #: positive for some task); a sharded step fetches only those rows (:meth:`_masked_loss` always gets every row)
    state_rows: ClassVar[Literal["all", "positives"]] = "all"
    _objective: Tensor
    _writes: PendingWrites  #: the current step's staged state updates (set by forward before ``_loss``)
    _index_unique: bool  #: no index occurs twice among the step's ``state_rows`` entries (False: unknown or some)

    def __init__(self, *, num_tasks: int = 1, gather: bool = True, state_placement: Placement = "replicated") -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        self.num_tasks = num_tasks
        self.gather = bool(gather)
        self.state_placement = check_choice("state_placement", state_placement, PLACEMENTS)
        if is_sharded(state_placement) and not self.gather:
            raise ValueError(f"state_placement={state_placement!r} needs gather=True: every rank must compute the "
                             "global batch's state update (with gather=False each rank would update the rows "
                             "differently)")
        self.register_buffer("_objective", torch.full((), float("nan")), persistent=False)

    def forward(self, scores: Tensor, targets: Tensor, index: Tensor | None = None) -> Tensor:
        """Surrogate loss of a batch (scalar tensor).

        Args:
            scores: ``[B]`` or ``[B, T]`` model outputs.
            targets: same shape, binary (bool / 0-1 int / 0-1 float).
            index: ``[B]`` dataset indices of the samples (required when the loss keeps
                per-sample state; ignored otherwise).
        """
        if not validation_enabled():
            return self._forward_unchecked(scores, targets, index)
        if self.gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
            (s, y, _, idx), layout = xdist.agree_on_batch(
                type(self).__name__, functools.partial(self._check_batch, scores, targets, index), _batch_tensors,
                # the rows each rank sends
                tag=functools.partial(owned_tag, self) if self.state_placement == "sharded_local" else None,
            )
            s, y, idx, sharded, unique = self._gather_batch(s, y, idx, layout.sizes, select=True, tags=layout.tags)
            pos_counts = y.sum(0).tolist()  # of the global batch
            given, host = None, None
        else:
            s, y, pos_counts, idx = self._check_batch(scores, targets, index)
            unique = self.__dict__["_checked_unique"]
            given = scores if scores.dim() == 1 else None  # [B]: task 0's column as given (no view in the graph)
            host = self.__dict__["_checked_host"]
            sharded = []
        if not any(pos_counts):
            return self._skip(s, sharded)
        writes = self.__dict__["_writes"] = PendingWrites(_default_cause)
        self.__dict__["_index_unique"] = unique  # known without a device op: no index occurs twice in the batch
        self.__dict__["_given_scores"] = given
        self.__dict__["_host_batch"] = host
        self.__dict__["_step_objective"] = _NOT_RECORDED
        try:
            out = self._loss(s, y, idx, pos_counts)
            writes.commit(write=self.training)  # all or nothing; state changes in training mode only
        except BaseException:
            close_window(sharded, write=False)
            raise
        close_window(sharded, write=self.training)  # each rank keeps the rows it owns
        record = self.__dict__.pop("_step_objective")
        if record is not _NOT_RECORDED:  # the step succeeded: its objective estimate replaces the last one
            self.__dict__["_pending_objective"] = record
            self.__dict__["_objective_ready"] = False
        return out

    def _forward_unchecked(self, scores: Tensor, targets: Tensor, index: Tensor | None) -> Tensor:
        """:meth:`forward` with validation off: no host read, fixed-shape work (module docstring)."""
        if self.gather and xdist.is_distributed():  # equal batch sizes, checked on the device (no host read)
            (s, y, idx), layout = xdist.agree_on_shapes(
                type(self).__name__, functools.partial(self._shape_batch, scores, targets, index),
                lambda b: {"scores": b[0], "targets": b[1], "index": b[2]},
            )
            s, y, idx, sharded, _ = self._gather_batch(s, y, idx, layout.sizes)
        else:
            s, y, idx = self._shape_batch(scores, targets, index)
            sharded = []
        if s.shape[0] == 0:  # a global batch empty on every rank (a shape, no value read): the validated zero step
            return self._skip(s, sharded)
        given = None  # no reference to the graph kept past the step (torch.compile returns no hidden output)
        pos_counts = y.sum(0)  # [T] on the device
        writes = self.__dict__["_writes"] = PendingWrites(_default_cause)
        self.__dict__["_index_unique"] = False
        self.__dict__["_given_scores"] = given
        self.__dict__["_host_batch"] = None
        self.__dict__["_step_objective"] = _NOT_RECORDED
        try:
            out = self._masked_loss(s, y, idx, pos_counts)
            out = torch.where(pos_counts.sum() > 0, out, torch.zeros_like(out))  # no positive: a connected zero
            writes.commit(write=self.training)  # validation off: on the device (PendingWrites.commit_on_device)
        except BaseException:
            close_window(sharded, write=False)
            raise
        close_window(sharded, write=self.training)
        record = self.__dict__.pop("_step_objective")
        if record is not _NOT_RECORDED:
            self.__dict__["_pending_objective"] = record
            self.__dict__["_objective_ready"] = False
        return out

    def _gather_batch(self, s: Tensor, y: Tensor, idx: Tensor | None, sizes: list[int], *, select: bool = False,
                      tags: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, Tensor | None, list, bool]:
        """The global batch ``(scores, targets, index)`` of every rank's checked rows (``sizes``: the agreed layout),
        the sharded states whose step window is now open (``index`` then holds window positions, see
        :mod:`xrisk.sharding`: their rows are fetched in the same collective as the scores) and whether no index
        occurs twice among the fetched entries (False without a window). ``select``: fetch only the rows of
        :attr:`state_rows` (the :meth:`_loss` path; the other entries' positions are then unusable); ``tags``: the
        agreement's tags (owner-local: every rank's :func:`~xrisk.sharding.owned_tag`)."""
        extras = [y] if idx is None else [y, idx.to(s.device)]
        sharded = sharded_states(self) if idx is not None and is_sharded(self.state_placement) else []
        if sharded and self.state_placement == "sharded_local":  # one round: the rows travel with the scores
            owned = self.__dict__.get("_checked_owned") if select else None  # counted rows (validation on)
            s, idx, (y,), distinct = gather_owned(sharded, s, idx.to(s.device), [y], sizes=sizes, owned=owned,
                                                  tags=tags)
            return s, y, idx, sharded, distinct
        if not sharded:  # one round: the targets and indices travel with the scores
            s, extras = xdist.all_gather_with(s, extras, grad="sum", sizes=sizes, extra_sizes=sizes)
            return s, extras[0], None if idx is None else extras[1], sharded, False
        # targets and indices in one round; then the global batch's rows, fetched from their owners with the
        # scores (the owners learn the indices from the first round); idx -> window positions
        y, idx = xdist.all_gather_many(extras, sizes=sizes)
        rows = None
        if select and self.state_rows == "positives":
            rows = y.select(1, 0) if y.shape[1] == 1 else y.any(1)
        s, idx, distinct = gather_and_open(sharded, idx, s, sizes=sizes, rows=rows)
        return s, y, idx, sharded, distinct

    def _shape_batch(self, scores: Tensor, targets: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """This rank's checks that read no value: ``(scores [B, T], targets [B, T] bool, index int64 or None)``."""
        s, y = binary_batch_unchecked(scores, targets, self.num_tasks)
        idx = None
        if self.uses_index:
            if index is None:
                raise ValueError(f"{type(self).__name__} keeps per-sample state and needs `index` (dataset indices)")
            idx = check_index_async(index, self._num_samples())
            if idx.numel() != s.shape[0]:
                raise ValueError(f"index has {idx.numel()} entries but the batch has {s.shape[0]} samples")
            if self.state_placement == "sharded_local" and self.gather:
                check_owned(idx, self._num_samples())  # on the device
        return s, y, idx

    def _check_batch(
        self, scores: Tensor, targets: Tensor, index: Tensor | None
    ) -> tuple[Tensor, Tensor, list[int], Tensor | None]:
        """This rank's checks: ``(scores [B, T], targets [B, T] bool, positives per task, index or None)``;
        whether no index occurs twice is left in ``_checked_unique`` (found with the bounds, on the host), what the
        check read on the host in ``_checked_host`` (:func:`~xrisk._validate.inspect_binary_batch`'s ``(values,
        detached)`` of a small CPU batch, else None)."""
        s, y, pos_counts, values, detached = inspect_binary_batch(scores, targets, self.num_tasks)  # one host read
        self.__dict__["_checked_host"] = None if values is None else (values, detached)
        idx: Tensor | None = None
        unique = False
        if self.uses_index:
            if index is None:
                raise ValueError(f"{type(self).__name__} keeps per-sample state and needs `index` (dataset indices)")
            idx, unique, bounds = check_index_bounds(index, self._num_samples(), batch_size=s.shape[0])
            if self.state_placement == "sharded_local" and self.gather:  # IndexError naming the rank, index, shard
                check_owned(idx, self._num_samples(), bounds=bounds)
        owned = None
        if idx is not None and self.state_placement == "sharded_local" and self.gather and xdist.is_distributed():
            rows = None if self.state_rows == "all" else y.select(1, 0) if y.shape[1] == 1 else y.any(1)
            owned = owned_rows(idx, self._num_samples(), rows)  # the rows this rank sends (counted in the agreement)
        self.__dict__["_checked_unique"] = unique
        self.__dict__["_checked_owned"] = owned
        return s, y, pos_counts, idx

    # ------------------------------------------------------------------ hooks for subclasses
    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: list[int]) -> Tensor:
        """Compute the surrogate on the (global) batch ``scores [B, T]``, ``targets [B, T]`` (bool).

        ``pos_counts[t]`` is the number of positives of task ``t`` in the batch (host ints).
        """
        raise TypeError(f"{type(self).__name__} must override _loss(scores, targets, index, pos_counts)")

    def _masked_loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: Tensor) -> Tensor:
        """:meth:`_loss` with no host read and fixed-shape work (validation off): ``pos_counts`` is the ``[T]``
        device tensor of positives per task; tasks without the positives (and negatives) they need contribute
        zero and write nothing, through masks rather than branches. Stages its writes in ``self._writes``."""
        raise TypeError(f"{type(self).__name__} has no device path (_masked_loss): turn validation on "
                        "(xrisk.set_validation(True))")

    def _skip(self, scores: Tensor, sharded: list) -> Tensor:
        """A step without positives: close the (unwritten) window of the ``sharded`` states, leave ``objective()``
        NaN (as with validation off, where the kernels record NaN) and return :meth:`_zero`."""
        close_window(sharded, write=False)
        self.__dict__["_pending_objective"] = None
        self.__dict__["_objective_ready"] = False
        return self._zero(scores)

    def _zero(self, scores: Tensor) -> Tensor:
        """The graph-connected zero of a batch that gives the loss nothing to compute (no positive):
        :func:`connected_zero` of ``scores``."""
        return connected_zero(self, scores)

    def _scratch(self) -> dict | None:
        """The work matrices of this loss's whole-batch device path (:func:`~xrisk.functional.surrogates.scratch_matrix`),
        reused by every step; None under ``torch.compile`` (the compiled code manages its buffers)."""
        if torch.compiler.is_compiling():
            return None
        return self.__dict__.setdefault("_scratch_matrices", {})

    def _score_column(self, scores: Tensor, task: int) -> Tensor:
        """``scores[:, task]`` as a ``[B]`` tensor (for ``[B]`` input: the tensor given to :meth:`forward`, so
        autograd records no view for it)."""
        given = self.__dict__.get("_given_scores")
        return given if given is not None else scores.select(1, task)

    def _detached_column(self, scores: Tensor, task: int) -> Tensor:
        """``scores[:, task]`` detached (``[B]``); for ``[B]`` input the detached scores the validation made."""
        host = self.__dict__.get("_host_batch")
        if host is not None and host[1].dim() == 1:
            return host[1]
        col = self._score_column(scores, task)
        return col.detach() if col.requires_grad else col

    def _label_positions(self, targets: Tensor, task: int, n_pos: int, *,
                         negatives: bool = True) -> tuple[Tensor, Tensor | None]:
        """:func:`label_positions` of ``targets[:, task]`` (``negatives=False``: :func:`positions` and None), kept from
        the last step while the labels repeat (:meth:`_kept_for_labels`)."""
        pos = targets.select(1, task)
        if negatives:
            return self._kept_for_labels(("positions", True), task, label_positions, pos, n_pos)
        return self._kept_for_labels(("positions", False), task, _positions_only, pos, n_pos)

    def _kept_for_labels(self, key: object, task: int, build: Callable[..., _T], *args: object) -> _T:
        """``build(*args)`` (a function of task ``task``'s labels and of ``key``), kept from the last step while the labels
        repeat (a :class:`~xrisk.data.DualSampler` batch has its positives at the same positions every step): then no
        tensor op. Only for a small CPU batch whose targets the validation read on the host (otherwise built every
        step); a batch with other labels costs one comparison of Python lists."""
        host = self.__dict__.get("_host_batch")
        if host is None:
            return build(*args)
        values = host[0] if self.num_tasks == 1 else host[0][task::self.num_tasks]
        cache = self.__dict__.setdefault("_label_cache", {})
        hit = cache.get((key, task))
        if hit is not None and hit[0] == values:
            return hit[1]
        out = build(*args)
        cache[(key, task)] = (values, out)
        return out

    def _num_samples(self) -> int:
        n = getattr(self, "num_samples", None)
        if n is None:
            raise AttributeError(f"{type(self).__name__} uses an index but has no `num_samples`")
        return int(n)

    def _record_objective(self, value: ObjectiveRecord) -> None:
        """Record the batch's objective estimate (see :data:`ObjectiveRecord`); nothing is computed here.

        It becomes :meth:`objective`'s value once the step has committed (a step that raises keeps the last one).
        """
        # a plain attribute, set past nn.Module.__setattr__ (this runs on every training step)
        self.__dict__["_step_objective"] = value

    def _record_objective_from(self, fn: Callable[..., Tensor], *args: object, **kwargs: object) -> None:
        """Record ``fn(*args, **kwargs)`` (tensors detached by the caller) to be evaluated on request."""
        self._record_objective(functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ public
    def objective(self) -> Tensor:
        """Estimate of the true objective from the last batch (``objective_name`` says which).

        NaN before the first forward pass or if the last batch had no positives. Computed on
        request from what the last forward pass saved (detached), then cached.
        """
        if not getattr(self, "_objective_ready", True):
            pending = self._pending_objective
            if pending is None:
                value = torch.full((), float("nan"))
            else:
                with torch.no_grad():
                    value = pending() if callable(pending) else pending
            self._objective = value.detach().to(self._objective.device, torch.float32).reshape(())
            self.__dict__["_pending_objective"] = None
            self.__dict__["_objective_ready"] = True
        return self._objective.clone()


def connected_zero(loss: nn.Module, *inputs: Tensor) -> Tensor:
    """The value of a step with nothing to learn (no positive, no negative): a zero connected to the graphs of
    ``inputs`` and to ``loss``'s own parameters (not its submodules'), so that each gets a zero gradient, never
    None, whichever path computed the step: with validation off the device path reaches them through masks, and
    an optimizer with momentum or weight decay moves a parameter with a zero gradient but skips one without."""
    out = inputs[0].sum()
    for x in inputs[1:]:
        out = out + x.sum()
    out = out * 0.0
    for p in loss._parameters.values():
        if p is not None and p.requires_grad:
            out = out + p.sum() * 0.0
    return out


def _batch_tensors(batch: tuple[Tensor, Tensor, list[int], Tensor | None]) -> dict[str, Tensor | None]:
    """What the score-loss template gathers, by name (for :func:`xrisk.distributed.agree_on_batch`)."""
    return {"scores": batch[0], "targets": batch[1], "index": batch[3]}


_NOT_RECORDED = object()


def overflow_cause(surrogate: str, margin: float, scores: Tensor, task: int, losses: Tensor | None = None,
                   tau: float | None = None) -> Callable[[], str]:
    """The message of a step whose pairwise estimates are not finite, built only if it fails.

    ``scores``: the task's ``[B]`` scores; ``losses``: its pairwise losses, and ``tau``: the temperature they
    are divided by (KL-DRO estimators), to tell an overflowing surrogate from an overflowing ``L / tau``.
    """
    return functools.partial(_overflow_message, surrogate, margin, scores, task, losses, tau)


def _overflow_message(surrogate: str, margin: float, scores: Tensor, task: int, losses: Tensor | None,
                      tau: float | None) -> str:
    lo, hi = (float(v) for v in torch.aminmax(scores.detach()))
    where = f"task {task} has scores in [{lo:.4g}, {hi:.4g}]"
    if losses is not None and tau is not None and all_finite(losses):
        return (f"the pairwise losses divided by tau={tau} overflow the KL-DRO estimator ({where}, largest loss "
                f"{float(losses.amax()):.4g}); raise tau or bound the scores")
    return (f"scores overflow the {surrogate} surrogate: {where}, so ell(margin={margin}, s_i - s_j) is not finite "
            f"in {scores.dtype}; bound the scores (e.g. sigmoid outputs) or use a surrogate that grows slower")


def _default_cause() -> str:
    return "a new state estimate of the loss is NaN/inf"


def label_order(pos: Tensor, n_pos: int) -> tuple[Tensor, Tensor]:
    """Positions of the positives and of the negatives of one task, each in batch order.

    ``pos`` is the ``[B]`` bool column, ``n_pos`` its number of positives (a host int the caller
    already has). One stable sort replaces a boolean mask per use (each costs a ``nonzero`` and a
    host synchronisation): ``x.index_select(0, pos_idx)`` equals ``x[pos]``.
    """
    order = torch.argsort(pos.to(torch.uint8), descending=True, stable=True)
    return order[:n_pos], order[n_pos:]


def label_positions(pos: Tensor, n_pos: int) -> tuple[Tensor, Tensor]:
    """:func:`label_order` (positions of the positives and of the negatives, each in batch order); on CPU two
    ``nonzero`` calls instead of the sort."""
    if pos.device.type == "cpu":
        return pos.nonzero().view(-1), torch.logical_not(pos).nonzero().view(-1)
    return label_order(pos, n_pos)


def _positions_only(pos: Tensor, n_pos: int) -> tuple[Tensor, None]:
    return positions(pos, n_pos), None


def positions(pos: Tensor, n_pos: int) -> Tensor:
    """Positions of the ``True`` entries of the ``[B]`` bool ``pos`` (``n_pos`` of them), in batch order.

    On CPU one ``nonzero`` (no device to synchronise with); elsewhere :func:`label_order`'s sort.
    """
    if pos.device.type == "cpu":
        return pos.nonzero().view(-1)
    return label_order(pos, n_pos)[0]
