"""Summed answer-token log-probabilities of a causal language model: ``sequence_logprobs``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sequence_logprobs", "supports_shared_prompt"]

IGNORE = -100  # the label of a token that is not scored (prompt, padding): transformers' convention


_FORWARD_PARAMS: dict[type, frozenset[str]] = {}


def _forward_params(model: Any) -> frozenset[str]:
    """The argument names of ``model.forward`` (cached per class: ``inspect.signature`` is slow)."""
    cls = type(model)
    params = _FORWARD_PARAMS.get(cls)
    if params is None:
        params = _FORWARD_PARAMS[cls] = frozenset(inspect.signature(model.forward).parameters)
    return params


def supports_shared_prompt(model: Any) -> bool:
    """Whether ``model``'s forward takes a KV ``cache``, ``position_ids`` and ``logits_to_keep`` (transformers
    causal LMs do): then a prompt group is scored with the prompt encoded once."""
    return {"cache", "position_ids", "logits_to_keep"} <= _forward_params(model)


def _positions(mask: Tensor) -> Tensor:
    """Position ids that skip padding: ``0, 1, ...`` from each row's first real token (left or right padding)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _call(model: Any, ids: Tensor, mask: Tensor, *, positions: Tensor | None = None, keep: Tensor | int | None = None,
          cache: Any = None, use_cache: bool = False) -> Any:
    params = _forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in params:
        kwargs["position_ids"] = _positions(mask) if positions is None else positions
    if keep is not None and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    if cache is not None:
        kwargs["cache"] = cache
    if "use_cache" in params:
        kwargs["use_cache"] = use_cache
    return model(**kwargs)


def _token_logprobs(logits: Tensor, targets: Tensor, scored: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` where ``scored``, 0 elsewhere; ``logits [..., T, V]``, ``targets [..., T]``."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    flat = logits.reshape(-1, logits.shape[-1])
    tgt = torch.where(scored, targets, torch.full_like(targets, IGNORE)).reshape(-1)
    return -F.cross_entropy(flat, tgt, ignore_index=IGNORE, reduction="none").reshape(targets.shape)


def sequence_logprobs(
    model: Any,
    batch: Mapping[str, Tensor],
    *,
    normalize: bool = False,
    share_prompt: bool = True,
) -> tuple[Tensor, Tensor]:
    """Summed log-probabilities of the answer tokens of each sequence, and their token counts.

    ``logp = sum_t log pi(y_t | x, y_<t)`` over the answer tokens ``y_t`` only: the logits are shifted
    (position ``t - 1`` predicts token ``t``), prompt and padding tokens are never scored, and padding
    never enters the attention. ``normalize=True`` returns ``logp / n_tokens`` (the length-normalised
    score of DFT2; 0 for an empty answer).

    Two batch layouts:

    * **flat** (any causal LM): ``input_ids [N, L]``, ``attention_mask [N, L]``, ``labels [N, L]`` with
      ``-100`` on every token that is not scored (transformers' convention; the label of a scored token is
      its input id). Returns ``[N]`` tensors.
    * **grouped** (prompt groups, the layout of :mod:`xrisk.llm.encoding`): ``prompt_input_ids [B, Lp]``
      and ``prompt_attention_mask`` (left padded), ``completion_input_ids [B, G, Lc]`` and
      ``completion_attention_mask`` (right padded): ``G`` answers per prompt, e.g. the positive and ``m``
      negatives. Returns ``[B, G]`` tensors. With ``share_prompt=True``, ``G > 1`` and a model that takes a KV
      cache (:func:`supports_shared_prompt`) the prompt is encoded once per group and its cache is shared by the
      ``G`` answers (one forward for the prompts, one for all answers); otherwise the ``B G`` full sequences
      go through one concatenated forward, as in the reference code. Both are exact; gradients flow
      through the prompt's encoding in both.

    The model's output vocabulary projection is applied only where a score needs it
    (``logits_to_keep``), and its mode (train/eval) is left as the caller set it.

    Returns:
        ``(logp, n_tokens)``: float32 log-probabilities (with gradient when the model has one) and int64
        token counts, shaped ``[N]`` or ``[B, G]``.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from xrisk.llm import sequence_logprobs
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, pad_token_id=0))
        >>> batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4),
        ...          "labels": torch.tensor([[-100, -100, 7, 8]])}  # prompt 5 6, answer 7 8
        >>> logp, n = sequence_logprobs(model, batch)
        >>> n.tolist()
        [2]
    """
    if "prompt_input_ids" in batch:
        logp, n = _grouped(model, batch, share_prompt)
    elif "input_ids" in batch and "labels" in batch:
        logp, n = _flat(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"])
    else:
        raise ValueError("batch needs input_ids/attention_mask/labels (flat) or prompt_input_ids/"
                         "prompt_attention_mask/completion_input_ids/completion_attention_mask (grouped); "
                         f"got keys {sorted(batch)}")
    if normalize:
        logp = logp / n.clamp_min(1).to(logp.dtype)
    return logp, n


def _flat(model: Any, ids: Tensor, mask: Tensor | None, labels: Tensor) -> tuple[Tensor, Tensor]:
    if labels.shape != ids.shape or ids.dim() != 2:
        raise ValueError(f"input_ids and labels must both be [N, L], got {tuple(ids.shape)} and {tuple(labels.shape)}")
    mask = torch.ones_like(ids) if mask is None else mask
    scored = (labels[:, 1:] != IGNORE) & (mask[:, 1:] != 0)  # token t is scored from position t - 1
    n = scored.sum(-1)
    cols = torch.nonzero(scored.any(0)).flatten()
    if cols.numel() == 0:
        return torch.zeros(ids.shape[0]), n
    lo, hi = int(cols[0]), int(cols[-1]) + 1  # positions lo..hi-1 predict tokens lo+1..hi
    keep = torch.arange(lo, hi, device=ids.device)
    logits = _call(model, ids, mask, keep=keep).logits
    if logits.shape[1] != hi - lo:  # the model ignored logits_to_keep
        logits = logits[:, lo:hi]
    tok = _token_logprobs(logits, labels[:, lo + 1:hi + 1], scored[:, lo:hi])
    return tok.sum(-1), n


def _grouped(model: Any, batch: Mapping[str, Tensor], share_prompt: bool) -> tuple[Tensor, Tensor]:
    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    c_ids, c_mask = batch["completion_input_ids"], batch["completion_attention_mask"]
    if p_ids.dim() != 2 or c_ids.dim() != 3 or c_ids.shape[0] != p_ids.shape[0] or c_mask.shape != c_ids.shape:
        raise ValueError(f"grouped batch: prompt_input_ids [B, Lp] and completion_input_ids/attention_mask "
                         f"[B, G, Lc] expected, got {tuple(p_ids.shape)} and {tuple(c_ids.shape)}")
    b, g, lc = c_ids.shape
    lp = p_ids.shape[1]
    scored = c_mask != 0
    n = scored.sum(-1)
    if b == 0 or g == 0 or lc == 0:
        return torch.zeros(b, g), n
    flat_c, flat_m = c_ids.reshape(b * g, lc), c_mask.reshape(b * g, lc)
    p_rep, pm_rep = p_ids.repeat_interleave(g, 0), p_mask.repeat_interleave(g, 0)
    full_mask = torch.cat([pm_rep, flat_m], 1)
    if share_prompt and g > 1 and supports_shared_prompt(model) and lp > 0:
        out = _call(model, p_ids, p_mask, keep=1, use_cache=True)
        cache = out["cache"] if "cache" in out else out.past_key_values
        cache.batch_repeat_interleave(g)  # each prompt's keys/values serve its G answers (gradient summed back)
        positions = p_mask.sum(-1).repeat_interleave(g).unsqueeze(1) + torch.arange(lc, device=c_ids.device)
        rest = _call(model, flat_c, full_mask, positions=positions, keep=torch.arange(lc - 1, device=c_ids.device),
                     cache=cache).logits
        first = out.logits[:, -1:].repeat_interleave(g, 0)  # the prompt's last position predicts token 0
        logits = torch.cat([first, rest[:, : lc - 1]], 1)
    else:
        full = torch.cat([p_rep, flat_c], 1)
        keep = torch.arange(lp - 1, lp + lc - 1, device=c_ids.device)
        logits = _call(model, full, full_mask, keep=keep).logits
        if logits.shape[1] != lc:
            logits = logits[:, lp - 1:lp + lc - 1]
    tok = _token_logprobs(logits, flat_c, scored.reshape(b * g, lc))
    return tok.sum(-1).reshape(b, g), n

