"""Batched sampling from a causal LM (``generate_completions``) and DFT's offline negatives
(``generate_negatives``: JSONL written as it goes, resumable after a kill, reference log-probs stored).

Prompts are left padded, so a batch of prompts of different lengths decodes in one ``model.generate``
call with the KV cache; ``num_return_sequences`` samples per prompt share the batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from xrisk.llm.encoding import (Prompt, as_chat, encode_completion, encode_prompt, left_pad, pad_completions,
                                truncate_pair)
from xrisk.llm.logprobs import sequence_logprobs

__all__ = ["Completion", "SamplingSettings", "UNHELPFUL_SYSTEM_PROMPT", "generate_completions",
           "generate_negatives", "reference_logprobs"]

#: The system message of the reference code's UltraFeedback negatives (sampling only; the reference
#: log-probs and training use the plain prompt).
UNHELPFUL_SYSTEM_PROMPT = "You are an unhelpful assistant."


@dataclass(frozen=True)
class Completion:
    """One generated continuation: its ``text`` (special tokens removed), ``num_tokens`` generated before
    the end-of-sequence token, and ``finished`` (it ended with that token, not at ``max_new_tokens``)."""

    text: str
    num_tokens: int
    finished: bool


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings; the defaults are the reference code's for DFT's negatives (UltraFeedback:
    temperature 0.7, top-p 1.0, top-k 50, 320 new tokens; MetaMathQA used 256). ``do_sample=False`` is
    greedy decoding (the sampling fields are then unused)."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 320
    do_sample: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"top_k must be >= 0 and max_new_tokens >= 1, got {self.top_k}, {self.max_new_tokens}")


def _batch_seed(seed: int, start: int) -> int:
    """The seed of the batch that starts at prompt ``start``: independent of the batches before it."""
    return (seed * 1_000_003 + start) % (2**63 - 1)


@torch.no_grad()
def _sample(model: Any, tokenizer: Any, prompt_ids: Sequence[list[int]], n: int, settings: SamplingSettings,
            seed: int) -> list[list[Completion]]:
    """Sample ``n`` continuations of each prompt (token ids) in one left-padded ``generate`` call."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompt_ids, pad_id)
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                              "num_return_sequences": n, "pad_token_id": pad_id, "use_cache": True}
    if tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    new = out[:, ids.shape[1]:].tolist()
    result: list[list[Completion]] = []
    for i in range(len(prompt_ids)):
        row = []
        for toks in new[i * n:(i + 1) * n]:
            stop = toks.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in toks else None
            body = toks if stop is None else toks[:stop]
            row.append(Completion(tokenizer.decode(body, skip_special_tokens=True), len(body), stop is not None))
        result.append(row)
    return result


def _prompt_ids(tokenizer: Any, prompt: Prompt, system_prompt: str | None, chat_template: bool,
                max_prompt_length: int | None) -> list[int]:
    if chat_template or system_prompt is not None:
        prompt = as_chat(prompt)
    ids = encode_prompt(tokenizer, prompt, system_prompt=system_prompt)
    return ids[-max_prompt_length:] if max_prompt_length else ids


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    settings: SamplingSettings = SamplingSettings(),
    system_prompt: str | None = None,
    chat_template: bool = False,
    max_prompt_length: int | None = None,
    seed: int = 0,
) -> list[list[Completion]]:
    """Continuations of every prompt from any causal LM, ``batch_size`` prompts per ``generate`` call.

    Args:
        model: a transformers causal LM (anything with ``generate``); put it in eval mode first (xrisk
            never changes a model's mode).
        tokenizer: its tokenizer (a padding token, or its end-of-sequence token, pads the prompts).
        prompts: plain-text prompts (continued as they are, e.g. the start of a document) or chat
            messages (see :mod:`xrisk.llm.encoding`).
        num_return_sequences: continuations per prompt.
        batch_size: prompts per call (each call decodes ``batch_size * num_return_sequences`` rows).
        settings: decoding settings (:class:`SamplingSettings`; the default is the reference's sampling).
        system_prompt: a system message put before chat prompts (e.g. :data:`UNHELPFUL_SYSTEM_PROMPT`).
        chat_template: wrap plain-text prompts as a user message of the chat template.
        max_prompt_length: keep only the last this many prompt tokens (left truncation).
        seed: batch ``k`` samples under ``torch.manual_seed`` of a seed derived from ``(seed, its first
            prompt)``; the caller's global RNG state is left unchanged.

    Returns:
        one list of ``num_return_sequences`` :class:`Completion` per prompt, in order.

    Example:
        >>> from xrisk.llm import generate_completions, SamplingSettings  # doctest: +SKIP
        >>> generate_completions(model, tokenizer, ["The capital of France is"],
        ...                      settings=SamplingSettings(do_sample=False, max_new_tokens=8))  # doctest: +SKIP
    """
    if num_return_sequences < 1 or batch_size < 1:
        raise ValueError(f"num_return_sequences and batch_size must be >= 1, got {num_return_sequences}, {batch_size}")
    out: list[list[Completion]] = []
    for start in range(0, len(prompts), batch_size):
        ids = [_prompt_ids(tokenizer, p, system_prompt, chat_template, max_prompt_length)
               for p in prompts[start:start + batch_size]]
        out.extend(_sample(model, tokenizer, ids, num_return_sequences, settings, _batch_seed(seed, start)))
    return out


@torch.no_grad()
def reference_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], completions: Sequence[Sequence[str]], *,
    max_prompt_length: int = 512, max_length: int = 1024,
) -> list[list[float]]:
    """``log p_0(y | x)`` of every completion ``y`` of every prompt ``x`` under ``model`` (summed over the
    answer tokens, with the training encoding and truncation of :mod:`xrisk.llm.encoding`); one
    grouped forward for the prompts given (callers batch them)."""
    if not prompts:
        return []
    groups, p_ids = [], []
    for prompt, comps in zip(prompts, completions):
        p = encode_prompt(tokenizer, prompt)
        pairs = [truncate_pair(p, encode_completion(tokenizer, c), max_prompt_length=max_prompt_length,
                               max_length=max_length) for c in comps]
        p_ids.append(pairs[0][0])
        groups.append([pair[1] for pair in pairs])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pi, pm = left_pad(p_ids, pad_id)
    ci, cm = pad_completions(groups, pad_id)
    device = next(model.parameters()).device
    batch = {"prompt_input_ids": pi.to(device), "prompt_attention_mask": pm.to(device),
             "completion_input_ids": ci.to(device), "completion_attention_mask": cm.to(device)}
    logp, _ = sequence_logprobs(model, batch)
    return logp.double().tolist()


def generate_negatives(
    model: Any,
    tokenizer: Any,
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    num_negatives: int,
    batch_size: int = 8,
    settings: SamplingSettings = SamplingSettings(),
    system_prompt: str | None = None,
    chat_template: bool = False,
    seed: int = 0,
    reference_model: Any = None,
    store_reference_logprobs: bool = True,
    max_prompt_length: int = 512,
    max_length: int = 1024,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Sample DFT's negatives from the base model and write the training JSONL as it goes.

    Every input record (``{"prompt": ..., "answer": ..., ...}``) becomes one line of ``path`` with its
    fields plus ``"negatives"`` (``num_negatives`` sampled answers) and, with
    ``store_reference_logprobs``, ``"ref_logp"``: each negative's log-probability under the reference
    model (``reference_model``, default ``model``, i.e. the base model is the reference), computed once
    here so training runs no reference forward. As in the reference code, a ``system_prompt`` (e.g.
    :data:`UNHELPFUL_SYSTEM_PROMPT`) is used **for sampling only**: the stored prompt and the reference
    log-probs use the plain prompt. With ``chat_template=True`` plain-text prompts are stored as a user
    message, so training applies the same template.

    Each batch of ``batch_size`` prompts is appended in one write and flushed to disk. Calling again with
    the same arguments after a kill **resumes**: lines of an incomplete batch are dropped and sampling
    continues from there, with the same per-batch seeds, so the file ends identical to an uninterrupted
    run's. The settings are kept in ``path + ".meta.json"``; resuming with other settings raises.

    Args:
        model, tokenizer: the base model (eval mode) and its tokenizer.
        records: the supervised data (each needs a valid ``"prompt"``).
        path: the JSONL to write.
        num_negatives: negatives per prompt (the reference samples ``m * epochs`` columns: 2 per epoch).
        batch_size, settings, seed: as in :func:`generate_completions`.
        system_prompt, chat_template: see above.
        reference_model: scores the negatives (default: ``model``).
        store_reference_logprobs: compute and store ``"ref_logp"`` (DFT needs them; DFT2 does not).
        max_prompt_length, max_length: the truncation of the stored log-probs; train with the same.
        on_batch: called as ``on_batch(done, total)`` after each written batch (progress).

    Returns:
        ``path``.
    """
    if num_negatives < 1 or batch_size < 1:
        raise ValueError(f"num_negatives and batch_size must be >= 1, got {num_negatives}, {batch_size}")
    path = Path(path)
    rows = [{k: v for k, v in r.items() if k != "_line"} for r in records]  # _line: read_jsonl's line number
    for r in rows:
        if chat_template and isinstance(r.get("prompt"), str):
            r["prompt"] = as_chat(r["prompt"])
        if system_prompt is not None and isinstance(r.get("prompt"), str):
            raise ValueError("system_prompt needs chat prompts: pass chat_template=True or chat messages")
        encode_prompt(tokenizer, r.get("prompt"))  # a bad prompt fails before any sampling (ValueError)
    meta = {"num_records": len(rows), "num_negatives": num_negatives, "batch_size": batch_size,
            "settings": asdict(settings), "system_prompt": system_prompt, "chat_template": chat_template,
            "seed": seed, "store_reference_logprobs": store_reference_logprobs,
            "max_prompt_length": max_prompt_length, "max_length": max_length}
    done = _resume_point(path, meta, rows)
    scorer = model if reference_model is None else reference_model
    with open(path, "a", encoding="utf-8") as f:
        for start in range(done, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            ids = [_prompt_ids(tokenizer, r["prompt"], system_prompt, False, max_prompt_length) for r in batch]
            samples = _sample(model, tokenizer, ids, num_negatives, settings, _batch_seed(seed, start))
            texts = [[c.text for c in row] for row in samples]
            refs = (reference_logprobs(scorer, tokenizer, [r["prompt"] for r in batch], texts,
                                       max_prompt_length=max_prompt_length, max_length=max_length)
                    if store_reference_logprobs else None)
            lines = []
            for k, r in enumerate(batch):
                line = {**r, "negatives": texts[k]}
                if refs is not None:
                    line["ref_logp"] = refs[k]
                lines.append(json.dumps(line, ensure_ascii=False) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            if on_batch is not None:
                on_batch(min(start + batch_size, len(rows)), len(rows))
    return path


def _resume_point(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> int:
    """Prompts already written (whole batches); cut the file to them. Writes the meta file on a fresh start."""
    meta_path = path.with_name(path.name + ".meta.json")
    if not meta_path.exists():
        if path.exists() and path.stat().st_size:
            raise FileExistsError(f"{path} exists but has no {meta_path.name}: not a file generate_negatives "
                                  "can resume; delete it or write elsewhere")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
        meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return 0
    old = json.loads(meta_path.read_text(encoding="utf-8"))
    diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    if diff:
        raise ValueError(f"{path} was generated with other settings ({', '.join(diff)} differ: "
                         f"{[old.get(k) for k in diff]} vs {[meta.get(k) for k in diff]}); "
                         "delete it (and its .meta.json) or write elsewhere")
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the part after the last newline is an interrupted line
    if len(lines) > len(rows):
        raise ValueError(f"{path} has {len(lines)} lines for {len(rows)} records; were the records changed?")
    keep = len(lines) if len(lines) == len(rows) else len(lines) - len(lines) % meta["batch_size"]
    for k in range(keep):
        try:
            prompt = json.loads(lines[k])["prompt"]
        except (ValueError, KeyError):
            raise ValueError(f"{path}:{k + 1}: not a line written by generate_negatives") from None
        if prompt != rows[k]["prompt"]:
            raise ValueError(f"{path}:{k + 1}: its prompt is not record {k}'s; were the records changed?")
    size = sum(len(line) + 1 for line in lines[:keep])
    if size != len(data):
        with open(path, "r+b") as f:
            f.truncate(size)
    return keep
