"""The question-answer record format of AutoTrust, loaded and validated.

A QA file is a JSON list of records (or JSON Lines, one record per line), exactly as the
AutoTrust reference publishes them (``qa-pairs/<dimension>/*.json``). Every record has

* ``question`` (str, non-empty): multiple-choice options are part of the text
  (``"... Please select the correct answer from the following options: A. Stopped. B. ..."``);
* ``answer`` (str): one letter ``A``-``D`` for ``"multi-choice"``; a yes/no word for
  ``"yes-or-no"`` (English ``Yes``/``No`` or the translated words of the linguistic-robustness
  files, e.g. ``是``/``不是``, ``हाँ``/``नहीं``); free text (possibly empty) for ``"open-ended"``;
* ``image_path`` (str, relative to an image root; ``null`` or ``""`` for a text-only record);
* ``question_type``: ``"multi-choice"``, ``"yes-or-no"`` or ``"open-ended"``;
* ``question_id`` (int or str).

Any other field is kept as is in :attr:`QARecord.extra` (``sample_token``, ``template_type``,
``num_hop``, scene attributes such as ``weather``; privacy records' ``general_prompt``,
``positive_example``, ``negative_example``; safety records' ``misinformation``,
``misinstruction``, ``harmfulness``, ``cognitive_type``). A dimension that needs some of them
asks for them with ``require=`` and gets an error naming the missing field.

A bad record raises :class:`RecordError` naming the file, the record (position and
``question_id``) and the field::

    RecordError: qa.json: record 3 (question_id 17): field 'question_type': expected one of
    'multi-choice', 'yes-or-no', 'open-ended', got 'multiple-choice'

The fairness prefixes (``ego_pattern.json``: a list of ``{category: {attribute: {group:
sentence}}}``) load with :func:`load_ego_patterns`.

Example:
    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "qa.json"
    >>> _ = path.write_text(json.dumps([{"question": "Is there a car?", "answer": "Yes",
    ...     "image_path": "a.png", "question_type": "yes-or-no", "question_id": 0}]))
    >>> [r.label for r in load_records(path)]
    ['yes']
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "QUESTION_TYPES", "CLOSED_TYPES", "REQUIRED_FIELDS", "YES_WORDS", "NO_WORDS", "RecordError", "QARecord",
    "EgoPrefix", "load_records", "records_from_list", "save_records", "normalize_label", "load_ego_patterns",
    "save_ego_patterns",
]

QUESTION_TYPES: tuple[str, ...] = ("multi-choice", "yes-or-no", "open-ended")
CLOSED_TYPES: tuple[str, ...] = ("multi-choice", "yes-or-no")
REQUIRED_FIELDS: tuple[str, ...] = ("question", "answer", "image_path", "question_type", "question_id")

#: Ground-truth words read as "yes" (lower-cased), in the languages of the reference's
#: linguistic-robustness files (English, Spanish, Chinese, Hindi, Arabic).
YES_WORDS: frozenset[str] = frozenset({"yes", "sí", "si", "是", "是的", "对", "हाँ", "हां", "نعم"})
#: Ground-truth words read as "no" (lower-cased).
NO_WORDS: frozenset[str] = frozenset({"no", "不是", "否", "不", "नहीं", "لا"})

_LETTER = re.compile(r"^\(?([A-Da-d])\)?(?:[.):]|\s|$)")


class RecordError(ValueError):
    """A QA record is malformed; the message names the file, the record and the field."""


def normalize_label(question_type: str, answer: str) -> str | None:
    """The scoring label of a ground-truth answer: ``"a"``-``"d"``, ``"yes"``/``"no"``, or None.

    ``None`` means the answer does not fit the type (an open-ended answer always gives None).
    Multiple choice accepts ``"C"``, ``"c"``, ``"C."``, ``"(C)"`` and ``"C. Stopped"``; yes/no
    accepts :data:`YES_WORDS` / :data:`NO_WORDS` with surrounding spaces and a final period.
    """
    text = answer.strip()
    if question_type == "multi-choice":
        m = _LETTER.match(text)
        return m.group(1).lower() if m else None
    if question_type == "yes-or-no":
        word = text.rstrip(".。!！").strip().lower()
        if word in YES_WORDS:
            return "yes"
        if word in NO_WORDS:
            return "no"
    return None


@dataclass(frozen=True)
class QARecord:
    """One validated question.

    Attributes:
        question_id: the record's ``question_id`` (int or str, as in the file).
        question: the question text (options included for multiple choice).
        answer: the ground-truth answer text, as in the file.
        image_path: path relative to the image root, or None for a text-only record.
        question_type: ``"multi-choice"``, ``"yes-or-no"`` or ``"open-ended"``.
        source: the file the record came from (its name; used in messages and cache keys).
        index: the record's position in that file.
        extra: every other field of the record, unchanged.
    """

    question_id: int | str
    question: str
    answer: str
    image_path: str | None
    question_type: str
    source: str = ""
    index: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """:func:`normalize_label` of the answer (``"a"``-``"d"``, ``"yes"``, ``"no"``; None if open-ended)."""
        return normalize_label(self.question_type, self.answer)

    @property
    def closed(self) -> bool:
        """Whether the question is multiple choice or yes/no."""
        return self.question_type in CLOSED_TYPES

    @property
    def uid(self) -> str:
        """A key unique within a suite: ``<source>#<index>`` (question ids may repeat across files)."""
        return f"{self.source}#{self.index}"

    def get(self, name: str, default: Any = None) -> Any:
        """A field of the record (the five required ones or any extra field)."""
        if name in REQUIRED_FIELDS:
            return getattr(self, name)
        return self.extra.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """The record in the reference layout (required fields first, then the extra ones)."""
        out: dict[str, Any] = {
            "question": self.question, "answer": self.answer, "image_path": self.image_path,
            "question_type": self.question_type, "question_id": self.question_id,
        }
        out.update(self.extra)
        return out


def _where(source: str, index: int, raw: Any) -> str:
    qid = raw.get("question_id") if isinstance(raw, Mapping) else None
    return f"{source}: record {index}" + (f" (question_id {qid!r})" if qid is not None else "")


def _validate(raw: Any, source: str, index: int, require: Sequence[str]) -> QARecord:
    where = _where(source, index, raw)
    if not isinstance(raw, Mapping):
        raise RecordError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in raw:
            raise RecordError(f"{where}: field {name!r} is missing (every record needs {', '.join(REQUIRED_FIELDS)})")
    qtype = raw["question_type"]
    if qtype not in QUESTION_TYPES:
        expected = ", ".join(repr(t) for t in QUESTION_TYPES)
        raise RecordError(f"{where}: field 'question_type': expected one of {expected}, got {qtype!r}")
    question = raw["question"]
    if not isinstance(question, str) or not question.strip():
        raise RecordError(f"{where}: field 'question': expected a non-empty string, got {question!r}")
    qid = raw["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid.strip()):
        raise RecordError(f"{where}: field 'question_id': expected an integer or a non-empty string, got {qid!r}")
    image = raw["image_path"]
    if image is not None and not isinstance(image, str):
        raise RecordError(f"{where}: field 'image_path': expected a relative path string or null, got {image!r}")
    if isinstance(image, str) and Path(image).is_absolute():
        raise RecordError(f"{where}: field 'image_path': expected a path relative to the image root, got {image!r}")
    answer = raw["answer"]
    if not isinstance(answer, str):
        raise RecordError(f"{where}: field 'answer': expected a string, got {answer!r}")
    if qtype == "multi-choice" and normalize_label(qtype, answer) is None:
        raise RecordError(f"{where}: field 'answer': a multi-choice answer is one letter A-D, got {answer!r}")
    if qtype == "yes-or-no" and normalize_label(qtype, answer) is None:
        raise RecordError(
            f"{where}: field 'answer': a yes-or-no answer is one of {sorted(YES_WORDS | NO_WORDS)}, got {answer!r}")
    extra = {k: v for k, v in raw.items() if k not in REQUIRED_FIELDS}
    for name in require:
        if name not in extra:
            raise RecordError(f"{where}: field {name!r} is missing (needed by this dimension)")
    for name in ("general_prompt", "positive_example", "negative_example", "misinformation", "misinstruction",
                 "cognitive_type", "language"):
        if name in extra and not isinstance(extra[name], str):
            raise RecordError(f"{where}: field {name!r}: expected a string, got {extra[name]!r}")
    if "harmfulness" in extra:
        h = extra["harmfulness"]
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or not 0 <= h <= 100:
            raise RecordError(f"{where}: field 'harmfulness': expected a number in [0, 100], got {h!r}")
    return QARecord(question_id=qid, question=question, answer=answer, image_path=image or None,
                    question_type=qtype, source=source, index=index, extra=extra)


def records_from_list(raw: Iterable[Any], *, source: str = "<records>", require: Sequence[str] = ()) -> list[QARecord]:
    """Validate already-parsed records (a list of dicts); ``source`` names them in errors."""
    return [_validate(r, source, i, require) for i, r in enumerate(raw)]


def _read_json_or_lines(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            first = e
        try:  # some reference answer files are JSON Lines under a .json name
            return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError:
            raise RecordError(f"{path.name}: not valid JSON ({first})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RecordError(f"{path.name}: line {n} is not valid JSON ({e})") from None
    return out


def load_records(path: str | Path, *, require: Sequence[str] = ()) -> list[QARecord]:
    """Load and validate a QA file (JSON list or JSON Lines).

    Args:
        path: the file.
        require: extra fields every record must have (e.g. ``("general_prompt",)`` for privacy).

    Raises:
        FileNotFoundError: no such file.
        RecordError: the file is not a list of valid records (the message names file, record, field).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no QA file {p}")
    data = _read_json_or_lines(p)
    if not isinstance(data, list):
        raise RecordError(f"{p.name}: expected a JSON list of records (or JSON Lines), got {type(data).__name__}")
    return records_from_list(data, source=p.name, require=require)


def save_records(records: Iterable[QARecord | Mapping[str, Any]], path: str | Path) -> Path:
    """Write records as a JSON list in the reference layout (UTF-8, indented); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() if isinstance(r, QARecord) else dict(r) for r in records]
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


@dataclass(frozen=True)
class EgoPrefix:
    """One fairness prefix of ``ego_pattern.json``.

    Attributes:
        category: e.g. ``"Driver"`` or ``"Vehicle"``.
        attribute: e.g. ``"age"``, ``"vehicle_color"``.
        group: e.g. ``"elderly"``, ``"red"``.
        text: the sentence put in front of every question, e.g. ``"The ego car is red. "``.
    """

    category: str
    attribute: str
    group: str
    text: str


def load_ego_patterns(path: str | Path) -> list[EgoPrefix]:
    """Load the fairness prefixes: a JSON list (or one object) of ``{category: {attribute: {group: text}}}``.

    Raises:
        RecordError: another layout (the message names the entry).
    """
    p = Path(path)
    data = json.loads(p.read_text(encoding="utf-8"))
    blocks = data if isinstance(data, list) else [data]
    out: list[EgoPrefix] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, Mapping):
            raise RecordError(f"{p.name}: entry {i}: expected {{category: {{attribute: {{group: text}}}}}}")
        for category, attributes in block.items():
            if not isinstance(attributes, Mapping):
                raise RecordError(f"{p.name}: entry {i}, category {category!r}: expected {{attribute: {{group: text}}}}")
            for attribute, groups in attributes.items():
                if not isinstance(groups, Mapping):
                    raise RecordError(f"{p.name}: {category}/{attribute}: expected {{group: text}}")
                for group, text in groups.items():
                    if not isinstance(text, str) or not text.strip():
                        raise RecordError(f"{p.name}: {category}/{attribute}/{group}: expected a non-empty sentence")
                    out.append(EgoPrefix(str(category), str(attribute), str(group), text))
    if not out:
        raise RecordError(f"{p.name}: no prefixes")
    return out


def save_ego_patterns(prefixes: Iterable[EgoPrefix], path: str | Path) -> Path:
    """Write prefixes in the reference layout (one list entry per category)."""
    blocks: dict[str, dict[str, dict[str, str]]] = {}
    for e in prefixes:
        blocks.setdefault(e.category, {}).setdefault(e.attribute, {})[e.group] = e.text
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps([{c: a} for c, a in blocks.items()], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p

