"""Conversions of the hot paths that skip the call when nothing changes (a no-op ``.to()`` still costs a
dispatch, several microseconds per step)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_state_rows", "constant", "finite_shift", "like_tensor", "on_device"]


def like_tensor(x: Tensor, like: Tensor) -> Tensor:
    """``x`` on ``like``'s device and dtype, without a call when it already is (a no-op ``.to()`` still costs
    a dispatch, several us on the hot path)."""
    return x if x.dtype == like.dtype and x.device == like.device else x.to(like.device, like.dtype)


def on_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device`` (no call when it already is)."""
    return x if x.device == device else x.to(device)


def as_state_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` as state rows: float32 on ``index``'s device (the state's; no call when it already is)."""
    return x if x.dtype == torch.float32 and x.device == index.device else x.to(index.device, torch.float32)


_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def constant(value: float, like: Tensor) -> Tensor | float:
    """``value`` as a cached 0-dim tensor for arithmetic with ``like`` (a Python number while ``torch.compile``
    traces).

    ``x + 0.5`` wraps the Python number in a float64 tensor and converts it on every call (about 2.5 us on CPU, as
    much as the addition); a 0-dim tensor of ``like``'s dtype enters the same kernel as the same value, so the result
    is the same bit for bit. Half-precision ``like`` gets a float32 constant (what the kernel computes with).
    """
    if value == 0.0 or torch.compiler.is_compiling():  # 0.0 == -0.0 as a key: zero stays a Python number
        return value
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    key = (value, dtype, like.device)
    out = _CONSTANTS.get(key)
    if out is None:
        if len(_CONSTANTS) >= 1024:  # e.g. 1 / numel of many batch shapes: keep the cache small
            _CONSTANTS.clear()
        with torch.inference_mode(False):  # a normal tensor, whatever mode the first call runs under
            out = _CONSTANTS[key] = torch.tensor(value, dtype=dtype, device=like.device)
    return out


def finite_shift(shift: Tensor) -> Tensor:
    """Maxima used as exponent shifts, with the ``-inf`` of an empty row or group (no entry) raised to the dtype's
    lowest finite value (one op where ``where(isfinite(shift), shift, 0)`` costs several in eager): its exponentials
    stay 0 and its log-sum ``-inf``, as with a zero shift, and ``x - shift`` is never ``-inf - (-inf)`` = NaN."""
    return shift.clamp_min(torch.finfo(shift.dtype).min)
