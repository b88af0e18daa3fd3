"""ROC-fairness constraints: equal group TPR and FPR at a set of thresholds (``roc_fairness_constraints``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import check_finite, check_positive
from xrisk.constrained.problem import Constraints, full_index

__all__ = ["roc_fairness_constraints", "roc_fairness_num_constraints", "group_rates"]


def roc_fairness_num_constraints(num_thresholds: int) -> int:
    """``m = 4 |Gamma|``: two signs of the FPR gap and of the TPR gap per threshold."""
    return 4 * int(num_thresholds)


def group_rates(
    scores: Tensor, targets: Tensor, groups: Tensor, thresholds: Tensor, temperature: float | None,
    *, cell: Tensor | None = None, counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-group rates ``(rates [2, 2, K], counts [2, 2])``: ``rates[g, y, k]`` is the mean over the samples
    of group ``g`` and label ``y`` of ``sigma((s - theta_k) / temperature)`` (``1[s >= theta_k]`` when
    ``temperature`` is None), i.e. the FPR (``y = 0``) and TPR (``y = 1``) of group ``g`` at
    ``theta_k``; ``counts[g, y]`` the number of such samples (rates of empty cells are 0).

    ``cell = 2 groups + targets`` and ``counts`` (its ``bincount``, float) may be passed when known.
    """
    if cell is None:
        cell = groups.long() * 2 + targets.long()
    if counts is None:
        counts = torch.bincount(cell, minlength=4).to(scores.dtype)
    theta = thresholds.to(scores.dtype)
    if temperature is not None:
        soft = torch.sigmoid((scores.unsqueeze(1) - theta) / temperature)  # [B, K]
    else:
        soft = (scores.unsqueeze(1) >= theta).to(scores.dtype)
    sums = soft.new_zeros(4, theta.numel()).index_add_(0, cell, soft)  # [4, K]
    rates = sums / counts.clamp_min(1.0).unsqueeze(1)
    return rates.reshape(2, 2, -1), counts.reshape(2, 2)


def _check_batch(scores: Tensor, targets: Tensor, groups: Tensor) -> tuple[Tensor, _Labels]:
    """This rank's checks: ``(scores [B], the checked labels and groups)`` (:func:`_checked_labels`).

    The scores' sum (a finite probe; an overflowing sum only sends it to the exact check) is launched before the
    labels are read, so a device is waited for once."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    shape = scores.shape
    if len(shape) == 2 and shape[1] == 1:
        scores = scores.reshape(-1)
        shape = scores.shape
    if len(shape) != 1 or targets.shape != shape or groups.shape != shape:
        raise ValueError(f"scores, targets and groups must all be [B]; got {tuple(scores.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(groups.shape)}")
    total = scores.detach().sum()
    labels = _checked_labels(targets, groups)
    if not math.isfinite(total):
        check_finite("scores", scores)  # raises unless the sum only overflowed
    return scores, labels


class _Labels:
    """The checked labels and groups of a batch: ``cell = 2 group + label`` (int64, on the host), the cell counts
    ``present [4]``, and what :func:`_checked_labels` needs to recognise the same tensors, unchanged, next time.
    ``weights`` keeps the batch's :func:`_sample_weights` per ``(dtype, device)`` (made from these counts: the
    single-process path only)."""

    __slots__ = ("key", "host", "refs", "cell", "present", "weights")

    def __init__(self, key: tuple[int, int, int, int], host: tuple[np.ndarray, np.ndarray], cell: np.ndarray,
                 present: list[int]) -> None:
        self.key, self.host, self.cell, self.present = key, host, cell, present
        self.refs: tuple[Tensor, Tensor] | None = None  # the labels as the caller's tensors, made on the first reuse
        self.weights: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def same(self, targets: Tensor, groups: Tensor) -> bool:
        """Whether ``targets``/``groups`` hold the labels checked here: the same tensors at the same version (a
        cheap filter) and, compared on their device, the same values (which a write the version counter does not
        see, e.g. through a NumPy view, also changes)."""
        if self.refs is None:
            self.refs = tuple(torch.from_numpy(a).to(x.device, x.dtype)  # type: ignore[assignment]
                              for a, x in zip(self.host, (targets, groups)))
        return torch.equal(targets, self.refs[0]) and torch.equal(groups, self.refs[1])  # type: ignore[index]


_LAST_LABELS: list[_Labels | None] = [None]


def _checked_labels(targets: Tensor, groups: Tensor) -> _Labels:
    """Check that ``targets`` and ``groups`` are binary and return their cells and counts (:class:`_Labels`).

    The labels and groups are integer bookkeeping without gradients, checked on the host with NumPy (on a CPU each
    torch operation costs several times its NumPy counterpart on a batch this small; on an accelerator they are
    copied once): a row whose target or group is not 0/1 has ``(targets | groups) >> 1 != 0`` (which also catches
    negative values). The result of the last call is kept: the same two tensors again, unchanged (a full batch, or
    one batch scored by two models), cost two comparisons on their device instead."""
    key = (id(targets), targets._version, id(groups), groups._version)
    last = _LAST_LABELS[0]
    if last is not None and last.key == key and last.same(targets, groups):
        return last
    tn, gn = _host_array(targets), _host_array(groups)
    floats = tn.dtype.kind == "f" or gn.dtype.kind == "f"
    # NaN/inf float labels cast to a huge integer, refused below (no warning); an integer cast never warns
    with np.errstate(invalid="ignore") if floats else contextlib.nullcontext():
        t, gr = tn.astype(np.int64), gn.astype(np.int64)
    fractional = floats and (np.any(t != tn) or np.any(gr != gn))
    if fractional or np.count_nonzero((t | gr) >> 1):  # float labels must be exactly 0/1 (0.5 is not truncated)
        raise ValueError("targets and groups must be binary (0/1)")
    cell = (gr << 1) | t
    labels = _Labels(key, (t, gr), cell, np.bincount(cell, minlength=4).tolist())
    _LAST_LABELS[0] = labels
    return labels


def _host_array(x: Tensor) -> np.ndarray:
    """``x`` as a NumPy array on the host (bfloat16, which NumPy lacks, as float32: exact)."""
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy(force=True)


def _sample_weights(cell: np.ndarray, present: list[int], like: Tensor) -> Tensor:
    """``[B, 4]`` weights of each sample (cell ``c = 2 group + label``: (b,0) (b,1) (a,0) (a,1)) in the four
    constraint rows ``FPR_a - FPR_b, FPR_b - FPR_a, TPR_a - TPR_b, TPR_b - TPR_a``: ``+-1 / n_c`` or 0, made on
    the host and moved to ``like``'s device and dtype."""
    i0, i1, i2, i3 = (1.0 / max(c, 1) for c in present)
    rows = np.array([-i0, i0, 0.0, 0.0, 0.0, 0.0, -i1, i1, i2, -i2, 0.0, 0.0, 0.0, 0.0, i3, -i3],
                    dtype=_NUMPY_DTYPES.get(like.dtype, np.float64)).reshape(4, 4)
    weights = torch.from_numpy(rows.take(cell, axis=0))
    return weights if weights.dtype == like.dtype and like.is_cpu else weights.to(like.device, like.dtype)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _as_tensors(scores: Tensor, labels: _Labels) -> tuple[Tensor, Tensor]:
    """The checked batch with its cells as a tensor on the scores' device (to be gathered)."""
    return scores, torch.from_numpy(labels.cell).to(scores.device)


class _Settings:
    """The checked settings of a threshold set: ``theta``, ``temperature``, ``kappa`` as floats, and their constant
    tensors per ``(dtype, device)``: ``shift [K, 1] = -theta / temperature`` (``theta`` without a temperature) and
    ``offset [K, 4] = -kappa`` (never written)."""

    __slots__ = ("theta", "temperature", "kappa", "tensors")

    def __init__(self, thresholds: Sequence[float] | Tensor, temperature: float | None, kappa: float) -> None:
        self.kappa = check_positive("kappa", kappa, allow_zero=True)
        self.temperature = None if temperature is None else check_positive("temperature", temperature)
        theta = [float(v) for v in (thresholds.reshape(-1).tolist() if isinstance(thresholds, Tensor) else thresholds)]
        if not theta:
            raise ValueError("thresholds must hold at least one threshold")
        if not all(math.isfinite(v) for v in theta):
            raise ValueError(f"thresholds contain NaN/inf: {theta}")
        self.theta = tuple(theta)
        self.tensors: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def constants(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(shift, offset)`` in ``dtype`` on ``device``, made once."""
        hit = self.tensors.get((dtype, device))
        if hit is None:
            t = self.temperature
            shift = torch.tensor([[v if t is None else -v / t] for v in self.theta], dtype=dtype, device=device)
            hit = self.tensors[(dtype, device)] = (shift, torch.full((len(self.theta), 4), -self.kappa, dtype=dtype,
                                                                     device=device))
        return hit


_SETTINGS: dict[tuple[object, ...], _Settings] = {}


def _settings(thresholds: Sequence[float] | Tensor, temperature: float | None, kappa: float) -> _Settings:
    """The checked :class:`_Settings` of these arguments, kept (at most 64) when the thresholds are a list or tuple of
    Python numbers and ``temperature``/``kappa`` Python numbers (or None): equal arguments then find them (equal
    numbers give the same floats)."""
    key: tuple[object, ...] | None = None
    if type(thresholds) is list or type(thresholds) is tuple:
        key = (*thresholds, temperature, kappa)
        try:
            hit = _SETTINGS.get(key)
        except TypeError:  # an unhashable entry: checked below
            hit = key = None
        if hit is not None:
            return hit
    settings = _Settings(thresholds, temperature, kappa)
    if key is not None and all(type(v) in _NUMBERS for v in key if v is not None):
        if len(_SETTINGS) >= 64:
            _SETTINGS.clear()
        _SETTINGS[key] = settings
    return settings


_NUMBERS = (float, int)


def roc_fairness_constraints(
    scores: Tensor,
    targets: Tensor,
    groups: Tensor,
    thresholds: Sequence[float] | Tensor,
    kappa: float,
    *,
    temperature: float | None = 0.05,
    gather: bool = True,
) -> Constraints:
    """Group TPR and FPR gaps at each threshold as ``4 |Gamma|`` constraints ``<= 0``.

    For groups ``a`` (``groups == 1``) and ``b`` (``groups == 0``), with ``FPR_g(theta)`` the mean over
    the negatives of group ``g`` and ``TPR_g(theta)`` over its positives of
    ``sigma((s - theta) / temperature)`` (a smooth stand-in for ``1[s >= theta]``), the constraints at
    threshold ``theta_k`` (ids ``4k .. 4k+3``) are

    .. math::

        \\mathrm{FPR}_a - \\mathrm{FPR}_b - \\kappa \\le 0,\\;
        \\mathrm{FPR}_b - \\mathrm{FPR}_a - \\kappa \\le 0,\\;
        \\mathrm{TPR}_a - \\mathrm{TPR}_b - \\kappa \\le 0,\\;
        \\mathrm{TPR}_b - \\mathrm{TPR}_a - \\kappa \\le 0 ,

    i.e. ``|FPR_a - FPR_b| <= kappa`` and ``|TPR_a - TPR_b| <= kappa`` (ROC fairness: Vogel, Bellet,
    Clemencon, AISTATS 2021; the stochastic version of Yao, Lin, Yang, AISTATS 2023). A batch observes
    only the constraints whose rates it can estimate: the FPR pair needs a negative of each group, the
    TPR pair a positive of each group; the others are left out of ``index``.

    Args:
        scores: ``[B]`` model scores (e.g. probabilities, with thresholds in ``(0, 1)``).
        targets: ``[B]`` binary labels.
        groups: ``[B]`` binary protected attribute (1 = group ``a``).
        thresholds: the set ``Gamma`` of ``K`` thresholds.
        kappa: allowed gap ``kappa >= 0``.
        temperature: width of the sigmoid surrogate; ``None`` gives the exact (step-function, no
            gradient) rates, for evaluation.
        gather: under ``torch.distributed``, compute on the global batch (scores gathered with the
            ``"sum"`` gradient policy) so every rank returns the same values (the formulation's
            ``sync="replicated"``).

    Returns:
        :class:`~xrisk.constrained.Constraints` ``(values [k], index [k])`` with ``k <= 4K``.

    Example:
        >>> s = torch.tensor([0.9, 0.6, 0.3, 0.4])   # group a: TPR 1, FPR 1; group b: TPR 0, FPR 0
        >>> c = roc_fairness_constraints(s, torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 0, 0]),
        ...                              [0.5], kappa=0.25, temperature=None)
        >>> c.values.tolist(), c.index.tolist()
        ([0.75, -1.25, 0.75, -1.25], [0, 1, 2, 3])
    """
    settings = _settings(thresholds, temperature, kappa)
    temperature, k = settings.temperature, len(settings.theta)
    if gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
        (scores, cell), layout = xdist.agree_on_batch(
            "roc_fairness_constraints", lambda: _as_tensors(*_check_batch(scores, targets, groups)),
            lambda o: {"scores": o[0], "cell": o[1]})
        scores = xdist.all_gather(scores, grad="sum", sizes=layout.sizes)
        cells = xdist.all_gather_no_grad(cell, sizes=layout.sizes).numpy(force=True)
        present = np.bincount(cells, minlength=4).tolist()
        weights = _sample_weights(cells, present, scores)
        device = scores.device
    else:
        scores, labels = _check_batch(scores, targets, groups)
        present, dtype, device = labels.present, scores.dtype, scores.device
        weights = labels.weights.get((dtype, device))  # the same labels again: the same weights
        if weights is None:
            weights = labels.weights[(dtype, device)] = _sample_weights(labels.cell, present, scores)
    # values[k, r] = -kappa + sum_b rate_k(s_b) weights[b, r], one matmul of the rates [K, B] with the samples'
    # weights [B, 4] (thresholds first: the [K, 4] result flattens to the constraint ids 4k + r without a copy)
    shift, offset = settings.constants(scores.dtype, device)
    if temperature is not None:
        rates = torch.sigmoid(torch.add(shift, scores, alpha=1.0 / temperature))  # [K, B]
    else:
        rates = (scores >= shift).to(scores.dtype)
    values = torch.addmm(offset, rates, weights).view(-1)  # [K, 4] -> 4K in threshold order
    has_fpr = present[0] > 0 and present[2] > 0  # cells 2 group + label: (b, 0) and (a, 0)
    has_tpr = present[1] > 0 and present[3] > 0
    if has_fpr and has_tpr:
        return Constraints(values, full_index(4 * k, device))
    kinds = torch.tensor([has_fpr, has_fpr, has_tpr, has_tpr], device=device)
    index = torch.nonzero(kinds.repeat(k)).flatten()
    return Constraints(values.index_select(0, index), index)
