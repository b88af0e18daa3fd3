"""Frozen-embedding probes with a small grid and best-validation selection (the Myna/JukeMIR protocol).

A clip is cut into chunks of the encoder's input length (:func:`chunk_features`: training clips with
a hop, validation and test clips into non-overlapping chunks, short clips zero-padded); every chunk's
frozen embedding is one row. A probe (``linear``: ``Linear(F, K)``; ``mlp``:
``Linear(F, hidden) - ReLU - Dropout - Linear(hidden, K)``) is trained on the training rows with
Adam and cross-entropy on standardised features (train mean and deviation); a clip's prediction
is the mean of its chunks' logits. :func:`fit_probe` trains every :class:`ProbeSetting` of a grid for
``epochs`` epochs, scores the validation and test clips after every epoch with ``score`` (e.g.
accuracy, or :func:`xrisk.metrics.key.key_weighted_score`) and reports the **test score at the epoch and
setting with the best validation score** (the first such on ties).

The reference grid has 216 settings (standardisation on/off x linear/MLP(512) x batch 64/256 x
lr 1e-5/1e-4/1e-3 x dropout .25/.5/.75 x weight decay 0/1e-4/1e-3); :data:`DEFAULT_PROBE_GRID`
keeps 8 of that shape for this machine: standardised features, batch 64, linear with lr 1e-3/1e-2
and MLP(512, dropout 0.5) with lr 1e-4/1e-3, each with weight decay 0 and 1e-3.

Everything runs under a forked RNG seeded by ``seed``: deterministic, and the caller's global RNG
is untouched (a resumed training run that probes stays bit-identical).

Example:
    >>> import torch
    >>> from xrisk.metrics.probe import ChunkFeatures, ProbeSetting, fit_probe
    >>> g = torch.Generator().manual_seed(0)
    >>> def split(n):                                   # one chunk per clip, 3 classes
    ...     y = torch.arange(n) % 3
    ...     return ChunkFeatures(torch.randn(n, 8, generator=g) + 4 * torch.eye(8)[y], torch.arange(n), y)
    >>> grid = [ProbeSetting("linear", lr=1e-2), ProbeSetting("mlp", lr=1e-3)]
    >>> r = fit_probe(split(60), split(30), split(30), num_classes=3, grid=grid, epochs=30)
    >>> r.test_score >= 0.8
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk.data.audio import chunk_spectrogram

__all__ = ["DEFAULT_PROBE_GRID", "ChunkFeatures", "ProbeResult", "ProbeSetting", "accuracy", "chunk_features",
           "clip_logits", "fit_probe"]


@dataclass(frozen=True)
class ProbeSetting:
    """One probe configuration of the grid."""

    model: Literal["linear", "mlp"]
    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.5
    hidden: int = 512
    batch_size: int = 64


#: The grid :func:`fit_probe` searches by default (8 settings, see the module docstring).
DEFAULT_PROBE_GRID: tuple[ProbeSetting, ...] = tuple(
    ProbeSetting(model, lr, wd) for model, lrs in (("linear", (1e-3, 1e-2)), ("mlp", (1e-4, 1e-3)))
    for lr in lrs for wd in (0.0, 1e-3)
)


@dataclass(frozen=True)
class ChunkFeatures:
    """Chunk embeddings of a set of clips: ``feats [C, F]``, ``clip [C]`` (clip id of each chunk, in
    ``[0, num_clips)``) and ``labels [num_clips]`` (class of each clip)."""

    feats: Tensor
    clip: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.feats.dim() != 2 or self.clip.shape != (self.feats.shape[0],) or self.labels.dim() != 1:
            raise ValueError(f"need feats [C, F], clip [C], labels [N]; got {tuple(self.feats.shape)}, "
                             f"{tuple(self.clip.shape)}, {tuple(self.labels.shape)}")
        if self.clip.numel() and (int(self.clip.min()) < 0 or int(self.clip.max()) >= self.labels.numel()):
            raise IndexError(f"clip ids must lie in [0, {self.labels.numel()})")
        if not torch.isfinite(self.feats).all():
            raise ValueError("probe features contain NaN/inf")


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`fit_probe`.

    Attributes:
        setting: the selected setting; epoch: its selected epoch (1-based).
        valid_score, test_score: clip-level scores at that epoch.
        per_setting: ``(setting, best valid score, test score at it)`` for every setting of the grid.
    """

    setting: ProbeSetting
    epoch: int
    valid_score: float
    test_score: float
    per_setting: tuple[tuple[ProbeSetting, float, float], ...]


def accuracy(labels: Tensor, predictions: Tensor) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (both ``[N]`` class indices)."""
    return float((labels == predictions).double().mean()) if labels.numel() else float("nan")


@torch.no_grad()
def chunk_features(
    encode: Callable[[Tensor], Tensor], mels: Sequence[Tensor], labels: Sequence[int] | Tensor, *, frames: int,
    hop: int | None = None, batch_size: int = 256,
) -> ChunkFeatures:
    """Embed every chunk of every spectrogram (:func:`~xrisk.data.audio.chunk_spectrogram` with ``frames``
    and ``hop``) with ``encode`` (``[b, n_mels, frames] -> [b, F]``, e.g. ``model.features`` in ``eval()``)."""
    chunks = [chunk_spectrogram(m, frames, hop) for m in mels]
    clip = torch.cat([torch.full((c.shape[0],), i, dtype=torch.long) for i, c in enumerate(chunks)])
    flat = torch.cat(chunks)
    feats = torch.cat([encode(flat[i : i + batch_size]).float() for i in range(0, flat.shape[0], batch_size)])
    return ChunkFeatures(feats, clip, torch.as_tensor(labels, dtype=torch.long))


def clip_logits(logits: Tensor, clip: Tensor, num_clips: int) -> Tensor:
    """Mean of the chunk logits ``[C, K]`` per clip -> ``[num_clips, K]``."""
    total = torch.zeros(num_clips, logits.shape[1], dtype=logits.dtype).index_add_(0, clip, logits)
    count = torch.zeros(num_clips, dtype=logits.dtype).index_add_(0, clip, torch.ones_like(clip, dtype=logits.dtype))
    return total / count.clamp(min=1)[:, None]


def _probe_model(setting: ProbeSetting, dim: int, k: int) -> nn.Module:
    if setting.model == "linear":
        return nn.Linear(dim, k)
    if setting.model == "mlp":
        return nn.Sequential(nn.Linear(dim, setting.hidden), nn.ReLU(), nn.Dropout(setting.dropout),
                             nn.Linear(setting.hidden, k))
    raise ValueError(f"probe model must be 'linear' or 'mlp', got {setting.model!r}")


def fit_probe(
    train: ChunkFeatures,
    valid: ChunkFeatures,
    test: ChunkFeatures,
    *,
    num_classes: int,
    score: Callable[[Tensor, Tensor], float] = accuracy,
    grid: Sequence[ProbeSetting] = DEFAULT_PROBE_GRID,
    epochs: int = 50,
    seed: int = 0,
) -> ProbeResult:
    """Train the probes of ``grid`` and select by validation score (see the module docstring).

    Args:
        train, valid, test: chunk features with clip labels in ``[0, num_classes)``.
        num_classes: ``K``.
        score: ``score(labels [N], predicted classes [N]) -> float`` at clip level (higher is better).
        grid: probe settings.
        epochs: training epochs per setting.
        seed: seed of the initialisation, shuffling and dropout.
    """
    if not grid or epochs < 1:
        raise ValueError("grid must be non-empty and epochs >= 1")
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if part.labels.numel() and (int(part.labels.min()) < 0 or int(part.labels.max()) >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes})")
    mean, std = train.feats.mean(0), train.feats.std(0).clamp(min=1e-6)
    x, y = (train.feats - mean) / std, train.labels[train.clip]
    evals = [((p.feats - mean) / std, p.clip, p.labels) for p in (valid, test)]
    best: tuple[float, float, ProbeSetting, int] | None = None
    per_setting = []
    with torch.random.fork_rng(devices=[]):
        for setting in grid:
            torch.manual_seed(seed)
            model = _probe_model(setting, x.shape[1], num_classes)
            opt = torch.optim.Adam(model.parameters(), lr=setting.lr, weight_decay=setting.weight_decay)
            mine: tuple[float, float, int] | None = None
            for epoch in range(1, epochs + 1):
                model.train()
                for idx in torch.randperm(x.shape[0]).split(setting.batch_size):
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                model.eval()
                with torch.no_grad():
                    v, t = (score(lab, clip_logits(model(f), c, lab.numel()).argmax(1)) for f, c, lab in evals)
                if mine is None or v > mine[0]:
                    mine = (v, t, epoch)
            assert mine is not None
            per_setting.append((setting, mine[0], mine[1]))
            if best is None or mine[0] > best[0]:
                best = (mine[0], mine[1], setting, mine[2])
    assert best is not None
    return ProbeResult(best[2], best[3], best[0], best[1], tuple(per_setting))
