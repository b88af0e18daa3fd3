"""Asking an adapter with a per-dimension answer cache (what makes a run resumable).

Every question a dimension asks goes through :meth:`Session.ask`, keyed by the record, the
setting (``clean``, ``uncertainty``, ``misinformation``, ``pgd`` ...), the exact prompt and the
image variant. Answers are appended to ``answers/<dimension>.jsonl`` in the run folder as they
come (one JSON object per line, flushed), so an interrupted run continues where it stopped and
re-asks nothing: a question already in the cache is never sent to the adapter again, and an
attack whose answer is cached is not recomputed (images are passed as callables, built only on a
cache miss). A truncated last line (a crash while writing) is ignored and that question re-asked.

Example:
    >>> import tempfile
    >>> from xrisk.trust.rules import RefusingAdapter
    >>> from xrisk.trust.records import records_from_list
    >>> (r,) = records_from_list([{"question": "Is it red?", "answer": "No", "image_path": None,
    ...                            "question_type": "yes-or-no", "question_id": 1}])
    >>> s = Session(RefusingAdapter(), ".", tempfile.mkdtemp())
    >>> a = s.ask("trustfulness", r, "Is it red?"); b = s.ask("trustfulness", r, "Is it red?")
    >>> s.asked["trustfulness"], s.cached["trustfulness"]
    (1, 1)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xrisk.trust.adapters import ImageLike, open_image
from xrisk.trust.records import QARecord

__all__ = ["AnswerCache", "Session", "query_key"]


def query_key(uid: str, setting: str, prompt: str, image_tag: str) -> str:
    """The cache key of one question: a hash of record, setting, prompt and image variant."""
    h = hashlib.sha256("\x00".join((uid, setting, image_tag, prompt)).encode("utf-8")).hexdigest()
    return h[:32]


class AnswerCache:
    """Answers of one dimension, read from and appended to a JSON Lines file.

    Args:
        path: the ``.jsonl`` file (created on the first answer).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption: that question is asked again
                if isinstance(row, dict) and "key" in row and "answer" in row:
                    self.rows[row["key"]] = row
        self._file: Any = None

    def get(self, key: str) -> str | None:
        """The cached answer, or None."""
        row = self.rows.get(key)
        return None if row is None else str(row["answer"])

    def put(self, key: str, row: dict[str, Any]) -> None:
        """Store and append ``row`` (it must hold ``answer``); the line is flushed at once."""
        row = {"key": key, **row}
        self.rows[key] = row
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across puts
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (the cache stays readable)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class Session:
    """An adapter, an image root and the answer caches of one run.

    Args:
        adapter: the :class:`~xrisk.trust.adapters.VLMAdapter` asked.
        image_root: folder the records' image paths are relative to.
        answers_dir: folder of the ``<dimension>.jsonl`` caches.
        on_answer: called after every question (cached or not), e.g. to advance a progress bar.

    Attributes:
        asked: questions sent to the adapter, per dimension.
        cached: questions answered from the cache, per dimension.
    """

    def __init__(self, adapter: Any, image_root: str | Path, answers_dir: str | Path, *,
                 on_answer: Callable[[], None] | None = None) -> None:
        self.adapter = adapter
        self.image_root = Path(image_root)
        self.answers_dir = Path(answers_dir)
        self.on_answer = on_answer
        self.asked: dict[str, int] = {}
        self.cached: dict[str, int] = {}
        self._caches: dict[str, AnswerCache] = {}

    def cache(self, dimension: str) -> AnswerCache:
        """The cache of ``dimension`` (opened on first use)."""
        if dimension not in self._caches:
            self._caches[dimension] = AnswerCache(self.answers_dir / f"{dimension}.jsonl")
        return self._caches[dimension]

    def image(self, record: QARecord) -> ImageLike:
        """The record's clean picture (None for a text-only record)."""
        return open_image(self.image_root, record.image_path)

    def ask(self, dimension: str, record: QARecord, prompt: str, *, setting: str = "clean",
            image: Callable[[], Any] | None = None, image_tag: str = "clean") -> str:
        """The adapter's answer to ``prompt`` about the record's image (or ``image()``), cached.

        Args:
            dimension: the cache to use.
            record: the question.
            prompt: the exact prompt.
            setting: what is measured (part of the key and of the stored row).
            image: builds the image to show (default: the record's clean picture); only called on a
                cache miss. It may return ``(image, meta)``: ``meta`` (plain data, e.g. the size of an
                attack's perturbation) is stored with the answer and returned by :meth:`ask_row`.
            image_tag: names the image variant in the key (e.g. ``pgd-eps16``).
        """
        return str(self.ask_row(dimension, record, prompt, setting=setting, image=image, image_tag=image_tag)["answer"])

    def ask_row(self, dimension: str, record: QARecord, prompt: str, *, setting: str = "clean",
                image: Callable[[], Any] | None = None, image_tag: str = "clean") -> dict[str, Any]:
        """:meth:`ask`, returning the stored row (``answer``, ``prompt``, ``setting``, ``meta`` ...)."""
        cache = self.cache(dimension)
        key = query_key(record.uid, setting, prompt, image_tag)
        row = cache.rows.get(key)
        if row is not None:
            self.cached[dimension] = self.cached.get(dimension, 0) + 1
        else:
            built = image() if image is not None else self.image(record)
            picture, meta = built if isinstance(built, tuple) else (built, None)
            answer = str(self.adapter.generate(picture, prompt))
            row = {"uid": record.uid, "question_id": record.question_id, "setting": setting, "image": image_tag,
                   "prompt": prompt, "answer": answer}
            if meta is not None:
                row["meta"] = meta
            cache.put(key, row)
            row = cache.rows[key]
            self.asked[dimension] = self.asked.get(dimension, 0) + 1
        if self.on_answer is not None:
            self.on_answer()
        return row

    def close(self) -> None:
        """Close every cache file."""
        for c in self._caches.values():
            c.close()
