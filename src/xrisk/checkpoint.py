"""Checkpoints that hold model, loss state and optimizer state together.

LibAUC users lose the per-sample estimators on resume because they live outside
``state_dict``. Here every piece of a run that changes the math is in one file:

* ``model``: ``model.state_dict()``;
* ``loss``: ``loss.state_dict()`` (per-sample estimators, seen flags, temperatures, ...),
  with the loss's class name, its ``num_samples`` and its structural settings
  (:func:`checkpoint_settings`: task count, mode, temperature kind, ...), so a checkpoint
  made for another loss, data set or configuration fails clearly instead of loading;
* ``optimizer``: ``optimizer.state_dict()`` (momenta, PESG reference points, ...);
* ``extra``: small plain data (epoch, step, RNG states, metrics), converted at save time so the
  file always loads with ``weights_only=True`` (see :func:`save_checkpoint` for the table).

**Writes** are atomic (a temporary file in the same folder, then :func:`os.replace`), so a crash
during saving never leaves a truncated checkpoint; the file's permissions follow the umask like
any other file the process writes.

**Loads** use ``torch.load(weights_only=True)`` and are all or nothing: every requested part is
checked (model keys and shapes, loss class / ``num_samples`` / settings / state keys and shapes,
optimizer parameter-group layout and state shapes) before anything is loaded, and a failure
leaves every object as it was.

**Errors.** Every problem with a checkpoint file raises :class:`CheckpointError` (a
``ValueError``) whose message names the file and what is wrong: empty, truncated or damaged
files, foreign files (a text file, another zip, a plain ``torch.save`` of a tensor or a
``state_dict``), and, as the subclass :class:`CheckpointMismatchError`, checkpoints made for
another model, loss, data-set size or optimizer. A missing file raises ``FileNotFoundError``.

**The settings hook.** :func:`checkpoint_settings` (the metadata a loaded loss must match)
calls ``loss.checkpoint_settings()`` when the loss defines it, else
:func:`default_checkpoint_settings`, which reads the structural attributes listed in
:data:`STRUCTURAL_SETTINGS` (``num_tasks``, ``mode``, ``temperature``, ``method``, ``version``,
``surrogate``) when the loss has them. A loss with other structural choices extends it::

    def checkpoint_settings(self) -> dict[str, object]:
        return {**default_checkpoint_settings(self), "k": self.k}

Example:
    >>> import tempfile, torch
    >>> from xrisk.losses import APLoss
    >>> model, loss = torch.nn.Linear(3, 1), APLoss(100)
    >>> path = save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt", model=model, loss=loss, extra={"epoch": 3})
    >>> load_checkpoint(path, model=model, loss=loss)["epoch"]
    3
    >>> load_checkpoint(path, model=model, loss=APLoss(50))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    CheckpointMismatchError: checkpoint ... was made for a data set of 100 samples, ...
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import os
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "checkpoint_settings",
    "default_checkpoint_settings",
    "STRUCTURAL_SETTINGS",
    "CheckpointError",
    "CheckpointMismatchError",
]

_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint (or run-folder) file cannot be used: empty, truncated, damaged or foreign.

    The message names the file and what is wrong. :class:`CheckpointMismatchError` (a checkpoint
    made for another model, loss, data-set size or optimizer) derives from it, so
    ``except CheckpointError`` catches every checkpoint problem.
    """


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made for another loss, another data-set size or another model."""


#: Loss attributes that fix what its state means; :func:`default_checkpoint_settings` records
#: those a loss has (plain ``str``/``int``/``bool`` values) and a load must find them equal.
STRUCTURAL_SETTINGS: tuple[str, ...] = ("num_tasks", "mode", "temperature", "method", "version", "surrogate")


def default_checkpoint_settings(loss: nn.Module) -> dict[str, Any]:
    """The attributes of :data:`STRUCTURAL_SETTINGS` that ``loss`` has, as plain values."""
    out: dict[str, Any] = {}
    for name in STRUCTURAL_SETTINGS:
        value = getattr(loss, name, None)
        if isinstance(value, (str, int, bool)):
            out[name] = value
    return out


def checkpoint_settings(loss: nn.Module) -> dict[str, Any]:
    """Structural settings of ``loss`` stored with its state: ``loss.checkpoint_settings()`` if the loss
    defines that hook, else :func:`default_checkpoint_settings`. A checkpoint loads only into a loss
    with equal settings."""
    hook = getattr(loss, "checkpoint_settings", None)
    settings = hook() if callable(hook) else default_checkpoint_settings(loss)
    if not isinstance(settings, Mapping):
        raise TypeError(f"{type(loss).__name__}.checkpoint_settings() must return a dict, got {type(settings).__name__}")
    return _plain(dict(settings), f"{type(loss).__name__}.checkpoint_settings()")


def _loss_meta(loss: nn.Module) -> dict[str, Any]:
    meta: dict[str, Any] = {"class": type(loss).__name__, "settings": checkpoint_settings(loss)}
    n = getattr(loss, "num_samples", None)
    if isinstance(n, int):
        meta["num_samples"] = n
    return meta


# ---------------------------------------------------------------------------------------- extra
def _plain(value: Any, where: str) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` accepts (see :func:`save_checkpoint`)."""
    if value is None or type(value) in (bool, int, float, complex, str, bytes, bytearray):
        return value  # exact types: subclasses (numpy float64, IntEnum, ...) are handled below
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (torch.Size, torch.dtype, torch.device)):
        return value
    if isinstance(value, np.generic):
        if isinstance(value, (np.bool_, np.integer, np.floating, np.complexfloating, np.str_)):
            return value.item()
        raise TypeError(f"{where}: cannot store a numpy {value.dtype} scalar in a checkpoint; convert it to str")
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise TypeError(f"{where}: cannot store a numpy array of dtype {value.dtype} in a checkpoint; "
                            "only bool and number arrays are stored (as tensors); convert it to a list")
        try:
            return torch.from_numpy(np.array(value, copy=True, order="C"))
        except TypeError as e:  # e.g. dtypes torch lacks
            raise TypeError(f"{where}: cannot store a numpy array of dtype {value.dtype}: {e}") from None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = _plain(k, f"{where} key {k!r}")
            out[key] = _plain(v, f"{where}[{k!r}]")
        return out
    if type(value) in (list, tuple, set):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return type(value)(items)
    raise TypeError(
        f"{where}: cannot store {type(value).__module__}.{type(value).__qualname__} in a checkpoint "
        "(it must load with torch.load(weights_only=True)); store numbers, strings, lists, tuples, dicts, "
        "tensors or numpy arrays instead"
    )


def _checked_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    out = _plain(dict(extra or {}), "extra")
    buf = io.BytesIO()  # prove now, not at resume time, that a safe load reads it back
    torch.save(out, buf)
    buf.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(buf, weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything the safe unpickler refuses
        raise TypeError(f"extra holds a value torch.load(weights_only=True) refuses: {_first_line(e)}") from None
    return out


# ---------------------------------------------------------------------------------------- save
def _open_exclusive(folder: Path, stem: str) -> tuple[int, Path]:
    """A new file ``folder/stem.<random>.tmp`` opened for writing with mode ``0o666 & ~umask``."""
    while True:
        tmp = folder / f"{stem}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write model, loss and optimizer state to ``path`` atomically.

    ``extra`` is converted so the file always loads with ``weights_only=True``:

    * ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``torch.Size``,
      ``torch.dtype``, ``torch.device``: stored as they are; tensors: detached;
    * numpy scalars (``np.float32(1)``, ``np.int64(3)``, ``np.bool_``): the Python number;
    * numpy bool/number arrays: a ``torch.Tensor`` copy (``.numpy()`` gives the array back);
    * ``pathlib.Path`` and other ``os.PathLike``: ``str``; ``datetime``/``date``/``time``: ISO 8601 ``str``;
    * ``dict`` (any mapping), ``list``, ``tuple``, ``set``: the same container, items converted;
    * anything else (objects, enums, dataclasses, numpy string/object arrays, ``frozenset``, ...):
      ``TypeError`` at save time naming the key, and nothing is written.

    Args:
        path: file to write (its folder is created). Permissions follow the umask.
        model, loss, optimizer: objects whose ``state_dict()`` is stored (any may be None).
        extra: plain data, converted as above.

    Returns:
        The path written.

    Raises:
        TypeError: ``extra`` holds a value a safe load cannot read back (nothing is written).
        ValueError: ``model`` or ``loss`` holds per-sample state sharded over several processes (no process
            has all of it): use :func:`xrisk.save_sharded_checkpoint` on every rank instead.
    """
    _refuse_sharded(model=model, loss=loss)
    path = Path(path)
    payload: dict[str, Any] = {"format": _FORMAT, "extra": _checked_extra(extra)}
    if model is not None:
        payload["model"] = model.state_dict()
    if loss is not None:
        payload["loss"] = loss.state_dict()
        payload["loss_meta"] = _loss_meta(loss)
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_exclusive(path.parent, path.name)
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


def _refuse_sharded(**modules: nn.Module | None) -> None:
    """Raise when a module holds per-sample state split over several processes (one file cannot hold it)."""
    from xrisk.sharding import sharded_states

    for kind, module in modules.items():
        states = sharded_states(module) if module is not None else []
        if states:
            raise ValueError(
                f"the {kind} holds per-sample state sharded over {states[0].num_shards} processes "
                "(state_placement='sharded'), which no single process has: save it with "
                "xrisk.save_sharded_checkpoint(path, ...) called on every rank (torch.distributed.checkpoint, "
                "each rank writes its shard; load it with xrisk.load_sharded_checkpoint on any number of processes)"
            )


# ---------------------------------------------------------------------------------------- read
def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def read_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The validated content of an xrisk checkpoint file (``format``, ``extra``, and the parts it holds).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, truncated, damaged, not a torch file, or a torch file that
            is not an xrisk checkpoint; the message names the file and the problem.
    """
    path = Path(path)
    if path.is_dir() and (path / "xrisk.pt").is_file():
        raise CheckpointError(f"{path} is a sharded checkpoint folder (xrisk.save_sharded_checkpoint); load it with "
                              "xrisk.load_sharded_checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb"):  # permission problems stay OSErrors
        pass
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was cut off or never written")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/pickle/zip raise many types for damaged files
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            why = "it holds Python objects a safe load (weights_only=True) refuses; it was not written by xrisk"
        elif "central directory" in text or isinstance(e, (EOFError, OSError)):
            why = "it is truncated or damaged"
        elif "not a ZIP archive" in text or "invalid load key" in text or isinstance(e, (KeyError, UnicodeDecodeError)):
            why = "it is not a torch checkpoint"
        elif "archive" in text or "data.pkl" in text:
            why = "it is a zip archive but not a torch checkpoint"
        else:
            why = "it cannot be read"
        raise CheckpointError(f"cannot load checkpoint {path}: {why} ({_first_line(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        if isinstance(payload, dict) and "format" in payload:
            what = f"an xrisk checkpoint of format {payload['format']!r} (this version reads format {_FORMAT})"
        elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            what = "a plain state_dict saved with torch.save"
        else:
            what = f"a {type(payload).__name__} saved with torch.save"
        raise CheckpointError(f"{path} is not an xrisk checkpoint: it holds {what}")
    for key in ("extra", "model", "loss", "loss_meta", "optimizer"):
        if key in payload and not isinstance(payload[key], dict) or key == "extra" and key not in payload:
            raise CheckpointError(f"checkpoint {path} is damaged: its {key!r} entry is missing or not a dict")
    return payload


# ---------------------------------------------------------------------------------------- load
def _tensor_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}


def _check_module(kind: str, module: nn.Module, saved: Mapping[str, Any], path: Path) -> None:
    want, got = _tensor_shapes(module.state_dict()), _tensor_shapes(saved)
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k in shapes[:5]:
        problems.append(f"{k!r} has shape {got[k]} in the checkpoint, {want[k]} here")
    if problems:
        raise CheckpointMismatchError(f"{kind} state in {path} does not fit: " + "; ".join(problems))


def _check_loss(loss: nn.Module, payload: Mapping[str, Any], path: Path) -> None:
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
    if "settings" in got and got["settings"] != want["settings"]:  # older files carry no settings
        old, new = got["settings"], want["settings"]
        diff = ", ".join(f"{k}={old.get(k)!r} in the checkpoint, {new.get(k)!r} here"
                         for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise CheckpointMismatchError(f"checkpoint {path} was made for a {want['class']} with other settings: {diff}")
    _check_module("loss", loss, payload["loss"], path)


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], path: Path) -> None:
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(state, Mapping) or not all(
        isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups
    ):
        raise CheckpointError(f"optimizer state in {path} is damaged (no param_groups/state)")
    mine = optimizer.param_groups
    if len(groups) != len(mine) or any(len(a["params"]) != len(b["params"]) for a, b in zip(groups, mine)):
        raise CheckpointMismatchError(
            f"optimizer state in {path} does not fit: it has parameter groups of sizes "
            f"{[len(g['params']) for g in groups]}, this optimizer {[len(g['params']) for g in mine]}"
        )
    params = {pid: p for g, m in zip(groups, mine) for pid, p in zip(g["params"], m["params"])}
    for pid, entry in state.items():
        p = params.get(pid)
        if p is None or not isinstance(entry, Mapping):
            raise CheckpointMismatchError(f"optimizer state in {path} does not fit: state for unknown parameter {pid!r}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() == p.dim() >= 1 and value.shape != p.shape:
                raise CheckpointMismatchError(
                    f"optimizer state in {path} does not fit: {name!r} of a parameter has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(p.shape)}"
                )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the given objects; return ``extra``.

    All or nothing: every requested part is checked first (model keys and shapes; loss class,
    ``num_samples``, :func:`checkpoint_settings`, state keys and shapes; optimizer parameter-group
    sizes and state shapes), then loaded; when anything fails, every object keeps its state.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, truncated, damaged or not an xrisk checkpoint.
        CheckpointMismatchError: the checkpoint lacks a part that was asked for, or was made
            for another loss class, data-set size or loss settings, or the model's or
            optimizer's layout differs.
    """
    path = Path(path)
    return _restore(path, read_checkpoint(path, map_location=map_location), model=model, loss=loss,
                    optimizer=optimizer)


def _restore(
    path: Path, payload: Mapping[str, Any], *, model: nn.Module | None, loss: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
) -> dict[str, Any]:
    """:func:`load_checkpoint` on a payload :func:`read_checkpoint` already read from ``path`` (named in errors):
    check every requested part, then load all or nothing; return ``extra``."""
    if payload.get("sharded"):
        raise CheckpointError(f"{path} is the metadata file of a sharded checkpoint folder; load the folder "
                              f"{path.parent} with xrisk.load_sharded_checkpoint")
    for name, obj in (("model", model), ("loss", loss), ("optimizer", optimizer)):
        if obj is not None and name not in payload:
            raise CheckpointMismatchError(f"checkpoint {path} holds no {name} state")
    if model is not None:
        _check_module("model", model, payload["model"], path)
    if loss is not None:
        _check_loss(loss, payload, path)
    if optimizer is not None:
        _check_optimizer(optimizer, payload["optimizer"], path)
    _load_all_or_nothing(path, model=model, loss=loss, optimizer=optimizer, model_state=payload.get("model"),
                         loss_state=payload.get("loss"), optimizer_state=payload.get("optimizer"))
    return payload["extra"]


def _load_all_or_nothing(
    path: Path, *, model: nn.Module | None, loss: nn.Module | None, optimizer: torch.optim.Optimizer | None,
    model_state: Mapping[str, Any] | None, loss_state: Mapping[str, Any] | None,
    optimizer_state: Mapping[str, Any] | None,
) -> None:
    """Load checked states into the given objects. A module's own load hook may still refuse: the parts
    loaded before it are then undone. The model loads last and is not copied (its keys and shapes were
    checked)."""
    loaded: list[tuple[Any, Any]] = []
    try:
        if loss is not None:
            before = copy.deepcopy(loss.state_dict())  # modules load in place: keep a copy
            loss.load_state_dict(loss_state)  # type: ignore[arg-type]
            loaded.append((loss, before))
        if optimizer is not None:
            before = optimizer.state_dict()  # an optimizer swaps in new state: references suffice
            optimizer.load_state_dict(optimizer_state)  # type: ignore[arg-type]
            loaded.append((optimizer, before))
        if model is not None:
            model.load_state_dict(model_state)  # type: ignore[arg-type]
    except Exception as e:
        for obj, before in reversed(loaded):
            obj.load_state_dict(before)
        raise CheckpointMismatchError(f"{type(e).__name__} while loading {path}: {e}") from e
