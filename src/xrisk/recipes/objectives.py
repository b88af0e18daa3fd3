"""The training objectives of the score-based recipes (``xrisk run auc``, ``xrisk run textdetect``): a loss and
its optimizer by name, the batch sampler, and index batches from a sampler.

=========== ===================================== ========== ======================= =======
name         objective                            optimizer  default lr              sampler
=========== ===================================== ========== ======================= =======
aucm         AUROC, AUC-margin min-max (sigmoid)  PESG       :data:`DEFAULT_LR`      dual
ap           AP, SOAP (sigmoid)                   Adam       :data:`DEFAULT_LR`      dual
pauc-cvar    one-way pAUC, CVaR (sigmoid)         Adam       :data:`DEFAULT_LR`      dual
pauc-kl      one-way pAUC, KL-DRO (sigmoid)       Adam       :data:`DEFAULT_LR`      dual
tpauc        two-way pAUC, KL-DRO (sigmoid)       Adam       :data:`DEFAULT_LR`      dual
ce           binary cross-entropy (logits)        Adam       :data:`DEFAULT_LR`      shuffle
focal        focal loss (logits)                  Adam       :data:`DEFAULT_LR`      shuffle
=========== ===================================== ========== ======================= =======

The score losses (:data:`SCORE_LOSSES`) take ``sigmoid(logit)`` scores and the dataset ``index``
(:func:`loss_value`); cross-entropy and focal take the logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LOSSES", "SCORE_LOSSES", "DEFAULT_LR", "default_lr", "build_objective", "build_sampler", "loss_value",
           "index_batches", "count_batches"]

LOSSES: tuple[str, ...] = ("aucm", "ap", "pauc-cvar", "pauc-kl", "tpauc", "ce", "focal")
SCORE_LOSSES: frozenset[str] = frozenset({"aucm", "ap", "pauc-cvar", "pauc-kl", "tpauc"})
#: Default learning rates: PESG (AUC-M) and Adam (every other loss).
DEFAULT_LR: dict[str, float] = {"pesg": 0.1, "adam": 1e-3}


def default_lr(loss: str) -> float:
    """The default learning rate of ``loss`` (:data:`DEFAULT_LR` of its optimizer)."""
    return DEFAULT_LR["pesg" if loss == "aucm" else "adam"]


def build_objective(name: str, params: Iterable[nn.Parameter], *, num_samples: int, lr: float,
                    weight_decay: float, margin: float = 1.0, max_fpr: float = 0.3,
                    min_tpr: float = 0.7) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``(loss, optimizer)`` for the loss ``name`` (see the module table) over the model parameters ``params``.

    ``num_samples`` sizes the per-sample state of AP and the partial-AUC losses; ``max_fpr``/``min_tpr`` are
    their FPR/TPR bounds; PESG uses momentum 0.9 and epoch decay 2e-3; Adam also updates the loss's own
    parameters, if any.
    """
    params = list(params)
    loss: nn.Module
    if name == "aucm":
        from xrisk.losses import AUCMLoss
        from xrisk.optim import PESG

        loss = AUCMLoss(margin=margin)
        return loss, PESG(params, loss=loss, lr=lr, momentum=0.9, weight_decay=weight_decay, epoch_decay=2e-3)
    if name == "ap":
        from xrisk.losses import APLoss

        loss = APLoss(num_samples, gamma=0.9, margin=margin)
    elif name in ("pauc-cvar", "pauc-kl"):
        from xrisk.losses import OneWayPartialAUCLoss

        loss = OneWayPartialAUCLoss(num_samples, method=name.split("-")[1], max_fpr=max_fpr, margin=margin)
    elif name == "tpauc":
        from xrisk.losses import TwoWayPartialAUCLoss

        loss = TwoWayPartialAUCLoss(num_samples, min_tpr=min_tpr, max_fpr=max_fpr, margin=margin)
    elif name == "focal":
        from xrisk.losses import FocalLoss

        loss = FocalLoss()
    elif name == "ce":
        loss = nn.BCEWithLogitsLoss()
    else:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return loss, torch.optim.Adam(params + list(loss.parameters()), lr=lr, weight_decay=weight_decay)


def build_sampler(name: str, labels: Tensor, batch_size: int, *, pos_ratio: float, seed: int) -> Any:
    """``"dual"``: :class:`xrisk.data.DualSampler` (``pos_ratio`` positives per batch); ``"shuffle"``:
    :class:`xrisk.recipes.auc.ShuffleBatches`."""
    if name == "dual":
        from xrisk.data import DualSampler

        return DualSampler(labels, batch_size, pos_ratio=pos_ratio, seed=seed)
    if name == "shuffle":
        from xrisk.recipes.auc import ShuffleBatches

        return ShuffleBatches(len(labels), batch_size, seed=seed)
    raise ValueError(f"unknown sampler {name!r}; known: dual, shuffle")


def loss_value(name: str, loss: nn.Module, logits: Tensor, targets: Tensor, index: Tensor) -> Tensor:
    """The training loss of a batch: score losses on ``sigmoid(logits)`` with ``index``, the others on logits."""
    if name in SCORE_LOSSES:
        return loss(torch.sigmoid(logits), targets, index)
    return loss(logits, targets)


def index_batches(sampler: Any, batch_size: int) -> Iterator[Tensor]:
    """Index batches from a sampler that yields batches (lists/tensors) or single indices."""
    pending: list[int] = []
    for item in sampler:
        if isinstance(item, Tensor) and item.dim() == 1:
            yield item.long()
        elif isinstance(item, (list, tuple)):
            yield torch.as_tensor(item, dtype=torch.long)
        else:
            pending.append(int(item))
            if len(pending) == batch_size:
                yield torch.tensor(pending, dtype=torch.long)
                pending = []
    if pending:
        yield torch.tensor(pending, dtype=torch.long)


def count_batches(sampler: Any, batch_size: int) -> int:
    """Number of batches :func:`index_batches` yields per epoch."""
    from xrisk.recipes.auc import ShuffleBatches

    n = len(sampler)
    yields_batches = isinstance(sampler, ShuffleBatches) or getattr(sampler, "yields_batches", False)
    return n if yields_batches else math.ceil(n / batch_size)
