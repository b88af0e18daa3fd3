"""Streaming reader of the long-format CSV layout of ICU extracts (MIMIC-III, eICU).

**Layout.** One measurement per row, in columns named by a :class:`CSVLayout` (defaults in
brackets): stay id [``stay_id``], time [``time``, hours since the stay's start; other units via
``time_scale``], variable name [``variable``], numeric value [``value``]. Other columns are ignored.
An optional label file has the stay id and a 0/1 outcome [``label``]. Files may be gzip-compressed
(``.gz``). The layouts of common extracts map onto it by naming the columns, e.g. MIMIC-III
``CHARTEVENTS`` after converting ``CHARTTIME`` to hours since ``INTIME``:
``CSVLayout(stay="ICUSTAY_ID", time="HOURS", variable="LABEL", value="VALUENUM")``; eICU
``nurseCharting``: ``CSVLayout(stay="patientunitstayid", time="nursingchartoffset",
variable="nursingchartcelltypevalname", value="nursingchartvalue")`` with ``time_scale=1/60``
(offsets are minutes).

A folder for ``xrisk run ehr --data DIR`` holds ``train/events.csv`` (+ ``train/labels.csv``),
``test/...`` and optionally ``external/...`` (a second hospital) and ``variables.txt`` (one
variable name per line: the vocabulary; without it the vocabulary is every variable of the
training events, in sorted order). :func:`load_clinical_dir` reads it.

**Streaming.** Rows are parsed one at a time (the file is never held in memory as text) into
compact typed arrays (about 22 bytes per kept measurement); rows of a stay need not be contiguous.

**Bad-row policy** (``on_bad_row``). A row is bad when it has the wrong number of fields, an empty
stay id, a time or value that is not a finite number (empty, ``NaN``, ``inf``, text), a variable
outside the vocabulary, or a time earlier than the previous kept row of the same stay (time going
backwards). With ``"raise"`` (the default) the first bad row raises :class:`ClinicalFormatError`,
whose message starts with ``file:line:`` and names the problem. With ``"skip"`` bad rows are
dropped and counted per reason in the :class:`ReadReport`, which keeps the ``file:line: reason``
of the first ``max_examples``. A missing column raises in both modes (the whole file is unusable).
Label files: a label other than 0/1 or a stay listed twice is a bad row; labels of stays without
events are counted in the report (``"label without events"``), never an error.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "events.csv").write_text("stay_id,time,variable,value\\n7,0.0,hr,80\\n7,1.0,hr,x\\n")
    >>> stays, report = read_events(d / "events.csv", on_bad_row="skip")
    >>> len(stays), report.kept, report.skipped
    (1, 1, {'non-numeric value': 1})
    >>> report.examples[0].endswith("events.csv:3: non-numeric value 'x'")
    True
"""

from __future__ import annotations

import array
import contextlib
import csv
import gzip
import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from xrisk.data.clinical.stays import ClinicalStays

__all__ = ["CSVLayout", "ClinicalFormatError", "ReadReport", "ClinicalSplits", "BadRowPolicy", "read_events",
           "read_labels", "load_clinical_dir"]

BadRowPolicy = Literal["raise", "skip"]


class ClinicalFormatError(ValueError):
    """A row (or the header) of a clinical CSV file breaks the layout.

    The message is ``"<file>:<line>: <reason>"``; the parts are also attributes.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, reason: str) -> None:
        self.path, self.line, self.reason = str(path), int(line), reason
        super().__init__(f"{self.path}:{self.line}: {reason}")


@dataclass(frozen=True)
class CSVLayout:
    """Column names of the long-format files (see the module docstring for MIMIC-III / eICU)."""

    stay: str = "stay_id"
    time: str = "time"
    variable: str = "variable"
    value: str = "value"
    label: str = "label"


@dataclass
class ReadReport:
    """What a read kept and skipped.

    Attributes:
        path: the file.
        rows: data rows read (header excluded).
        kept: rows kept.
        skipped: ``{reason: count}`` of the skipped rows (``on_bad_row="skip"``).
        examples: ``"file:line: reason"`` of the first skipped rows.
    """

    path: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        """Number of skipped rows."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line: kept / read, and the skipped rows per reason."""
        text = f"{self.path}: kept {self.kept} of {self.rows} rows"
        if self.skipped:
            text += " (skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) + ")"
        return text


class _BadRows:
    """Applies the bad-row policy: raise the first, or count and keep examples."""

    def __init__(self, report: ReadReport, policy: BadRowPolicy, max_examples: int) -> None:
        if policy not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {policy!r}")
        self.report, self.policy, self.max_examples = report, policy, max_examples

    def __call__(self, line: int, kind: str, detail: str = "") -> None:
        reason = f"{kind} {detail}".strip()
        if self.policy == "raise":
            raise ClinicalFormatError(self.report.path, line, reason)
        self.report.skipped[kind] = self.report.skipped.get(kind, 0) + 1
        if len(self.report.examples) < self.max_examples:
            self.report.examples.append(f"{self.report.path}:{line}: {reason}")


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


@contextlib.contextmanager
def _csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[list[int], int, Iterator[tuple[int, list[str]]]]]:
    """``(positions of columns, number of fields, iterator of (line, row))``; the header must name ``columns``."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ClinicalFormatError(path, 1, "empty file (no header)")
        names = [h.strip() for h in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ClinicalFormatError(path, 1, f"missing column(s) {missing}; the header has {names}")
        rows = ((reader.line_num, row) for row in reader if row)  # blank lines are not rows
        yield [names.index(c) for c in columns], len(names), rows


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_events(
    path: str | os.PathLike[str],
    *,
    variables: Sequence[str] | None = None,
    layout: CSVLayout = CSVLayout(),
    time_scale: float = 1.0,
    on_bad_row: BadRowPolicy = "raise",
    max_examples: int = 10,
) -> tuple[ClinicalStays, ReadReport]:
    """Read a long-format events file into :class:`ClinicalStays` (labels all NaN).

    Args:
        path: CSV file (``.gz`` allowed).
        variables: the vocabulary (variable id ``k`` = ``variables[k - 1]``); a row with another
            variable is bad. ``None``: every variable in the file, sorted by name.
        layout: column names.
        time_scale: multiplies the time column to give hours (``1/60`` for minutes).
        on_bad_row: ``"raise"`` or ``"skip"`` (see the module docstring).
        max_examples: skipped rows whose ``file:line: reason`` the report keeps.

    Returns:
        ``(stays, report)``; stays are in order of first appearance, each sorted by time (rows of
        equal time keep their file order).

    Raises:
        ClinicalFormatError: a missing column, or (``"raise"``) the first bad row.
    """
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be finite and > 0, got {time_scale!r}")
    p = Path(path)
    report = ReadReport(str(p))
    bad = _BadRows(report, on_bad_row, max_examples)
    vocab: dict[str, int] | None = None if variables is None else {v: i + 1 for i, v in enumerate(variables)}
    if vocab is not None and len(vocab) != len(variables):  # type: ignore[arg-type]
        raise ValueError("variables must be distinct")
    stay_code: dict[str, int] = {}
    last_time: list[float] = []
    last_line: list[int] = []
    seen_names: dict[str, int] = {}
    codes, names_of_rows = array.array("i"), array.array("i")
    times, values = array.array("d"), array.array("d")
    with _csv_rows(p, (layout.stay, layout.time, layout.variable, layout.value)) as (pos, width, rows):
        for line, row in rows:
            report.rows += 1
            if len(row) != width:
                bad(line, "wrong number of fields", f"(expected {width}, got {len(row)})")
                continue
            stay, t_text, name, v_text = (row[i].strip() for i in pos)
            if not stay:
                bad(line, "empty stay id")
                continue
            t = _number(t_text)
            if t is None:
                bad(line, "non-numeric time", repr(t_text))
                continue
            t *= time_scale
            if vocab is not None:
                var = vocab.get(name)
                if var is None:
                    bad(line, "unknown variable", repr(name))
                    continue
            else:
                var = seen_names.setdefault(name, len(seen_names))
            v = _number(v_text)
            if v is None:
                bad(line, "non-numeric value", repr(v_text))
                continue
            code = stay_code.setdefault(stay, len(stay_code))
            if code == len(last_time):
                last_time.append(t)
                last_line.append(line)
            elif t < last_time[code]:
                bad(line, "time going backwards",
                    f"({t_text} within stay {stay!r}, after {last_time[code] / time_scale:g} at line {last_line[code]})")
                continue
            last_time[code], last_line[code] = t, line
            codes.append(code)
            names_of_rows.append(var)
            times.append(t)
            values.append(v)
            report.kept += 1
    code_arr = np.frombuffer(codes, dtype=np.int32) if codes else np.zeros(0, np.int32)
    var_arr = np.frombuffer(names_of_rows, dtype=np.int32).astype(np.int64) if codes else np.zeros(0, np.int64)
    if vocab is None:  # ids in sorted-name order
        names = tuple(sorted(seen_names))
        remap = np.zeros(len(seen_names), np.int64)
        for k, name in enumerate(names):
            remap[seen_names[name]] = k + 1
        var_arr = remap[var_arr] if var_arr.size else var_arr
    else:
        names = tuple(variables)  # type: ignore[arg-type]
    order = np.argsort(code_arr, kind="stable")
    offsets = np.zeros(len(stay_code) + 1, np.int64)
    np.cumsum(np.bincount(code_arr, minlength=len(stay_code)), out=offsets[1:])
    stays = ClinicalStays(
        stay_ids=tuple(stay_code), variable_names=names, offsets=offsets,
        times=np.frombuffer(times, dtype=np.float64)[order] if times else np.zeros(0),
        variables=var_arr[order], values=np.frombuffer(values, dtype=np.float64)[order].astype(np.float32)
        if values else np.zeros(0, np.float32),
    )
    return stays, report


def read_labels(
    path: str | os.PathLike[str],
    *,
    layout: CSVLayout = CSVLayout(),
    on_bad_row: BadRowPolicy = "raise",
    max_examples: int = 10,
) -> tuple[dict[str, float], ReadReport]:
    """Read a label file (stay id, 0/1 label) into ``{stay_id: 0.0 | 1.0}``.

    Raises:
        ClinicalFormatError: a missing column, or (``"raise"``) the first bad row (a label other
            than 0/1, an empty stay id, a stay listed twice, a wrong number of fields).
    """
    p = Path(path)
    report = ReadReport(str(p))
    bad = _BadRows(report, on_bad_row, max_examples)
    labels: dict[str, float] = {}
    first: dict[str, int] = {}
    with _csv_rows(p, (layout.stay, layout.label)) as (pos, width, rows):
        for line, row in rows:
            report.rows += 1
            if len(row) != width:
                bad(line, "wrong number of fields", f"(expected {width}, got {len(row)})")
                continue
            stay, text = row[pos[0]].strip(), row[pos[1]].strip()
            if not stay:
                bad(line, "empty stay id")
                continue
            y = _number(text)
            if y not in (0.0, 1.0):
                bad(line, "label not 0/1", repr(text))
                continue
            if stay in labels:
                bad(line, "duplicate stay", f"{stay!r} (first at line {first[stay]})")
                continue
            labels[stay], first[stay] = float(y), line  # type: ignore[arg-type]
            report.kept += 1
    return labels, report


@dataclass(frozen=True)
class ClinicalSplits:
    """The splits of a clinical data folder and the read reports (events and labels of each split)."""

    train: ClinicalStays
    test: ClinicalStays
    external: ClinicalStays | None
    reports: tuple[ReadReport, ...]


def _events_file(folder: Path) -> Path:
    for name in ("events.csv", "events.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no events.csv (or events.csv.gz)")


def _read_split(folder: Path, variables: Sequence[str] | None, layout: CSVLayout, time_scale: float,
                on_bad_row: BadRowPolicy, reports: list[ReadReport]) -> ClinicalStays:
    stays, report = read_events(_events_file(folder), variables=variables, layout=layout, time_scale=time_scale,
                                on_bad_row=on_bad_row)
    reports.append(report)
    for name in ("labels.csv", "labels.csv.gz"):
        if (folder / name).is_file():
            labels, lab_report = read_labels(folder / name, layout=layout, on_bad_row=on_bad_row)
            orphans = len(set(labels) - set(stays.stay_ids))
            if orphans:
                lab_report.skipped["label without events"] = orphans
            reports.append(lab_report)
            return stays.with_labels(labels)
    return stays


def load_clinical_dir(
    root: str | os.PathLike[str],
    *,
    layout: CSVLayout = CSVLayout(),
    time_scale: float = 1.0,
    on_bad_row: BadRowPolicy = "raise",
) -> ClinicalSplits:
    """Read ``root/{train,test,external}/events.csv`` (+ ``labels.csv``) with one vocabulary.

    The vocabulary is ``root/variables.txt`` when present, else the training file's variables; the
    test and external files are read with it, so a variable the training split never saw is a bad
    row there. ``external`` is ``None`` when the folder has no ``external/``.
    """
    base = Path(root)
    vocab_file = base / "variables.txt"
    variables: list[str] | None = None
    if vocab_file.is_file():
        variables = [v.strip() for v in vocab_file.read_text(encoding="utf-8").splitlines() if v.strip()]
    reports: list[ReadReport] = []
    train = _read_split(base / "train", variables, layout, time_scale, on_bad_row, reports)
    vocab = train.variable_names
    test = _read_split(base / "test", vocab, layout, time_scale, on_bad_row, reports)
    external = None
    if (base / "external").is_dir():
        external = _read_split(base / "external", vocab, layout, time_scale, on_bad_row, reports)
    return ClinicalSplits(train, test, external, tuple(reports))
