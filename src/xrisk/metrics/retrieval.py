"""Evaluation of contrastive representations: cross-modal recall@k, zero-shot accuracy, linear probe.

* :func:`recall_at_k`: for each query row of a similarity matrix, whether one of its positives is
  among the top ``k`` gallery items.
* :func:`image_text_recall`: image->text and text->image recall@k of paired embeddings.
* :func:`zero_shot_accuracy`: classify images by the nearest class-prompt embedding (CLIP).
* :func:`linear_probe`: multinomial logistic regression on frozen features (full-batch L-BFGS in
  torch), the standard evaluation of self-supervised encoders (SimCLR, SogCLR);
  :func:`fit_linear_classifier` returns the fitted classifier (for scores, e.g. a probe's AUROC).

Ties are counted **against** the query: a positive at the same score as a negative is ranked after
it, so a constant encoder gets recall 0, not 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["recall_at_k", "image_text_recall", "zero_shot_accuracy", "linear_probe", "LinearProbeResult",
           "LinearClassifier", "fit_linear_classifier"]


def recall_at_k(sim: Tensor, positives: Tensor | None = None, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of queries with a positive among their ``k`` most similar gallery items.

    .. math::

        R@k = \\frac{1}{Q}\\sum_{q} \\mathbb 1\\Big[\\#\\{g \\notin P_q : s_{qg} \\ge \\max_{p \\in P_q} s_{qp}\\} < k\\Big]

    (``s = sim``, ``P_q`` = positives of query ``q``). Queries without any positive are skipped.

    Args:
        sim: ``[Q, G]`` similarity scores (higher = more similar).
        positives: ``[Q, G]`` bool matrix of relevant gallery items; ``None`` means the identity
            (query ``q`` matches gallery item ``q``; needs ``Q == G``).
        ks: the cut-offs.

    Returns:
        ``{k: recall}`` as Python floats.

    Example:
        >>> import torch
        >>> recall_at_k(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), ks=(1, 2))
        {1: 0.5, 2: 1.0}
    """
    if sim.dim() != 2:
        raise ValueError(f"sim must be [Q, G], got {tuple(sim.shape)}")
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"positives=None needs a square sim, got {tuple(sim.shape)}")
        positives = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    if positives.shape != sim.shape:
        raise ValueError(f"positives shape {tuple(positives.shape)} does not match sim shape {tuple(sim.shape)}")
    if not torch.isfinite(sim).all():
        raise ValueError("sim contains NaN/inf")
    positives = positives.bool()
    has_pos = positives.any(1)
    best_pos = sim.masked_fill(~positives, float("-inf")).amax(1, keepdim=True)
    rank = ((sim >= best_pos) & ~positives).sum(1)  # negatives at or above the best positive
    rank, n = rank[has_pos], int(has_pos.sum())
    out: dict[int, float] = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        out[int(k)] = float((rank < int(k)).sum()) / n if n else float("nan")
    return out


def image_text_recall(
    image_feats: Tensor,
    text_feats: Tensor,
    *,
    positives: Tensor | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Image->text and text->image recall@k of paired embeddings, by cosine similarity.

    Args:
        image_feats: ``[N, d]`` image embeddings.
        text_feats: ``[M, d]`` text embeddings.
        positives: ``[N, M]`` bool, which texts match which image; ``None`` = pair ``i`` matches
            pair ``i`` (``N == M``). Use class equality when several captions are equally right
            (e.g. templated captions of one class).
        ks: cut-offs.

    Returns:
        ``{"i2t_r1": ..., "i2t_r5": ..., "t2i_r1": ..., "t2i_r5": ...}`` (one entry per ``k``).
    """
    if image_feats.dim() != 2 or text_feats.dim() != 2 or image_feats.shape[1] != text_feats.shape[1]:
        raise ValueError(f"features must be [N, d] and [M, d], got {tuple(image_feats.shape)}, {tuple(text_feats.shape)}")
    sim = F.normalize(image_feats.float(), dim=1) @ F.normalize(text_feats.float(), dim=1).T
    i2t = recall_at_k(sim, positives, ks)
    t2i = recall_at_k(sim.T, None if positives is None else positives.T, ks)
    return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}


def zero_shot_accuracy(image_feats: Tensor, class_feats: Tensor, labels: Tensor) -> float:
    """Accuracy of predicting ``argmax_c cos(image_i, class_c)`` (CLIP zero-shot classification).

    Args:
        image_feats: ``[N, d]`` image embeddings.
        class_feats: ``[K, d]`` one embedding per class (e.g. the mean of the normalised embeddings of
            the class's prompt templates).
        labels: ``[N]`` integer classes in ``[0, K)``.
    """
    if image_feats.dim() != 2 or class_feats.dim() != 2 or image_feats.shape[1] != class_feats.shape[1]:
        raise ValueError(f"features must be [N, d] and [K, d], got {tuple(image_feats.shape)}, {tuple(class_feats.shape)}")
    if labels.shape != (image_feats.shape[0],):
        raise ValueError(f"labels must be [{image_feats.shape[0]}], got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= class_feats.shape[0]):
        raise IndexError(f"labels must lie in [0, {class_feats.shape[0]}), got range [{int(labels.min())}, {int(labels.max())}]")
    sim = F.normalize(image_feats.float(), dim=1) @ F.normalize(class_feats.float(), dim=1).T
    return float((sim.argmax(1) == labels.to(sim.device)).float().mean())


@dataclass(frozen=True)
class LinearProbeResult:
    """Accuracies of a linear probe (fractions in ``[0, 1]``)."""

    train_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class LinearClassifier:
    """A multinomial logistic regression on standardised features (fitted by :func:`fit_linear_classifier`).

    ``logits(z) = ((z - mean) / std) @ weight + bias``; shapes ``mean, std [F]``, ``weight [F, K]``, ``bias [K]``.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def logits(self, feats: Tensor) -> Tensor:
        """``[N, F]`` features -> ``[N, K]`` logits (no gradient)."""
        if feats.dim() != 2 or feats.shape[1] != self.mean.numel():
            raise ValueError(f"features must be [N, {self.mean.numel()}], got {tuple(feats.shape)}")
        with torch.no_grad():
            return ((feats.detach().float().to(self.mean.device) - self.mean) / self.std) @ self.weight + self.bias


def fit_linear_classifier(
    train_feats: Tensor,
    train_labels: Tensor,
    *,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> LinearClassifier:
    """Fit the linear probe's classifier on frozen features (see :func:`linear_probe` for the objective).

    Args:
        train_feats: ``[N, F]`` features; train_labels: ``[N]`` ints in ``[0, K)``.
        num_classes: ``K`` (default: ``max label + 1``).
        weight_decay: L2 penalty on ``W``.
        max_iter: L-BFGS iterations.
    """
    if train_feats.dim() != 2:
        raise ValueError(f"features must be [N, F], got {tuple(train_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError("labels must be 1-d with one entry per feature row")
    x = train_feats.detach().float()
    y = train_labels.long().to(x.device)
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], k, device=x.device, requires_grad=True)
    b = torch.zeros(k, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearClassifier(mean, std, w.detach(), b.detach())


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> LinearProbeResult:
    """Fit a multinomial logistic regression on frozen features and report accuracies.

    Minimises ``mean_i CE(W z_i + b, y_i) + weight_decay/2 ||W||^2`` with full-batch L-BFGS (strong
    Wolfe line search), where ``z`` are the train features standardised with the train mean and
    standard deviation (the test features use the same statistics). Runs in float32 on the device
    of the features, without gradient to the encoder (inputs are detached) and without touching the
    global RNG (the weights start at zero, so the result is deterministic). The fitted classifier
    itself (for scores, e.g. AUROC) is :func:`fit_linear_classifier`.

    Args:
        train_feats: ``[N, F]`` features; train_labels: ``[N]`` ints in ``[0, K)``.
        test_feats: ``[M, F]``; test_labels: ``[M]``.
        num_classes: ``K`` (default: ``max label + 1``).
        weight_decay: L2 penalty on ``W``.
        max_iter: L-BFGS iterations.
    """
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be [N, F] and [M, F], got {tuple(train_feats.shape)}, {tuple(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],) or test_labels.shape != (test_feats.shape[0],):
        raise ValueError("labels must be 1-d with one entry per feature row")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max() if test_labels.numel() else 0)) + 1
    clf = fit_linear_classifier(train_feats, train_labels, num_classes=num_classes, weight_decay=weight_decay,
                                max_iter=max_iter)
    y = train_labels.long().to(clf.mean.device)
    yt = test_labels.long().to(clf.mean.device)
    train_acc = float((clf.logits(train_feats).argmax(1) == y).float().mean())
    test_acc = float((clf.logits(test_feats).argmax(1) == yt).float().mean()) if yt.numel() else float("nan")
    return LinearProbeResult(train_accuracy=train_acc, test_accuracy=test_acc)
