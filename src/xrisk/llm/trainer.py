"""``transformers.Trainer`` subclasses: ``XRiskTrainer`` (any xrisk loss with state) and ``DFTTrainer``.

Both keep the users' ``TrainingArguments``, callbacks, gradient accumulation, logging and
``checkpoint-*`` folders. The hooks they override (``_set_signature_columns_if_needed``,
``_save_optimizer_and_scheduler``, ``_load_optimizer_and_scheduler``, ``_run_epoch``) are the
``Trainer``'s internal ones of transformers 5.24 (the ``llm`` extra pins that version).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import nn

from xrisk.checkpoint import load_checkpoint, save_checkpoint
from xrisk.llm._deps import require
from xrisk.llm.data import DFTCollator, negative_columns
from xrisk.llm.steps import dft_batch_loss, sft_batch_loss
from xrisk.losses.dft import DFTLoss

transformers = require("transformers", what="xrisk.llm.XRiskTrainer / DFTTrainer")

__all__ = ["XRiskTrainer", "DFTTrainer", "LOSS_STATE_FILE"]

#: The file of the loss's state inside each ``checkpoint-*`` folder.
LOSS_STATE_FILE = "xrisk_loss.pt"


class XRiskTrainer(transformers.Trainer):
    """A ``Trainer`` whose loss is an xrisk loss with state (per-sample estimators, loss parameters).

    * The dataset's ``index`` column (and the other :attr:`keep_columns`) survive
      ``remove_unused_columns=True``, which otherwise keeps only the arguments of the model's ``forward``.
    * The loss's state is written to every checkpoint folder (``xrisk_loss.pt``, with
      :func:`xrisk.save_checkpoint`: the loss class and ``num_samples`` are recorded, so a checkpoint of
      another data set is refused) and restored by ``train(resume_from_checkpoint=...)``.
    * The loss is moved to the training device, and follows the model's train/eval mode in
      :meth:`loss_mode` (xrisk losses change their state only in training mode, so evaluation leaves it).

    Subclasses implement ``compute_loss`` (see ``docs/integrations.md`` for a score loss, and
    :class:`DFTTrainer`).

    Args:
        xrisk_loss: the loss module (``None``: no state to keep, e.g. an SFT baseline).
        *args, **kwargs: the ``Trainer``'s.
    """

    keep_columns: ClassVar[tuple[str, ...]] = ("index",)

    def __init__(self, *args: Any, xrisk_loss: nn.Module | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.xrisk_loss = None if xrisk_loss is None else xrisk_loss.to(self.args.device)

    def loss_mode(self, model: nn.Module) -> nn.Module | None:
        """The loss, put in the mode of ``model`` (training: its state is updated; eval: it is not)."""
        if self.xrisk_loss is not None and self.xrisk_loss.training != model.training:
            self.xrisk_loss.train(model.training)
        return self.xrisk_loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for name in self.keep_columns:
            if name not in self._signature_columns:
                self._signature_columns.append(name)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.xrisk_loss is not None and self.args.should_save:
            save_checkpoint(os.path.join(output_dir, LOSS_STATE_FILE), loss=self.xrisk_loss)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.xrisk_loss is not None:
            path = os.path.join(checkpoint, LOSS_STATE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{checkpoint} has no {LOSS_STATE_FILE}: it was not written by an "
                                        "XRiskTrainer with this loss; resuming would restart the loss's state")
            load_checkpoint(path, loss=self.xrisk_loss)


class DFTTrainer(XRiskTrainer):
    """Discriminative fine-tuning (DFT, DFT2) of a causal LM with the ``Trainer``; SFT with ``loss=None``.

    Each step scores the answer and ``negatives_per_prompt`` sampled negatives of every prompt in one
    :func:`~xrisk.llm.sequence_logprobs` call (the prompt encoded once per group) and applies
    :class:`~xrisk.losses.DFTLoss`; DFT reads the negatives' reference log-probs from the data (no
    reference model in memory, no reference forward). Epoch ``e`` uses the negative columns
    :func:`~xrisk.llm.data.negative_columns` gives (fresh columns every epoch, as in the reference code).
    With ``loss=None`` the step is SFT: the token-mean cross-entropy of the answers only.

    Args:
        model: a causal LM (transformers), e.g. from :func:`~xrisk.llm.load_causal_lm`.
        args: ``TrainingArguments`` (the reference: lr 2e-6, cosine schedule, warm-up 0.1, 2 epochs).
        train_dataset: a :class:`~xrisk.llm.DFTDataset` (``len(train_dataset) == loss.num_prompts``).
        loss: a :class:`~xrisk.losses.DFTLoss`, or ``None`` for SFT.
        negatives_per_prompt: ``m`` (the reference: 2).
        fresh_negatives: new columns every epoch (False: the first ``m`` always).
        share_prompt: encode each prompt once for its answer and negatives (else one concatenated forward).
        data_collator: default :class:`~xrisk.llm.DFTCollator` with the tokenizer's (``processing_class``)
            or the model config's padding id.
        **kwargs: the ``Trainer``'s other arguments (``processing_class``, ``callbacks``, ``optimizers`` ...).

    Example: see the guide (``docs/dft.md``) and ``tests/test_dft_trainer.py``.
    """

    keep_columns = ("index", "prompt_ids", "completion_ids", "ref_logp")

    def __init__(self, model: Any, args: Any, train_dataset: Any, *, loss: DFTLoss | None,
                 negatives_per_prompt: int = 2, fresh_negatives: bool = True, share_prompt: bool = True,
                 data_collator: Any = None, **kwargs: Any) -> None:
        k = getattr(train_dataset, "num_negatives", None)
        if loss is not None:
            if k is None or not 1 <= negatives_per_prompt <= k:
                raise ValueError(f"negatives_per_prompt={negatives_per_prompt} needs a DFTDataset with at least "
                                 f"that many negatives per prompt (it has {k})")
            if loss.num_prompts != len(train_dataset):
                raise ValueError(f"the loss was built for {loss.num_prompts} prompts, the data set has "
                                 f"{len(train_dataset)}")
            if loss.variant == "dft" and not getattr(train_dataset, "has_ref_logp", False):
                raise ValueError("variant 'dft' needs 'ref_logp' in every record (xrisk.llm.generate_negatives)")
        if data_collator is None:
            tok = kwargs.get("processing_class")
            pad = getattr(tok, "pad_token_id", None)
            pad = model.config.pad_token_id if pad is None else pad
            data_collator = DFTCollator(0 if pad is None else int(pad))
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                         xrisk_loss=loss, **kwargs)
        self.negatives_per_prompt = negatives_per_prompt
        self.fresh_negatives = fresh_negatives
        self.share_prompt = share_prompt
        self.num_negatives = k or 0
        self.current_epoch = 0

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        self.current_epoch = int(kwargs["epoch"] if "epoch" in kwargs else args[1])  # the negatives' columns
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss_fn = self.loss_mode(model)
        if loss_fn is None:
            loss = sft_batch_loss(model, inputs)
        else:
            columns = negative_columns(self.current_epoch, self.negatives_per_prompt, self.num_negatives,
                                       fresh=self.fresh_negatives)
            loss = dft_batch_loss(model, inputs, loss_fn, columns, share_prompt=self.share_prompt)
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, None, None]:
        """Evaluation: the step's loss (model and loss in eval mode: the estimator is not updated)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
