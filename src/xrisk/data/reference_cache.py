"""Reference-model outputs cached once for a whole data set: a memory-mapped array keyed by dataset index.

Model steering (:class:`~xrisk.losses.DRRhoLoss`, DRRho-CLIP) needs a frozen reference model's output for every
training sample (its per-sample loss, logits or features). Computing it on the fly costs a reference forward
pass per step; :class:`ReferenceCache` computes it once (:meth:`ReferenceCache.fill`, resumable, with a progress
bar) and serves rows by dataset index from a memory map (:meth:`ReferenceCache.read`).

A cache is a folder::

    meta.json     format, num_samples, row shape, dtype, the data-set and reference-model fingerprints
    values.npy    [num_samples, *shape] rows (numpy .npy, memory-mapped)
    filled.npy    [num_samples] uint8, 1 where the row was written

**Safety rules.** The folder is created under a temporary name and renamed into place once its files exist
(a crash leaves no half-made cache under the real name). Rows are flushed to disk before their ``filled`` flags
are set and flushed, so a row marked filled always holds the written bytes. Opening a cache checks its
format, its size (``num_samples``, row shape, dtype), the fingerprint of the data set and of the reference model
(:func:`fingerprint`, :func:`module_fingerprint`), and the length of both files: a mismatch raises
:class:`ReferenceCacheMismatchError` naming what differs, a damaged or truncated file
:class:`ReferenceCacheError` naming the file. Reading a row that was never filled raises
:class:`ReferenceCacheError` naming the rows; it never returns zeros.

Example:
    >>> import tempfile, torch
    >>> x = torch.randn(10, 4)
    >>> ref = torch.nn.Linear(4, 3)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     cache = ReferenceCache(f"{d}/cache", num_samples=10, shape=(3,), data_fingerprint=fingerprint(x),
    ...                            model_fingerprint=module_fingerprint(ref))
    ...     _ = cache.fill(lambda idx: ref(x[idx]), batch_size=4)
    ...     rows = cache.read(torch.tensor([7, 2]))
    >>> rows.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ReferenceCache",
    "ReferenceCacheError",
    "ReferenceCacheMismatchError",
    "fingerprint",
    "module_fingerprint",
]

_FORMAT = "xrisk-reference-cache"
_VERSION = 1
_DTYPES = {"float32": (torch.float32, np.float32), "float16": (torch.float16, np.float16),
           "float64": (torch.float64, np.float64)}


class ReferenceCacheError(RuntimeError):
    """A reference cache that cannot be used: damaged or truncated files, or rows that were never filled."""


class ReferenceCacheMismatchError(ReferenceCacheError):
    """The cache was made for another data set, another reference model or another row layout."""


class _Progress(Protocol):
    def update(self, n: int = 1, **values: Any) -> None: ...


def _feed(h: Any, item: Any) -> None:
    if isinstance(item, Tensor):
        t = item.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(item, np.ndarray):
        a = np.ascontiguousarray(item)
        h.update(f"array:{a.dtype}:{a.shape}:".encode())
        h.update(a.tobytes())
    elif isinstance(item, str):
        h.update(f"str:{len(item)}:".encode() + item.encode())
    elif isinstance(item, (bool, int, float)) or item is None:
        h.update(f"{type(item).__name__}:{item!r};".encode())
    elif isinstance(item, (list, tuple)):
        h.update(f"seq:{len(item)}:".encode())
        for x in item:
            _feed(h, x)
    elif isinstance(item, dict):
        h.update(f"map:{len(item)}:".encode())
        for k in sorted(item, key=str):
            _feed(h, str(k))
            _feed(h, item[k])
    else:
        raise TypeError(f"cannot fingerprint a {type(item).__name__}: give tensors, arrays, strings, numbers or lists")


def fingerprint(*items: Any) -> str:
    """SHA-256 (hex, first 16 characters) of tensors, arrays, strings, numbers and lists/dicts of them: dtype,
    shape and bytes of every tensor, in order. Fingerprint a data set by its inputs (e.g. the images and the
    captions, in dataset-index order), so a cache keyed by index cannot be read for other data."""
    h = hashlib.sha256()
    for item in items:
        _feed(h, item)
    return h.hexdigest()[:16]


def module_fingerprint(model: nn.Module) -> str:
    """:func:`fingerprint` of a model's ``state_dict`` (names, dtypes, shapes and values): two models with the
    same weights have the same fingerprint, a retrained or other model another one."""
    return fingerprint(dict(model.state_dict()))


def _npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """``(offset of the data, shape, dtype)`` from a .npy header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        return f.tell(), tuple(shape), np.dtype(dtype)


class ReferenceCache:
    """Rows of a reference model's outputs for every sample of a data set, memory-mapped, keyed by dataset index.

    Opens the cache at ``path`` when it exists (and checks it against the arguments), else creates it empty.

    Args:
        path: the cache folder.
        num_samples: data-set size ``n`` (indices run over ``[0, n)``).
        shape: shape of one row, e.g. ``(2, d)`` for DRRho-CLIP's image and text features or ``(C,)`` for logits.
        data_fingerprint: :func:`fingerprint` of the data set (its inputs in index order).
        model_fingerprint: :func:`module_fingerprint` of the reference model (or any string naming it).
        dtype: ``torch.float32`` (default), ``float16`` or ``float64``.
        create: create the cache when it does not exist (False: raise :class:`ReferenceCacheError`).

    Raises:
        ReferenceCacheMismatchError: the existing cache has another ``num_samples``, row shape, dtype, data-set
            fingerprint or model fingerprint (the message names each, with both values).
        ReferenceCacheError: a damaged ``meta.json``, a truncated or foreign ``values.npy`` / ``filled.npy``.

    Attributes:
        path: the cache folder.
        num_samples: rows (dataset indices ``0 .. num_samples - 1``).
        shape: the shape of one row.
        dtype: the stored dtype.
        data_fingerprint: the data set's fingerprint the cache was written for.
        model_fingerprint: the reference model's fingerprint.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_samples: int,
        shape: Sequence[int],
        data_fingerprint: str,
        model_fingerprint: str,
        dtype: torch.dtype = torch.float32,
        create: bool = True,
    ) -> None:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        names = {v[0]: k for k, v in _DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype}")
        self.path = Path(path)
        self.num_samples = num_samples
        self.shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in self.shape):
            raise ValueError(f"shape entries must be positive, got {self.shape}")
        self.dtype = dtype
        self.data_fingerprint = str(data_fingerprint)
        self.model_fingerprint = str(model_fingerprint)
        self._meta = {
            "format": _FORMAT, "version": _VERSION, "num_samples": num_samples, "shape": list(self.shape),
            "dtype": names[dtype], "data_fingerprint": self.data_fingerprint,
            "model_fingerprint": self.model_fingerprint,
        }
        if not self.path.exists():
            if not create:
                raise ReferenceCacheError(f"no reference cache at {self.path}")
            self._create()
        self._open()

    # ----------------------------------------------------------------------------- files
    def _create(self) -> None:
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=parent))
        try:
            np_dtype = _DTYPES[self._meta["dtype"]][1]
            values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np_dtype,
                                               shape=(self.num_samples, *self.shape))
            values.flush()
            del values
            filled = np.lib.format.open_memmap(tmp / "filled.npy", mode="w+", dtype=np.uint8, shape=(self.num_samples,))
            filled.flush()
            del filled
            (tmp / "meta.json").write_text(json.dumps(self._meta, indent=2) + "\n")
            try:
                os.rename(tmp, self.path)  # atomic: the cache appears complete or not at all
            except OSError:
                if not self.path.exists():  # a real failure, not another process that created it first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _open(self) -> None:
        meta_path = self.path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            raise ReferenceCacheError(f"{self.path} is not a reference cache (no meta.json)") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ReferenceCacheError(f"{meta_path} is damaged ({e}); delete {self.path} to rebuild the cache") from None
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ReferenceCacheError(
                f"{self.path} is not an xrisk reference cache of version {_VERSION} "
                f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
            )
        what = {"data_fingerprint": "data set", "model_fingerprint": "reference model", "num_samples": "num_samples",
                "shape": "row shape", "dtype": "dtype"}
        diffs = [f"{label}: {meta.get(key)!r} in the cache, {self._meta[key]!r} now" for key, label in what.items()
                 if meta.get(key) != self._meta[key]]
        if diffs:
            kinds = [label for key, label in what.items() if meta.get(key) != self._meta[key]]
            raise ReferenceCacheMismatchError(
                f"reference cache {self.path} was written for another {' and '.join(kinds)} ({'; '.join(diffs)}); "
                "use another cache folder or delete this one to rebuild it"
            )
        np_dtype = np.dtype(_DTYPES[self._meta["dtype"]][1])
        self._values = self._map("values.npy", (self.num_samples, *self.shape), np_dtype)
        self._filled = self._map("filled.npy", (self.num_samples,), np.dtype(np.uint8))
        self._rows = torch.from_numpy(self._values)  # a tensor view of the map: a read is one index_select
        self._complete: bool | None = None  # every row filled (once True, stays True); None: not known

    def _map(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
        file = self.path / name
        try:
            offset, got_shape, got_dtype = _npy_data_offset(file)
        except FileNotFoundError:
            raise ReferenceCacheError(f"reference cache file {file} is missing; delete {self.path} to rebuild") from None
        except (ValueError, OSError, SyntaxError) as e:
            raise ReferenceCacheError(f"reference cache file {file} is damaged ({e}); delete {self.path} to rebuild") from None
        if got_shape != shape or got_dtype != dtype:
            raise ReferenceCacheError(
                f"reference cache file {file} holds {got_dtype} {got_shape}, meta.json says {dtype} {shape}; "
                f"delete {self.path} to rebuild"
            )
        want = offset + int(np.prod(shape)) * dtype.itemsize
        size = file.stat().st_size
        if size < want:
            raise ReferenceCacheError(
                f"reference cache file {file} is truncated: {size} bytes, expected {want}; delete {self.path} to rebuild"
            )
        return np.memmap(file, dtype=dtype, mode="r+", offset=offset, shape=shape)

    # ----------------------------------------------------------------------------- rows
    def _index(self, index: Tensor | Sequence[int]) -> np.ndarray:
        idx = index.detach().cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(f"index must be a 1-D integer tensor of dataset indices, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
            raise IndexError(f"dataset index {bad} is out of range for a reference cache of {self.num_samples} rows")
        return idx.astype(np.int64, copy=False)

    def read(self, index: Tensor | Sequence[int]) -> Tensor:
        """Rows ``[B, *shape]`` of the dataset indices ``index`` (a CPU tensor of the cache's dtype; a copy).

        A complete cache (every row filled: checked once, then known) reads with one ``index_select`` from the
        memory map; until then each read also checks its rows' filled flags.

        Raises:
            ReferenceCacheError: a row was never filled (the message names up to 5 of them and how many).
            IndexError: an index outside ``[0, num_samples)``.
        """
        if self._complete is None:
            self._complete = bool(self._filled.all())
        if (not self._complete or not isinstance(index, Tensor) or index.ndim != 1 or index.device.type != "cpu"
                or index.dtype not in (torch.int64, torch.int32)):
            idx = self._index(index)  # validated on the host (and the filled flags checked when incomplete)
            if not self._complete:
                self._check_filled(idx)
            index = torch.from_numpy(idx)
        try:
            return torch.index_select(self._rows, 0, index)
        except IndexError:  # out of range (negative included): name the index
            self._index(index)
            raise

    def _check_filled(self, idx: np.ndarray) -> None:
        missing = self._filled[idx] == 0
        if missing.any():
            rows = np.unique(idx[missing])
            shown = ", ".join(str(int(r)) for r in rows[:5])
            raise ReferenceCacheError(
                f"reference cache {self.path} has no row for dataset index {shown}"
                f"{f' (and {rows.size - 5} more)' if rows.size > 5 else ''}: it was not filled for them "
                "(call fill() first)"
            )

    def write(self, index: Tensor | Sequence[int], rows: Tensor) -> None:
        """Store ``rows [B, *shape]`` at the dataset indices ``index``: the rows are flushed to disk, then marked
        filled (and that flushed)."""
        idx = self._index(index)
        r = rows.detach().to("cpu", self.dtype)
        if tuple(r.shape) != (idx.size, *self.shape):
            raise ValueError(f"rows must have shape {(idx.size, *self.shape)}, got {tuple(r.shape)}")
        if not bool(torch.isfinite(r).all()):
            raise ValueError("rows contain NaN/inf; a reference cache stores finite outputs only")
        self._values[idx] = r.numpy()
        self._values.flush()
        self._filled[idx] = 1
        self._filled.flush()
        if self._complete is False:
            self._complete = None  # checked again at the next read

    def missing(self) -> Tensor:
        """Dataset indices whose row was never filled (``int64``, increasing)."""
        return torch.from_numpy(np.flatnonzero(self._filled == 0).astype(np.int64))

    @property
    def complete(self) -> bool:
        """Whether every row is filled."""
        return bool(self._filled.all())

    def fill(
        self, compute: Callable[[Tensor], Tensor], *, batch_size: int = 256, progress: _Progress | None = None,
    ) -> int:
        """Compute the rows that are still missing, in chunks of ``batch_size`` dataset indices (increasing), and
        store each chunk (:meth:`write`) before the next: an interrupted fill resumes where it stopped.

        Args:
            compute: ``index [b] -> rows [b, *shape]``, the reference model's outputs for those samples (run under
                ``torch.no_grad()``; put the model in eval mode yourself).
            batch_size: indices per chunk.
            progress: an object with ``update(n)`` (e.g. :meth:`RunContext.progress
                <xrisk.recipes.runner.RunContext.progress>` over ``len(missing())`` steps), updated per row.

        Returns:
            The number of rows computed (0 when the cache was complete).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        todo = self.missing()
        with torch.no_grad():
            for chunk in todo.split(batch_size):
                self.write(chunk, compute(chunk))
                if progress is not None:
                    progress.update(int(chunk.numel()))
        return int(todo.numel())

    def __repr__(self) -> str:
        filled = int(self._filled.sum())
        return (f"ReferenceCache({str(self.path)!r}, num_samples={self.num_samples}, shape={self.shape}, "
                f"filled={filled}/{self.num_samples})")
