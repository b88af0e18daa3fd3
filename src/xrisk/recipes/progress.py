"""A small progress bar on stderr (no tqdm dependency).

On a terminal the bar redraws one line in place (at most 10 times a second)::

    epoch 3/10 |#########-----------|  450/1000 45% loss 0.1234 test_auroc 0.9512 ETA 0:00:31

When the stream is not a terminal (a log file, a CI job) it writes a full line at most every
``log_interval`` seconds and once at the end, so logs stay readable. A disabled bar writes
nothing at all (``--quiet``).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for a non-negative number of seconds (``?`` if unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _format_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


class ProgressBar:
    """Progress over ``total`` steps with a description, named values and an ETA.

    Args:
        total: number of steps the bar covers (``update`` calls with ``n=1``).
        desc: text in front of the bar (e.g. ``"epoch 3/10"``); change it with
            :meth:`set_description`.
        stream: where to write (default ``sys.stderr``).
        enabled: ``False`` makes every method a no-op (used for ``--quiet``).
        width: characters of the bar itself.
        log_interval: seconds between lines when ``stream`` is not a terminal.

    Use it as a context manager or call :meth:`close` at the end.
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        width: int = 20,
        log_interval: float = 10.0,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = int(total)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.log_interval = log_interval
        self.count = 0
        self.postfix: dict[str, object] = {}
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._line_len = 0
        self._closed = False

    # ------------------------------------------------------------------ public
    def set_description(self, desc: str) -> None:
        """Replace the text in front of the bar."""
        self.desc = desc

    def set_postfix(self, **values: object) -> None:
        """Set (or update) the named values shown after the counter (floats get 4 decimals)."""
        self.postfix.update(values)

    def update(self, n: int = 1, **values: object) -> None:
        """Advance by ``n`` steps and update the shown values."""
        self.count = min(self.count + n, self.total) if self.total else self.count + n
        self.postfix.update(values)
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.1 if self._tty else self.log_interval
        if now - self._last_draw >= interval:
            self._draw(now)

    def write(self, message: str) -> None:
        """Write a full line (e.g. an epoch summary) without breaking the bar."""
        if not self.enabled:
            return
        if self._tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
        self.stream.write(message.rstrip("\n") + "\n")
        self._line_len = 0
        if self._tty and not self._closed:
            self._draw(time.monotonic())
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        self._draw(time.monotonic())
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ drawing
    def render(self, now: float | None = None) -> str:
        """The current line (without carriage return or newline)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = self.count / self.total
            filled = int(round(frac * self.width))
            digits = len(str(self.total))
            parts.append(
                f"|{'#' * filled}{'-' * (self.width - filled)}| {self.count:>{digits}}/{self.total} {frac:4.0%}"
            )
        else:
            parts.append(f"{self.count}")
        parts += [f"{k} {_format_value(v)}" for k, v in self.postfix.items()]
        if self.count >= self.total > 0:
            parts.append(f"in {format_duration(elapsed)}")
        elif self.count > 0 and self.total:
            parts.append(f"ETA {format_duration(elapsed / self.count * (self.total - self.count))}")
        else:
            parts.append("ETA ?")
        return " ".join(parts)

    def _draw(self, now: float) -> None:
        line = self.render(now)
        if self._tty:
            pad = max(self._line_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._line_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_draw = now
