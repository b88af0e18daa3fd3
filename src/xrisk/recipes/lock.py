"""A lock on a run folder, so that two runs never write into the same ``--out`` at once.

:class:`RunLock` holds ``<folder>/run.lock`` for the lifetime of a run. The file records who
holds it (``{"pid": ..., "hostname": ..., "started": ..., "command": ...}``), and the process
holds an exclusive :func:`fcntl.flock` on it. The kernel drops that lock when the process ends,
however it ends (``kill -9`` included), so a lock file left behind by a dead run is *stale*: the
next run takes it over and says whose it was. A second live run gets :class:`RunFolderLocked`,
whose message names the holder's pid and host.

Where ``fcntl`` is missing (Windows) the recorded pid and hostname decide instead: a lock of a
process that no longer runs on this host is stale; a lock recorded by another host is respected.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with RunLock(folder):
    ...     RunLock(folder).acquire()   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    RunFolderLocked: ... is in use by another run (pid ..., host ...)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "RunFolderLocked", "LOCK_NAME"]

#: Name of the lock file inside the run folder (removed when the run ends).
LOCK_NAME = "run.lock"


class RunFolderLocked(RuntimeError):
    """Another live run holds the run folder's lock (the message names its pid and host)."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - e.g. Windows semantics
        return False
    return True


def _read_info(f: IO[bytes]) -> dict[str, Any] | None:
    f.seek(0)
    raw = f.read()
    if not raw.strip():
        return None
    try:
        info = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return {"pid": None, "hostname": None, "raw": raw[:200].decode("utf-8", errors="replace")}
    return info if isinstance(info, dict) else None


def describe(info: dict[str, Any] | None) -> str:
    """``pid 123 on host, started 2026-...`` for a lock record (``unknown holder`` if unreadable)."""
    if not info or info.get("pid") is None:
        return "unknown holder"
    started = f", started {info['started']}" if info.get("started") else ""
    return f"pid {info['pid']} on {info.get('hostname')}{started}"


class RunLock:
    """An exclusive lock on the run folder ``folder`` (created if missing).

    Use :meth:`acquire` / :meth:`release` or a ``with`` block. :attr:`stale` is the record of the
    dead run whose lock was taken over (``None`` when the folder was free).

    Raises (from :meth:`acquire`):
        RunFolderLocked: a live process holds the lock.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.stale: dict[str, Any] | None = None
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._file is not None

    def acquire(self) -> RunLock:
        """Take the lock (taking over a stale one); returns ``self``."""
        if self._file is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+b")  # noqa: SIM115 - held open for the run's lifetime
            try:
                self._lock(f)
            except BlockingIOError:
                holder = _read_info(f)
                f.close()
                raise RunFolderLocked(
                    f"{self.folder} is in use by another run ({describe(holder)}); wait for it to end or "
                    f"choose another --out (if that process is gone, delete {self.path})"
                ) from None
            try:  # a run that just ended may have unlinked the file we opened: lock the current one
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                continue
            self.stale = _read_info(f)
            record = {"pid": os.getpid(), "hostname": socket.gethostname(),
                      "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join(sys.argv)}
            f.seek(0)
            f.truncate()
            f.write((json.dumps(record) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
            self._file = f
            return self

    def _lock(self, f: IO[bytes]) -> None:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        info = _read_info(f)  # no flock: trust the record (pid on this host, or another host)
        if info and info.get("pid") is not None:
            other_host = info.get("hostname") != socket.gethostname()
            if other_host or (info.get("pid") == os.getpid() or _pid_alive(int(info["pid"]))):
                raise BlockingIOError

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # pragma: no cover - removed by hand
            pass
        finally:
            f.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is dropped with the object
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
