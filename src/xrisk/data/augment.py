"""Batched image augmentations on tensors, for contrastive learning on small images (28x28, 32x32).

Every function takes a float batch ``x`` of shape ``[B, C, H, W]`` with values in ``[0, 1]``, draws
**one independent set of parameters per image** from the given :class:`torch.Generator` (so a
fixed generator seed gives the same views on every run and after a resume), and returns a new
tensor of the same shape (``random_resized_crop`` may change ``H, W`` with ``size=``). They run on
the device of ``x``; the generator must live on the same device (a CPU generator for CPU tensors).

:class:`ContrastiveAugment` chains them in the SimCLR order (crop -> flip -> colour -> erasing ->
noise). Two calls on the same batch give the two views of the SimCLR/SogCLR objective.

Example:
    >>> import torch
    >>> from xrisk.data import ContrastiveAugment
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(8, 1, 28, 28)
    >>> aug = ContrastiveAugment()
    >>> v1, v2 = aug(x, g), aug(x, g)
    >>> v1.shape
    torch.Size([8, 1, 28, 28])

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
(SimCLR), ICML 2020, arXiv:2002.05709 (the augmentation family).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "random_resized_crop",
    "random_horizontal_flip",
    "random_brightness_contrast",
    "random_erasing",
    "gaussian_noise",
    "ContrastiveAugment",
]


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"augmentations expect a float image batch [B, C, H, W], got "
            f"{getattr(x, 'dtype', type(x))} of shape {tuple(getattr(x, 'shape', ()))}"
        )


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, x: Tensor) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)


def random_resized_crop(
    x: Tensor,
    *,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random box of each image and resize it back (bilinear), per image.

    The box covers a fraction ``a ~ U(scale)`` of the image area with aspect ratio
    ``r = exp(U(log ratio))`` (clipped to the image), at a uniform random position. Implemented as
    one batched ``affine_grid`` + ``grid_sample`` (no Python loop over images).

    Args:
        x: ``[B, C, H, W]`` images.
        scale: range of the area fraction, ``0 < lo <= hi <= 1``.
        ratio: range of the width/height ratio.
        size: output ``(H', W')`` (default: the input size).
        generator: source of randomness.

    Returns:
        ``[B, C, H', W']`` crops.
    """
    _check_images(x)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale!r}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio!r}")
    b = x.shape[0]
    area = _uniform(b, scale[0], scale[1], generator, x)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator, x)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # width / image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(b, generator=generator, device=x.device, dtype=x.dtype) - 1)
    cy = (1 - h) * (2 * torch.rand(b, generator=generator, device=x.device, dtype=x.dtype) - 1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    out_h, out_w = size if size is not None else (x.shape[2], x.shape[3])
    grid = F.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_horizontal_flip(x: Tensor, *, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_images(x)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_brightness_contrast(
    x: Tensor,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Colour jitter: ``x' = clip(c (b x - m) + m, 0, 1)`` with probability ``p`` per image.

    ``b ~ U(1 - brightness, 1 + brightness)`` scales intensities, ``c ~ U(1 - contrast, 1 + contrast)``
    scales the deviation from the image mean ``m`` (of ``b x``, over channels and pixels).
    """
    _check_images(x)
    bsz = x.shape[0]
    bf = _uniform(bsz, 1 - brightness, 1 + brightness, generator, x)[:, None, None, None]
    cf = _uniform(bsz, 1 - contrast, 1 + contrast, generator, x)[:, None, None, None]
    apply = (torch.rand(bsz, generator=generator, device=x.device) < p)[:, None, None, None]
    y = x * bf
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * cf + mean).clamp(0, 1)
    return torch.where(apply, y, x)


def random_erasing(
    x: Tensor,
    *,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.2),
    value: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Set a random axis-aligned box (area fraction ``~ U(scale)``, aspect ``~ U(0.5, 2)``) to ``value``.

    Applied to each image with probability ``p`` (Zhong et al., "Random Erasing Data Augmentation",
    AAAI 2020, arXiv:1708.04896).
    """
    _check_images(x)
    bsz, _, hh, ww = x.shape
    area = _uniform(bsz, scale[0], scale[1], generator, x)
    aspect = torch.exp(_uniform(bsz, math.log(0.5), math.log(2.0), generator, x))
    eh = (torch.sqrt(area / aspect) * hh).clamp(1, hh)
    ew = (torch.sqrt(area * aspect) * ww).clamp(1, ww)
    top = torch.rand(bsz, generator=generator, device=x.device, dtype=x.dtype) * (hh - eh)
    left = torch.rand(bsz, generator=generator, device=x.device, dtype=x.dtype) * (ww - ew)
    apply = torch.rand(bsz, generator=generator, device=x.device) < p
    rows = torch.arange(hh, device=x.device, dtype=x.dtype)[None, :]
    cols = torch.arange(ww, device=x.device, dtype=x.dtype)[None, :]
    in_r = (rows >= top[:, None].floor()) & (rows < (top + eh)[:, None].floor())
    in_c = (cols >= left[:, None].floor()) & (cols < (left + ew)[:, None].floor())
    box = (in_r[:, :, None] & in_c[:, None, :]) & apply[:, None, None]
    return torch.where(box[:, None], torch.full_like(x, value), x)


def gaussian_noise(x: Tensor, *, std: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Add ``N(0, std^2)`` pixel noise and clip to ``[0, 1]``."""
    _check_images(x)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + std * noise).clamp(0, 1)


@dataclass(frozen=True)
class ContrastiveAugment:
    """SimCLR-style augmentation pipeline for small images, batched and seeded.

    ``crop (scale=crop_scale) -> horizontal flip (p=flip_p) -> brightness/contrast (jitter, p=jitter_p)
    -> random erasing (p=erase_p) -> Gaussian noise (noise_std)``. A stage with zero strength or
    probability is skipped (and draws no random numbers).

    Attributes:
        crop_scale: area range of :func:`random_resized_crop` (``None``: no crop).
        flip_p: probability of a horizontal flip (Fashion-MNIST and emoji are left/right symmetric
            enough for this to be a nuisance variable; set 0 for text-like images).
        jitter: brightness and contrast strength of :func:`random_brightness_contrast`.
        jitter_p: probability of the colour jitter.
        erase_p: probability of :func:`random_erasing`.
        noise_std: standard deviation of :func:`gaussian_noise`.

    Call: ``aug(x, generator) -> Tensor`` with ``x`` ``[B, C, H, W]`` in ``[0, 1]``.
    """

    crop_scale: tuple[float, float] | None = (0.4, 1.0)
    flip_p: float = 0.5
    jitter: float = 0.4
    jitter_p: float = 0.8
    erase_p: float = 0.25
    noise_std: float = 0.02

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return one augmented view of every image of ``x``."""
        _check_images(x)
        if self.crop_scale is not None:
            x = random_resized_crop(x, scale=self.crop_scale, generator=generator)
        if self.flip_p > 0:
            x = random_horizontal_flip(x, p=self.flip_p, generator=generator)
        if self.jitter > 0 and self.jitter_p > 0:
            x = random_brightness_contrast(
                x, brightness=self.jitter, contrast=self.jitter, p=self.jitter_p, generator=generator
            )
        if self.erase_p > 0:
            x = random_erasing(x, p=self.erase_p, generator=generator)
        if self.noise_std > 0:
            x = gaussian_noise(x, std=self.noise_std, generator=generator)
        return x
