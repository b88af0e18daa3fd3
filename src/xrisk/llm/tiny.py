"""Tiny causal LMs built from a config (no download): a character-level tokenizer and a small Llama.

For tests, examples and the from-scratch DFT study (``bench/fidelity_dft.py``); needs transformers
and the ``tokenizers`` package it depends on.
"""

from __future__ import annotations

from typing import Any

import torch

from xrisk.llm._deps import require

__all__ = ["char_tokenizer", "tiny_llama", "TINY_CHARS", "TINY_CHAT_TEMPLATE"]

#: The characters of the default tiny vocabulary (digits, arithmetic, lowercase words, punctuation).
TINY_CHARS = "0123456789+-*=/ ,.:;?!'()abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ<>|\n"

#: A minimal chat template for the tiny tokenizer: ``<u>question\n<a>`` (role initial in angle brackets).
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}<a>{% endif %}")


def char_tokenizer(chars: str = TINY_CHARS, *, chat_template: str | None = TINY_CHAT_TEMPLATE) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: ids 0-3 are ``<pad> <s> </s> <unk>``, then one id per
    character of ``chars``; encoding with special tokens puts ``<s>`` first; decoding joins characters.

    Example:
        >>> tok = char_tokenizer()
        >>> tok("12+3=").input_ids
        [1, 5, 6, 14, 7, 17]
        >>> tok.decode([5, 6], skip_special_tokens=True)
        '12'
    """
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("(?m)."), behavior="isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    tk.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = chat_template
    return tok


def tiny_llama(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               intermediate_size: int | None = None, max_positions: int = 256, seed: int = 0) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` (ids: pad 0, bos 1, eos 2, as :func:`char_tokenizer`),
    in eval mode, weights drawn under ``torch.manual_seed(seed)`` (the global RNG is left unchanged)."""
    transformers = require("transformers")
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(num_heads // 2, 1),
        max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()
