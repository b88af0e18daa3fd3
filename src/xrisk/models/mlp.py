"""A small multi-layer perceptron for feature vectors (tabular data, text embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected network ``Linear -> ReLU (-> Dropout)`` per hidden layer, then a linear head.

    Inputs with more than two dimensions are flattened from dimension 1, so ``[B, 8, 8]``
    images work with ``in_features=64``.

    Args:
        in_features: size ``D`` of each input vector (after flattening).
        hidden: widths of the hidden layers; ``()`` gives a linear model.
        out_features: number of outputs ``K`` (``1`` for a binary score).
        dropout: dropout probability after every hidden activation (``0`` disables it).

    Shapes: input ``[B, D]`` (or ``[B, ...]`` flattening to ``D``), output ``[B, K]``
    (unnormalised scores/logits; apply ``torch.sigmoid`` for scores in ``[0, 1]``).

    Example:
        >>> import torch
        >>> from xrisk.models import MLP
        >>> MLP(30, hidden=(64, 32))(torch.randn(4, 30)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (64,),
        out_features: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        hidden = tuple(hidden)
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden must hold positive ints, got {hidden!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_features = in_features
        self.out_features = out_features
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Return the ``[B, out_features]`` outputs for inputs ``x`` (``[B, in_features]`` or ``[B, ...]``)."""
        if x.dim() > 2:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects inputs [B, {self.in_features}], got {tuple(x.shape)}")
        return self.head(self.body(x))
