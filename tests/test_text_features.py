"""Analysis features of machine-text detection on hand-computed cases, and token statistics under a causal
LM against a per-token loop."""

from __future__ import annotations

import math

import pytest
import torch

from xrisk.data.text_features import (FEATURE_NAMES, oov_ratio, text_features, token_summary, word_entropy,
                                      wordpiece_words, words)


def test_words_are_lowercase_letter_runs():
    assert words("Don't STOP me-now 42x, é") == ["don", "t", "stop", "me", "now", "x"]
    assert words("123 !!") == []


def test_oov_ratio_hand_cases():
    vocab = {"the", "cat", "sat"}
    assert oov_ratio("The cat sat", vocab) == 0.0
    assert oov_ratio("the dog sat on the mat", vocab) == 3 / 6  # dog, on, mat
    assert oov_ratio("Zyx zyx the", ["the"]) == 2 / 3  # repeated OOV words count each time; any iterable
    assert math.isnan(oov_ratio("1 2 3", vocab))


def test_word_entropy_hand_cases():
    assert word_entropy("same same same") == 0.0 and str(word_entropy("x")) == "0.0"  # not -0.0
    assert word_entropy("a b") == pytest.approx(math.log(2))
    assert word_entropy("a a b") == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    assert word_entropy("a b c d") == pytest.approx(math.log(4))
    assert math.isnan(word_entropy(""))


def test_token_summary_hand_case():
    s = token_summary([-1.0, -3.0], [2.0, 2.0])
    assert s == {"num_tokens": 2.0, "nll_mean": 2.0, "nll_std": 1.0, "entropy_mean": 2.0, "entropy_std": 0.0}
    assert all(math.isnan(v) for k, v in token_summary([], []).items() if k != "num_tokens")
    with pytest.raises(ValueError, match="differ in length"):
        token_summary([-1.0], [])


def test_wordpiece_words_and_text_features(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("[PAD]\n[UNK]\nthe\n##s\ncat\nCat\n1990\nhello\n", encoding="utf-8")
    vocab = wordpiece_words(vocab_file)
    assert vocab == {"the", "cat", "hello"}
    f = text_features("The cats, the cat.", vocab, [-0.5, -1.5, -1.0], [1.0, 2.0, 3.0])
    assert list(f) == list(FEATURE_NAMES)
    assert f["num_words"] == 4 and f["oov_ratio"] == 0.25  # "cats" is out of vocabulary
    assert f["word_entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert f["nll_mean"] == 1.0 and f["entropy_mean"] == 2.0 and f["num_tokens"] == 3
    assert set(text_features("a", vocab)) == {"num_words", "oov_ratio", "word_entropy"}


# ----------------------------------------------------------------------------- token_statistics
transformers = pytest.importorskip("transformers")


def _loop_stats(model, tok, prompt: str, text: str) -> tuple[list[float], list[float]]:
    """One text at a time, no padding, each position's distribution by a separate softmax."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    t = tok(" " + text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lps, ents = [], []
    for k, tok_id in enumerate(t):
        probs = torch.softmax(logits[len(p) + k - 1], -1)
        lps.append(math.log(float(probs[tok_id])))
        ents.append(float(-(probs * probs.log()).sum()))
    return lps, ents


def test_token_statistics_equal_a_per_token_loop():
    from xrisk.llm import char_tokenizer, tiny_llama, token_statistics

    tok = char_tokenizer()
    model = tiny_llama(len(tok), seed=3)
    prompts = ["12+3=", "a long prompt here, with words", "x"]
    texts = ["15", "and a somewhat longer text", "yz, again"]
    for batch_size in (1, 2, 3):
        stats = token_statistics(model, tok, prompts, texts, batch_size=batch_size)
        for st, p, t in zip(stats, prompts, texts):
            lps, ents = _loop_stats(model, tok, p, t)
            assert len(st.logprobs) == len(lps) == len(st.token_ids)
            assert st.logprobs == pytest.approx(lps, abs=1e-4) and st.entropies == pytest.approx(ents, abs=1e-4)
            assert all(0 < h <= math.log(len(tok)) + 1e-6 for h in st.entropies)


def test_token_statistics_errors():
    from xrisk.llm import char_tokenizer, tiny_llama, token_statistics

    tok = char_tokenizer()
    model = tiny_llama(len(tok))
    with pytest.raises(ValueError, match="2 prompts for 1 texts"):
        token_statistics(model, tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="text 1 has no tokens"):
        token_statistics(model, tok, ["a", "b"], ["c", ""], separator="")
    with pytest.raises(ValueError, match="prompt is empty"):
        token_statistics(model, tok, [" "], ["c"])
