"""Token ids of prompts and answers, and the padded batches of :mod:`xrisk.llm`.

One rule everywhere (generation, reference log-probs, training, evaluation): a prompt given as a
**string** is encoded as plain text (the tokenizer's special tokens, e.g. a BOS, included); a prompt
given as a **list of chat messages** (``[{"role": "user", "content": ...}, ...]``) goes through the
tokenizer's chat template with the assistant turn opened. An answer is encoded without special tokens
and closed by the end-of-sequence token (the chat template's end of turn for chat models), as in the
reference code's DPO-style tokenisation. Prompt and answer are encoded separately, so the answer's
tokens are exactly those a model generates after the prompt.

Batches put prompts on the **left** (left padding, every prompt ends in the same column) and answers
on the right (right padding): ``prompt_input_ids [B, Lp]``, ``completion_input_ids [B, G, Lc]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["Prompt", "encode_prompt", "encode_completion", "truncate_pair", "left_pad", "pad_completions",
           "as_chat", "validate_prompt"]

#: A prompt: plain text, or chat messages (dicts with "role" and "content").
Prompt = Union[str, Sequence[Mapping[str, str]]]


def validate_prompt(prompt: Any) -> str | None:
    """``None`` if ``prompt`` is a valid :data:`Prompt`, else what is wrong with it."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "the prompt is empty"
    if isinstance(prompt, (list, tuple)) and prompt:
        for k, msg in enumerate(prompt):
            if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str) or not isinstance(
                    msg.get("content"), str):
                return f"chat message {k} must be an object with string fields 'role' and 'content'"
        return None
    return "the prompt must be a non-empty string or a non-empty list of chat messages"


def as_chat(prompt: Prompt, system_prompt: str | None = None) -> list[dict[str, str]]:
    """``prompt`` as chat messages (a string becomes one user message), ``system_prompt`` first if given."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def encode_prompt(tokenizer: Any, prompt: Prompt, *, system_prompt: str | None = None) -> list[int]:
    """Token ids of ``prompt`` (see the module docstring); ``system_prompt`` needs a chat prompt.

    Raises:
        ValueError: an invalid prompt, a system prompt with a plain-text prompt, or chat messages for a
            tokenizer without a chat template.
    """
    problem = validate_prompt(prompt)
    if problem is not None:
        raise ValueError(problem)
    if isinstance(prompt, str):
        if system_prompt is not None:
            raise ValueError("system_prompt needs chat prompts (lists of messages, or chat_template=True)")
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the prompt is a list of chat messages but the tokenizer has no chat template")
    messages = as_chat(prompt, system_prompt)
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    return [int(t) for t in ids]


def encode_completion(tokenizer: Any, text: str) -> list[int]:
    """Token ids of an answer: the text without special tokens, then the end-of-sequence token.

    Raises:
        ValueError: the tokenizer has no end-of-sequence token and ``text`` is empty (no token at all).
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("an empty answer has no token (the tokenizer has no end-of-sequence token)")
    return ids


def truncate_pair(prompt_ids: list[int], completion_ids: list[int], *, max_prompt_length: int,
                  max_length: int) -> tuple[list[int], list[int], bool, bool]:
    """The reference's truncation: the prompt keeps its last ``max_prompt_length`` tokens (left truncation),
    then the completion keeps its first ``max_length - len(prompt)`` tokens. Returns
    ``(prompt, completion, prompt_truncated, completion_truncated)``."""
    p_cut = len(prompt_ids) > max_prompt_length
    if p_cut:
        prompt_ids = prompt_ids[-max_prompt_length:]
    room = max(max_length - len(prompt_ids), 1)
    c_cut = len(completion_ids) > room
    return prompt_ids, completion_ids[:room] if c_cut else completion_ids, p_cut, c_cut


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(ids [N, L], attention_mask [N, L])`` with every sequence right-aligned (left padding)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def pad_completions(groups: Sequence[Sequence[Sequence[int]]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(ids [B, G, Lc], attention_mask [B, G, Lc])``: the ``G`` completions of each prompt, right padded."""
    n_groups = len(groups)
    g = len(groups[0]) if n_groups else 0
    if any(len(grp) != g for grp in groups):
        raise ValueError("every prompt needs the same number of completions")
    width = max((len(s) for grp in groups for s in grp), default=0)
    ids = torch.full((n_groups, g, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_groups, g, width), dtype=torch.long)
    for i, grp in enumerate(groups):
        for j, s in enumerate(grp):
            if len(s):
                ids[i, j, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
                mask[i, j, :len(s)] = 1
    return ids, mask
