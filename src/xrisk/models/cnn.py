"""A small convolutional network for 28x28 grey images (Fashion-MNIST) and other small images."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (``width``, ``2 width``, ``4 width`` channels) and a linear head.

    ``conv-BN-ReLU -> maxpool 2 -> conv-BN-ReLU -> maxpool 2 -> conv-BN-ReLU -> global average
    pool -> Linear``. The global (adaptive) average pooling makes it work for any input size of
    at least 4x4; it was sized for 28x28 inputs (about 23k parameters at ``width=16``).

    Args:
        in_channels: channels ``C`` of the input images (1 for grey, 3 for RGB).
        num_outputs: number of outputs ``K`` (1 for a binary score; the feature size when used
            as an encoder).
        width: channels of the first block.

    Shapes: input ``[B, C, H, W]`` (``[B, H, W]`` is read as one channel), output ``[B, K]``.
    :meth:`features` returns the ``[B, 4 width]`` pooled features before the head.

    Example:
        >>> import torch
        >>> from xrisk.models import SmallCNN
        >>> SmallCNN()(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 1])
    """

    def __init__(self, in_channels: int = 1, num_outputs: int = 1, width: int = 16) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_outputs", num_outputs), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels = in_channels
        self.num_outputs = num_outputs
        self.feature_dim = 4 * width
        self.body = nn.Sequential(
            _block(in_channels, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.head = nn.Linear(4 * width, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        """Pooled ``[B, 4 width]`` features of images ``x`` (``[B, C, H, W]`` or ``[B, H, W]``)."""
        if x.dim() == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SmallCNN expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] < 4 or x.shape[-2] < 4:
            raise ValueError(f"SmallCNN needs images of at least 4x4, got {tuple(x.shape[-2:])}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Return the ``[B, num_outputs]`` outputs (unnormalised scores/logits)."""
        return self.head(self.features(x))
