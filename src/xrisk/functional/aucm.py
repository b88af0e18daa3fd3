"""Pure kernels of the AUC-margin (AUC-M) min-max objective.

AUC-M (Yuan, Yan, Sonka, Yang, ICCV 2021) replaces the pairwise square loss of AUROC by a
margin version and writes it as a min-max problem over the model ``w``, two scalars ``a, b``
(which track the class means of the scores) and a dual variable ``alpha >= 0``. With
``f`` the scores, ``m`` the margin, ``mean_+`` / ``mean_-`` the means over the positives /
negatives of a batch, the class-balanced form (``version="v2"``) is

.. math::

    F_2(w, a, b, \\alpha) = \\operatorname{mean}_+ (f - a)^2 + \\operatorname{mean}_- (f - b)^2
        + 2\\alpha\\,(m + \\operatorname{mean}_- f - \\operatorname{mean}_+ f) - \\alpha^2 ,

and the original form weighted by the positive ratio ``p`` (``version="v1"``), with ``E`` the
mean over the whole batch of ``B`` samples, is

.. math::

    F_1 = (1-p)\\,E[(f-a)^2 1_+] + p\\,E[(f-b)^2 1_-]
        + 2\\alpha\\,(p(1-p)\\,m + E[p\\,f\\,1_- - (1-p)\\,f\\,1_+]) - p(1-p)\\,\\alpha^2 .

When ``p`` is the batch positive ratio, ``E[g 1_+] = p mean_+ g`` and ``F_1 = p(1-p) F_2``.

Solving the inner problems (``a = mean_+ f``, ``b = mean_- f``, ``alpha = (m - mean_+ f +
mean_- f)_+``) gives the AUC-M objective itself,

.. math::

    A(w) = \\operatorname{Var}_+ f + \\operatorname{Var}_- f
        + \\big(m - (\\operatorname{mean}_+ f - \\operatorname{mean}_- f)\\big)_+^2 ,

(population variances). When ``mean_+ f - mean_- f <= m`` (always true for scores in
``[0, 1]`` and ``m = 1``) this is exactly the mean over all positive-negative pairs of
``(m - (f_i - f_j))^2``, computed in ``O(B)``. :func:`aucm_objective` returns it.

Scores are expected in ``[0, 1]`` (sigmoid outputs) for the default margin ``m = 1``.

All means use boolean class masks (an exact zero score is still counted, unlike LibAUC's
``sum / count_nonzero``). Shapes: ``scores`` ``[B, T]``, ``targets`` ``[B, T]`` bool,
``a, b, alpha`` ``[T]``; kernels return one value per task ``[T]``. Tasks without both
classes in the batch get finite placeholder values (the caller masks them).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["aucm_surrogate", "aucm_quadratic_form", "aucm_objective", "aucm_alpha_grad"]


def _masks(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pos = targets.to(scores.dtype)
    neg = 1.0 - pos
    return pos, neg, pos.sum(0).clamp_min(1.0), neg.sum(0).clamp_min(1.0)


def _coefficients(
    pos_counts: tuple[int, ...], size: int, version: str, p: float | None, margin: float,
    dtype: torch.dtype, device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Constants of ``F`` as a quadratic form, per task, from host counts only.

    For each task, with ``c_+`` / ``c_-`` the weight of one positive / negative (``v2``: ``1/n_+``,
    ``1/n_-``; ``v1``: ``(1-p)/B``, ``p/B``) and ``t_i`` the 0/1 label, write
    ``w_+i = c_+ t_i``, ``w_-i = c_- (1 - t_i)``, ``q`` (``v2``: 1, ``v1``: ``p(1-p)``). Then

    ``F = sum_i f_i (w_i f_i + C_i . z) + z^T K z``,  ``z = (a, b, alpha, 1)``,

    ``w_i = w_+i + w_-i``, ``C_i = (-2 w_+i, -2 w_-i, 2 (w_-i - w_+i), 0)`` and
    ``K = diag(sum w_+, sum w_-, -q, 0)`` plus ``2 q m`` at ``(alpha, 1)``. Every per-sample
    coefficient is affine in ``t_i``: ``w_i = kw0 + t_i kw1``, ``C_i = kc0 + t_i kc1``. Returns
    ``(kw0 [T], kw1 [T], kc0 [T, 4], kc1 [T, 4], K [T, 4, 4], one [T, 1])``, computed in float64 on
    the host (vectorised over tasks) and cast once.
    """
    n_pos = np.asarray(pos_counts, dtype=np.float64)
    n_neg = size - n_pos
    if version == "v2":
        c_pos, c_neg, q = 1.0 / np.maximum(n_pos, 1.0), 1.0 / np.maximum(n_neg, 1.0), np.ones_like(n_pos)
    else:
        pr = n_pos / size if p is None else np.full_like(n_pos, p)
        c_pos, c_neg, q = (1.0 - pr) / size, pr / size, pr * (1.0 - pr)
    zero = np.zeros_like(n_pos)
    k0 = np.stack([c_neg, zero, -2.0 * c_neg, 2.0 * c_neg, zero], 1)
    k1 = np.stack([c_pos - c_neg, -2.0 * c_pos, 2.0 * c_neg, -2.0 * (c_pos + c_neg), zero], 1)
    quad = np.zeros((n_pos.size, 4, 4))
    quad[:, 0, 0], quad[:, 1, 1] = c_pos * n_pos, c_neg * n_neg
    quad[:, 2, 2], quad[:, 2, 3] = -q, 2.0 * q * margin
    # cached tensors must be ordinary tensors even when first built under inference_mode
    with torch.inference_mode(False):
        def make(x: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(dtype).to(device)  # cast on the host (no float64 on MPS)

        return (make(k0[:, 0]), make(k1[:, 0]), make(k0[:, 1:]), make(k1[:, 1:]), make(quad),
                torch.ones(n_pos.size, 1, dtype=dtype, device=device))


_cached_coefficients = functools.lru_cache(maxsize=128)(_coefficients)


def _device_coefficients(
    n_pos: Tensor, size: int, version: str, p: float | None, margin: float, dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_coefficients` from the ``[T]`` device tensor of positive counts (no host read): the same
    formulas, in float64 where the device has it (float32 on MPS), cast once. Every coefficient is linear in
    ``(c_+, c_-, c_+ n_+, c_- n_-, q)``, so all of them come from one product with a constant matrix."""
    work = torch.float32 if n_pos.device.type == "mps" else torch.float64
    n_pos = n_pos.to(work)
    n_neg = size - n_pos
    if version == "v2":
        c_pos, c_neg, q = n_pos.clamp_min(1.0).reciprocal(), n_neg.clamp_min(1.0).reciprocal(), torch.ones_like(n_pos)
    else:
        pr = n_pos / size if p is None else torch.full_like(n_pos, p)
        c_pos, c_neg, q = (1.0 - pr) / size, pr / size, pr * (1.0 - pr)
    out = (torch.stack([c_pos, c_neg, c_pos * n_pos, c_neg * n_neg, q], 1) @ _linear_map(margin, work, n_pos.device))
    out = out.to(dtype)
    tasks = n_pos.numel()
    return (out[:, 0], out[:, 1], out[:, 2:6], out[:, 6:10], out[:, 10:26].view(tasks, 4, 4),
            torch.ones(tasks, 1, dtype=dtype, device=n_pos.device))


@functools.lru_cache(maxsize=32)
def _linear_map(margin: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[5, 26]``: ``(c_+, c_-, c_+ n_+, c_- n_-, q) -> (kw0, kw1, kc0 [4], kc1 [4], K [4 x 4])`` of
    :func:`_coefficients` (row-major ``K``)."""
    m = np.zeros((5, 26))
    m[1, 0] = 1.0  # kw0 = c_-
    m[0, 1], m[1, 1] = 1.0, -1.0  # kw1 = c_+ - c_-
    m[1, 3], m[1, 4] = -2.0, 2.0  # kc0 = (0, -2 c_-, 2 c_-, 0)
    m[0, 6], m[1, 7], m[0, 8], m[1, 8] = -2.0, 2.0, -2.0, -2.0  # kc1 = (-2 c_+, 2 c_-, -2 (c_+ + c_-), 0)
    m[2, 10], m[3, 15], m[4, 20], m[4, 21] = 1.0, 1.0, -1.0, 2.0 * margin  # K = diag(c_+ n_+, c_- n_-, -q, 0) + 2 q m
    with torch.inference_mode(False):  # an ordinary tensor even when first built under inference_mode
        return torch.from_numpy(m).to(dtype).to(device)


def _get_coefficients(pos_counts: tuple[int, ...] | Tensor, *args: object) -> tuple[Tensor, ...]:
    """:func:`_coefficients`, memoised for few tasks (a training run sees few distinct count tuples); from a device
    tensor of counts: :func:`_device_coefficients` (``args`` without the device)."""
    if isinstance(pos_counts, Tensor):
        return _device_coefficients(pos_counts, *args[:-1])  # type: ignore[arg-type]
    fn = _cached_coefficients if len(pos_counts) <= 8 else _coefficients
    return fn(pos_counts, *args)  # type: ignore[arg-type]


def _host_counts(targets: Tensor, pos_counts: list[int] | Tensor | None) -> tuple[int, ...] | Tensor:
    """The counts as a tuple of host ints, or the ``[T]`` device tensor given (the no-host-read path)."""
    if isinstance(pos_counts, Tensor):
        return pos_counts
    return tuple(int(c) for c in (targets.sum(0).tolist() if pos_counts is None else pos_counts))


def aucm_surrogate(
    scores: Tensor,
    targets: Tensor,
    a: Tensor,
    b: Tensor,
    alpha: Tensor,
    *,
    margin: float,
    version: Literal["v1", "v2"] = "v2",
    p: float | None = None,
    pos_counts: list[int] | Tensor | None = None,
    reduction: Literal["none", "sum"] = "none",
) -> Tensor:
    """Per-task min-max value ``F(w, a, b, alpha)`` of AUC-M (module docstring, ``F_1``/``F_2``).

    Computed as the quadratic form ``sum_i f_i (w_i f_i + C_i . z) + z^T K z`` in
    ``z = (a, b, alpha, 1)`` (constants from the labels and host counts, see
    :func:`_coefficients`): a handful of native autograd ops (``addmv``/``dot`` for one task),
    so the backward runs without Python and is twice differentiable. ``O(B T)``.

    Args:
        scores: ``[B, T]`` scores ``f`` (expected in ``[0, 1]``).
        targets: ``[B, T]`` bool labels.
        a, b: ``[T]`` primal auxiliaries (tracking the class means).
        alpha: ``[T]`` dual variable.
        margin: ``m``.
        version: ``"v2"`` (class-balanced ``F_2``) or ``"v1"`` (``F_1`` with ``p``).
        p: positive ratio for ``v1``; ``None`` uses the batch ratio of each task.
        pos_counts: optional number of positives of each task (host ints, as the loss module
            already knows them, or a ``[T]`` device tensor: then nothing is read on the host); must match
            ``targets``.
        reduction: ``"none"`` (one value per task) or ``"sum"`` (their sum, a scalar).

    Returns:
        ``[T]`` (or a scalar for ``"sum"``); differentiable in ``scores``, ``a``, ``b`` and
        ``alpha``.

    Example:
        >>> s = torch.tensor([[0.9], [0.2], [0.4]])
        >>> y = torch.tensor([[True], [False], [False]])
        >>> z = torch.zeros(1)
        >>> aucm_surrogate(s, y, z, z, torch.ones(1), margin=1.0)
        tensor([0.7100])
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    if reduction not in ("none", "sum"):
        raise ValueError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    dtype = torch.promote_types(scores.dtype, a.dtype)
    size, tasks = scores.shape
    kw0, kw1, kc0, kc1, quad, one = _get_coefficients(
        _host_counts(targets, pos_counts), size, version, None if p is None else float(p), float(margin),
        dtype, scores.device)
    f, a, b, alpha = (x if x.dtype == dtype else x.to(dtype) for x in (scores, a, b, alpha))
    if tasks == 1:  # the common case: matrix-vector ops on [B] (no einsum, no indexing)
        t1 = targets.view(size)
        f1 = f.view(size)
        coef_w = torch.addcmul(kw0[0], t1, kw1[0])  # [B]   w_i
        coef_c = torch.addcmul(kc0[0], targets, kc1[0])  # [B, 4] C_i
        z = torch.cat((a, b, alpha, one[0]))  # [4]
        inner = torch.addcmul(torch.mv(coef_c, z), coef_w, f1)
        total = torch.dot(f1, inner) + torch.dot(z, torch.mv(quad[0], z))
        return total if reduction == "sum" else total.view(1)
    coef_w = torch.addcmul(kw0, targets, kw1)  # [B, T]
    coef_c = torch.addcmul(kc0, targets.unsqueeze(-1), kc1)  # [B, T, 4]
    z = torch.stack((a, b, alpha, one[:, 0]), dim=1)  # [T, 4]
    inner = torch.addcmul(torch.einsum("btk,tk->bt", coef_c, z), coef_w, f)
    values = (f * inner).sum(0) + torch.einsum("tk,tkl,tl->t", z, quad, z)
    return values.sum() if reduction == "sum" else values


def aucm_quadratic_form(
    targets: Tensor,
    *,
    margin: float,
    version: Literal["v1", "v2"] = "v2",
    p: float | None = None,
    pos_count: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The one-task surrogate as a quadratic form: ``M [B + 4, B + 4]`` with ``F = v^T M v`` for
    ``v = (f_1, ..., f_B, a, b, alpha, 1)``.

    ``M`` holds the constants of :func:`aucm_surrogate`'s form (:func:`_coefficients`): ``diag(w)`` in the
    score block, the rows ``C_i`` in the score-by-``z`` block, ``K`` in the ``z`` block (zeros elsewhere). It
    depends on the labels only, so a caller whose labels repeat (a DualSampler batch) builds it once and a
    step is ``dot(v, M v)``: three autograd nodes (``cat``, ``mv``, ``dot``), twice differentiable, equal to
    :func:`aucm_surrogate` up to float rounding. ``O(B^2)`` memory and work: meant for small batches.

    Args:
        targets: ``[B]`` bool labels of the task.
        margin, version, p: as in :func:`aucm_surrogate`.
        pos_count: the number of positives (a host int, if the caller knows it).
        dtype: dtype of ``M`` (that of the scores and of ``a, b, alpha``).

    Example:
        >>> y = torch.tensor([True, False, False])
        >>> v = torch.tensor([0.9, 0.2, 0.4, 0.0, 0.0, 1.0, 1.0])  # f, a, b, alpha, 1
        >>> torch.dot(v, aucm_quadratic_form(y, margin=1.0) @ v)
        tensor(0.7100)
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    size = targets.shape[0]
    counts = _host_counts(targets.view(size, 1), None if pos_count is None else [pos_count])
    kw0, kw1, kc0, kc1, quad, _ = _get_coefficients(
        counts, size, version, None if p is None else float(p), float(margin), dtype, targets.device)
    with torch.inference_mode(False):  # an ordinary tensor even when built under inference_mode (callers keep it)
        t = targets.to(dtype)
        form = torch.zeros(size + 4, size + 4, dtype=dtype, device=targets.device)
        form[:size, :size].diagonal().copy_(kw0[0] + t * kw1[0])
        form[:size, size:] = kc0[0] + t.unsqueeze(1) * kc1[0]
        form[size:, size:] = quad[0]
    return form


def aucm_alpha_grad(
    scores: Tensor,
    targets: Tensor,
    alpha: Tensor,
    *,
    margin: float,
    version: Literal["v1", "v2"] = "v2",
    p: float | None = None,
) -> Tensor:
    """Closed-form ``dF/dalpha`` per task ``[T]`` (what PESG/PDSCA ascend; equals autograd's).

    ``v2``: ``2 (m + mean_- f - mean_+ f) - 2 alpha``.
    ``v1``: ``2 (p(1-p) m + p q_- mean_- f - (1-p) q_+ mean_+ f) - 2 p(1-p) alpha`` with
    ``q_+-`` the batch class fractions (``= p(1-p) * v2`` when ``p`` is the batch ratio).
    LibAUC instead uses ``2 (m + b - a) - 2 alpha`` for both versions, with ``a, b`` standing in
    for the class means.
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    dtype = torch.promote_types(scores.dtype, alpha.dtype)
    f = scores.detach().to(dtype)
    _, _, kc0, kc1, quad, _ = _get_coefficients(_host_counts(targets, None), f.shape[0], version,
                                            None if p is None else float(p), float(margin), dtype, f.device)
    c_alpha = kc0[:, 2] + targets.to(dtype) * kc1[:, 2]  # [B, T]: 2 (w_- - w_+)
    return (c_alpha * f).sum(0) + quad[:, 2, 3] + 2.0 * quad[:, 2, 2] * alpha.detach().to(dtype)


def aucm_objective(scores: Tensor, targets: Tensor, *, margin: float) -> Tensor:
    """Batch estimate of the AUC-M objective ``A(w)`` per task ``[T]`` (module docstring).

    ``Var_+ f + Var_- f + (m - mean_+ f + mean_- f)_+^2``; equal to the mean over
    positive-negative pairs of ``(m - (f_i - f_j))^2`` whenever ``mean_+ f - mean_- f <= m``.

    Example:
        >>> s = torch.tensor([[0.9], [0.2], [0.4]])
        >>> y = torch.tensor([[True], [False], [False]])
        >>> aucm_objective(s, y, margin=1.0)  # pairs: (1 - 0.7)^2, (1 - 0.5)^2
        tensor([0.1700])
    """
    f = scores
    pos, neg, n_pos, n_neg = _masks(f, targets)
    mu_pos = (f * pos).sum(0) / n_pos
    mu_neg = (f * neg).sum(0) / n_neg
    var_pos = ((f - mu_pos) ** 2 * pos).sum(0) / n_pos
    var_neg = ((f - mu_neg) ** 2 * neg).sum(0) / n_neg
    return var_pos + var_neg + torch.clamp(margin - mu_pos + mu_neg, min=0.0) ** 2
