"""Helpers of the language-model tests: tiny models from configs, DFT records, a tiny GGUF file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the `llm` extra")

from xrisk.llm import char_tokenizer, tiny_llama  # noqa: E402


def tiny(seed: int = 0, **kwargs: Any) -> tuple[Any, Any]:
    """(tiny Llama in eval mode, its character tokenizer)."""
    tok = char_tokenizer()
    return tiny_llama(len(tok), seed=seed, **kwargs), tok


def gpt2_float64(vocab_size: int = 24) -> Any:
    """A tiny GPT-2 without dropout in float64 (it computes in the parameters' dtype throughout)."""
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def records(n: int, k: int = 4, *, ref: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` addition records with ``k`` wrong answers as negatives (and made-up reference log-probs)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a, b = (int(v) for v in torch.randint(0, 50, (2,), generator=g))
        negs = [str(a + b + d) for d in (1, -1, 10, 2, -2, 3)[:k]]
        rec: dict[str, Any] = {"prompt": f"{a}+{b}=", "answer": str(a + b), "negatives": negs}
        if ref:
            rec["ref_logp"] = [-3.0 - 0.1 * j - 0.01 * i for j in range(k)]
        out.append(rec)
    return out


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's row order of the q/k projections (transformers undoes it when loading a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(folder: Path, name: str = "tiny.gguf") -> tuple[Any, str]:
    """Write a 1-layer Llama with a byte-level BPE vocabulary as a float32 GGUF file; returns (the model, name)."""
    gguf = pytest.importorskip("gguf", reason="the `llm` extra")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=0, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    w = gguf.GGUFWriter(str(folder / name), "llama")
    w.add_context_length(64)
    w.add_embedding_length(16)
    w.add_block_count(1)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = ["<pad>", "<s>", "</s>"] + [chr(ord("a") + i) for i in range(26)] + ["\u0120", "=", "ab"]
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * 29)
    w.add_token_merges(["a b"])
    w.add_token_scores([0.0] * 32)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    names.update({f"model.layers.0.{k}.weight": f"blk.0.{v}.weight" for k, v in layer.items()})
    for key, value in model.state_dict().items():
        a = value.numpy().astype("float32")
        if key.endswith("q_proj.weight"):
            a = _permute(a, 2)
        if key.endswith("k_proj.weight"):
            a = _permute(a, 1)
        w.add_tensor(names[key], a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, name
