"""One DFT / DFT2 / SFT training step's loss on a grouped batch: shared by :class:`xrisk.llm.DFTTrainer`,
the ``xrisk run dft`` recipe and plain PyTorch loops."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from xrisk.llm.data import select_negatives
from xrisk.llm.logprobs import sequence_logprobs
from xrisk.losses.dft import DFTLoss

__all__ = ["dft_batch_loss", "sft_batch_loss", "sft_warmup"]


def sft_batch_loss(model: Any, batch: Mapping[str, Tensor]) -> Tensor:
    """Supervised fine-tuning: the token-mean cross-entropy of the answers (column 0 of a grouped batch; the
    negatives are not forwarded), i.e. ``-sum_i logp_i / sum_i n_i``."""
    logp, n = sequence_logprobs(model, select_negatives(batch, None))
    return -logp.sum() / n.sum().clamp_min(1)


def dft_batch_loss(model: Any, batch: Mapping[str, Tensor], loss_fn: DFTLoss, columns: Sequence[int], *,
                   share_prompt: bool = True) -> Tensor:
    """The :class:`~xrisk.losses.DFTLoss` surrogate of a grouped batch (:class:`xrisk.llm.DFTCollator`).

    The answer and the negative ``columns`` of every prompt are scored by one
    :func:`~xrisk.llm.sequence_logprobs` call (length-normalised for DFT2); DFT takes the negatives'
    reference log-probs from the batch's ``ref_logp`` (precomputed: no reference forward here).

    Raises:
        ValueError: ``variant="dft"`` and the batch has no ``ref_logp``.
    """
    sel = select_negatives(batch, columns)
    ref = None
    if loss_fn.variant == "dft":
        if "ref_logp" not in sel:
            raise ValueError("variant 'dft' needs the negatives' reference log-probs (field 'ref_logp' of the "
                             "data; xrisk.llm.generate_negatives stores them)")
        ref = sel["ref_logp"]
    logp, _ = sequence_logprobs(model, sel, normalize=loss_fn.variant == "dft2", share_prompt=share_prompt)
    return loss_fn(logp[:, 0], logp[:, 1:], sel["index"], ref_logp_neg=ref)


def sft_warmup(model: Any, dataset: Any, *, steps: int, batch_size: int, lr: float, pad_token_id: int,
               seed: int = 0, on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Supervised training of ``model`` on the answers of a :class:`~xrisk.llm.DFTDataset` for ``steps`` AdamW
    steps of ``batch_size`` random records (a base model for a from-scratch study, e.g. a tiny LM that then
    produces plausible wrong answers). Batches are drawn from a generator seeded with ``seed``; the model
    is put in training mode and left in eval mode. Returns the loss of every step."""
    from xrisk.llm.data import DFTCollator

    collate = DFTCollator(pad_token_id)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        rows = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        loss = sft_batch_loss(model, collate([dataset[i] for i in rows]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses
