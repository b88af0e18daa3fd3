"""ROC-fairness constraints: equal group TPR and FPR at a set of thresholds (``roc_fairness_constraints``)."""

from __future__ import annotations

import contextlib
import functools
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


def _check_batch(scores: Tensor, targets: Tensor, groups: Tensor) -> tuple[Tensor, np.ndarray, list[int]]:
    """This rank's checks: ``(scores [B], cell = 2 groups + targets (int64, on the host), the cell counts [4])``.

    The labels and groups are integer bookkeeping without gradients, done on the host with NumPy (on a CPU each
    torch operation costs several times its NumPy counterpart on a batch this small; on an accelerator they are
    copied once): a row whose target or group is not 0/1 has ``(targets | groups) >> 1 != 0`` (which also catches
    negative values). The scores' sum (a finite probe; an overflowing sum only sends it to the exact check) is
    launched before that copy, so a device is waited for once."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    scores = scores.reshape(-1) if scores.dim() == 2 and scores.shape[1] == 1 else scores
    if scores.dim() != 1 or targets.shape != scores.shape or groups.shape != scores.shape:
        raise ValueError(f"scores, targets and groups must all be [B]; got {tuple(scores.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(groups.shape)}")
    total = scores.detach().sum()
    tn, gn = _host_array(targets), _host_array(groups)
    floats = tn.dtype.kind == "f" or gn.dtype.kind == "f"
    # NaN/inf float labels cast to a huge integer, refused below (no warning); an integer cast never warns
    with np.errstate(invalid="ignore") if floats else contextlib.nullcontext():
        t, gr = tn.astype(np.int64), gn.astype(np.int64)
    fractional = floats and (np.any(t != tn) or np.any(gr != gn))
    if fractional or np.count_nonzero((t | gr) >> 1):  # float labels must be exactly 0/1 (0.5 is not truncated)
        raise ValueError("targets and groups must be binary (0/1)")
    if not math.isfinite(total):
        check_finite("scores", scores)  # raises unless the sum only overflowed
    cell = (gr << 1) | t
    return scores, cell, np.bincount(cell, minlength=4).tolist()


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


def _as_tensors(scores: Tensor, cell: np.ndarray, present: list[int]) -> tuple[Tensor, Tensor, list[int]]:
    """The checked batch with ``cell`` as a tensor on the scores' device (to be gathered)."""
    return scores, torch.from_numpy(cell).to(scores.device), present


@functools.lru_cache(maxsize=64)
def _threshold_tensors(theta: tuple[float, ...], temperature: float | None, kappa: float, dtype: torch.dtype,
                       device: torch.device) -> tuple[Tensor, Tensor]:
    """Constants of one threshold set: ``(shift [K, 1] = -theta / temperature`` (``theta`` without a temperature),
    ``offset [K, 4] = -kappa)``, built once per setting (they are never written)."""
    shift = torch.tensor([[v if temperature is None else -v / temperature] for v in theta], dtype=dtype, device=device)
    return shift, torch.full((len(theta), 4), -kappa, dtype=dtype, device=device)


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
    kappa = check_positive("kappa", kappa, allow_zero=True)
    if temperature is not None:
        temperature = check_positive("temperature", temperature)
    theta = [float(v) for v in (thresholds.reshape(-1).tolist() if isinstance(thresholds, Tensor) else thresholds)]
    if not theta:
        raise ValueError("thresholds must hold at least one threshold")
    if not all(math.isfinite(v) for v in theta):
        raise ValueError(f"thresholds contain NaN/inf: {theta}")
    k = len(theta)
    check = functools.partial(_check_batch, scores, targets, groups)
    if gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
        (scores, cell, _), layout = xdist.agree_on_batch(
            "roc_fairness_constraints", lambda: _as_tensors(*check()), lambda o: {"scores": o[0], "cell": o[1]})
        scores = xdist.all_gather(scores, grad="sum", sizes=layout.sizes)
        cell = xdist.all_gather_no_grad(cell, sizes=layout.sizes).numpy(force=True)
        present = np.bincount(cell, minlength=4).tolist()
    else:
        scores, cell, present = check()
    # values[k, r] = -kappa + sum_b rate_k(s_b) weights[b, r], one matmul of the rates [K, B] with the samples'
    # weights [B, 4] (thresholds first: the [K, 4] result flattens to the constraint ids 4k + r without a copy)
    weights = _sample_weights(cell, present, scores)
    shift, offset = _threshold_tensors(tuple(theta), temperature, float(kappa), scores.dtype, scores.device)
    if temperature is not None:
        rates = torch.sigmoid(torch.add(shift, scores, alpha=1.0 / temperature))  # [K, B]
    else:
        rates = (scores >= shift).to(scores.dtype)
    values = torch.addmm(offset, rates, weights).view(-1)  # [K, 4] -> 4K in threshold order
    has_fpr = present[0] > 0 and present[2] > 0  # cells 2 group + label: (b, 0) and (a, 0)
    has_tpr = present[1] > 0 and present[3] > 0
    if has_fpr and has_tpr:
        return Constraints(values, full_index(4 * k, scores.device))
    kinds = torch.tensor([has_fpr, has_fpr, has_tpr, has_tpr], device=scores.device)
    index = torch.nonzero(kinds.repeat(k)).flatten()
    return Constraints(values.index_select(0, index), index)
