"""Per-token log-probabilities and predictive entropies of texts under a causal LM: ``token_statistics``.

For a prompt ``x`` and a text ``y = y_1..y_T`` (scored after the prompt), a causal LM ``p`` gives at every
text position ``t``

* the token log-probability ``log p(y_t | x, y_<t)``;
* the predictive entropy ``H_t = -sum_v p(v | x, y_<t) log p(v | x, y_<t)`` over the whole vocabulary.

Their means are the log-perplexity and mean entropy that machine-text detection studies relate to how
detectable a text is (:mod:`xrisk.data.text_features`). Sequences of a batch are left padded (padding is
masked out of the attention and skipped by the position ids), so a batch gives the same values as one
text at a time; only the last ``T + 1`` positions are projected onto the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xrisk.llm.encoding import Prompt, encode_prompt, left_pad
from xrisk.llm.logprobs import _call

__all__ = ["TokenStatistics", "token_statistics"]


@dataclass(frozen=True)
class TokenStatistics:
    """One text's ``logprobs`` (``log p(y_t | x, y_<t)``) and ``entropies`` (``H_t``), one per text token, in
    nats, and the text's ``token_ids``."""

    logprobs: list[float]
    entropies: list[float]
    token_ids: list[int]


@torch.no_grad()
def token_statistics(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    separator: str = " ",
) -> list[TokenStatistics]:
    """Token log-probabilities and predictive entropies of each ``texts[i]`` after ``prompts[i]``.

    Args:
        model: a transformers causal LM (its mode is left as it is; call ``.eval()`` first).
        tokenizer: its tokenizer.
        prompts: the context of each text, encoded as :func:`xrisk.llm.encode_prompt` does (a plain string
            with the tokenizer's special tokens, or chat messages through the chat template).
        texts: the texts scored; ``separator + text`` is encoded without special tokens (the default space
            makes the first word a word-initial token, as it is after the prompt's last word).
        batch_size: texts per forward pass.

    Returns:
        one :class:`TokenStatistics` per text, in order.

    Raises:
        ValueError: different numbers of prompts and texts, an invalid prompt, or a text without tokens.

    Example:
        >>> from xrisk.llm import char_tokenizer, tiny_llama, token_statistics
        >>> tok = char_tokenizer(); model = tiny_llama(len(tok))
        >>> stats = token_statistics(model, tok, ["1+1="], ["2"], separator="")
        >>> len(stats[0].logprobs), stats[0].entropies[0] > 0
        (1, True)
    """
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[TokenStatistics] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        p_ids = [encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        t_ids = []
        for k, text in enumerate(texts[start:start + batch_size], start=start):
            ids = list(tokenizer(separator + text, add_special_tokens=False)["input_ids"]) if text else []
            if not ids:
                raise ValueError(f"text {k} has no tokens")
            t_ids.append(ids)
        ids, mask = left_pad([p + t for p, t in zip(p_ids, t_ids)], pad_id)
        keep = max(len(t) for t in t_ids) + 1
        logits = _call(model, ids.to(device), mask.to(device), keep=keep).logits[:, -keep:].float()
        logp = torch.log_softmax(logits, dim=-1)
        for row, t in enumerate(t_ids):
            n = len(t)
            lp = logp[row, keep - n - 1:keep - 1]  # position j predicts the token after it
            target = torch.tensor(t, device=lp.device).unsqueeze(1)
            tok_lp = lp.gather(1, target).squeeze(1)
            ent = -(lp.exp() * lp).sum(-1)
            out.append(TokenStatistics(tok_lp.double().tolist(), ent.double().tolist(), list(t)))
    return out
