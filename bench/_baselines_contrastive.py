"""Mini-batch contrastive baselines for the contrastive benchmarks (written from the formulas).

* :func:`clip_loss`: OpenCLIP's ``ClipLoss`` formula (Radford et al., ICML 2021; Cherti et al.,
  CVPR 2023): with L2-normalised image features ``x`` and text features ``y`` (``[B, d]``) and
  ``s = logit_scale`` (``1 / tau``),

      L = ( CE(s * x @ y.T, arange(B)) + CE(s * y @ x.T, arange(B)) ) / 2

  (symmetric cross-entropy, the positive of row ``i`` is column ``i``). ``y @ x.T`` is taken as the
  transpose of ``x @ y.T`` (one matrix product), which makes this baseline faster than
  :func:`clip_loss_two_products`, the way OpenCLIP's ``ClipLoss`` computes it on one process
  (``open_clip/loss.py``: one product for ``logits_per_image``, another for ``logits_per_text``).

* :func:`nt_xent`: SimCLR's NT-Xent (Chen et al., ICML 2020) over the same ``2B`` views: with
  ``z = normalize(cat(z1, z2))`` (``[2B, d]``) and ``S = z @ z.T / tau`` whose diagonal is removed,

      L = (1 / 2B) sum_k -log( exp(S[k, p(k)]) / sum_{m != k} exp(S[k, m]) ),  p(k) = (k + B) mod 2B.

Both are the gamma = 1, no-memory special case of the global contrastive loss: the targets of
the bias that SogCLR removes. The modules share the xrisk call signature ``loss(a, b, index)``
(``index`` is ignored) so the harness can time every loss the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["clip_loss", "clip_loss_two_products", "nt_xent", "ClipLossBaseline", "OpenClipFormBaseline",
           "NTXentBaseline"]


def clip_loss(image: Tensor, text: Tensor, logit_scale: float | Tensor, *, normalize: bool = True) -> Tensor:
    """Symmetric image-text cross-entropy (OpenCLIP ``ClipLoss`` formula, one process)."""
    if normalize:
        image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    logits = logit_scale * image @ text.T  # [B, B]; row i = image i against every text
    labels = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def clip_loss_two_products(image: Tensor, text: Tensor, logit_scale: float | Tensor) -> Tensor:
    """:func:`clip_loss` with both logit matrices from their own product (OpenCLIP's one-process form)."""
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    labels = torch.arange(image.shape[0], device=image.device)
    per_image, per_text = logit_scale * image @ text.T, logit_scale * text @ image.T
    return 0.5 * (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels))


def nt_xent(z1: Tensor, z2: Tensor, tau: float, *, normalize: bool = True) -> Tensor:
    """SimCLR NT-Xent over the ``2B`` views ``cat(z1, z2)`` (each view's positive is its twin)."""
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    if normalize:
        z = F.normalize(z, dim=1)
    sim = (z @ z.T) / tau
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


class ClipLossBaseline(nn.Module):
    """``clip_loss`` with a fixed temperature, called as ``loss(image, text, index)``."""

    def __init__(self, tau: float = 0.07) -> None:
        super().__init__()
        self.logit_scale = 1.0 / tau

    def forward(self, image: Tensor, text: Tensor, index: Tensor | None = None) -> Tensor:
        return clip_loss(image, text, self.logit_scale)


class OpenClipFormBaseline(ClipLossBaseline):
    """``clip_loss_two_products`` with a fixed temperature (context row of the benchmark, not a reference)."""

    def forward(self, image: Tensor, text: Tensor, index: Tensor | None = None) -> Tensor:
        return clip_loss_two_products(image, text, self.logit_scale)


class NTXentBaseline(nn.Module):
    """``nt_xent`` with a fixed temperature, called as ``loss(view1, view2, index)``."""

    def __init__(self, tau: float = 0.1) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, z1: Tensor, z2: Tensor, index: Tensor | None = None) -> Tensor:
        return nt_xent(z1, z2, self.tau)
