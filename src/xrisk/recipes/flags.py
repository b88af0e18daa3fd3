"""Validated types for command-line flags: the one flag-validation path of every recipe.

Every flag of every ``xrisk`` command that takes a value declares what it accepts with a
:class:`FlagType` as its argparse ``type=`` (or ``choices=`` for a fixed set of words). The
parser is therefore the recipe's validation table: a bad value is refused while the command line
is parsed, before any data is loaded or any file is written, with one line naming the flag
(``xrisk: error: argument --lr: expected a finite number > 0, got 'nan'``, exit status 2).
Rules that involve several flags, or that need the data (``--positive-class``), go into the
recipe's ``validate(args)`` hook (:class:`xrisk.recipes.registry.Recipe`), which runs before the
run folder is created and raises :class:`~xrisk.recipes.registry.UsageError` naming the flag.

Each :class:`FlagType` carries ``bad``, values it must refuse; the test suite feeds every one of
them to every flag of every recipe and checks the one-line error, so a new flag is covered the
moment it is declared.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--lr", type=number(float, gt=0), default=1e-3)
    >>> _ = p.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9)
    >>> p.parse_args(["--lr", "0.01", "--gamma", "1"]).gamma
    1.0
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FlagType", "number", "int_list", "float_list", "text", "out_dir", "out_file", "existing_path"]


@dataclass(frozen=True)
class FlagType:
    """An argparse ``type=`` that parses and validates one flag value.

    Attributes:
        description: what the flag accepts, e.g. ``"a finite number > 0"`` (shown in errors).
        parse: ``str -> value``; raises ``ValueError`` for a value outside the type.
        bad: values this type must refuse (fed to every flag of this type by the CLI test).
    """

    description: str
    parse: Callable[[str], Any] = field(repr=False)
    bad: tuple[str, ...] = ()

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.description

    def __call__(self, value: str) -> Any:
        try:
            return self.parse(value)
        except (ValueError, TypeError, OverflowError) as e:
            detail = f" ({e})" if str(e) else ""
            raise argparse.ArgumentTypeError(f"expected {self.description}, got {value!r}{detail}") from None


def _bounds_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    return " and ".join(parts)


def number(
    kind: type = float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    allow_none: bool = False,
) -> FlagType:
    """A finite ``int`` or ``float`` inside the given bounds (NaN and +-inf are always refused).

    Args:
        kind: ``int`` or ``float``.
        gt, ge, lt, le: strict / inclusive lower and upper bounds (any may be None).
        allow_none: also accept the word ``none`` (returned as ``None``), for "use the default".

    Example: ``number(float, gt=0, le=1)`` is the range of a moving-average weight ``gamma``.
    """
    if kind not in (int, float):
        raise ValueError(f"kind must be int or float, got {kind!r}")
    if gt is not None and ge is not None or lt is not None and le is not None:
        raise ValueError("give at most one lower bound (gt/ge) and one upper bound (lt/le)")
    noun = "an integer" if kind is int else "a finite number"
    bounds = _bounds_text(gt, ge, lt, le)
    description = f"{noun} {bounds}".strip() + (" or 'none'" if allow_none else "")

    def parse(value: str) -> Any:
        if allow_none and value.strip().lower() == "none":
            return None
        try:
            v: float | int = int(value, 10) if kind is int else float(value)
        except ValueError:
            raise ValueError("") from None
        if not math.isfinite(v):
            raise ValueError("")
        if (gt is not None and not v > gt) or (ge is not None and not v >= ge):
            raise ValueError("")
        if (lt is not None and not v < lt) or (le is not None and not v <= le):
            raise ValueError("")
        return v

    bad: list[str] = ["abc", "nan", "inf", "-inf"]
    if kind is int:
        bad.append("1.5")
    step = 1 if kind is int else 0.5
    if gt is not None:
        bad.append(_fmt(kind, gt))
        bad.append(_fmt(kind, gt - step))
    if ge is not None:
        bad.append(_fmt(kind, ge - step))
    if lt is not None:
        bad.append(_fmt(kind, lt))
        bad.append(_fmt(kind, lt + step))
    if le is not None:
        bad.append(_fmt(kind, le + step))
    return FlagType(description, parse, tuple(dict.fromkeys(bad)))


def _fmt(kind: type, v: float) -> str:
    return str(int(math.floor(v))) if kind is int and float(v).is_integer() else repr(float(v))


def int_list(*, ge: int | None = None) -> FlagType:
    """Integers separated by spaces or commas (``"50 75"``), each ``>= ge`` when given; ``""`` is the empty list."""
    description = "integers separated by spaces or commas" + (f", each >= {ge}" if ge is not None else "")

    def parse(value: str) -> list[int]:
        try:
            out = [int(t, 10) for t in value.replace(",", " ").split()]
        except ValueError:
            raise ValueError("") from None
        if ge is not None and any(v < ge for v in out):
            raise ValueError("")
        return out

    bad = ["abc", "1.5", "1,x"] + ([str(ge - 1)] if ge is not None else [])
    return FlagType(description, parse, tuple(bad))


def float_list(*, gt: float | None = None, lt: float | None = None) -> FlagType:
    """Finite numbers separated by spaces or commas (``"0.3 0.5 0.7"``), at least one, each inside the
    open bounds when given."""
    bounds = _bounds_text(gt, None, lt, None)
    description = "numbers separated by spaces or commas" + (f", each {bounds}" if bounds else "")

    def parse(value: str) -> list[float]:
        try:
            out = [float(t) for t in value.replace(",", " ").split()]
        except ValueError:
            raise ValueError("") from None
        if not out or not all(math.isfinite(v) for v in out):
            raise ValueError("")
        if (gt is not None and any(v <= gt for v in out)) or (lt is not None and any(v >= lt for v in out)):
            raise ValueError("")
        return out

    bad = ["", "abc", "0.5,x", "nan", "inf"] + ([_fmt(float, gt)] if gt is not None else []) \
        + ([_fmt(float, lt)] if lt is not None else [])
    return FlagType(description, parse, tuple(bad))


def text(*, pattern_help: str = "a non-empty string", check: Callable[[str], bool] | None = None) -> FlagType:
    """A non-empty string (stripped), optionally checked by ``check``; refuses the empty string."""

    def parse(value: str) -> str:
        v = value.strip()
        if not v or (check is not None and not check(v)):
            raise ValueError("")
        return v

    return FlagType(pattern_help, parse, ("", "   "))


def _writable_path(value: str, *, folder: bool) -> Path:
    """``value`` as a path to create: not empty, not the other kind when it exists, not under a file."""
    if not value.strip():
        raise ValueError("empty path")
    p = Path(value)
    if folder and p.exists() and not p.is_dir():
        raise ValueError("it is a file, not a folder")
    if not folder and p.is_dir():
        raise ValueError("it is a folder; give a file path")
    for parent in p.parents:  # the first existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{parent} is a file")
            break
    return p


#: A run folder: refused when it, or one of its existing ancestors, is a file.
out_dir = FlagType("a folder path (not under a file)", lambda v: _writable_path(v, folder=True), ("",))

#: A file to write (e.g. a trained model): refused when it is a folder or one of its existing ancestors is a file.
out_file = FlagType("a file path (not a folder, not under a file)", lambda v: _writable_path(v, folder=False), ("", "."))


def existing_path(*, kind: str = "file or folder") -> FlagType:
    """A path that must exist (``kind`` is ``"file"``, ``"folder"`` or ``"file or folder"``)."""
    if kind not in ("file", "folder", "file or folder"):
        raise ValueError(f"kind must be 'file', 'folder' or 'file or folder', got {kind!r}")

    def parse(value: str) -> Path:
        p = Path(value)
        if not value.strip() or not p.exists():
            raise ValueError("no such path")
        if kind == "file" and not p.is_file():
            raise ValueError("not a file")
        if kind == "folder" and not p.is_dir():
            raise ValueError("not a folder")
        return p

    return FlagType(f"an existing {kind}", parse, ("", "/nonexistent/xrisk-path"))
