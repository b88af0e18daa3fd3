"""Knowledge distillation from a reference model (the second comparator of model steering).

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531: the student matches the
teacher's softened distribution over classes (or, for image-text models, over the batch's captions / images).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["distillation_losses"]


def distillation_losses(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Per-row ``T^2 KL(softmax(t / T) || softmax(s / T))`` (``[B]``), ``T = temperature``.

    ``student_logits``, ``teacher_logits``: ``[B, C]`` (the teacher's are detached). The ``T^2`` keeps the
    gradient's scale independent of ``T``. For image-text batches pass the similarity logits ``S / tau`` of both
    directions (rows: images over texts; the transpose: texts over images).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student_logits and teacher_logits must both be [B, C], got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1) * temperature**2
