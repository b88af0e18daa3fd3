"""The template every global contrastive loss follows: ``loss(feats_a, feats_b, index)``.

1. **validate** ``feats_a [B, d]``, ``feats_b [B, d]`` (floating, same shape; finite: checked up front
   with a detector, else by the commit before any state is written) and the dataset ``index [B]``;
   features of two floating dtypes are promoted to their common dtype (``torch.promote_types``, e.g.
   float32 and float64 give float64) in both modes; L2-normalise the rows unless ``normalize=False``
   (on one process normalisation and similarity matrix are one autograd node,
   :mod:`xrisk.functional.similarity`); a (global) batch of fewer than two pairs has no negative and
   returns a graph-connected zero without touching any state;
2. **gather** the features of all ranks with :func:`xrisk.distributed.all_gather` (``grad="sum"``)
   and the indices without gradient; each rank keeps **its own rows as anchors** and uses the
   whole global batch as candidate negatives (cost ``O(B_local * B_global * d)``). Before that the
   ranks agree on the batch (:func:`xrisk.distributed.agree_on_batch`; features are then checked for
   NaN/inf up front): a bad batch on any rank, or ranks sending different feature widths or dtypes,
   raises the same error on every rank and nothing is gathered or written;
3. build :class:`ContrastiveBatch`: for each of the two anchor sides a ``[B, C]`` similarity matrix
   against the ``C`` columns (one matmul; in single-process bimodal mode side 1 is the transpose
   of side 0, no second matmul), the positive's similarity and column, and the negatives (a column
   is a negative of anchor ``i`` iff its dataset index differs from ``index[i]``; without duplicate
   indices this is "every column but the positive (and the anchor itself)" and no mask is built);
   the optional :class:`~xrisk.losses.FalseNegativeDetector` removes detected false negatives;
4. call the subclass hook ``_loss(batch)``, which calls its kernel in :mod:`xrisk.functional.contrastive`
   with :meth:`ContrastiveLossBase._log_estimator_step` as the estimator callback;
5. **commit** (all or nothing): every state update of the step -- estimators, temperatures, normalisers,
   the detector's thresholds -- was staged in ``self._writes`` (a :class:`~xrisk.state.PendingWrites`);
   they are checked for NaN/inf at once (a failure raises :class:`FloatingPointError` naming the cause and
   leaves every buffer as it was) and written **in training mode only**; then the objective is recorded,
   evaluated on request (:meth:`~ContrastiveLossBase.objective`, ``state_dict()``) from the step's
   detached rows.

**State changes in training mode only** (like BatchNorm's running estimates): in ``eval()`` mode a call
returns the same value it would in training, computed from the staged (uncommitted) update, and writes
no state, counts no samples towards the inferred epoch and leaves the learnable temperature as it is;
``torch.no_grad()`` / ``torch.inference_mode()`` do not change this rule.

**Lean path.** On one process, ``mode="bimodal"``, without a detector and with every index once
(the usual case), steps 2-4 are replaced by the subclass hook ``_paired_step(sim, index, ...)``: the same
kernel on the ``[B, B]`` similarity matrix, with the state rows read and written directly (no batch
record, no gathers, no duplicate merging, no masks); with ``normalize=True`` the similarities carry no graph and
the surrogate ``sum(stopgrad(W) * S)`` is one autograd node of the features
(:func:`~xrisk.functional.similarity.cosine_weighted_sum`). At ``B = 128`` that bookkeeping cost as much as
the step's arithmetic; the tests hold the lean path equal to the general one (values, gradients,
objectives, state). Its rows are staged and committed like the general path's.

**Validation off** (:func:`xrisk.set_validation`), on one process: ``forward`` takes the fixed-shape device
path (:meth:`ContrastiveLossBase._forward_unchecked`) instead of steps 1-3 and the lean path: no value is read
on the host (feature shapes and dtypes checked; index bounds and the finiteness of the staged rows with on-device
asserts), every anchor's negatives are a ``[B, C]`` mask and their counts a tensor, duplicate indices are merged
by group ids from one sort (:func:`~xrisk.state.duplicate_groups`, :func:`~xrisk.state.masked_update_state`), the
detector's update is masked the same way, a learnable temperature's stability gate uses ``tau_min`` (always the
shifted pass) and one learnable temperature goes to the kernel per anchor (its term is added after). The work
depends on the batch size only, so ``torch.compile(..., fullgraph=True)`` takes forward, backward and optimizer
step whole and does not recompile when the duplicates change. Equal to the validated path up to float rounding
(tested, every mode, NUCLR, GloFND). The samples are counted on the device and the epoch is **not** inferred
from them: call ``set_epoch``. A batch of one distinct index gives a zero through the same ops (its samples are
counted). Under ``torch.distributed`` every rank's batch must have the same size (the ranks agree on shapes
only, :func:`xrisk.distributed.agree_on_shapes`) and the step reads nothing either (sharded state: a
fixed-capacity window, :mod:`xrisk.sharding`).

**Sides.** ``mode="unimodal"`` (SogCLR, two augmented views): side 0 anchors are ``feats_a`` rows,
side 1 anchors are ``feats_b`` rows, both against the ``C = 2 B_global`` columns
``[feats_a; feats_b]`` (``2 B_global - 2`` negatives each). ``mode="bimodal"`` (CLIP): side 0 are
image anchors (``feats_a``) against the ``C = B_global`` text columns (``feats_b``), side 1 text
anchors against image columns. Every per-sample state has shape ``[num_samples, 2]``, one entry per side.

**Why the result is exact under DDP.** Rank ``k`` returns ``L_k = (K / B_global) * sum over its
anchors`` of the per-anchor surrogate, so ``sum_k L_k = K * L`` with ``L`` the single-process loss
on the concatenated batch; with the ``"sum"`` gather policy every feature row then receives
``K * dL/dx`` and DDP's mean over ranks gives ``dL/dtheta`` (see :mod:`xrisk.distributed`).
Per-anchor statistics (``O(B)`` scalars) are all-gathered and every rank applies the same
global state update, so the state stays replicated and equal to the single-process state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk._tensors import as_state_rows, like_tensor, on_device
from xrisk._validate import all_finite, check_choice, check_finite, check_unit_interval, validation_enabled
from xrisk.functional.contrastive import (
    Estimator, Offset, ReferencePair, WeightedSum, count_true, log_moving_average, reference_offset,
)
from xrisk.functional.similarity import (
    cosine_gram, cosine_similarity_detached, cosine_similarity_matrix, cosine_weighted_sum,
)
from xrisk.losses._epochs import EpochTracking
from xrisk.losses.base import connected_zero
from xrisk.sharding import (
    PLACEMENTS, Placement, check_owned, close_window, gather_owned, is_sharded, open_window, owned_rows, owned_tag,
    sharded_states,
)
from xrisk.state import (
    PendingWrites, ReplicatedStateModule, SampleState, check_index, check_index_async, check_index_unique,
    duplicate_groups, masked_update_state, update_states,
)

__all__ = [
    "ContrastiveBatch", "ContrastiveLossBase", "as_state_rows", "check_reference_features", "common_dtype",
    "exp_limit", "like_tensor", "moving_average_rows",
    "momentum_rows", "on_device", "sgd_rows",
]

Mode = Literal["unimodal", "bimodal"]


@dataclass
class ContrastiveBatch:
    """What a contrastive hook sees (``B`` local anchors, ``C`` columns, 2 sides).

    index: ``[B]`` local dataset indices; index_global: ``[B_global]`` all ranks' indices (rank order).
    sims: per side a ``[B, C]`` matrix of cosine similarities (with gradient; possibly a view such as
    the transpose of the other side). pos: ``[B, 2]`` detached similarity of each anchor with its
    positive, which for local anchor ``i`` sits at column ``i + pos_offset[v]`` of side ``v`` (the gradient
    through the positive flows through that entry of ``sims[v]``). self_offset: the anchor's own column
    ``i + self_offset[v]`` (unimodal) or None. neg: per side a ``[B, C]`` bool negative mask, or None
    meaning "every column but the positive and the anchor's own" (unique indices, no detector).
    count: ``[B, 2]`` number of negatives, or an int when every anchor has that many (unique indices,
    no detector). col_index: ``[C]`` dataset index of every column.
    scale: ``K / B_global``, the factor that turns a sum over local anchors into this rank's share.
    transposed: ``sims[1]`` is ``sims[0].T`` and ``neg[1]`` is ``neg[0].T`` (or both None) -- single-process
    bimodal mode. stacked: unimodal mode, the ``[2B, C]`` matrix whose row blocks are ``sims[0]`` and
    ``sims[1]`` (None in bimodal mode). start: offset of the local rows inside the global batch. unique_index, inverse: for a
    global batch with duplicate indices, ``torch.unique(index_global, return_inverse=True)``; both None
    when every index occurs once. all_valid: known without a device sync that every anchor of every rank
    has a negative (``count > 0`` everywhere; False means "not known", not "some anchor has none").
    objective: the step's objective estimate (a callable of detached tensors), recorded once the step's
    state rows are committed. sizes: every rank's number of anchors as the ranks agreed (pass to the gathers
    as ``sizes=``); None on one process. offset: DRRho-CLIP's detached per-pair offset ``-s^ref`` (the
    reference model's similarities, negated) in the layout of the similarities: the ``[2B, C]`` matrix of
    ``stacked`` (unimodal), the ``[B, B]`` matrix of ``sims[0]`` (``transposed``), else per side; None without
    reference features. groups: on the fixed-shape device path (validation off: negatives always as masks,
    counts as tensors), the ``[B_global]`` duplicate groups of ``index_global``
    (:func:`~xrisk.state.duplicate_groups`) with which duplicates are merged; None otherwise.
    """

    index: Tensor
    index_global: Tensor
    sims: list[Tensor]
    pos: Tensor
    pos_offset: tuple[int, int]
    self_offset: tuple[int, int] | None
    neg: list[Tensor | None]
    count: Tensor | int
    col_index: Tensor
    scale: float
    transposed: bool
    stacked: Tensor | None
    start: int
    unique_index: Tensor | None
    inverse: Tensor | None
    all_valid: bool = False
    objective: Callable[[], Tensor] | None = None
    sizes: tuple[int, ...] | None = None
    offset: Offset = None
    groups: Tensor | None = None


def exp_limit(dtype: torch.dtype) -> float:
    """Largest exponent the kernels' unshifted (``stable=False``) passes accept in ``dtype`` (far inside its
    range, room left for sums over a batch); 0 for other dtypes (always shift)."""
    return _EXP_LIMITS.get(dtype, 0.0)


_EXP_LIMITS = {torch.float32: 60.0, torch.float64: 600.0}


def moving_average_rows(state: SampleState, index: Tensor, log_new: Tensor, gamma: float) -> Tensor:
    """New rows of a log-space estimator: ``log((1 - gamma) u + gamma exp(log_new))`` (first visit: ``log_new``).

    ``index``: validated, duplicate-free, on the state's device; ``log_new``: ``[B, ...]`` float32 there.
    Nothing is written (see :func:`~xrisk.state.write_rows`).
    """
    value, seen = state.tensors()
    return log_moving_average(value.index_select(0, index), log_new, gamma, seen.index_select(0, index))


def momentum_rows(momentum: SampleState, index: Tensor, grad: Tensor, beta: float) -> Tensor:
    """New rows of a per-sample momentum: ``(1 - beta) m + beta grad`` (first visit: ``grad``; the
    :class:`~xrisk.state.SampleState` rule). ``index``, ``grad`` as in :func:`moving_average_rows`; nothing is written."""
    value, seen = momentum.tensors()
    return torch.where(seen.index_select(0, index), torch.lerp(value.index_select(0, index), grad, beta), grad)


def sgd_rows(before: Tensor, m: Tensor, lr: float, bounds: tuple[float, float] | None = None) -> Tensor:
    """New rows of a per-sample parameter after a momentum step: ``clip(before - lr m, *bounds)`` (in ``m``'s
    dtype and device; no bounds: no clipping). Nothing is written."""
    new = torch.add(like_tensor(before, m), m, alpha=-lr)
    return new.clamp_(*bounds) if bounds is not None else new


def common_dtype(feats_a: Tensor, feats_b: Tensor) -> tuple[Tensor, Tensor]:
    """Both feature tensors in their common dtype (``torch.promote_types``; the same rule in both modes)."""
    if feats_a.dtype == feats_b.dtype:
        return feats_a, feats_b
    dtype = torch.promote_types(feats_a.dtype, feats_b.dtype)
    return feats_a.to(dtype), feats_b.to(dtype)


_DEVICE_CAUSE = "the contrastive estimator produced a NaN/inf estimate"


def _log_ema(gamma: float, old: Tensor, new: Tensor, seen: Tensor) -> Tensor:
    """The log-space moving average of a state row (first visit: the new value)."""
    return log_moving_average(old, new, gamma, seen)


def _momentum(beta: float, old: Tensor, new: Tensor, seen: Tensor) -> Tensor:
    """The per-sample momentum ``(1 - beta) m + beta grad`` (first visit: ``grad``)."""
    return torch.where(seen, torch.lerp(old, new, beta), new)


def _objective_where(keep_new: Tensor, new: Callable[[], Tensor], old: Callable[[], Tensor]) -> Tensor:
    """``new()`` where the bool tensor ``keep_new`` holds, else ``old()`` (lazy objectives, chosen on the device)."""
    a, b = new().detach().reshape(()), old().detach().reshape(())
    return torch.where(keep_new, a, b.to(a))


def _overflow_message(feats_a: Tensor, feats_b: Tensor, normalize: bool) -> str:
    """Why a step of finite features produced a non-finite estimate (built only when one did)."""
    if normalize:
        return "the contrastive estimator produced a NaN/inf estimate from finite, normalised features"
    with torch.no_grad():
        norm = max(float(feats_a.norm(dim=1).max()), float(feats_b.norm(dim=1).max()))  # B >= 2 here
    return (f"the similarities overflow the contrastive estimator: with normalize=False and feature norms up to "
            f"{norm:.4g}, s_ij = <a_i, b_j> or exp(s_ij / tau) leaves the {feats_a.dtype} range; normalise the "
            "features (normalize=True) or scale them down")


def check_features(feats_a: Tensor, feats_b: Tensor, *, finite: bool = True) -> None:
    """Validate two ``[B, d]`` floating feature tensors of equal shape, finite (``finite=False``: the caller
    checks finiteness later, before any state is written)."""
    for name, x in (("feats_a", feats_a), ("feats_b", feats_b)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape [B, d], got shape {tuple(x.shape)}")
    if feats_a.shape != feats_b.shape:
        raise ValueError(
            f"feats_a shape {tuple(feats_a.shape)} and feats_b shape {tuple(feats_b.shape)} must be equal"
        )
    if finite and not all_finite(feats_a, feats_b):  # one host read; the messages name the culprit
        check_finite("feats_a", feats_a)
        check_finite("feats_b", feats_b)


def _gathered_tensors(feats_a: Tensor, feats_b: Tensor, checked: tuple[Tensor, tuple[Tensor, Tensor] | None]
                      ) -> dict[str, Tensor | None]:
    """What the template gathers, by name, from a rank's checked ``(index, ref)`` (for
    :func:`xrisk.distributed.agree_on_batch` / :func:`~xrisk.distributed.agree_on_shapes`)."""
    ref = checked[1]
    return {"feats_a": feats_a, "feats_b": feats_b, "index": checked[0], "ref_a": None if ref is None else ref[0],
            "ref_b": None if ref is None else ref[1]}


def check_reference_features(ref_feats: Any, feats_a: Tensor, *, normalize: bool) -> tuple[Tensor, Tensor] | None:
    """Validate DRRho-CLIP's ``ref_feats = (ref_a, ref_b)``: two floating ``[B, d_ref]`` tensors of one shape
    with the batch's ``B`` (``d_ref`` may differ from the target's ``d``). Returns them detached, in ``feats_a``'s
    dtype and device, L2-normalised when ``normalize`` (None stays None). Finiteness is checked by the caller."""
    if ref_feats is None:
        return None
    if not isinstance(ref_feats, (tuple, list)) or len(ref_feats) != 2:
        raise TypeError(f"ref_feats must be a pair (ref_a, ref_b) of tensors, got {type(ref_feats).__name__}")
    out = []
    for k, x in enumerate(ref_feats):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"ref_feats[{k}] must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 2 or x.shape[0] != feats_a.shape[0]:
            raise ValueError(
                f"ref_feats[{k}] must have shape [B, d_ref] with B = {feats_a.shape[0]} (the batch), "
                f"got shape {tuple(x.shape)}"
            )
        out.append(like_tensor(x.detach() if x.requires_grad else x, feats_a))
    if out[0].shape != out[1].shape:
        raise ValueError(
            f"ref_feats[0] shape {tuple(out[0].shape)} and ref_feats[1] shape {tuple(out[1].shape)} must be equal"
        )
    if normalize:  # F.normalize's x / max(|x|, 1e-12) in three ops (it takes four: a few us each at B = 128)
        out = [x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12) for x in out]
    return out[0], out[1]


def _check_all_finite(raw_a: Tensor, raw_b: Tensor, ref: tuple[Tensor, Tensor] | None) -> None:
    """Name the input that holds NaN/inf (after a step refused a non-finite estimate)."""
    check_finite("feats_a", raw_a)
    check_finite("feats_b", raw_b)
    if ref is not None:
        check_finite("ref_feats[0]", ref[0])
        check_finite("ref_feats[1]", ref[1])


class ContrastiveLossBase(EpochTracking, ReplicatedStateModule):
    """Base class of the global contrastive losses (see the module docstring for the template).

    Args:
        num_samples: data-set size ``n`` (indices run over ``[0, n)``).
        mode: ``"unimodal"`` (two views) or ``"bimodal"`` (image-text); see the module docstring.
        gamma: weight on the new value in the estimators' moving average, in ``(0, 1]``.
        gamma_schedule: optional callable ``epoch -> gamma`` (e.g.
            :class:`xrisk.schedules.CosineGammaSchedule`); overrides ``gamma`` when given.
        false_negatives: optional :class:`~xrisk.losses.FalseNegativeDetector`.
        normalize: L2-normalise the feature rows first.
        state_placement: ``"replicated"`` (default) or ``"sharded"``: every rank holds all per-sample rows, or
            about ``num_samples / K`` of them and a step fetches the global batch's rows from their owners (the
            same results; :mod:`xrisk.sharding`), or ``"sharded_local"``: sharded, and every rank's ``index`` lies
            in its own shard (e.g. :class:`xrisk.data.ShardLocalSampler`; checked), so the rows travel in the
            features' gather (one collective round per step). A detector must have the same placement.

    Buffers: ``epoch``, ``samples_seen``, ``epoch_is_set`` (the epoch of :meth:`set_epoch`, or inferred from the
    samples seen in training until it is first called: :class:`~xrisk.losses._epochs.EpochTracking`).
    """

    objective_name: ClassVar[str] = "objective"
    _paired_path: ClassVar[bool] = False  # the subclass implements _paired_step (False on an instance: never use it)
    _fp32_buffers: ClassVar[tuple[str, ...]] = ("_objective",)
    _objective: Tensor
    _writes: PendingWrites  #: the current step's staged state updates (set by forward)

    def __init__(
        self,
        num_samples: int,
        *,
        mode: Mode,
        gamma: float,
        gamma_schedule: Callable[[int], float] | None,
        false_negatives: nn.Module | None,
        normalize: bool,
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__()
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
            raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
        self.num_samples = num_samples
        self.mode = check_choice("mode", mode, ("unimodal", "bimodal"))
        self.gamma = check_unit_interval("gamma", gamma)
        if gamma_schedule is not None and not callable(gamma_schedule):
            raise TypeError(f"gamma_schedule must be a callable epoch -> gamma, got {type(gamma_schedule).__name__}")
        self.gamma_schedule = gamma_schedule
        if false_negatives is not None:
            from xrisk.losses.false_negatives import FalseNegativeDetector

            if not isinstance(false_negatives, FalseNegativeDetector):
                raise TypeError(f"false_negatives must be a FalseNegativeDetector, got {type(false_negatives).__name__}")
            if false_negatives.num_samples != num_samples:
                raise ValueError(
                    f"false_negatives was built for num_samples={false_negatives.num_samples}, "
                    f"the loss for num_samples={num_samples}"
                )
        self.false_negatives = false_negatives
        self.normalize = bool(normalize)
        self.state_placement = check_choice("state_placement", state_placement, PLACEMENTS)
        if false_negatives is not None and false_negatives.state_placement != self.state_placement:
            raise ValueError(f"false_negatives has state_placement={false_negatives.state_placement!r}, the loss "
                             f"{self.state_placement!r}: build both with the same placement")
        self._init_epochs()
        self.register_buffer("_objective", torch.full((), float("nan")))  # persistent: objective() survives resume

    # ----------------------------------------------------------------------------- device / dtype
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "ContrastiveLossBase":  # type: ignore[override]
        super()._apply(fn, recurse)
        for name in self._fp32_buffers:  # scalar estimators stay float32 under .half()
            setattr(self, name, getattr(self, name).to(torch.float32))
        return self

    # ----------------------------------------------------------------------------- epochs
    def _apply_epoch(self, epoch: int) -> None:
        super()._apply_epoch(epoch)
        fnd = self.false_negatives
        if fnd is not None:  # the detector follows the loss's epoch, set or inferred
            fnd.set_epoch(epoch) if self._epoch_set else fnd._apply_epoch(epoch)

    def _epoch_dependence(self) -> list[str]:
        out = ["gamma_schedule"] if self.gamma_schedule is not None else []
        return out + (self.false_negatives._epoch_dependence() if self.false_negatives is not None else [])

    def current_gamma(self) -> float:
        """The ``gamma`` used at the current epoch (schedule if given, else the constant)."""
        if self.gamma_schedule is None:
            return self.gamma
        return check_unit_interval("gamma_schedule(epoch)", self.gamma_schedule(self._epoch_int))

    # ----------------------------------------------------------------------------- template
    def forward(
        self, feats_a: Tensor, feats_b: Tensor, index: Tensor, ref_feats: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Surrogate loss of a batch (scalar; its gradient is the FCCO estimator, see :meth:`objective`).

        In training mode a call is a training step: it updates the per-sample state (also under
        ``torch.no_grad()``); in ``eval()`` mode it returns the same value and writes nothing. Under
        torch.distributed the value is this rank's share ``L_k`` (the mean over ranks is the
        single-process surrogate).

        Args:
            feats_a: ``[B, d]`` first view / image embeddings.
            feats_b: ``[B, d]`` second view / text embeddings (row ``i`` is the positive of ``feats_a[i]``).
            index: ``[B]`` dataset indices of the pairs.
            ref_feats: DRRho-CLIP: ``(ref_a [B, d_ref], ref_b [B, d_ref])``, a frozen reference model's
                features of the same pairs (computed under ``no_grad`` or read from a
                :class:`~xrisk.data.ReferenceCache`; L2-normalised like the features). Every pairwise
                difference ``d_ij`` then becomes ``d_ij - d_ij^ref`` (same temperature): the similarities get
                the per-pair offset ``-s^ref_ij`` (:func:`~xrisk.functional.contrastive.reference_offset`). None:
                the plain loss, unchanged. The returned surrogate's gradient is the same either way; its value is
                taken on the shifted differences with a learnable temperature (global or per sample) and in
                NUCLR, and on the model's own similarities with a fixed temperature (the two differ by a constant
                of the batch), the same on every path (validation on or off, one process or several);
                :meth:`objective` estimates the DRRho objective itself.
        """
        try:
            if not validation_enabled():
                return self._forward_unchecked(feats_a, feats_b, index, ref_feats)
            return self._forward(feats_a, feats_b, index, ref_feats)
        finally:  # sharded state: a step that returned early or raised leaves the shards as they were
            close_window(sharded_states(self) if is_sharded(self.state_placement) else [], write=False)

    def _forward(
        self, feats_a: Tensor, feats_b: Tensor, index: Tensor, ref_feats: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """The step of :meth:`forward` (the template of the module docstring)."""
        # Finiteness: a NaN/inf feature makes the new estimates non-finite, which the commit refuses before
        # writing any state; the features are then checked to name the culprit. The detector's thresholds are
        # compared with the similarities, so with one the features are checked up front.
        # Several processes: every rank checks its batch (finiteness included), then all agree on it before
        # anything is gathered, so a bad batch on one rank raises the same error on every rank.
        distributed = xdist.is_distributed()
        layout: xdist.BatchLayout | None = None
        ref: tuple[Tensor, Tensor] | None = None
        if distributed:
            (idx, ref), layout = xdist.agree_on_batch(
                type(self).__name__, functools.partial(self._check_batch, feats_a, feats_b, index, ref_feats),
                functools.partial(_gathered_tensors, feats_a, feats_b),
                # the rows each rank sends
                tag=functools.partial(owned_tag, self) if self.state_placement == "sharded_local" else None,
            )
        else:
            check_features(feats_a, feats_b, finite=self.false_negatives is not None)
        feats_a, feats_b = common_dtype(feats_a, feats_b)  # the same dtypes on every rank (agreed above)
        if ref_feats is not None and not distributed:
            ref = check_reference_features(ref_feats, feats_a, normalize=self.normalize)
            if self.false_negatives is not None:  # the detector compares similarities: everything checked up front
                _check_all_finite(feats_a, feats_b, ref)
        elif ref is not None:  # checked by every rank before the agreement; in the promoted dtype now
            ref = (like_tensor(ref[0], feats_a), like_tensor(ref[1], feats_a))
        raw_a, raw_b = feats_a, feats_b
        writes = self.__dict__["_writes"] = PendingWrites(functools.partial(_overflow_message, raw_a, raw_b, self.normalize))
        self.__dict__["_step_objective"] = None
        lean = self._paired_path and self.mode == "bimodal" and self.false_negatives is None
        if lean and not distributed:
            idx, unique = check_index_unique(index, self.num_samples, batch_size=feats_a.shape[0])
            idx = on_device(idx, feats_a.device)
            if unique and idx.numel() >= 2:  # every pair once: the lean path
                weighted_sum: WeightedSum | None = None
                if self.normalize:  # similarities without a graph; the surrogate: one node of the features
                    sim, factors = cosine_similarity_detached(feats_a, feats_b)
                    weighted_sum = functools.partial(cosine_weighted_sum, factors)
                else:
                    sim = feats_a @ feats_b.T
                try:  # the offset -ref_a ref_b^T is added inside one addmm
                    out = self._paired_step(sim, idx, None if ref is None else ReferencePair(*ref), weighted_sum)
                    self._commit(writes, idx.numel())
                    return out
                except FloatingPointError:
                    _check_all_finite(raw_a, raw_b, ref)
                    raise
        elif not distributed:
            idx = on_device(check_index(index, self.num_samples, batch_size=feats_a.shape[0]), feats_a.device)
        if idx.numel() < 2 and not distributed:  # no anchor has a negative: nothing to learn
            return connected_zero(self, raw_a, raw_b)
        # one process: normalisation and similarity are one autograd node (cosine_similarity_matrix / cosine_gram)
        fused = self.normalize and not distributed
        if self.normalize and not fused:
            feats_a, feats_b = F.normalize(feats_a, dim=1), F.normalize(feats_b, dim=1)
        batch = self._make_batch(feats_a, feats_b, idx, fused, layout, ref)
        distinct = batch.index_global.numel() if batch.unique_index is None else batch.unique_index.numel()
        if distinct < 2:  # the global batch (the same on every rank) holds one sample: no negative anywhere
            return connected_zero(self, raw_a, raw_b)
        if self.false_negatives is not None:  # unique indices: no mask yet, the detector knows the excluded diagonals
            excluded = None
            if batch.neg[0] is None:
                nb = batch.index.numel()
                offsets = [batch.pos_offset] + ([batch.self_offset] if batch.self_offset is not None else [])
                excluded = [[(0, nb, off[v]) for off in offsets] for v in (0, 1)]
            batch.neg, batch.count = self.false_negatives.detect_with_counts(  # type: ignore[assignment]
                [s.detach() for s in batch.sims], batch.neg, batch.index, counts=batch.count, index_checked=True,
                unique=batch.inverse is None, excluded=excluded, writes=writes,
            )
            # masking may leave an anchor without negatives: known only from the per-anchor counts it returns
            batch.all_valid = batch.all_valid and isinstance(batch.count, int)
        try:
            out = self._loss(batch)
            if batch.objective is not None:
                self.__dict__["_step_objective"] = batch.objective
            self._commit(writes, batch.index_global.numel())
            return out
        except FloatingPointError:
            _check_all_finite(raw_a, raw_b, ref)
            raise

    def _commit(self, writes: PendingWrites, num_global: int, device: bool = False,
                has_negative: Tensor | None = None) -> None:
        """End of a step: check every staged row at once, write them (training mode only), count the step's
        ``num_global`` samples for the inferred epoch and record the objective (see :meth:`objective`).
        ``device``: the validation-off step, whose samples are counted on the device only (no inferred epoch).
        ``has_negative``: a bool device tensor (validation off); where it is False the step counts nothing and
        :meth:`objective` and the checkpointed objective stay as they were (the validated step's early return)."""
        writes.commit(write=self.training)
        close_window(sharded_states(self) if is_sharded(self.state_placement) else [], write=self.training)
        pending = self.__dict__.pop("_step_objective", None)
        if has_negative is not None and pending is not None:
            # the estimates before this step, evaluated now (a lazy one would chain every step's tensors)
            self._materialize_objective()
            training_before = functools.partial(torch.Tensor.clone, self._objective.clone())
            shown = self.__dict__.get("_eval_objective")
            shown_before = training_before if shown is None else functools.partial(
                torch.Tensor.clone, shown().detach().reshape(()))
            if self.training:
                pending = functools.partial(_objective_where, has_negative, pending, training_before)
                if self.__dict__.get("_eval_objective") is not None:  # kept by a step without negatives
                    self.__dict__["_eval_objective"] = functools.partial(_objective_where, has_negative, pending,
                                                                         shown_before)
            else:
                pending = functools.partial(_objective_where, has_negative, pending, shown_before)
        if self.training:
            if has_negative is None or pending is None:
                self.__dict__.pop("_eval_objective", None)
            if pending is not None:
                self.__dict__["_pending_objective"] = pending
            if device:
                self._count_samples_on_device(num_global if has_negative is None else num_global * has_negative)
            else:
                self._count_samples(num_global)
        elif pending is not None:
            self.__dict__["_eval_objective"] = pending

    def _forward_unchecked(
        self, feats_a: Tensor, feats_b: Tensor, index: Tensor, ref_feats: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """:meth:`forward` with validation off: no host read, the same work for every batch of one size (module
        docstring, *Validation off*). Under torch.distributed every rank's batch must have the same size
        (:func:`xrisk.distributed.agree_on_shapes`, checked on the device)."""
        layout: xdist.BatchLayout | None = None
        if xdist.is_distributed():  # the ranks agree on shapes (no value read), then the batch is gathered
            (idx, ref), layout = xdist.agree_on_shapes(
                type(self).__name__, functools.partial(self._shape_batch, feats_a, feats_b, index, ref_feats),
                functools.partial(_gathered_tensors, feats_a, feats_b),
            )
        else:
            idx, ref = self._shape_batch(feats_a, feats_b, index, ref_feats)
        feats_a, feats_b = common_dtype(feats_a, feats_b)
        writes = self.__dict__["_writes"] = PendingWrites(_DEVICE_CAUSE)
        self.__dict__["_step_objective"] = None
        if idx.numel() * xdist.world_size() < 2:  # no anchor has a negative (one index: every count is 0, same result)
            return connected_zero(self, feats_a, feats_b)
        fused = self.normalize and layout is None  # several processes: normalised rows are gathered
        if self.normalize and not fused:
            feats_a, feats_b = F.normalize(feats_a, dim=1), F.normalize(feats_b, dim=1)
        batch = self._make_batch(feats_a, feats_b, idx, fused=fused, layout=layout, ref=ref, device=True)
        if self.false_negatives is not None:
            batch.neg, batch.count = self.false_negatives.detect_with_counts(  # type: ignore[assignment]
                [s.detach() for s in batch.sims], batch.neg, batch.index, counts=batch.count, index_checked=True,
                writes=writes, groups=batch.groups,
            )
        out = self._loss(batch)
        if batch.objective is not None:
            self.__dict__["_step_objective"] = batch.objective
        # a global batch of one distinct sample has no negative: the validated step returns its connected zero
        # before anything is counted or recorded; here the masks write no row, and the count and the objective
        # are kept on the device
        idx_g = batch.index_global
        self._commit(writes, idx_g.numel(), device=True, has_negative=(idx_g != idx_g[:1]).any())
        return out

    def _shape_batch(
        self, feats_a: Tensor, feats_b: Tensor, index: Tensor, ref_feats: Any = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """This rank's checks that read no value (validation off): shapes, dtypes, the index bounds on the device;
        returns the index (int64, on the features' device) and the reference features (or None)."""
        check_features(feats_a, feats_b, finite=False)
        idx = on_device(check_index_async(index, self.num_samples), feats_a.device)
        if idx.numel() != feats_a.shape[0]:
            raise ValueError(f"index has {idx.numel()} entries but the batch has {feats_a.shape[0]} samples")
        if self.state_placement == "sharded_local":
            check_owned(idx, self.num_samples)  # on the device
        return idx, check_reference_features(ref_feats, common_dtype(feats_a, feats_b)[0], normalize=self.normalize)

    def _check_batch(
        self, feats_a: Tensor, feats_b: Tensor, index: Tensor, ref_feats: Any = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """This rank's checks of a batch (features finite), before the ranks agree on it; returns the index and
        the checked reference features (or None)."""
        check_features(feats_a, feats_b)
        ref = check_reference_features(ref_feats, feats_a, normalize=self.normalize)
        if ref is not None:
            _check_all_finite(feats_a, feats_b, ref)
        idx = on_device(check_index(index, self.num_samples, batch_size=feats_a.shape[0]), feats_a.device)
        owned = None
        if self.state_placement == "sharded_local":
            check_owned(idx, self.num_samples)  # IndexError naming the rank, the index and its shard
            if xdist.is_distributed():  # the rows this rank sends (counted in the agreement)
                owned = owned_rows(idx, self.num_samples)
        self.__dict__["_checked_owned"] = owned
        return idx, ref

    def _make_batch(
        self, a: Tensor, b: Tensor, idx: Tensor, fused: bool = False, layout: xdist.BatchLayout | None = None,
        ref: tuple[Tensor, Tensor] | None = None, device: bool = False,
    ) -> ContrastiveBatch:
        """The batch of ``a``, ``b`` (rows normalised already, or raw with ``fused=True``: one process only);
        ``layout``: the ranks' batch sizes, as agreed (:func:`xrisk.distributed.agree_on_batch`); ``ref``: the
        checked reference features (the batch then carries their offset, in the layout of the similarities);
        ``device``: the fixed-shape batch of the validation-off step (one process; masks, count tensors and
        ``groups``)."""
        sizes = None if layout is None else layout.sizes
        ag, bg, idx_g, ref_g = a, b, idx, ref
        owned = self.state_placement == "sharded_local" and xdist.is_distributed()
        if xdist.is_distributed():  # one round: both views side by side (one gradient all_reduce), indices, ref
            sizes = xdist.gather_sizes(idx.numel()) if sizes is None else sizes
            if owned:  # and this rank's state rows (its indices lie in its shard): the window opens here
                counted = layout is not None and not device  # the validated step: counted rows
                ab, idx_g, ref_rows, _ = gather_owned(
                    sharded_states(self), torch.cat([a, b], 1), idx, [] if ref is None else list(ref), sizes=sizes,
                    owned=self.__dict__.get("_checked_owned") if counted else None,
                    tags=layout.tags if counted else ())
            else:
                ab, (idx_g, *ref_rows) = xdist.all_gather_with(
                    torch.cat([a, b], 1), [idx] if ref is None else [idx, *ref], grad="sum", sizes=sizes,
                    extra_sizes=sizes)
            ag, bg = ab.narrow(1, 0, a.shape[1]), ab.narrow(1, a.shape[1], b.shape[1])
            ref_g = None if ref is None else (ref_rows[0], ref_rows[1])
        nb, ng = idx.numel(), idx_g.numel()
        if layout is not None:
            start = layout.start
        else:
            start = xdist.local_slice(nb)[0] if xdist.is_distributed() else 0
        if self.state_placement == "sharded" and xdist.is_distributed():  # fetch the rows; indices -> positions
            idx_g = open_window(sharded_states(self), idx_g)
        if is_sharded(self.state_placement) and xdist.is_distributed():
            idx = idx_g[start : start + nb]
        self_offset: tuple[int, int] | None
        stacked: Tensor | None = None
        if self.mode == "unimodal":
            if fused:
                s = cosine_gram(a, b)
            else:
                z = torch.cat([a, b], 0)
                s = z @ (z if ag is a else torch.cat([ag, bg], 0)).T  # [2B, 2B_global], one matmul
            sims, stacked = [s[:nb], s[nb:]], s
            col_index = torch.cat([idx_g, idx_g], 0)
            pos_offset, self_offset = (start + ng, start), (start, start + ng)  # columns: [all views a; all views b]
        else:
            s0 = cosine_similarity_matrix(a, b) if fused else a @ bg.T  # [B, B_global] image anchors x texts
            # text anchors x images: the transpose of s0 on one process, its own (local) rows otherwise
            sims = [s0, s0.T if not xdist.is_distributed() else b @ ag.T]
            col_index = idx_g
            pos_offset, self_offset = (start, start), None
        transposed = self.mode == "bimodal" and not xdist.is_distributed()
        offset: Offset = None
        if ref is not None:  # -s^ref in the layout of the similarities, no gradient
            (ra, rb), (rag, rbg) = ref, ref_g
            if self.mode == "unimodal":
                offset = reference_offset(torch.cat([ra, rb], 0), torch.cat([rag, rbg], 0))  # like stacked
            elif transposed:
                offset = reference_offset(ra, rb)
            else:
                offset = [reference_offset(ra, rbg), reference_offset(rb, rag)]
        if transposed:  # both sides' positive is the diagonal of s0
            pos = sims[0].detach().diagonal().unsqueeze(1).expand(nb, 2)
        else:
            pos = torch.stack([sims[v].detach().diagonal(pos_offset[v]) for v in (0, 1)], 1)
        n_excl = 1 if self_offset is None else 2
        if device:  # every anchor's negatives as a mask; duplicates merged by group ids (one sort)
            m = col_index[None, :] != idx[:, None]  # symmetric when transposed: one mask serves both sides
            return ContrastiveBatch(
                idx, idx_g, sims, pos, pos_offset, self_offset, [m, m], count_true(m, 1).unsqueeze(1).expand(nb, 2),
                col_index, xdist.world_size() / max(ng, 1), transposed, stacked, start, None, None, False, sizes=sizes,
                offset=offset, groups=duplicate_groups(idx_g),
            )
        uniq = torch.unique(idx_g)
        unique_index = inverse = None
        if uniq.numel() != ng:  # duplicates: merged by the estimator step (rare; unique samplers skip this)
            unique_index, inverse = torch.unique(idx_g, return_inverse=True)
        neg: list[Tensor | None] = [None, None]
        if unique_index is not None:
            m = col_index[None, :] != idx[:, None]  # symmetric when transposed (col_index == idx)
            # side 1 of a transposed batch is sims[0].T: give it the mask in the same (transposed) layout,
            # equal to m by symmetry, so elementwise ops of sims[1] with neg[1] (GloFND) stay contiguous
            neg = [m, m.T if transposed else m]
        count: Tensor | int
        if unique_index is None:  # every column but the anchor's own pair(s)
            count = col_index.numel() - n_excl
            if count < 1:
                count = torch.full((nb, 2), count, device=a.device, dtype=torch.long)
        else:
            count = count_true(m, 1).unsqueeze(1).expand(nb, 2)
        return ContrastiveBatch(
            idx, idx_g, sims, pos, pos_offset, self_offset, neg, count, col_index, xdist.world_size() / max(ng, 1),
            transposed, stacked, start, unique_index, inverse, neg[0] is None and col_index.numel() > n_excl,
            sizes=sizes, offset=offset,
        )

    def _loss(self, batch: ContrastiveBatch) -> Tensor:
        """Compute this rank's share of the surrogate, update state, record the objective."""
        raise TypeError(f"{type(self).__name__} must override _loss (the hook of ContrastiveLossBase)")

    def _paired_estimator(self, state: SampleState, index: Tensor, like: Tensor) -> tuple[Estimator, list[Tensor]]:
        """The estimator callback of a lean step and the list it fills: the new rows of ``state`` at ``index``
        (validated, unique, on the state's device), :func:`moving_average_rows` with the current ``gamma``,
        returned to the kernel in ``like``'s device and dtype; nothing is written."""
        gamma = self.current_gamma()
        rows: list[Tensor] = []

        def estimator(log_g: Tensor, valid: Tensor) -> Tensor:
            rows.append(moving_average_rows(state, index, as_state_rows(log_g, index), gamma))
            return like_tensor(rows[0], like)

        return estimator, rows

    def _paired_step(
        self, sim: Tensor, index: Tensor, offset: Tensor | ReferencePair | None = None,
        weighted_sum: WeightedSum | None = None,
    ) -> Tensor:
        """Lean hook for one process, ``mode="bimodal"``, no detector and every index once (``B >= 2``).

        ``sim``: ``[B, B]`` similarities (the positives on the diagonal, every other column a negative), with
        gradient, or without when ``weighted_sum`` is given (the features' node of the surrogate
        ``sum(stopgrad(W) * sim)``, :func:`~xrisk.functional.similarity.cosine_weighted_sum`: pass it to the
        kernel); ``index``: ``[B]`` validated indices, ``offset``: the ``[B, B]`` DRRho-CLIP offset
        (:class:`ContrastiveBatch`) or None. Must equal ``_loss`` on the same batch (state, value,
        gradient); it skips the batch record and the general estimator step (distributed gathers, merging of
        duplicates, masks), which at ``B = 128`` cost as much as the step's arithmetic. Stages every state row
        in ``self._writes`` (one :func:`~xrisk.state.write_rows` after the step) and records the objective with
        :meth:`_record_objective`. Used when the class sets ``_paired_path``.
        """
        raise TypeError(f"{type(self).__name__} sets _paired_path but does not override _paired_step")

    # ----------------------------------------------------------------------------- shared helpers
    def _log_estimator_step(
        self, state: SampleState, batch: ContrastiveBatch, log_g: Tensor, valid: Tensor, gamma: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Global log-space moving-average update of ``state`` from the local estimates.

        Gathers ``(log_g, valid)`` of all ranks (``O(B_global)`` floats), merges duplicate indices by
        averaging their new values in linear space (the :class:`~xrisk.state.SampleState` rule), applies
        ``log u <- log((1-gamma) u + gamma g)`` (first visit: ``log g``) identically on every rank. The new rows
        are staged in ``self._writes`` (written when the step commits; anchors without negatives keep theirs).

        Returns:
            ``(log_u_local [B, 2], log_u_global [B_global, 2], valid_global [B_global, 2])`` after the update.
        """
        dev = state.value.device
        if xdist.is_distributed():
            packed = xdist.all_gather_no_grad(torch.cat([log_g.float(), valid.float()], 1), sizes=batch.sizes)
            new, m = packed[:, :2].to(dev), packed[:, 2:].to(dev) > 0.5
        else:
            new, m = log_g.to(dev, torch.float32), valid.to(dev)
        idx_g = batch.index_global.to(dev)
        writes = self._writes
        if batch.groups is not None:  # validation off: duplicates merged on the device, fixed shape
            upd_g, _ = masked_update_state(
                state, idx_g, new, m, batch.groups.to(dev), functools.partial(_log_ema, gamma), log_space=True,
                writes=writes,
            )
        elif batch.inverse is None:  # every index once: no merging
            upd_g = moving_average_rows(state, idx_g, new, gamma)
            if batch.all_valid:  # every row is written (no mask)
                writes.stage(state, idx_g, upd_g)
            else:  # anchors without negatives keep their old row (their new one is not finite)
                upd_g = torch.where(m, upd_g, state.value.index_select(0, idx_g))
                writes.stage(state, idx_g, upd_g, mask=m)
        else:
            uniq, inv = batch.unique_index.to(dev), batch.inverse.to(dev)  # type: ignore[union-attr]
            vals = new.masked_fill(~m, float("-inf"))
            ex = inv[:, None].expand_as(vals)
            mx = torch.full((uniq.numel(), 2), float("-inf"), device=dev).scatter_reduce(0, ex, vals, "amax")
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
            tot = torch.zeros_like(mx).index_add_(0, inv, torch.exp(vals - mx[inv]))
            cnt = torch.zeros_like(mx).index_add_(0, inv, m.float())
            touched = cnt > 0
            log_mean = torch.where(touched, torch.log(tot.clamp_min(1e-38)) + mx - torch.log(cnt.clamp_min(1.0)), mx)
            old = state.value.index_select(0, uniq)
            seen_u = state.seen.index_select(0, uniq)
            upd = torch.where(touched, log_moving_average(old, log_mean, gamma, seen_u), old)
            writes.stage(state, uniq, upd, mask=touched)
            upd_g = upd[inv]
        local = upd_g[batch.start : batch.start + batch.index.numel()]
        out_dev, out_dtype = batch.pos.device, batch.pos.dtype
        return local.to(out_dev, out_dtype), upd_g.to(out_dev), m.to(out_dev)

    def _momentum_sgd_step(
        self, param: SampleState, momentum: SampleState, batch: ContrastiveBatch, before: Tensor, grad: Tensor,
        beta: float, lr: float, mask: Tensor, bounds: tuple[float, float] | None = None,
    ) -> None:
        """Per-sample momentum SGD on the global batch rows, identically on every rank.

        ``m <- (1 - beta) m + beta grad`` (first visit: ``grad``; duplicates average their gradients,
        the :class:`~xrisk.state.SampleState` rule), then ``param <- clip(before - lr m, *bounds)``, both
        only where ``mask``. ``before``, ``grad``, ``mask``: ``[B_global, 2]`` rows of ``batch.index_global``
        (``before``: the parameter before the step). Both states' rows are staged in ``self._writes`` (without
        duplicates and with ``batch.all_valid`` directly, the caller's ``mask`` then being all True and not
        applied; otherwise through :func:`~xrisk.state.update_states`).
        """
        dev = momentum.value.device
        index, grad = batch.index_global.to(dev), grad.to(dev, torch.float32)
        unique = batch.inverse is None
        writes = self._writes
        if batch.groups is not None:  # validation off: duplicates averaged on the device, fixed shape
            m, written = masked_update_state(momentum, index, grad, mask.to(dev), batch.groups.to(dev),
                                             functools.partial(_momentum, beta), writes=writes)
            writes.stage(param, index, sgd_rows(before, m, lr, bounds), mask=written)
            return
        if unique:  # the moving average of SampleState.update, staged below together with the parameter
            m = momentum_rows(momentum, index, grad, beta)
        else:
            m = update_states((momentum,), index, (grad,), beta, mask=mask, index_checked=True, writes=writes)[0]
        new = sgd_rows(before, m, lr, bounds)
        if unique and batch.all_valid:  # every row has a negative (no masking)
            writes.stage(momentum, index, m)
            writes.stage(param, index, new)
        elif unique:
            update_states((momentum, param), index, (m, new), 1.0, mask=mask, index_checked=True, assume_unique=True,
                          writes=writes)
        else:
            update_states((param,), index, (new,), 1.0, mask=mask, index_checked=True, writes=writes)

    def _record_objective(self, fn: Callable[..., Tensor], *args: Any) -> None:
        """Record the step's objective estimate ``fn(*args)`` (detached tensors that are not modified later),
        evaluated on request -- :meth:`objective`, ``state_dict()`` -- instead of on every step; it replaces
        the last one when the step commits."""
        self.__dict__["_step_objective"] = functools.partial(fn, *args)  # past nn.Module.__setattr__

    def _materialize_objective(self) -> None:
        pending = self.__dict__.pop("_pending_objective", None)
        if pending is not None:
            self.__dict__["_objective"].copy_(pending().detach().reshape(()))

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        self._materialize_objective()  # the checkpoint holds the last step's objective
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:  # type: ignore[override]
        self.__dict__.pop("_pending_objective", None)  # the loaded objective replaces the last step's
        self.__dict__.pop("_eval_objective", None)
        self._load_epochs(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._loaded_epochs()
        self._on_load()

    def _on_load(self) -> None:
        """Hook run after this module's own buffers were loaded from a ``state_dict`` (default: nothing)."""

    def objective(self) -> Tensor:
        """Estimate of the true objective on the last (global) batch; NaN before the first batch.

        Each loss documents its exact definition (``objective_name``). Computed on request from the
        (detached) rows the last step saved. After an ``eval()``-mode call it is that call's estimate
        (from its uncommitted update), while ``state_dict()`` keeps the last training step's.
        """
        evaluated = self.__dict__.get("_eval_objective")
        if evaluated is not None:
            with torch.no_grad():
                return evaluated().detach().reshape(()).to(self._objective)
        self._materialize_objective()
        return self._objective.clone()

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, mode={self.mode!r}, normalize={self.normalize}"
