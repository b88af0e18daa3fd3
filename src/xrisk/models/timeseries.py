"""Transformer over irregular multivariate time series as ``(time, variable, value)`` triplet tokens.

Each measurement is one token (King et al., arXiv:2410.09199):

.. math::

    e_k = \\mathrm{MLP}(\\tilde x_k) + \\mathrm{T2V}(t_k / \\text{time\\_scale}) + E[v_k],\\qquad
    \\tilde x_k = (x_k - \\mu_{v_k}) / \\sigma_{v_k}

with the value MLP ``Linear(1, 2d) - tanh - Linear(2d, d)``, Time2Vec
``T2V(t) = [w_0 t + b_0, sin(w_1 t + b_1), ..., sin(w_{d-1} t + b_{d-1})]`` (:class:`Time2Vec`), a
learned embedding ``E`` of the variable id (``0`` is padding) and the per-variable normalisation
``mu, sigma`` held as buffers (:meth:`TripletTransformer.set_value_stats`: fitted on the training split,
saved in ``state_dict`` with the weights). A hidden value (masked-value imputation) replaces the
value MLP's output by a learned mask vector. A learned class token goes first; ``layers`` pre-norm
transformer layers (``heads`` heads, ReLU feed-forward of width ``ff_dim``) run with
:func:`torch.nn.functional.scaled_dot_product_attention` and a key-padding mask, so padded tokens
never change a real token's output. Outputs (:class:`TripletOutput`): ``features`` = the final class
token (linear probes, fine-tuning), ``embedding`` = ``Linear(d, d, bias=False)(features)`` (the
sequence embedding fed to the contrastive loss) and ``imputation`` = ``Linear(d, 1)`` of every
token (its predicted normalised value).

**Differences from the reference** (documented, not bugs there): bidirectional attention by default
(``causal=True`` gives the reference's causal mask: each token sees itself and earlier tokens, the
class token sees all; it needs an explicit ``L x L`` mask and is slower); pre-norm layers with a
final LayerNorm; the class token first instead of last.

**Long sequences.** Attention costs ``O(L^2)`` time per stay; with a key-padding mask the CPU
kernel keeps memory ``O(L)`` (4,096 tokens per stay run). Three things keep long stays cheap without
changing any result: a **token budget** (the data side keeps an ordered random subset of at most
``max_tokens`` tokens per stay, :func:`xrisk.data.clinical.ordered_subsample`; the reference's 1024),
**padding to the batch's longest stay** (:meth:`TokenBatch.pad`), and **length buckets**
(``bucket_ratio``): a batch is split into groups of similar length (:func:`length_buckets`), each
padded only to its own longest stay, run separately and put back in batch order. Every stay's output
is the same up to float rounding (the test suite checks it), because no token attends across stays
or to padding; only with ``dropout > 0`` do the random dropout draws differ. ``bench/fidelity_clinical.py``
measures the speed.

Example:
    >>> import torch
    >>> model = TripletTransformer(num_variables=5, dim=16, heads=2, ff_dim=32)
    >>> seqs = [(torch.rand(7).sort().values, torch.randint(1, 6, (7,)), torch.randn(7)),
    ...         (torch.rand(3).sort().values, torch.randint(1, 6, (3,)), torch.randn(3))]
    >>> out = model(TokenBatch.pad(seqs))
    >>> out.features.shape, out.embedding.shape, out.imputation.shape
    (torch.Size([2, 16]), torch.Size([2, 16]), torch.Size([2, 7]))

Paper: R. King, S. Kodali, C. Krueger, T. Yang, B. J. Mortazavi, "An Efficient Contrastive Unimodal
Pretraining Method for EHR Time Series Data", IEEE BHI 2024, arXiv:2410.09199. Time2Vec: Kazemi et
al., arXiv:1907.05321.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Time2Vec", "TokenBatch", "TripletOutput", "TripletTransformer", "length_buckets"]


class Time2Vec(nn.Module):
    """Time2Vec: one linear and ``dim - 1`` periodic (sine) features of a scalar time.

    ``T2V(t)[0] = w_0 t + b_0``, ``T2V(t)[k] = sin(w_k t + b_k)`` for ``k = 1..dim-1``; weights start
    ``N(0, 1)`` (as in the reference). Shapes: ``[...]`` -> ``[..., dim]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"Time2Vec dim must be >= 2, got {dim}")
        self.weight = nn.Parameter(torch.randn(dim))
        self.bias = nn.Parameter(torch.randn(dim))

    def forward(self, t: Tensor) -> Tensor:
        z = t.unsqueeze(-1) * self.weight + self.bias
        return torch.cat([z[..., :1], torch.sin(z[..., 1:])], dim=-1)


@dataclass
class TokenBatch:
    """A padded batch of token sequences (row ``i`` holds ``lengths[i]`` real tokens, then padding).

    Attributes:
        times: ``[B, L]`` float times (hours; padding 0).
        variables: ``[B, L]`` int64 variable ids ``>= 1`` (padding 0).
        values: ``[B, L]`` float raw values (padding 0).
        lengths: ``[B]`` int64 number of real tokens (each ``>= 1``).
    """

    times: Tensor
    variables: Tensor
    values: Tensor
    lengths: Tensor

    @classmethod
    def pad(cls, sequences: Sequence[tuple[Tensor, Tensor, Tensor]], *, relative_time: bool = True) -> TokenBatch:
        """Pad ``(times, variables, values)`` sequences to the longest one.

        ``relative_time``: subtract each sequence's first time, so a view starts at time 0 (as in
        the reference).
        """
        if not sequences:
            raise ValueError("need at least one sequence")
        lengths = torch.tensor([int(s[0].numel()) for s in sequences], dtype=torch.long)
        if int(lengths.min()) < 1:
            raise ValueError("every sequence needs at least one token")
        b, width = len(sequences), int(lengths.max())
        times = torch.zeros(b, width)
        variables = torch.zeros(b, width, dtype=torch.long)
        values = torch.zeros(b, width)
        for i, (t, v, x) in enumerate(sequences):
            n = int(lengths[i])
            t = torch.as_tensor(t, dtype=torch.float32)
            times[i, :n] = t - t[0] if relative_time else t
            variables[i, :n] = torch.as_tensor(v, dtype=torch.long)
            values[i, :n] = torch.as_tensor(x, dtype=torch.float32)
        return cls(times, variables, values, lengths)

    @property
    def padding_mask(self) -> Tensor:
        """``[B, L]`` bool, True at real tokens."""
        return torch.arange(self.times.shape[1], device=self.lengths.device) < self.lengths[:, None]

    def select(self, index: Tensor) -> TokenBatch:
        """Rows ``index``, trimmed to their longest sequence."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        return TokenBatch(self.times[index, :width], self.variables[index, :width], self.values[index, :width], lengths)

    def to(self, device: torch.device | str) -> TokenBatch:
        """The batch on ``device``."""
        return TokenBatch(self.times.to(device), self.variables.to(device), self.values.to(device),
                          self.lengths.to(device))


@dataclass
class TripletOutput:
    """Outputs of :class:`TripletTransformer`.

    Attributes:
        features: ``[B, d]`` final class-token state (probes, classifiers).
        embedding: ``[B, d]`` sequence embedding (input of the contrastive loss).
        imputation: ``[B, L]`` predicted normalised value of every token (0 at padding).
    """

    features: Tensor
    embedding: Tensor
    imputation: Tensor


def length_buckets(lengths: Tensor, *, ratio: float = 1.5, min_size: int = 4) -> list[Tensor]:
    """Group batch rows by length: sorted by length, a group grows while its longest row is at most
    ``ratio`` times its shortest (or while it has fewer than ``min_size`` rows); a last group smaller
    than ``min_size`` joins the previous one. Returns index tensors covering every row once.
    """
    if ratio < 1.0:
        raise ValueError(f"ratio must be >= 1, got {ratio!r}")
    order = torch.argsort(lengths.cpu(), stable=True)
    ls = lengths.cpu()[order].tolist()
    groups: list[list[int]] = []
    start = 0
    for j in range(1, len(ls) + 1):
        if j == len(ls) or (ls[j] > ratio * ls[start] and j - start >= min_size):
            groups.append(list(range(start, j)))
            start = j
    if len(groups) > 1 and len(groups[-1]) < min_size:
        groups[-2].extend(groups.pop())
    return [order[torch.tensor(g, dtype=torch.long)].to(lengths.device) for g in groups]


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x + Attn(LN(x))``, then ``x + FF(LN(x))`` (ReLU)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class TripletTransformer(nn.Module):
    """Encoder of ``(time, variable, value)`` token sequences (see the module docstring for the math).

    Args:
        num_variables: ``V``; variable ids are ``1..V`` (``0`` = padding).
        dim: token width ``d`` (the reference: 64).
        heads: attention heads (``dim`` must be divisible by it; the reference: 8).
        ff_dim: feed-forward width (the reference: 128).
        layers: transformer layers (the reference: 2).
        dropout: dropout in the layers (the reference: 0.1; default 0, see *Long sequences*).
        time_scale: times are divided by it before Time2Vec (24: hours -> days).
        causal: the reference's causal attention (see above).
        bucket_ratio: length-bucket ratio of :func:`length_buckets` (``None``: one padded batch).
        min_bucket: smallest bucket.

    Shapes: ``forward(TokenBatch [B, L], value_mask [B, L] | None)`` -> :class:`TripletOutput`.

    State: parameters, and the buffers ``value_mean``, ``value_std`` (``[V + 1]``, entry 0 unused) of the
    input normalisation.
    """

    def __init__(
        self,
        num_variables: int,
        *,
        dim: int = 64,
        heads: int = 8,
        ff_dim: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        time_scale: float = 24.0,
        causal: bool = False,
        bucket_ratio: float | None = 1.5,
        min_bucket: int = 4,
    ) -> None:
        super().__init__()
        for name, v in (("num_variables", num_variables), ("dim", dim), ("heads", heads), ("ff_dim", ff_dim),
                        ("layers", layers), ("min_bucket", min_bucket)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not (np.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be finite and > 0, got {time_scale!r}")
        if bucket_ratio is not None and not bucket_ratio >= 1.0:
            raise ValueError(f"bucket_ratio must be >= 1 or None, got {bucket_ratio!r}")
        self.num_variables, self.dim, self.causal = num_variables, dim, causal
        self.time_scale, self.bucket_ratio, self.min_bucket = float(time_scale), bucket_ratio, min_bucket
        self.value_mlp = nn.Sequential(nn.Linear(1, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))
        self.time2vec = Time2Vec(dim)
        self.variable_embedding = nn.Embedding(num_variables + 1, dim, padding_idx=0)
        self.mask_embedding = nn.Parameter(0.02 * torch.randn(dim))
        self.class_token = nn.Parameter(0.02 * torch.randn(dim))
        self.layers = nn.ModuleList([_EncoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim, bias=False)
        self.imputation_head = nn.Linear(dim, 1)
        self.register_buffer("value_mean", torch.zeros(num_variables + 1))
        self.register_buffer("value_std", torch.ones(num_variables + 1))

    def set_value_stats(self, mean: Sequence[float] | np.ndarray | Tensor, std: Sequence[float] | np.ndarray | Tensor) -> None:
        """Store the per-variable normalisation (``[V]`` means and standard deviations, variable ids ``1..V``)."""
        m = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
        s = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)
        if m.shape != (self.num_variables,) or s.shape != (self.num_variables,):
            raise ValueError(f"mean and std must be [{self.num_variables}], got {tuple(m.shape)}, {tuple(s.shape)}")
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError("value stats must be finite with std > 0 (NaN/inf or std <= 0 given)")
        with torch.no_grad():
            self.value_mean[1:] = m.to(self.value_mean.device)
            self.value_std[1:] = s.to(self.value_std.device)

    def normalize(self, variables: Tensor, values: Tensor) -> Tensor:
        """``(values - mean[variables]) / std[variables]`` (padding ids map to ``(x - 0) / 1``)."""
        return (values - self.value_mean[variables]) / self.value_std[variables]

    def _dense(self, batch: TokenBatch, value_mask: Tensor | None) -> TripletOutput:
        real = batch.padding_mask
        x = self.normalize(batch.variables, batch.values)
        ve = self.value_mlp(x.unsqueeze(-1))
        if value_mask is not None:
            ve = torch.where((value_mask & real).unsqueeze(-1), self.mask_embedding.to(ve.dtype), ve)
        tokens = ve + self.time2vec(batch.times / self.time_scale) + self.variable_embedding(batch.variables)
        b, n = real.shape
        h = torch.cat([self.class_token.expand(b, 1, self.dim).to(tokens.dtype), tokens], dim=1)
        keys = torch.cat([real.new_ones(b, 1), real], dim=1)  # [B, L + 1]
        if self.causal:
            pos = torch.arange(n + 1, device=keys.device)
            allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= 1)
            allowed[0] = True  # the class token sees every token
            mask = allowed[None, None] & keys[:, None, None, :]
        else:
            mask = keys[:, None, None, :]
        for layer in self.layers:
            h = layer(h, mask)
        h = self.norm(h)
        features = h[:, 0]
        imputation = self.imputation_head(h[:, 1:]).squeeze(-1).masked_fill(~real, 0.0)
        return TripletOutput(features, self.head(features), imputation)

    def forward(self, batch: TokenBatch, value_mask: Tensor | None = None) -> TripletOutput:
        """Encode ``batch``; ``value_mask [B, L]`` (True = hide the value) for masked-value imputation."""
        if batch.variables.dim() != 2 or batch.times.shape != batch.variables.shape != batch.values.shape:
            raise ValueError(
                f"times, variables and values must be [B, L] alike, got {tuple(batch.times.shape)}, "
                f"{tuple(batch.variables.shape)}, {tuple(batch.values.shape)}"
            )
        if value_mask is not None and value_mask.shape != batch.variables.shape:
            raise ValueError(f"value_mask must be {tuple(batch.variables.shape)}, got {tuple(value_mask.shape)}")
        real = batch.padding_mask
        if not (torch.isfinite(batch.values[real]).all() and torch.isfinite(batch.times[real]).all()):
            raise ValueError("times and values must be finite (NaN/inf in a real token)")
        if int(batch.variables.max()) > self.num_variables or int(batch.variables[real].min()) < 1:
            raise ValueError(f"variable ids of real tokens must lie in 1..{self.num_variables}")
        groups = None
        if self.bucket_ratio is not None and batch.lengths.numel() >= 2 * self.min_bucket:
            groups = length_buckets(batch.lengths, ratio=self.bucket_ratio, min_size=self.min_bucket)
        if groups is None or len(groups) == 1:
            return self._dense(batch, value_mask)
        width = batch.times.shape[1]
        outs = []
        for g in groups:
            part = batch.select(g)
            mask = None if value_mask is None else value_mask[g, : part.times.shape[1]]
            outs.append(self._dense(part, mask))
        inverse = torch.argsort(torch.cat(groups))
        imputation = torch.cat([F.pad(o.imputation, (0, width - o.imputation.shape[1])) for o in outs])
        return TripletOutput(
            torch.cat([o.features for o in outs])[inverse],
            torch.cat([o.embedding for o in outs])[inverse],
            imputation[inverse],
        )
