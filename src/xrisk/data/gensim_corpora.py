"""Two small human-written text collections shipped with gensim's test data (PyPI ``gensim``).

* :func:`load_lee_texts`: the Lee corpus, 350 ABC (Australian Broadcasting Corporation) news
  articles from 2001 (``lee_background.cor``, 300 lines, then ``lee.cor``, 50 lines), one article per
  line (Lee, Pincombe and Welsh, 2005); a file that is not UTF-8 (``lee.cor``) is read as Windows-1252.
* :func:`load_newsgroup_posts`: ``mini_newsgroup``, 200 Usenet posts from 1993 (``alt.atheism`` and
  ``sci.space``, 100 each; a subset of 20 Newsgroups). The file is a zlib-compressed pickle of an old
  scikit-learn ``Bunch``; it is read with an unpickler that builds plain dicts and lists and refuses
  every other class, so no code from the file runs. Each post becomes its ``Subject`` line (without
  ``Re:``) and its own words: the header block, quoted lines (``>``, ``|``), attribution lines
  ("... writes:") and the signature (after a ``--`` line) are dropped.

The files are located through the installed package (:func:`gensim_test_data_dir`) without importing
gensim (which pulls in scipy).

Example:
    >>> from xrisk.data.gensim_corpora import clean_post
    >>> clean_post("Subject: Re: Mars\\nLines: 3\\n\\nIn article <1@x> a@b writes:\\n>old\\nNew words.\\n--\\nsig")
    ('Mars', 'New words.')
"""

from __future__ import annotations

import io
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

from xrisk.data.errors import DataNotInstalledError, installed_package_dir

__all__ = ["gensim_test_data_dir", "load_lee_texts", "load_newsgroup_posts", "clean_post"]

_INSTALL = "pip install 'xrisk[text]'  (gensim==4.4.0)"


def gensim_test_data_dir() -> Path:
    """``gensim/test/test_data`` inside the installed gensim package (gensim is not imported)."""
    return installed_package_dir("gensim", "test", "test_data", what="the ABC news and Usenet corpora",
                                 install=_INSTALL)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataNotInstalledError(f"{path} is missing; reinstall gensim: {_INSTALL}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:  # lee.cor is Windows-1252 (its pound signs)
        return data.decode("cp1252", errors="replace").splitlines()


def load_lee_texts() -> list[tuple[str, str]]:
    """The 350 ABC news articles of the Lee corpus as ``(source, text)``: ``source`` is
    ``"gensim/<file>:<line>"`` (1-based line), ``text`` the article (one line of the file)."""
    root = gensim_test_data_dir()
    out = []
    for name in ("lee_background.cor", "lee.cor"):
        for k, line in enumerate(_read_lines(root / name), start=1):
            if line.strip():
                out.append((f"gensim/{name}:{k}", line.strip()))
    return out


class _Record(dict):  # the pickled sklearn Bunch (a dict subclass)
    pass


class _Array:
    """Stands in for the pickled numpy arrays (labels, file names): their state is ignored."""

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _reconstruct(cls: Any, base: Any = None, state: Any = None, *args: Any) -> Any:
    if cls is _Record:  # copyreg's protocol-0 form of a dict subclass: the dict's items come as ``state``
        return _Record(state or {})
    return _Array()


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {("sklearn.datasets.base", "Bunch"): _Record, ("__builtin__", "dict"): dict,
                ("builtins", "dict"): dict, ("__builtin__", "object"): object, ("builtins", "object"): object,
                ("copy_reg", "_reconstructor"): _reconstruct, ("copyreg", "_reconstructor"): _reconstruct}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module.startswith("numpy"):  # arrays and dtypes of the labels: built as inert placeholders
            return _Array if name in ("ndarray", "dtype") else _reconstruct
        raise pickle.UnpicklingError(f"mini_newsgroup: refusing to load {module}.{name}")


_HEADER_RE = re.compile(r"^([A-Za-z-]+):\s*(.*)$")
_ATTRIBUTION_RE = re.compile(r"(writes|wrote|says|said)\s*:\s*$|^In article\b|^In <", re.IGNORECASE)


def clean_post(post: str) -> tuple[str, str]:
    """``(subject, body)`` of a Usenet post: the ``Subject`` header without ``Re:`` prefixes, and the
    body without the header block, quoted lines (``>``, ``|``), attribution lines and the signature."""
    head, _, body = post.partition("\n\n")
    subject = ""
    for line in head.splitlines():
        m = _HEADER_RE.match(line)
        if m and m.group(1).lower() == "subject":
            subject = re.sub(r"^(re:\s*)+", "", m.group(2).strip(), flags=re.IGNORECASE)
    kept = []
    for line in body.splitlines():
        s = line.strip()
        if s in ("--", "-- ") or line.startswith("-- "):
            break
        if s.startswith((">", "|", ":")) or _ATTRIBUTION_RE.search(s):
            continue
        kept.append(s)
    return subject, " ".join(" ".join(kept).split())


def load_newsgroup_posts() -> list[tuple[str, str, str]]:
    """The 200 posts of gensim's ``mini_newsgroup`` as ``(source, subject, body)`` (see :func:`clean_post`);
    ``source`` is ``"gensim/mini_newsgroup:<k>"`` (0-based position in the file)."""
    path = gensim_test_data_dir() / "mini_newsgroup"
    if not path.is_file():
        raise DataNotInstalledError(f"{path} is missing; reinstall gensim: {_INSTALL}")
    try:
        raw = zlib.decompress(path.read_bytes())
        bunch = _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
        posts = list(bunch["data"])
    except (zlib.error, pickle.UnpicklingError, KeyError, TypeError, EOFError) as e:
        raise ValueError(f"{path}: not the expected compressed newsgroup pickle ({e})") from None
    out = []
    for k, post in enumerate(posts):
        if not isinstance(post, str):
            raise ValueError(f"{path}: post {k} is not text")
        subject, body = clean_post(post)
        out.append((f"gensim/mini_newsgroup:{k}", subject, body))
    return out
