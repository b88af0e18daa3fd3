"""Checkpoints of sharded per-sample state through ``torch.distributed.checkpoint`` (DCP).

:func:`xrisk.save_checkpoint` writes one file from one process's objects: right for one process and
for replicated state (every rank holds everything). With ``state_placement="sharded"`` under
``torch.distributed`` no process holds all the per-sample rows, so :func:`save_sharded_checkpoint`
(called on **every** rank) writes a checkpoint **folder**:

* the tensors of ``model.state_dict()`` and ``loss.state_dict()`` through DCP: every rank writes the
  rows of its shards (``DTensor`` entries, see :mod:`xrisk.sharding`) into its own file, and a
  replicated tensor (model weights, scalar loss state) is written once;
* ``xrisk.pt`` (rank 0, ``torch.save`` of plain data that loads with ``weights_only=True``): the
  format, the loss's class / ``num_samples`` / structural settings (as in :func:`xrisk.save_checkpoint`),
  the optimizer's ``state_dict()`` (replicated under DDP, so rank 0's is everyone's), ``extra`` and the
  number of processes that wrote it.

The folder is written under a temporary name and renamed when complete (an older checkpoint of the
same name is replaced), so a crash never leaves a half-written checkpoint under ``path``.

:func:`load_sharded_checkpoint` (on every rank) reads it into objects built for **any** number of
processes: DCP reads each rank's rows of the new partition from whichever files hold them
(resharding: saved on 4 ranks, resumed on 2 or on 1), into replicated state too (sharded -> replicated),
and a sharded loss also loads a folder written from replicated state (replicated -> sharded). A
single-file :func:`xrisk.save_checkpoint` of a replicated run loads into a sharded loss with
:func:`xrisk.load_checkpoint` (each rank keeps its rows). Checks and all-or-nothing semantics are
those of :func:`xrisk.load_checkpoint`; the new state is read into fresh tensors first (the loss's
state is briefly held twice).

Example (every rank):

.. code-block:: python

    loss = APLoss(num_samples, state_placement="sharded")
    ...
    xrisk.save_sharded_checkpoint("run/ckpt", model=model, loss=loss, optimizer=opt, extra={"epoch": 3})
    # later, on any number of processes
    extra = xrisk.load_sharded_checkpoint("run/ckpt", model=model, loss=loss, optimizer=opt)
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from xrisk import distributed as xdist
from xrisk.checkpoint import (
    _FORMAT, CheckpointError, CheckpointMismatchError, _check_loss, _check_module, _check_optimizer, _checked_extra,
    _load_all_or_nothing, _loss_meta, read_checkpoint,
)

__all__ = ["save_sharded_checkpoint", "load_sharded_checkpoint", "META_FILE"]

#: The file of a sharded checkpoint folder that holds everything but the tensors (written by rank 0).
META_FILE = "xrisk.pt"


def _tensors_only(kind: str, state: Mapping[str, Any]) -> dict[str, Tensor]:
    """``state`` with tensor values only (DCP pickles anything else, which a safe load could not read back)."""
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"{kind} state entries {bad[:3]} are not tensors; a sharded checkpoint holds tensors only")
    return dict(state)


def _agreed_token() -> str:
    token = [secrets.token_hex(6)]
    if xdist.is_distributed():
        dist.broadcast_object_list(token, src=0)
    return token[0]


def _barrier() -> None:
    if xdist.is_distributed():
        dist.barrier()


def save_sharded_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write model, loss and optimizer state into the checkpoint folder ``path`` (collective: every rank).

    Args:
        path: the folder to write (its parent is created; an existing checkpoint folder there is replaced
            once the new one is complete).
        model, loss: modules whose ``state_dict()`` tensors are written through ``torch.distributed.checkpoint``
            (sharded per-sample state: each rank its rows).
        optimizer: its ``state_dict()`` goes into rank 0's ``xrisk.pt`` (replicated under DDP).
        extra: plain data, converted as by :func:`xrisk.save_checkpoint` (``TypeError`` for anything a safe load
            cannot read, before anything is written).

    Returns:
        The folder written.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    meta: dict[str, Any] = {"format": _FORMAT, "sharded": True, "extra": _checked_extra(extra),
                            "world_size": xdist.world_size(), "parts": []}
    tensors: dict[str, Any] = {}
    for kind, module in (("model", model), ("loss", loss)):
        if module is not None:
            tensors[kind] = _tensors_only(kind, module.state_dict())
            meta["parts"].append(kind)
    if loss is not None:
        meta["loss_meta"] = _loss_meta(loss)
    if optimizer is not None:
        meta["optimizer"] = optimizer.state_dict()
        meta["parts"].append("optimizer")
    token = _agreed_token()
    tmp, old = path.parent / f".{path.name}.{token}.tmp", path.parent / f".{path.name}.{token}.old"
    if xdist.rank() == 0:
        tmp.mkdir(parents=True)
    _barrier()  # the folder exists before any rank writes into it
    try:
        if tensors:
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=not xdist.is_distributed())
        if xdist.rank() == 0:
            with open(tmp / META_FILE, "wb") as f:
                torch.save(meta, f)
                f.flush()
                os.fsync(f.fileno())
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if xdist.rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    if path.is_file():
        raise CheckpointError(f"{path} is a single-file checkpoint, not a sharded checkpoint folder; load it with "
                              "xrisk.load_checkpoint")
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {path}")
    if not (path / META_FILE).is_file():
        raise CheckpointError(f"{path} is not a sharded xrisk checkpoint: it has no {META_FILE}")
    meta = read_checkpoint(path / META_FILE)
    if not meta.get("sharded") or not isinstance(meta.get("parts"), list):
        raise CheckpointError(f"{path / META_FILE} is not the metadata of a sharded xrisk checkpoint")
    return meta


def _saved_shapes(path: Path) -> dict[str, dict[str, Tensor]]:
    """The tensors of the folder, as ``meta`` tensors of their global shapes, by part (``model``/``loss``)."""
    import torch.distributed.checkpoint as dcp

    try:
        entries = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 - a missing or damaged .metadata
        raise CheckpointError(f"cannot read the tensor index of checkpoint folder {path} ({type(e).__name__}: "
                              f"{str(e)[:200]}); it is incomplete or damaged") from e
    out: dict[str, dict[str, Tensor]] = {}
    for fqn, md in entries.items():
        kind, _, key = fqn.partition(".")
        size = getattr(md, "size", None)
        if size is not None:
            out.setdefault(kind, {})[key] = torch.empty(tuple(size), device="meta")
    return out


def load_sharded_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_sharded_checkpoint` wrote into the given objects (collective: every rank); return
    ``extra``. The objects may be built for another number of processes, and replicated or sharded.

    Raises:
        FileNotFoundError: no such folder.
        CheckpointError: not a sharded xrisk checkpoint folder (e.g. a single file: use :func:`xrisk.load_checkpoint`),
            or an incomplete / damaged one.
        CheckpointMismatchError: a requested part is missing, or it was made for another loss class, data-set size,
            settings, model or optimizer layout. Nothing is loaded then.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    meta = _read_meta(path)
    shapes = _saved_shapes(path)
    for name, obj in (("model", model), ("loss", loss), ("optimizer", optimizer)):
        if obj is not None and name not in meta["parts"]:
            raise CheckpointMismatchError(f"checkpoint {path} holds no {name} state")
    if model is not None:
        _check_module("model", model, shapes.get("model", {}), path)
    if loss is not None:
        _check_loss(loss, {"loss_meta": meta.get("loss_meta", {}), "loss": shapes.get("loss", {})}, path)
    if optimizer is not None:
        _check_optimizer(optimizer, meta["optimizer"], path)
    target: dict[str, dict[str, Tensor]] = {}
    for kind, module in (("model", model), ("loss", loss)):
        if module is not None:  # fresh tensors of this run's layout: DCP reshards into them
            target[kind] = {k: torch.empty_like(v) for k, v in _tensors_only(kind, module.state_dict()).items()}
    if target:
        try:
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(path)), no_dist=not xdist.is_distributed())
        except Exception as e:  # noqa: BLE001 - DCP raises CheckpointException and others for unreadable files
            raise CheckpointError(f"cannot read checkpoint folder {path}: {type(e).__name__}: {str(e)[:300]}") from e
    _load_all_or_nothing(path, model=model, loss=loss, optimizer=optimizer, model_state=target.get("model"),
                         loss_state=target.get("loss"), optimizer_state=meta.get("optimizer"))
    return meta["extra"]
