"""Checkpoints that hold model, loss state and optimizer state together.

LibAUC users lose the per-sample estimators on resume because they live outside
``state_dict``. Here every piece of a run that changes the math is in one file:

* ``model``: ``model.state_dict()``;
* ``loss``: ``loss.state_dict()`` (per-sample estimators, seen flags, temperatures, ...),
  with the loss's class name and its ``num_samples`` so a mismatch fails clearly;
* ``optimizer``: ``optimizer.state_dict()`` (momenta, PESG reference points, ...);
* ``extra``: small plain data (epoch, step, RNG states, metrics).

Writes are atomic (a temporary file in the same folder, then :func:`os.replace`), so a
crash during saving never leaves a truncated checkpoint. Loads use
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointMismatchError"]

_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint was made for another loss, another data-set size or another model."""


def _loss_meta(loss: nn.Module) -> dict[str, Any]:
    meta: dict[str, Any] = {"class": type(loss).__name__}
    n = getattr(loss, "num_samples", None)
    if isinstance(n, int):
        meta["num_samples"] = n
    return meta


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model, loss and optimizer state to ``path`` atomically.

    Args:
        path: file to write (its folder is created).
        model, loss, optimizer: objects whose ``state_dict()`` is stored (any may be None).
        extra: plain data (numbers, strings, lists, dicts, tensors) stored as is.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": _FORMAT, "extra": dict(extra or {})}
    if model is not None:
        payload["model"] = model.state_dict()
    if loss is not None:
        payload["loss"] = loss.state_dict()
        payload["loss_meta"] = _loss_meta(loss)
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the given objects; return ``extra``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the checkpoint lacks a part that was asked for, or was made
            for another loss class or data-set size, or the model's keys/shapes differ.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise CheckpointMismatchError(f"{path} is not an xrisk checkpoint (format {_FORMAT})")
    for name, obj in (("model", model), ("loss", loss), ("optimizer", optimizer)):
        if obj is not None and name not in payload:
            raise CheckpointMismatchError(f"checkpoint {path} holds no {name} state")
    if loss is not None:
        want, got = _loss_meta(loss), payload.get("loss_meta", {})
        if got.get("class") != want["class"]:
            raise CheckpointMismatchError(
                f"checkpoint {path} was made for loss {got.get('class')!r}, not {want['class']!r}"
            )
        if "num_samples" in want and got.get("num_samples") != want["num_samples"]:
            raise CheckpointMismatchError(
                f"checkpoint {path} was made for a data set of {got.get('num_samples')} samples, "
                f"this loss has num_samples={want['num_samples']}"
            )
        try:
            loss.load_state_dict(payload["loss"])
        except (RuntimeError, ValueError) as e:
            raise CheckpointMismatchError(f"loss state in {path} does not fit: {e}") from e
    if model is not None:
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as e:
            raise CheckpointMismatchError(f"model state in {path} does not fit: {e}") from e
    if optimizer is not None:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(f"optimizer state in {path} does not fit: {e}") from e
    return payload["extra"]
