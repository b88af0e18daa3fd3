"""Spectrogram Vision Transformer of Myna: square, vertical and hybrid patches, masked tokens.

A mel spectrogram ``[B, n_mels, n_frames]`` (or ``[B, 1, n_mels, n_frames]``) is cut into
non-overlapping patches, each patch embedded by ``LayerNorm(patch) -> Linear -> LayerNorm(dim)``,
given a fixed 2-D sin-cos position (:func:`sincos_positions_2d`), passed through a pre-norm
transformer (attention without bias, GELU MLP, final LayerNorm), mean-pooled over tokens and
projected by ``head`` (a ``Linear(dim, out_dim)``; the contrastive embedding). This is the reference's
SimpleViT (lucidrains' vit-pytorch as modified by the Myna authors).

Patch kinds:

* ``"square"``: 16x16 patches; 128 mels x 96 frames give 8 x 6 = 48 tokens;
* ``"vertical"``: ``n_mels x 2`` patches (each token spans every mel band over 2 frames): 48 tokens;
* ``"hybrid"``: both patch embeddings (each with its own positions) and **one shared transformer and
  head**. Training computes the loss once per kind and averages (the recipe does this with
  ``forward(x, kind=...)``); at inference :meth:`SpectrogramViT.features` concatenates the two pooled
  embeddings (``2 dim``) and ``forward`` the two head outputs (``2 out_dim``).

Masking (:mod:`xrisk.models.audio.masking`): ``forward(x, kind, mask_ratio=r)`` keeps
``N - int(r N)`` random tokens per sample and runs the transformer on those only. The kept patches
are gathered *before* the embedding: the embedding and the position are per-token maps, so this
equals the reference's order (embed all tokens, add positions, then drop) while embedding only the
kept ones (a test checks the equality).

Presets (:data:`PRESETS`): ``"tiny"`` (tests), ``"mini"``, ``"small"``, the paper's ``"vit-s-32"``
(dim 384, depth 12, 6 heads of 64, MLP 1536: 21.3M parameters without the head, "Myna-22M") and
``"vit-b-16"`` (768/12/12/3072, 85M).

Example:
    >>> import torch
    >>> from xrisk.models.audio import SpectrogramViT
    >>> model = SpectrogramViT.from_preset("tiny", patch="hybrid", out_dim=16)
    >>> spec = torch.rand(4, 128, 96)
    >>> model(spec, kind="vertical", mask_ratio=0.9).shape, model.features(spec).shape
    (torch.Size([4, 16]), torch.Size([4, 64]))

Paper: Yonay, Hammond, Yang, "Myna: Masking-Based Contrastive Learning of Musical Representations",
arXiv:2502.12511 (code: ghost-signal/myna).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk.models.audio.masking import num_kept_tokens, random_keep_indices
from xrisk.models.encoders import _positive_int

__all__ = ["PRESETS", "PatchEmbedding", "SpectrogramTransformer", "SpectrogramViT", "sincos_positions_2d"]

PatchKind = Literal["square", "vertical"]

#: ``name -> dict(dim, depth, heads, dim_head, mlp_dim)``.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64),
    "mini": dict(dim=64, depth=3, heads=4, dim_head=16, mlp_dim=128),
    "small": dict(dim=192, depth=6, heads=3, dim_head=64, mlp_dim=768),
    "vit-s-32": dict(dim=384, depth=12, heads=6, dim_head=64, mlp_dim=1536),
    "vit-b-16": dict(dim=768, depth=12, heads=12, dim_head=64, mlp_dim=3072),
}


def sincos_positions_2d(rows: int, cols: int, dim: int, temperature: float = 10_000.0) -> Tensor:
    """Fixed 2-D sin-cos positions ``[rows * cols, dim]`` (row-major token order).

    Token ``(y, x)`` gets ``[sin(x w), cos(x w), sin(y w), cos(y w)]`` with the ``dim / 4`` frequencies
    ``w_j = temperature^(-j / (dim/4 - 1))``, ``j = 0 .. dim/4 - 1`` (SimpleViT's ``posemb_sincos_2d``).
    ``dim`` must be a multiple of 4 and at least 8.
    """
    if dim % 4 or dim < 8:
        raise ValueError(f"dim must be a multiple of 4 and >= 8 for 2-D sin-cos positions, got {dim}")
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / (quarter - 1))
    y = y.flatten()[:, None].double() * omega[None, :]
    x = x.flatten()[:, None].double() * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


class PatchEmbedding(nn.Module):
    """Patches of one shape -> tokens: ``LayerNorm(ph pw) -> Linear(ph pw, dim) -> LayerNorm(dim)`` plus
    the fixed position of each patch (buffer ``positions [N, dim]``, not saved: it follows from the shape).

    Args:
        n_mels, n_frames: input size (multiples of the patch size).
        patch: ``(ph, pw)`` patch height (mel bands) and width (frames).
        dim: token width.
    """

    positions: Tensor

    def __init__(self, n_mels: int, n_frames: int, patch: tuple[int, int], dim: int) -> None:
        super().__init__()
        ph, pw = patch
        if n_mels % ph or n_frames % pw:
            raise ValueError(f"a {n_mels}x{n_frames} spectrogram does not split into {ph}x{pw} patches")
        self.patch, self.grid = (ph, pw), (n_mels // ph, n_frames // pw)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.norm_in = nn.LayerNorm(ph * pw)
        self.proj = nn.Linear(ph * pw, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.register_buffer("positions", sincos_positions_2d(*self.grid, dim), persistent=False)

    def patches(self, spec: Tensor) -> Tensor:
        """``[B, n_mels, n_frames]`` -> ``[B, N, ph pw]`` (row-major patches, each flattened row-major)."""
        b = spec.shape[0]
        (ph, pw), (h, w) = self.patch, self.grid
        return spec.reshape(b, h, ph, w, pw).permute(0, 1, 3, 2, 4).reshape(b, h * w, ph * pw)

    def forward(self, spec: Tensor, keep: Tensor | None = None) -> Tensor:
        """Tokens ``[B, N, dim]``, or only the kept ones ``[B, K, dim]`` when ``keep [B, K]`` is given."""
        p = self.patches(spec)
        pos = self.positions.to(p.dtype)
        if keep is not None:
            p = p.gather(1, keep.unsqueeze(-1).expand(-1, -1, p.shape[-1]))
            pos = pos[keep]
        return self.norm_out(self.proj(self.norm_in(p))) + pos


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class SpectrogramTransformer(nn.Module):
    """``depth`` pre-norm blocks ``x <- x + Attn(LN(x)); x <- x + MLP(LN(x))`` and a final LayerNorm.

    Attention has no bias (``heads`` heads of ``dim_head``, scaled dot product); the MLP is
    ``Linear(dim, mlp_dim) - GELU - Linear(mlp_dim, dim)``. Shapes: ``[B, N, dim]`` -> ``[B, N, dim]``.
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
            self.layers.append(nn.ModuleList([_Attention(dim, heads, dim_head), mlp]))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for attn, mlp in self.layers:  # type: ignore[misc]
            x = attn(x) + x
            x = mlp(x) + x
        return self.norm(x)


class SpectrogramViT(nn.Module):
    """Myna's spectrogram ViT (see the module docstring for the architecture and the patch kinds).

    Args:
        patch: ``"square"``, ``"vertical"`` or ``"hybrid"``.
        n_mels, n_frames: input size; ``n_frames`` a multiple of ``square_patch`` (square, hybrid) or of
            ``vertical_width`` (vertical); the reference crops 96 frames (50,000 samples at 16 kHz,
            hop 512, floored to a multiple of 16).
        dim, depth, heads, dim_head, mlp_dim: transformer size (see :data:`PRESETS`).
        out_dim: output of the linear head (the contrastive embedding); ``None``: no head.
        square_patch: side of the square patches (16).
        vertical_width: frames per vertical patch (2); vertical patches span all ``n_mels`` bands.

    Shapes: ``[B, n_mels, n_frames]`` or ``[B, 1, n_mels, n_frames]`` -> ``[B, out_dim]`` per kind.
    """

    def __init__(
        self,
        *,
        patch: Literal["square", "vertical", "hybrid"] = "square",
        n_mels: int = 128,
        n_frames: int = 96,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        dim_head: int = 64,
        mlp_dim: int = 1536,
        out_dim: int | None = 128,
        square_patch: int = 16,
        vertical_width: int = 2,
    ) -> None:
        super().__init__()
        for name, v in (("n_mels", n_mels), ("n_frames", n_frames), ("dim", dim), ("depth", depth), ("heads", heads),
                        ("dim_head", dim_head), ("mlp_dim", mlp_dim), ("square_patch", square_patch),
                        ("vertical_width", vertical_width)) + ((("out_dim", out_dim),) if out_dim is not None else ()):
            _positive_int(name, v)
        if patch not in ("square", "vertical", "hybrid"):
            raise ValueError(f"patch must be 'square', 'vertical' or 'hybrid', got {patch!r}")
        self.patch, self.n_mels, self.n_frames, self.dim = patch, n_mels, n_frames, dim
        kinds: tuple[PatchKind, ...] = ("square", "vertical") if patch == "hybrid" else (patch,)  # type: ignore[assignment]
        shapes = {"square": (square_patch, square_patch), "vertical": (n_mels, vertical_width)}
        self.embeddings = nn.ModuleDict({k: PatchEmbedding(n_mels, n_frames, shapes[k], dim) for k in kinds})
        self.kinds = kinds
        self.transformer = SpectrogramTransformer(dim, depth, heads, dim_head, mlp_dim)
        self.head: nn.Module = nn.Linear(dim, out_dim) if out_dim is not None else nn.Identity()
        self.out_dim = out_dim if out_dim is not None else dim

    @classmethod
    def from_preset(cls, name: str, **kwargs: object) -> "SpectrogramViT":
        """A model with the transformer size of :data:`PRESETS` ``[name]`` (other arguments as given)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **kwargs})  # type: ignore[arg-type]

    def num_tokens(self, kind: PatchKind | None = None) -> int:
        """Tokens per spectrogram for ``kind`` (default: the model's only kind)."""
        return self.embeddings[self._kind(kind)].num_tokens  # type: ignore[return-value]

    def _kind(self, kind: str | None) -> str:
        if kind is None:
            if len(self.kinds) > 1:
                raise ValueError("a hybrid model needs kind='square' or kind='vertical' here")
            return self.kinds[0]
        if kind not in self.kinds:
            raise ValueError(f"kind must be one of {self.kinds} for patch={self.patch!r}, got {kind!r}")
        return kind

    def _spec(self, spec: Tensor) -> Tensor:
        if spec.dim() == 4 and spec.shape[1] == 1:
            spec = spec[:, 0]
        if spec.dim() != 3 or spec.shape[1:] != (self.n_mels, self.n_frames):
            raise ValueError(
                f"expected spectrograms [B, {self.n_mels}, {self.n_frames}] (or [B, 1, ...]), got {tuple(spec.shape)}"
            )
        return spec

    def encode(
        self, spec: Tensor, kind: PatchKind | None = None, *, mask_ratio: float = 0.0,
        generator: torch.Generator | None = None, keep: Tensor | None = None,
    ) -> Tensor:
        """Mean-pooled transformer output ``[B, dim]`` of the tokens of ``kind`` that are kept.

        ``mask_ratio = r > 0`` keeps ``N - int(r N)`` random tokens per sample
        (:func:`~xrisk.models.audio.random_keep_indices` with ``generator``); ``keep [B, K]`` gives the
        kept positions explicitly instead.
        """
        spec = self._spec(spec)
        emb: PatchEmbedding = self.embeddings[self._kind(kind)]  # type: ignore[assignment]
        if keep is None and mask_ratio:
            keep = random_keep_indices(spec.shape[0], emb.num_tokens, mask_ratio, generator=generator, device=spec.device)
        elif keep is None:
            num_kept_tokens(emb.num_tokens, mask_ratio)  # validates the ratio
        return self.transformer(emb(spec, keep)).mean(dim=1)

    def forward(
        self, spec: Tensor, kind: PatchKind | None = None, *, mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Head output ``[B, out_dim]`` for one kind; a hybrid model without ``kind`` concatenates both
        kinds' outputs (``[B, 2 out_dim]``, unmasked)."""
        if kind is None and len(self.kinds) > 1:
            return torch.cat([self.head(self.encode(spec, k)) for k in self.kinds], dim=-1)
        return self.head(self.encode(spec, kind, mask_ratio=mask_ratio, generator=generator))

    def features(self, spec: Tensor) -> Tensor:
        """Frozen-probe features: the pooled embedding without the head, ``[B, dim]``; hybrid: the two
        kinds' embeddings concatenated, ``[B, 2 dim]`` (all tokens, no masking)."""
        return torch.cat([self.encode(spec, k) for k in self.kinds], dim=-1)

    @property
    def feature_dim(self) -> int:
        """Size of :meth:`features` (``dim``, or ``2 dim`` for hybrid)."""
        return self.dim * len(self.kinds)

    def extra_repr(self) -> str:
        return f"patch={self.patch!r}, n_mels={self.n_mels}, n_frames={self.n_frames}, tokens={[self.num_tokens(k) for k in self.kinds]}"
