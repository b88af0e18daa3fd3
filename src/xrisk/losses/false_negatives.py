"""GloFND: global false-negative detection with per-anchor learned similarity thresholds."""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_choice, check_positive, check_unit_interval, validation_enabled
from xrisk.functional.contrastive import (
    count_true, masked_upper_quantile, negatives_mask, quantile_subgradient, quantile_threshold_step,
    restrict_to_negatives,
)
from xrisk.losses._epochs import EpochTracking
from xrisk.sharding import (
    PLACEMENTS, Placement, check_owned, close_window, gather_owned, open_window, owned_rows, owned_tag, sharded_states,
    state_window,
)
from xrisk.state import (
    PendingWrites, ReplicatedStateModule, SampleState, check_index, check_index_async, duplicate_groups,
    masked_update_state, update_states,
)

__all__ = ["FalseNegativeDetector"]

Blocks = Sequence[tuple[int, int, int]]


def _cause() -> str:
    return "a GloFND threshold update is NaN/inf (are the similarities finite?)"


def _overwrite(old: Tensor, new: Tensor, seen: Tensor) -> Tensor:
    """The update rule of a threshold row: the new value (gamma = 1)."""
    return new


def _side(counts: Tensor | int, v: int) -> Tensor | int:
    """Side ``v``'s column of per-anchor counts ``[B, 2]`` (an int count: the same for every anchor and side)."""
    return counts if isinstance(counts, int) else counts[:, v]


def _explicit_masks(sims: Sequence[Tensor], negs: Sequence[Tensor | None], excluded: Sequence[Blocks]) -> list[Tensor]:
    """Per side the ``[B, C]`` bool negatives: ``negs[v]``, or (None) every column but the diagonals ``excluded[v]``."""
    return [m if m is not None else negatives_mask(s.shape, blocks, s.device)
            for s, m, blocks in zip(sims, negs, excluded)]


def _check_forward_shapes(sim: Tensor, neg: Tensor, index: Tensor) -> None:
    if sim.shape != neg.shape or sim.dim() != 3 or sim.shape[:2] != (index.numel(), 2):
        raise ValueError(f"sim {tuple(sim.shape)} / neg {tuple(neg.shape)} must be [B={index.numel()}, 2, C]")


class FalseNegativeDetector(EpochTracking, ReplicatedStateModule):
    """Learns, for every anchor, the ``(1 - alpha)`` quantile of its similarities to the data set.

    For anchor ``i`` (and side ``v``: view a/b in unimodal mode, image/text in bimodal mode) the
    threshold is the minimiser of a pinball loss over all its negatives ``S_i^-`` in the data set:

    .. math::

        \\lambda_i = \\arg\\min_\\lambda \\; \\alpha \\lambda + \\frac{1}{|S_i^-|}\\sum_{j \\in S_i^-} (s_{ij} - \\lambda)_+ ,

    i.e. the ``(1 - alpha)`` quantile of ``s_ij`` (cosine similarities), ``alpha = alpha``. Every
    batch takes one step on the batch subgradient ``g_i = alpha - mean_{j in B_i^-} 1[s_ij > lambda_i]``
    for the batch anchors only, then negatives with ``s_ij > lambda_i`` (updated threshold) are
    declared false negatives and removed from the anchor's negative set, in the loss and in its
    estimator. The step (``lr = lr``):

    * ``optimizer="sgd"`` (default): ``lambda_i <- clip(lambda_i - lr g_i, -1, 1)``;
    * ``optimizer="adam"`` (GloFND's code): per-sample moments ``m_i <- b1 m_i + (1 - b1) g_i``,
      ``v_i <- b2 v_i + (1 - b2) g_i^2`` (both start at 0), bias-corrected with ``t = epoch + 1`` as in
      the reference (every sample is visited once per epoch), and
      ``lambda_i <- clip(lambda_i - lr m_i / (1 - b1^t) / (sqrt(v_i / (1 - b2^t)) + eps), -1, 1)``;
      ``(b1, b2) = betas`` (reference: 0.9, 0.98), ``eps`` (1e-8). The quantile is taken over the
    negatives *before* masking. Cost per step ``O(B_local * B_global)`` comparisons plus ``O(B)``
    scalar updates, independent of ``num_samples``.

    **Step size.** The default ``lr`` is 0.5 with SGD, ten times GloFND's ``lr_lda = 0.05``, which is the
    default with Adam. That value comes with Adam (whose normalised step moves ``lambda`` by about
    ``lr`` per visit whatever the gradient's size) and ImageNet-100 / CC3M runs with 70+ warm-up epochs
    before masking starts. With plain SGD the step is ``lr * (alpha - fraction above)``, at most
    ``lr * alpha`` downwards: in the fidelity benchmark (``bench/fidelity_contrastive.py``, 20 epochs)
    SGD at ``lr = 0.05`` still flagged 9-10 % of the negatives instead of ``alpha = 1 %`` and cost 7-11
    recall points on small image-text data, while SGD at ``lr = 0.5`` converged (mean absolute error
    0.023 to the exact quantile, 1.04 % flagged, -0.9 points) and Adam at ``lr = 0.05`` came close
    (0.034, 1.00 %, -1.2 points). Watch :attr:`last_masked_fraction`: it should settle near ``alpha``.

    ``init_quantile``: a never-seen anchor's threshold starts at the ``(1 - alpha)`` quantile of its
    batch negatives instead of ``init`` (GloFND's ``init_quantile``; plain SGD from ``init = 1`` moves
    down by only ``lr * alpha`` per visit). ``lr`` is a plain attribute and may be changed between
    epochs like an optimizer's learning rate (decaying it makes the thresholds converge).

    ``start_epoch``: thresholds are learned from the first batch on, but masking starts at epoch
    ``start_epoch`` (GloFND's ``start_update = 0``, ``lda_start = start_epoch``); the owning loss
    forwards its epoch (:meth:`set_epoch`, or inferred from the samples seen until it is called; a
    detector used on its own infers its epoch the same way, see
    :class:`~xrisk.losses._epochs.EpochTracking`).

    Args:
        num_samples: data-set size ``n``.
        alpha: fraction of each anchor's negatives treated as false negatives, in ``(0, 1)``.
        lr: step size of the threshold update (see *Step size*; default 0.5 with SGD, 0.05 with Adam).
        optimizer: ``"sgd"`` or ``"adam"`` (see above); betas, eps: Adam's moment weights and epsilon.
        start_epoch: first epoch at which detected false negatives are masked.
        init: initial threshold (``1.0``: nothing is masked until it is learned).
        init_quantile: initialise each threshold at its first visit from the batch quantile.
        state_placement: ``"replicated"``, ``"sharded"`` or ``"sharded_local"`` (each rank's indices in its own
            shard) per-sample state under torch.distributed (same results;
            :mod:`xrisk.sharding`); must match the loss's. Sharded, it runs inside its loss or through
            :meth:`forward`; ``"sharded_local"`` through :meth:`forward` checks that every rank's ``index`` lies in
            its own shard (an :class:`IndexError` on every rank naming the rank, the index and the shard) and
            gathers the batch's rows with its indices (:func:`xrisk.sharding.gather_owned`, one round).

    State (``state_dict``): ``lam`` (:class:`~xrisk.state.SampleState` ``[n, 2]``, thresholds per sample
    and side; synced with ``local=True`` so every rank holds the same values), with Adam also
    ``lam_m``, ``lam_v`` (the moments, ``[n, 2]``), the ``epoch``, ``samples_seen``, ``epoch_is_set``
    buffers; :attr:`last_masked_fraction` (diagnostic, not checkpointed). The thresholds change in
    training mode only: in ``eval()`` mode (of the detector, or of the loss that owns it) the step is
    computed from a copy of the update -- the returned masks are the same -- and nothing is written.
    Inside a loss its updates are committed with the loss's (all or nothing).

    Example:
        >>> from xrisk.losses import GlobalContrastiveLoss
        >>> fnd = FalseNegativeDetector(100, alpha=0.01, start_epoch=2)
        >>> loss_fn = GlobalContrastiveLoss(100, mode="bimodal", false_negatives=fnd)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16), torch.arange(8))

    Paper: Balmaseda et al., "Discovering Global False Negatives On the Fly for
    Self-supervised Contrastive Learning", ICML 2025, arXiv:2502.20612.
    """

    epoch: Tensor

    def __init__(
        self,
        num_samples: int,
        *,
        alpha: float = 0.01,
        lr: float | None = None,
        start_epoch: int = 0,
        init: float = 1.0,
        init_quantile: bool = False,
        optimizer: Literal["sgd", "adam"] = "sgd",
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        state_placement: Placement = "replicated",
    ) -> None:
        super().__init__()
        self.state_placement = check_choice("state_placement", state_placement, PLACEMENTS)
        self.alpha = check_unit_interval("alpha", alpha, closed_right=False)
        self.optimizer = check_choice("optimizer", optimizer, ("sgd", "adam"))
        self.lr = check_positive("lr", (0.5 if optimizer == "sgd" else 0.05) if lr is None else lr)
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = check_positive("eps", eps)
        if int(start_epoch) < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch!r}")
        self.start_epoch = int(start_epoch)
        if not -1.0 <= float(init) <= 1.0:
            raise ValueError(f"init threshold must be in [-1, 1], got {init!r}")
        self.init_quantile = bool(init_quantile)
        self.lam = SampleState(num_samples, (2,), init=float(init), placement=state_placement)
        self.num_samples = self.lam.num_samples
        if self.optimizer == "adam":
            self.lam_m = SampleState(num_samples, (2,), placement=state_placement)
            self.lam_v = SampleState(num_samples, (2,), placement=state_placement)
        self._init_epochs()
        self._fraction_counts: tuple[Tensor, Tensor | int] | None = None  # (kept, candidates) of the last batch

    def _epoch_dependence(self) -> list[str]:
        out = [f"the detector's start_epoch={self.start_epoch}"] if self.start_epoch > 0 else []
        return out + (["the detector's Adam bias correction"] if self.optimizer == "adam" else [])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:  # type: ignore[override]
        self._load_epochs(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._loaded_epochs()

    @property
    def masking(self) -> bool:
        """Whether detected false negatives are removed at the current epoch."""
        return self._epoch_int >= self.start_epoch

    @property
    def last_masked_fraction(self) -> float:
        """Fraction of the last batch's candidate negatives lying above their anchor's (updated) threshold.

        These are the negatives that are masked (or, before ``start_epoch``, would be). Once the
        thresholds have converged it stays near ``alpha``; a value far above ``alpha`` means they are
        still descending from ``init`` (raise ``lr`` or use ``init_quantile``). NaN before the first
        batch; under torch.distributed, over this rank's anchors only.
        """
        if self._fraction_counts is None:
            return float("nan")
        kept, candidates = self._fraction_counts  # counted on request, not on every step
        total = candidates * kept.numel() if isinstance(candidates, int) else int(candidates.sum())
        return 1.0 - int(kept.sum()) / max(total, 1)

    @torch.no_grad()
    def _step(
        self, sims: list[Tensor], negs: Sequence[Tensor | None], index: Tensor, counts: Tensor | int, *,
        writes: PendingWrites, index_checked: bool = False, unique: bool = False, excluded: Sequence[Blocks] = ((), ()),
        groups: Tensor | None = None, on_device: bool = False,
    ) -> Tensor:
        """Stage the threshold update of the batch anchors (from per-side ``[B, C]`` sims/negatives) in ``writes``;
        return the updated thresholds ``[B, 2]``.

        ``counts [B, 2]``: number of negatives per anchor and side (an int: every anchor has that many, ``>= 1``).
        ``index_checked`` / ``unique``: as
        ``index_checked`` / ``assume_unique`` of :func:`~xrisk.state.update_states`. ``negs[v]`` None: every
        column but the diagonals ``excluded[v]``. ``groups``: the fixed-shape step of validation off (no host read;
        duplicates of ``index`` merged by these :func:`~xrisk.state.duplicate_groups` ids); ``on_device``: that step
        with the ids computed here, of the (gathered) batch's ``index``.
        """
        ref = sims[0]
        if self.lam.num_shards > 1 and not self.lam.window_open:
            raise RuntimeError("a FalseNegativeDetector with sharded state runs inside its loss or through forward()")
        if not index_checked:
            index = self._agreed_index(index)
        index = index.to(self.lam.value.device)
        lam = self.lam.value.index_select(0, index).to(ref.device, ref.dtype)
        states: tuple[SampleState, ...] = (self.lam,)
        if self.optimizer == "sgd":
            new = torch.stack(
                [quantile_threshold_step(sims[v], negs[v], lam[:, v], alpha=self.alpha, lr=self.lr,
                                         count=_side(counts, v), excluded=excluded[v])
                 for v in (0, 1)], 1
            )
            rows: list[Tensor] = []
        else:
            grad = torch.stack(
                [quantile_subgradient(sims[v], negs[v], lam[:, v], alpha=self.alpha, count=_side(counts, v),
                                      excluded=excluded[v])
                 for v in (0, 1)], 1
            )
            new, rows = self._adam(lam, grad, index)
            states = (self.lam, self.lam_m, self.lam_v)
        if self.init_quantile:
            first = ~self.lam.seen.index_select(0, index).to(ref.device)
            if on_device or groups is not None or bool(first.any()):  # validation off: always computed, masked
                masks = _explicit_masks(sims, negs, excluded)
                q = torch.stack([masked_upper_quantile(sims[v], masks[v], self.alpha) for v in (0, 1)], 1)
                new = torch.where(first, q, new)
                rows = [torch.where(first, 0.0, r) for r in rows]  # the moments start after the initialisation
        has = None if isinstance(counts, int) else counts > 0  # an int: every anchor has that many (>= 1)
        if on_device or groups is not None:  # duplicates averaged on the device (gamma = 1: their mean), fixed shape
            values = [r.to(torch.float32) for r in (new, *rows)]
            start = 0
            if xdist.is_distributed():  # the local anchors' rows -> the global batch's (equal local batches)
                sizes = [index.numel()] * xdist.world_size()
                start = xdist.rank() * index.numel()
                index, has, *values = xdist.all_gather_many([index, has, *values], sizes=sizes)
            if groups is None:
                groups = duplicate_groups(index)
            news = [masked_update_state(st, index, r, has, groups.to(index.device), _overwrite, writes=writes)[0]
                    for st, r in zip(states, values)]
            return news[0].narrow(0, start, lam.shape[0]).to(ref.device, ref.dtype)
        out = update_states(
            states, index, (new, *rows), 1.0, mask=has, local=True, index_checked=True, assume_unique=unique,
            writes=writes,
        )[0]
        return out.to(ref.device, ref.dtype)

    def _adam(self, lam: Tensor, grad: Tensor, index: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Adam step of the batch thresholds ``lam [B, 2]`` from the subgradient ``grad``: ``(new lam, [m, v])``
        (bias correction with ``t = epoch + 1``, as GloFND's code)."""
        b1, b2 = self.betas
        m = torch.lerp(grad, self.lam_m.value.index_select(0, index).to(grad), b1)  # b1 m + (1 - b1) g
        v = torch.lerp(grad * grad, self.lam_v.value.index_select(0, index).to(grad), b2)
        t = self._epoch_int + 1
        step = (m / (1.0 - b1**t)) / ((v / (1.0 - b2**t)).sqrt_().add_(self.eps))
        return (lam - self.lr * step).clamp_(-1.0, 1.0), [m, v]

    @torch.no_grad()
    def detect(
        self, sims: list[Tensor], negs: list[Tensor | None], index: Tensor, *, index_checked: bool = False,
        unique: bool = False,
    ) -> list[Tensor]:
        """Update the thresholds and return the negatives that are kept (the loss-side entry point).

        Args:
            sims: per side ``[B, C]`` cosine similarities of the local anchors (views are fine).
            negs: per side ``[B, C]`` bool candidate negatives.
            index: ``[B]`` dataset indices of the local anchors.
            index_checked: ``index`` already passed :func:`~xrisk.state.check_index` for ``num_samples``.
            unique: no index occurs twice in the global batch (skips the duplicate check of the update).

        Returns:
            per side ``[B, C]`` bool: ``negs`` minus the detected false negatives (``negs`` itself before
            ``start_epoch``).
        """
        return self.detect_with_counts(sims, negs, index, index_checked=index_checked, unique=unique)[0]

    @torch.no_grad()
    def detect_with_counts(
        self, sims: list[Tensor], negs: Sequence[Tensor | None], index: Tensor, *, counts: Tensor | int | None = None,
        index_checked: bool = False, unique: bool = False, excluded: Sequence[Blocks] | None = None,
        writes: PendingWrites | None = None, groups: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor | int]:
        """:meth:`detect` that also returns the number of kept negatives per anchor and side ``[B, 2]``.

        ``counts [B, 2]``: the number of candidate negatives (``negs[v].sum(1)``), if the caller knows it
        (the losses do; an int when every anchor has that many, ``>= 1``); counting a ``[B, C]`` mask is one
        of the larger costs of a GloFND step. The returned counts are ``counts`` itself before ``start_epoch``,
        else ``[B, 2]`` per anchor and side (masking may leave an anchor without negatives).
        ``excluded``: per side, the candidate negatives are every column but these diagonals (blocks
        ``(first, count, offset)`` as in :func:`~xrisk.functional.contrastive.row_exp`) and ``negs`` may be
        ``[None, None]`` (``counts`` required): no ``[B, C]`` mask is built or combined (one process, unique
        indices). The returned masks are explicit either way. ``writes``: stage the threshold update there (the
        owning loss commits it with its own); without, it is checked and written now, in training mode only.
        ``groups``: the owning loss's validation-off step (:func:`~xrisk.state.duplicate_groups` of ``index``; no
        host read, ``counts`` a tensor and ``writes`` given).
        """
        if excluded is None:
            if any(m is None for m in negs):
                raise ValueError("detect needs explicit negative masks (or the excluded diagonals)")
            excluded = ((), ())
        elif any(m is None for m in negs) and counts is None:
            raise ValueError("detect without masks needs counts")
        if counts is None:
            counts = torch.stack([count_true(negs[v], 1) for v in (0, 1)], 1)  # type: ignore[arg-type]
        own, masking = writes is None, self.masking  # the epoch at the start of the step
        w = PendingWrites(_cause) if writes is None else writes
        lam = self._step(sims, negs, index, counts, writes=w, index_checked=index_checked, unique=unique,
                         excluded=excluded, groups=groups)
        if own:
            self._commit(w, index.numel())
        kept, kept_counts = self._kept(sims, negs, lam, counts, excluded)
        if masking:
            return kept, kept_counts
        return _explicit_masks(sims, negs, excluded), counts

    def _kept(
        self, sims: list[Tensor], masks: Sequence[Tensor | None], lam: Tensor, counts: Tensor | int,
        excluded: Sequence[Blocks] = ((), ()),
    ) -> tuple[list[Tensor], Tensor]:
        """Negatives at or below the thresholds ``lam [B, 2]`` and their number per anchor and side;
        records :attr:`last_masked_fraction` (``counts [B, 2]``: candidate negatives per anchor and side;
        ``masks[v]`` None: every column but the diagonals ``excluded[v]``)."""
        # not (s > lam) rather than s <= lam: the same flags (no NaN here), and gt is the faster kernel on CPU
        kept = [restrict_to_negatives(torch.gt(sims[v], lam[:, v : v + 1]).logical_not_(), masks[v], excluded[v]) for v in (0, 1)]
        kept_counts = torch.stack([count_true(kept[v], 1) for v in (0, 1)], 1)
        self._fraction_counts = (kept_counts, counts)
        return kept, kept_counts

    @torch.no_grad()
    def forward(self, sim: Tensor, neg: Tensor, index: Tensor) -> Tensor:
        """Update the thresholds of the batch anchors and return the keep-mask.

        Args:
            sim: ``[B, 2, C]`` cosine similarities of the local anchors (2 sides) to the columns.
            neg: ``[B, 2, C]`` bool, the candidate negatives.
            index: ``[B]`` dataset indices of the local anchors.

        Returns:
            ``[B, 2, C]`` bool, False for detected false negatives (all True before ``start_epoch``).

        With validation off (:func:`xrisk.set_validation`) the step reads nothing back to the host: the index is
        checked with on-device asserts, every rank's batch must have the same size, and the samples are counted
        on the device without inferring the epoch (call :meth:`set_epoch`); the thresholds and masks are the
        validated step's.
        """
        if not validation_enabled():
            return self._forward_unchecked(sim, neg, index)
        index, layout = self._agreed_index(index, functools.partial(_check_forward_shapes, sim, neg, index),
                                           layout=True)
        sizes = layout.sizes
        sims, masks = [sim[:, 0], sim[:, 1]], [neg[:, 0], neg[:, 1]]
        counts = torch.stack([count_true(masks[v], 1) for v in (0, 1)], 1)
        writes, masking = PendingWrites(_cause), self.masking  # the epoch at the start of the step
        states = sharded_states(self) if self.state_placement == "sharded_local" and xdist.is_distributed() else []
        if states:  # owner-local: the rows travel with the indices (one gather), the window holds the global batch
            _, slots, _, _ = gather_owned(states, None, index, [], sizes=sizes,
                                          owned=self.__dict__.get("_checked_owned"), tags=layout.tags)
            start = sum(sizes[: xdist.rank()])
            lam = self._windowed_step(states, sims, masks, slots[start : start + index.numel()], counts, writes,
                                      sum(sizes), on_device=False)
        else:
            with state_window(self, index, local=True, write=self.training) as rows:  # sharded: the batch's rows
                lam = self._step(sims, masks, rows, counts, writes=writes, index_checked=True)
                self._commit(writes, sum(sizes))
        return self._masks(sim, neg, sims, masks, lam, counts, masking)

    def _forward_unchecked(self, sim: Tensor, neg: Tensor, index: Tensor) -> Tensor:
        """:meth:`forward` with validation off (:func:`xrisk.set_validation`): no host read. Shapes are checked on
        the host (metadata), the index bounds (and, ``"sharded_local"``, ownership) with on-device asserts; under
        torch.distributed every rank's batch must have the same size (:func:`xrisk.distributed.agree_on_shapes`);
        duplicates are merged by :func:`~xrisk.state.duplicate_groups` ids (fixed shape), a sharded step opens a
        window of fixed capacity, and the samples are counted on the device (the epoch is not inferred from them:
        call :meth:`set_epoch`). The same thresholds and masks as the validated step."""

        def validate() -> Tensor:
            _check_forward_shapes(sim, neg, index)
            idx = check_index_async(index, self.num_samples)
            if self.state_placement == "sharded_local":
                check_owned(idx, self.num_samples)  # on the device
            return idx

        index, layout = xdist.agree_on_shapes(type(self).__name__, validate, lambda i: {"index": i})
        sizes, n = layout.sizes, index.numel()
        start = sum(sizes[: layout.rank])
        sims, masks = [sim[:, 0], sim[:, 1]], [neg[:, 0], neg[:, 1]]
        counts = torch.stack([count_true(masks[v], 1) for v in (0, 1)], 1)
        writes, masking = PendingWrites(_cause), self.masking  # the epoch at the start of the step
        states = sharded_states(self) if xdist.is_distributed() else []
        local = index  # replicated: _step gathers the indices with the new rows and merges their duplicates
        if states:  # sharded: this rank's entries as window positions (a repeated index: one position)
            if self.state_placement == "sharded_local":  # the rows ride in the one gather of the indices
                _, positions, _, _ = gather_owned(states, None, index, [], sizes=sizes)
            else:  # "sharded": a window of fixed capacity (one slot per entry of the global batch)
                positions = open_window(states, xdist.all_gather_no_grad(index, sizes=sizes))
            local = positions.narrow(0, start, n)
        lam = self._windowed_step(states, sims, masks, local, counts, writes, sum(sizes), on_device=True)
        return self._masks(sim, neg, sims, masks, lam, counts, masking)

    def _windowed_step(self, states: list[SampleState], sims: list[Tensor], masks: list[Tensor], index: Tensor,
                       counts: Tensor, writes: PendingWrites, num_global: int, *, on_device: bool) -> Tensor:
        """:meth:`_step` of :meth:`forward` on the open window of the sharded ``states`` (none: the state itself; a
        replicated step), then the commit of ``num_global`` samples (``on_device``: the validation-off step, no
        host read); the window is written back in training mode (each rank copies its own entries' rows into its
        shard) or, after an exception, discarded. Returns the updated thresholds."""
        try:
            lam = self._step(sims, masks, index, counts, writes=writes, index_checked=True, on_device=on_device)
            if not on_device:
                self._commit(writes, num_global)
            else:
                writes.commit_on_device(write=self.training)
                if self.training:
                    self._count_samples_on_device(num_global)
        except BaseException:
            close_window(states, write=False)
            raise
        close_window(states, write=self.training)
        return lam

    def _masks(self, sim: Tensor, neg: Tensor, sims: list[Tensor], masks: list[Tensor], lam: Tensor, counts: Tensor,
               masking: bool) -> Tensor:
        """The keep-mask :meth:`forward` returns (recording :attr:`last_masked_fraction`)."""
        self._kept(sims, masks, lam, counts)
        if not masking:
            return torch.ones_like(neg)
        return sim <= lam.unsqueeze(-1)

    def _commit(self, writes: PendingWrites, num_global: int) -> None:
        """Check and (training mode only) write a step of the detector used on its own; count the global batch's
        ``num_global`` samples (every rank the same number, also with uneven or empty local batches)."""
        writes.commit(write=self.training)
        if self.training:
            self._count_samples(num_global)

    def _agreed_index(self, index: Tensor, check: Callable[[], None] | None = None, *,
                      layout: bool = False) -> Any:
        """``check()`` and :func:`~xrisk.state.check_index` (with ``state_placement="sharded_local"`` also
        :func:`~xrisk.sharding.check_owned`: an index outside the rank's shard is an :class:`IndexError` naming the
        rank, the index and the shard), agreed by every rank under torch.distributed
        (:func:`xrisk.distributed.agree_on_batch`: a bad index on one rank raises on all of them). ``layout``: also
        return the agreed :class:`~xrisk.distributed.BatchLayout` (``(index, layout)``: every rank's batch size and,
        owner-local with validation on, the rows it sends, :func:`xrisk.sharding.owned_rows`)."""

        def validate() -> Tensor:
            if check is not None:
                check()
            idx = check_index(index, self.num_samples)
            owned = None
            if self.state_placement == "sharded_local":
                check_owned(idx, self.num_samples)
                if xdist.is_distributed() and validation_enabled():  # the rows it sends (counted in the agreement)
                    owned = owned_rows(idx, self.num_samples)
            self.__dict__["_checked_owned"] = owned
            return idx

        if not xdist.is_distributed():
            idx = validate()
            return (idx, xdist.BatchLayout((idx.numel(),), 0)) if layout else idx
        idx, agreed = xdist.agree_on_batch(type(self).__name__, validate, lambda i: {"index": i},
                                           tag=functools.partial(owned_tag, self))
        return (idx, agreed) if layout else idx

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, alpha={self.alpha}, lr={self.lr}, optimizer={self.optimizer!r}, "
                f"start_epoch={self.start_epoch}")
