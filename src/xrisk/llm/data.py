"""DFT's training data: the JSONL format, a tokenised dataset, its collator and the per-epoch negatives.

**Format.** One JSON object per line:

* ``"prompt"``: a non-empty string (encoded as plain text) or a non-empty list of chat messages
  ``{"role": ..., "content": ...}`` (encoded with the tokenizer's chat template);
* ``"answer"``: the supervised answer, a non-empty string;
* ``"negatives"``: a list of ``K`` answers sampled from the base model (the same ``K`` on every line;
  optional for SFT);
* ``"ref_logp"``: optional, ``K`` finite numbers, the negatives' summed log-probabilities under the
  reference (base) model, as :func:`xrisk.llm.generate_negatives` stores them (DFT needs them, DFT2 and
  SFT do not);
* any other field is kept and ignored.

A line that is not valid JSON, lacks a field or has an empty answer raises :class:`ValueError` naming the
file and the line. Nothing is dropped silently: a prompt longer than ``max_prompt_length`` tokens keeps
its last tokens (left truncation, as in the reference code) and an answer that does not fit in
``max_length`` keeps its first tokens; both are counted in :attr:`DFTDataset.truncation`.

**Negatives per epoch.** With ``m`` negatives per step and ``K`` columns, epoch ``e`` uses columns
``(e mod (K // m)) * m, ..., + m - 1`` (the reference code's fresh columns every epoch; it needs
``K >= m * epochs``, here later epochs cycle through the blocks again); ``fresh_negatives=False``
uses the first ``m`` columns every epoch (the reference's ``sample=False``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from xrisk.llm.encoding import encode_completion, encode_prompt, left_pad, pad_completions, truncate_pair, \
    validate_prompt

__all__ = ["read_jsonl", "DFTDataset", "DFTCollator", "Truncation", "negative_columns", "select_negatives"]


def read_jsonl(path: str | os.PathLike[str], *, need_negatives: bool = False,
               need_ref_logp: bool = False) -> list[dict[str, Any]]:
    """Read and check a DFT JSONL file (see the module docstring); blank lines are skipped.

    Raises:
        ValueError: ``"FILE:LINE: what is wrong"`` for the first bad line; also when lines disagree on the
            number of negatives, or a required field (``need_negatives``, ``need_ref_logp``) is missing.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    width: int | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            _check_record(rec, where, need_negatives, need_ref_logp)
            k = len(rec.get("negatives", ()))
            if "negatives" in rec:
                if width is not None and k != width:
                    raise ValueError(f"{where}: {k} negatives, but earlier lines have {width}")
                width = k
            rec["_line"] = lineno
            records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records")
    if width is not None and any("negatives" not in r for r in records):
        line = next(r["_line"] for r in records if "negatives" not in r)
        raise ValueError(f"{path}:{line}: field 'negatives' is missing (other lines have it)")
    return records


def _check_record(rec: dict[str, Any], where: str, need_negatives: bool, need_ref_logp: bool) -> None:
    if "prompt" not in rec:
        raise ValueError(f"{where}: field 'prompt' is missing")
    problem = validate_prompt(rec["prompt"])
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    answer = rec.get("answer")
    if answer is None:
        raise ValueError(f"{where}: field 'answer' is missing")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: the answer is empty" if isinstance(answer, str) else
                         f"{where}: 'answer' must be a string, got {type(answer).__name__}")
    negs = rec.get("negatives")
    if negs is None:
        if need_negatives:
            raise ValueError(f"{where}: field 'negatives' is missing (DFT needs sampled negatives)")
    elif not isinstance(negs, list) or not negs or not all(isinstance(t, str) for t in negs):
        raise ValueError(f"{where}: 'negatives' must be a non-empty list of strings")
    ref = rec.get("ref_logp")
    if ref is None:
        if need_ref_logp:
            raise ValueError(f"{where}: field 'ref_logp' is missing (variant 'dft' needs the reference model's "
                             "log-probs of the negatives; generate_negatives stores them)")
        return
    if negs is None or not isinstance(ref, list) or len(ref) != len(negs):
        raise ValueError(f"{where}: 'ref_logp' must be a list with one number per negative")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ref):
        raise ValueError(f"{where}: 'ref_logp' must hold finite numbers")


@dataclass
class Truncation:
    """How many prompts were cut on the left and answers (positive or negative) cut on the right."""

    prompts: int = 0
    answers: int = 0
    lines: list[int] = field(default_factory=list)  # lines (or record numbers) with a truncated prompt

    def as_dict(self) -> dict[str, int]:
        return {"truncated_prompts": self.prompts, "truncated_answers": self.answers}


class DFTDataset(Dataset):
    """Tokenised DFT records: item ``i`` is ``{"index": i, "prompt_ids", "completion_ids": [answer, neg_0, ...],
    "ref_logp": [K floats] (if present)}``.

    Args:
        records: dicts in the JSONL format (e.g. :func:`read_jsonl`'s output).
        tokenizer: the model's tokenizer (encoding: :mod:`xrisk.llm.encoding`).
        max_prompt_length, max_length: the reference's truncation limits (512, 1024).

    Attributes:
        num_negatives: ``K`` columns (0 without negatives).
        has_ref_logp: every record has ``ref_logp``.
        truncation: a :class:`Truncation` count.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], tokenizer: Any, *, max_prompt_length: int = 512,
                 max_length: int = 1024) -> None:
        if max_prompt_length < 1 or max_length <= max_prompt_length:
            raise ValueError(f"need 1 <= max_prompt_length < max_length, got {max_prompt_length}, {max_length}")
        self.truncation = Truncation()
        self.items: list[dict[str, Any]] = []
        widths = {len(r.get("negatives", ())) for r in records}
        if len(widths) > 1:
            raise ValueError(f"records have different numbers of negatives: {sorted(widths)}")
        self.num_negatives = widths.pop() if widths else 0
        self.has_ref_logp = bool(records) and all("ref_logp" in r for r in records)
        for i, rec in enumerate(records):
            prompt = encode_prompt(tokenizer, rec["prompt"])
            answers = [rec["answer"], *rec.get("negatives", ())]
            pairs = [truncate_pair(prompt, encode_completion(tokenizer, a), max_prompt_length=max_prompt_length,
                                   max_length=max_length) for a in answers]
            if pairs[0][2]:
                self.truncation.prompts += 1
                self.truncation.lines.append(int(rec.get("_line", i + 1)))
            self.truncation.answers += sum(p[3] for p in pairs)
            item: dict[str, Any] = {"index": i, "prompt_ids": pairs[0][0], "completion_ids": [p[1] for p in pairs]}
            if self.has_ref_logp:
                item["ref_logp"] = [float(v) for v in rec["ref_logp"]]
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


@dataclass
class DFTCollator:
    """Pads a list of :class:`DFTDataset` items into a grouped batch: ``index [B]``, ``prompt_input_ids`` /
    ``prompt_attention_mask`` ``[B, Lp]`` (left padded), ``completion_input_ids`` /
    ``completion_attention_mask`` ``[B, 1 + K, Lc]`` (column 0 the answer), ``ref_logp [B, K]`` if present.

    ``columns``: keep only the answer and these negative columns (``None``: all ``K``); the trainers select
    per epoch instead (:func:`select_negatives`), so one collator serves every epoch.
    """

    pad_token_id: int
    columns: Sequence[int] | None = None

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        cols = None if self.columns is None else list(self.columns)
        groups = [it["completion_ids"] if cols is None else [it["completion_ids"][0]] +
                  [it["completion_ids"][1 + c] for c in cols] for it in items]
        p_ids, p_mask = left_pad([it["prompt_ids"] for it in items], self.pad_token_id)
        c_ids, c_mask = pad_completions(groups, self.pad_token_id)
        batch = {"index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
                 "prompt_input_ids": p_ids, "prompt_attention_mask": p_mask,
                 "completion_input_ids": c_ids, "completion_attention_mask": c_mask}
        if items and all("ref_logp" in it for it in items):
            ref = torch.tensor([it["ref_logp"] for it in items], dtype=torch.float32)
            batch["ref_logp"] = ref if cols is None else ref[:, cols]
        return batch


def negative_columns(epoch: int, m: int, k: int, *, fresh: bool = True) -> list[int]:
    """The ``m`` negative columns (of ``k``) used in ``epoch`` (0-based; see the module docstring)."""
    if not 1 <= m <= k:
        raise ValueError(f"need 1 <= m <= K negatives per prompt, got m={m}, K={k}")
    block = epoch % (k // m) if fresh else 0
    return list(range(block * m, block * m + m))


def select_negatives(batch: Mapping[str, Tensor], columns: Sequence[int] | None) -> dict[str, Tensor]:
    """A grouped batch with the answer and the given negative columns only (``None``: the answer alone, for
    SFT); the completions' padding is trimmed to the longest kept one."""
    keep = [0] + [1 + c for c in (columns or [])]
    k = batch["completion_input_ids"].shape[1] - 1
    if any(not 0 <= c < k for c in (columns or [])):
        raise ValueError(f"negative columns {list(columns or [])} out of range for a batch with {k} negatives")
    out = dict(batch)
    idx = torch.tensor(keep, device=batch["completion_input_ids"].device)
    c_ids = batch["completion_input_ids"].index_select(1, idx)
    c_mask = batch["completion_attention_mask"].index_select(1, idx)
    width = int(c_mask.sum(-1).max()) if c_mask.numel() else 0
    out["completion_input_ids"], out["completion_attention_mask"] = c_ids[..., :width], c_mask[..., :width]
    if "ref_logp" in batch:
        out["ref_logp"] = batch["ref_logp"][:, list(columns)] if columns else batch["ref_logp"][:, :0]
    return out
