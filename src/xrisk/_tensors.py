"""Conversions of the hot paths that skip the call when nothing changes (a no-op ``.to()`` still costs a
dispatch, several microseconds per step)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_state_rows", "like_tensor", "on_device"]


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
