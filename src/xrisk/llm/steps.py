"""One DFT / DFT2 / SFT training step's loss on a grouped batch: shared by :class:`xrisk.llm.DFTTrainer`,
the ``xrisk run dft`` recipe and plain PyTorch loops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from xrisk.llm.data import select_negatives
from xrisk.llm.logprobs import sequence_logprobs
from xrisk.losses.dft import DFTLoss

__all__ = ["dft_batch_loss", "sft_batch_loss"]


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
