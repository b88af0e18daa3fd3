"""Small image and text encoders for contrastive learning on CPU-sized data.

Image backbones map ``[B, C, H, W]`` images to ``[B, feature_dim]`` features:
:class:`MLPBackbone`, :class:`ConvBackbone`, :class:`TinyViT`. :class:`ContrastiveEncoder` puts a
:class:`ProjectionHead` on a backbone: ``forward`` gives the projected embedding used by the loss,
``features`` the backbone representation used for linear probes (SimCLR's finding: the probe is
better before the head).

Text towers map one caption representation per row to ``[B, out_dim]``:

* :class:`BagOfTokensTextEncoder`: trainable mean of token embeddings (token ids from
  :class:`SimpleTokenizer`) + MLP; needs no pretrained model.
* :class:`PrecomputedTextEncoder`: trainable projection of frozen sentence embeddings (e.g. the
  384-d MiniLM vectors of :func:`xrisk.data.minilm_embeddings`).

Every module returns unnormalised embeddings; the xrisk contrastive losses L2-normalise.

Example:
    >>> import torch
    >>> from xrisk.models import ContrastiveEncoder, ConvBackbone
    >>> enc = ContrastiveEncoder(ConvBackbone(in_channels=1), out_dim=64)
    >>> enc(torch.rand(4, 1, 28, 28)).shape, enc.features(torch.rand(4, 1, 28, 28)).shape
    (torch.Size([4, 64]), torch.Size([4, 128]))
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MLPBackbone",
    "ConvBackbone",
    "TinyViT",
    "ProjectionHead",
    "ContrastiveEncoder",
    "SimpleTokenizer",
    "BagOfTokensTextEncoder",
    "PrecomputedTextEncoder",
]


def _positive_int(name: str, v: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _check_image_batch(name: str, x: Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} expects images [B, {channels}, H, W], got {tuple(x.shape)}")


class MLPBackbone(nn.Module):
    """Flatten the image and apply ``Linear-ReLU`` layers.

    Args:
        input_shape: ``(C, H, W)`` of the images.
        hidden: widths of the hidden layers; the last is ``feature_dim``.

    Shapes: ``[B, C, H, W]`` -> ``[B, hidden[-1]]``.
    """

    def __init__(self, input_shape: tuple[int, int, int], hidden: Sequence[int] = (512, 256)) -> None:
        super().__init__()
        if len(input_shape) != 3 or not hidden:
            raise ValueError(f"input_shape must be (C, H, W) and hidden non-empty, got {input_shape!r}, {hidden!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        dims = [self.input_shape[0] * self.input_shape[1] * self.input_shape[2], *map(int, hidden)]
        layers: list[nn.Module] = [nn.Flatten(1)]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.feature_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, feature_dim]``."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"MLPBackbone expects images [B, {self.input_shape}], got {tuple(x.shape)}")
        return self.net(x)


class ConvBackbone(nn.Module):
    """Four ``conv3x3-BN-ReLU`` blocks (``w, 2w, 2w, 4w`` channels), max-pooling after blocks 1 and 2,
    global average pooling at the end: ``feature_dim = 4 width``.

    About 150k parameters at ``width=32``; sized for 28x28 and 32x32 inputs (works for >= 4x4).

    Args:
        in_channels: image channels ``C``.
        width: channels of the first block.

    Shapes: ``[B, C, H, W]`` -> ``[B, 4 width]``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        width = _positive_int("width", width)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.net = nn.Sequential(
            *block(in_channels, width), nn.MaxPool2d(2),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )
        self.feature_dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, 4 width]``."""
        _check_image_batch("ConvBackbone", x, self.in_channels)
        return self.net(x)


class TinyViT(nn.Module):
    """A small Vision Transformer: non-overlapping ``patch_size`` patches, a class token, learned
    position embeddings, ``depth`` pre-norm transformer layers; features = final class token.

    Args:
        image_size: side ``H = W`` of the (square) images; a multiple of ``patch_size``.
        patch_size: patch side.
        in_channels: image channels ``C``.
        dim: token width (``feature_dim``).
        depth: number of transformer layers.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: hidden width of the MLP blocks relative to ``dim``.

    Shapes: ``[B, C, image_size, image_size]`` -> ``[B, dim]``.

    Reference: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, arXiv:2010.11929.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 4,
        in_channels: int = 1,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        for name, v in (("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels),
                        ("dim", dim), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            _positive_int(name, v)
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.image_size, self.in_channels = image_size, in_channels
        num_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=mlp_ratio * dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, dim]`` (normalised class token)."""
        _check_image_batch("TinyViT", x, self.in_channels)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"TinyViT was built for {self.image_size}x{self.image_size} images, got {tuple(x.shape)}")
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.norm(self.blocks(tokens)[:, 0])


class ProjectionHead(nn.Module):
    """``Linear(in_dim, hidden_dim) - ReLU - Linear(hidden_dim, out_dim)`` (SimCLR's MLP head);
    ``hidden_dim=0`` gives a single ``Linear(in_dim, out_dim)``.

    Shapes: ``[B, in_dim]`` -> ``[B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        _positive_int("in_dim", in_dim)
        _positive_int("out_dim", out_dim)
        hidden = in_dim if hidden_dim is None else int(hidden_dim)
        if hidden < 0:
            raise ValueError(f"hidden_dim must be >= 0, got {hidden_dim!r}")
        if hidden == 0:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim]`` -> ``[B, out_dim]``."""
        return self.net(x)


class ContrastiveEncoder(nn.Module):
    """A backbone followed by a :class:`ProjectionHead`.

    Args:
        backbone: a module mapping inputs to ``[B, F]`` with an int attribute ``feature_dim = F``.
        out_dim: embedding size given to the loss.
        hidden_dim: hidden width of the head (default ``F``; 0 for a linear head).

    ``forward(x) -> [B, out_dim]`` embeddings; ``features(x) -> [B, F]`` backbone features.
    """

    def __init__(self, backbone: nn.Module, out_dim: int = 64, hidden_dim: int | None = None) -> None:
        super().__init__()
        feature_dim = getattr(backbone, "feature_dim", None)
        if not isinstance(feature_dim, int):
            raise TypeError(f"backbone must have an int attribute feature_dim, got {type(backbone).__name__}")
        self.backbone = backbone
        self.head = ProjectionHead(feature_dim, out_dim, hidden_dim)
        self.feature_dim, self.out_dim = feature_dim, out_dim

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, feature_dim]`` (the representation a linear probe reads)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Projected embeddings ``[B, out_dim]``."""
        return self.head(self.backbone(x))


_TOKEN = re.compile(r"[a-z0-9]+")


class SimpleTokenizer:
    """Lower-case word tokenizer with a vocabulary built from a corpus.

    Words are maximal runs of ``[a-z0-9]`` after lower-casing (accents and punctuation split
    words). Id 0 is padding, id 1 the unknown word; the other ids follow decreasing corpus
    frequency (ties alphabetical), so the vocabulary does not depend on the corpus order.

    Args:
        corpus: the texts to build the vocabulary from.
        min_count: words seen fewer times become unknown.

    Example:
        >>> tok = SimpleTokenizer(["a photo of a bag", "a photo of a coat"])
        >>> tok.encode(["a bag", "a hat"], max_len=3).tolist()
        [[2, 5, 0], [2, 1, 0]]
    """

    PAD = 0
    UNK = 1

    def __init__(self, corpus: Iterable[str], *, min_count: int = 1) -> None:
        counts = Counter(w for text in corpus for w in self.split(text))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.vocab: dict[str, int] = {w: i + 2 for i, w in enumerate(words)}

    @staticmethod
    def split(text: str) -> list[str]:
        """The words of ``text``."""
        return _TOKEN.findall(text.lower())

    def __len__(self) -> int:
        """Vocabulary size including the padding and unknown ids."""
        return len(self.vocab) + 2

    def encode(self, texts: Sequence[str], *, max_len: int | None = None) -> Tensor:
        """Token ids ``[N, L]`` (int64), right-padded with 0; ``L`` = longest text or ``max_len``."""
        ids = [[self.vocab.get(w, self.UNK) for w in self.split(t)] for t in texts]
        length = max((len(r) for r in ids), default=1) if max_len is None else int(max_len)
        out = torch.zeros(len(ids), max(length, 1), dtype=torch.long)
        for i, row in enumerate(ids):
            row = row[:length]
            if row:
                out[i, : len(row)] = torch.tensor(row)
        return out


class BagOfTokensTextEncoder(nn.Module):
    """Mean of trainable token embeddings (padding ignored) followed by a :class:`ProjectionHead`.

    Args:
        vocab_size: number of token ids (``len(tokenizer)``).
        embed_dim: token embedding width.
        out_dim: output embedding size.
        hidden_dim: hidden width of the head (default ``embed_dim``; 0 for linear).

    Shapes: token ids ``[B, L]`` (0 = padding) -> ``[B, out_dim]``. A row of only padding maps to
    the head applied to the zero vector.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, out_dim: int = 64, hidden_dim: int | None = None) -> None:
        super().__init__()
        _positive_int("vocab_size", vocab_size)
        self.embed = nn.Embedding(vocab_size, _positive_int("embed_dim", embed_dim), padding_idx=0)
        self.head = ProjectionHead(embed_dim, out_dim, hidden_dim)
        self.out_dim = out_dim

    def forward(self, tokens: Tensor) -> Tensor:
        """``[B, L]`` int64 token ids -> ``[B, out_dim]``."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [B, L], got {tokens.dtype} {tuple(tokens.shape)}")
        mask = (tokens != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


class PrecomputedTextEncoder(nn.Module):
    """Trainable projection of frozen, precomputed sentence embeddings (e.g. 384-d MiniLM).

    The frozen encoder runs once, outside training (:func:`xrisk.data.minilm_embeddings` caches
    its output); only this head is trained, which is how a pretrained text tower is used on CPU.

    Args:
        in_dim: width of the precomputed embeddings.
        out_dim: output embedding size.
        hidden_dim: hidden width of the head (default ``in_dim``; 0 for linear).

    Shapes: ``[B, in_dim]`` -> ``[B, out_dim]``.
    """

    def __init__(self, in_dim: int = 384, out_dim: int = 64, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.head = ProjectionHead(in_dim, out_dim, hidden_dim)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, embeddings: Tensor) -> Tensor:
        """``[B, in_dim]`` -> ``[B, out_dim]``."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.in_dim:
            raise ValueError(f"expected precomputed embeddings [B, {self.in_dim}], got {tuple(embeddings.shape)}")
        return self.head(embeddings)
