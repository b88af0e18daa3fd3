"""Input checks shared by every loss: shapes, dtypes and finiteness, with messages that name the values.

**The validation switch.** Checks that read a tensor's values back to the host (NaN/inf inputs, 0/1
targets, index bounds and duplicates found on the host, the finiteness of every staged state row
before it is written) are on by default and can be turned off once a pipeline is trusted:
``xrisk.set_validation(False)`` (or ``with xrisk.validation(False): ...``). With validation off a loss
step (forward, backward, optimizer step) reads nothing back: the losses take their fixed-shape device
path (positive counts, duplicate merging and index rules computed with masks on the device, the same
work for every batch of one size), which ``torch.compile(..., fullgraph=True)`` takes whole. What can
be checked on the device still is, with :func:`assert_async` (``torch._assert_async``: on CPU it raises
at once, on an accelerator the device raises it asynchronously): dataset indices in range
(:func:`xrisk.state.check_index_async`) and finite state rows before they are written (a failing step writes
nothing). Not checked without validation: NaN/inf inputs that do not reach a state row (they reach the
returned value), non-binary targets (read as ``target != 0``), the cause of a non-finite update (the
message is generic).

Shape, dtype and argument checks never read tensor values and always run.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["all_finite", "check_finite", "check_binary_inputs", "check_binary_batch",
           "check_positive", "check_unit_interval", "check_choice", "set_validation", "validation_enabled",
           "validation", "assert_async", "all_finite_async", "binary_batch_unchecked", "inspect_binary_batch"]

_VALIDATION = [True]


def set_validation(enabled: bool) -> None:
    """Turn the checks that read tensor values on the host on (default) or off, for every xrisk loss and
    optimizer (see the module docstring for what changes)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation takes a bool, got {type(enabled).__name__}")
    _VALIDATION[0] = enabled


def validation_enabled() -> bool:
    """Whether host-side validation is on (:func:`set_validation`)."""
    return _VALIDATION[0]


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager: :func:`set_validation` inside the block, the previous setting restored after it."""
    before = _VALIDATION[0]
    set_validation(enabled)
    try:
        yield
    finally:
        _VALIDATION[0] = before


def assert_async(condition: Tensor, message: str) -> None:
    """Require the 0-dim bool ``condition`` without reading it on the host (``torch._assert_async``): on CPU a
    failure raises ``RuntimeError(message)`` at once; on an accelerator the device raises it when it runs."""
    torch._assert_async(condition, message)


def all_finite_async(tensors: Sequence[Tensor]) -> Tensor:
    """0-dim bool tensor: every entry of every (floating) tensor is finite; no host read.

    Tensors of at most float32 precision are summed in float64 (which no sum of finite float32 values overflows;
    an inf or NaN entry makes the sum inf or NaN); float64 tensors contribute ``sum(0 * x)``, which is 0 exactly
    when every entry is finite (``0 * inf`` and ``0 * nan`` are NaN). The total is tested once (``0 * total == 0``):
    a few ops for all tensors instead of an ``isfinite`` per tensor."""
    floats = [x for x in tensors if x.is_floating_point()]
    if not floats:
        return torch.ones((), dtype=torch.bool, device=tensors[0].device if tensors else None)
    parts = [x.mul(0).sum() if x.dtype == torch.float64 else x.sum(dtype=torch.float64) for x in floats]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total.mul(0.0).eq(0.0)


def binary_batch_unchecked(scores: Tensor, targets: Tensor, num_tasks: int) -> tuple[Tensor, Tensor]:
    """:func:`check_binary_inputs` without reading values: shapes and dtypes checked, targets read as
    ``targets != 0`` (no 0/1 check), scores not checked for NaN/inf. Returns ``[B, T]`` scores and bool targets."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a tensor, got {type(targets).__name__}")
    s = scores.unsqueeze(1) if scores.dim() == 1 else scores
    y = targets.unsqueeze(1) if targets.dim() == 1 else targets
    if s.dim() != 2 or s.shape[1] != num_tasks:
        raise ValueError(f"scores must have shape [B] or [B, {num_tasks}] (num_tasks={num_tasks}), got {tuple(s.shape)}")
    if y.shape != s.shape:
        raise ValueError(f"targets shape {tuple(y.shape)} does not match scores shape {tuple(s.shape)}")
    return s, y if y.dtype == torch.bool else y != 0


def all_finite(*tensors: Tensor) -> bool:
    """Whether every entry of every floating-point tensor is finite, with one host read on the fast path.

    The probe is the sum of the tensors' sums: finite whenever every entry is (an overflow of the sum
    only sends it to the exact ``torch.isfinite`` check, which is what a NaN/inf entry also gets).
    ``torch.isfinite(x).all()`` on its own costs four kernels per tensor.
    """
    floats = [x.detach() if x.requires_grad else x for x in tensors if x.is_floating_point()]
    if not floats:
        return True
    probe = floats[0] if floats[0].dim() == 0 else floats[0].sum()
    for x in floats[1:]:
        probe = probe + (x if x.dim() == 0 else x.sum())
    if math.isfinite(float(probe)):
        return True
    return all(bool(torch.isfinite(x).all()) for x in floats)


def check_finite(name: str, x: Tensor) -> None:
    """Raise :class:`ValueError` if ``x`` holds NaN or inf."""
    if not all_finite(x):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN/inf value(s); xrisk refuses to propagate them")


def check_binary_inputs(scores: Tensor, targets: Tensor, num_tasks: int) -> tuple[Tensor, Tensor]:
    """Validate ``scores``/``targets`` and return them as ``[B, T]`` (float scores, bool targets).

    Accepted: ``scores`` ``[B]`` or ``[B, T]`` floating; ``targets`` of the same shape (or ``[B]``
    when ``T == 1``) holding only 0/1 (bool, int or float). See :func:`check_binary_batch`.
    """
    s, y, _ = check_binary_batch(scores, targets, num_tasks)
    return s, y


def check_binary_batch(scores: Tensor, targets: Tensor, num_tasks: int) -> tuple[Tensor, Tensor, list[int]]:
    """:func:`check_binary_inputs` plus the number of positives of each task (host ints); see
    :func:`inspect_binary_batch`."""
    s, y, counts, _, _ = inspect_binary_batch(scores, targets, num_tasks)
    return s, y, counts


def inspect_binary_batch(
    scores: Tensor, targets: Tensor, num_tasks: int
) -> tuple[Tensor, Tensor, list[int], list | None, Tensor | None]:
    """:func:`check_binary_batch`, and what a small CPU batch's check read on the host, for the caller to reuse:
    ``(scores [B, T], targets [B, T] bool, positives per task, values, detached)`` with ``values`` the targets'
    0/1 values as a list in ``[B, T]`` row-major order and ``detached`` the given scores detached (as given, ``[B]``
    or ``[B, T]``); both None on the one-read path of larger or non-CPU batches.

    A small CPU batch (at most 256 targets) reads the targets as a list (the 0/1 check and the counts in
    Python) and one sum of the scores (finiteness). Otherwise one host read serves the finiteness
    check, the 0/1 check and the counts: for float targets
    ``s * 0 + t (t - 1)`` is nonzero exactly where a score is NaN/inf or a target is not 0/1
    (``NaN != 0``), counted together with the targets themselves; for bool
    targets the counts carry ``0 * sum(scores)``, NaN exactly when the sum is not finite (an
    overflowing sum is sent to the exact check). The slow path names the culprit.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a tensor, got {type(targets).__name__}")
    given, given_scores = targets, scores
    if scores.dim() == 1:
        scores = scores.unsqueeze(1)
    if targets.dim() == 1:
        targets = targets.unsqueeze(1)
    if scores.dim() != 2 or scores.shape[1] != num_tasks:
        raise ValueError(
            f"scores must have shape [B] or [B, {num_tasks}] (num_tasks={num_tasks}), got {tuple(scores.shape)}"
        )
    if targets.shape != scores.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match scores shape {tuple(scores.shape)}"
        )
    if targets.device.type == "cpu" and targets.numel() <= 256 and not targets.is_complex():
        # a small CPU batch: the targets are read as a list (no tensor op costs less), the scores summed
        values = (given if given.dim() == 1 else targets.reshape(-1)).tolist()
        if not set(values) <= {0, 1}:  # NaN != 0, 1
            check_finite("scores", scores)
            if targets.is_floating_point():
                check_finite("targets", targets)
            raise ValueError("targets must be binary (0/1); got values outside {0, 1}")
        detached = given_scores.detach() if given_scores.requires_grad else given_scores
        if not math.isfinite(float(detached.sum())):
            check_finite("scores", scores)  # raises unless the sum only overflowed
        counts = [int(sum(values[t::num_tasks])) for t in range(num_tasks)]
        # the values are 0/1 (checked above): .bool() is `!= 0` without wrapping the 0 in a tensor (half the time)
        return scores, targets if targets.dtype == torch.bool else targets.bool(), counts, values, detached
    with torch.no_grad():
        if targets.dtype == torch.bool:
            stats = (targets.sum(0) + scores.sum(0, dtype=torch.float32) * 0).tolist()  # counts exact < 2**24
            if all(math.isfinite(v) for v in stats):
                return scores, targets, [int(v) for v in stats], None, None
            check_finite("scores", scores)  # raises unless the probe only overflowed
            return scores, targets, targets.sum(0).tolist(), None, None
        if targets.dtype == scores.dtype:
            bad = torch.addcmul(scores * 0, targets, targets - 1)
            stats = torch.cat((bad, targets), 1).ne(0).sum(0).tolist()  # NaN != 0 is True
            n_bad, counts = sum(stats[:num_tasks]), stats[num_tasks:]
        else:
            n_bad = int(torch.count_nonzero(scores * 0)) + int(torch.count_nonzero(targets * (targets - 1)))
            counts = None
        if n_bad:
            check_finite("scores", scores)
            if targets.is_floating_point():
                check_finite("targets", targets)
            raise ValueError("targets must be binary (0/1); got values outside {0, 1}")
        targets = targets != 0
        if counts is None:
            counts = targets.sum(0).tolist()
    return scores, targets, counts, None, None


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if it is finite and > 0 (>= 0 with ``allow_zero``); else raise."""
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_unit_interval(name: str, value: float, *, closed_left: bool = False, closed_right: bool = True) -> float:
    """Return ``float(value)`` if it lies in the (half-)open unit interval; else raise."""
    v = float(value)
    lo_ok = v >= 0 if closed_left else v > 0
    hi_ok = v <= 1 if closed_right else v < 1
    if not (math.isfinite(v) and lo_ok and hi_ok):
        interval = ("[" if closed_left else "(") + "0, 1" + ("]" if closed_right else ")")
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise naming the options."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
