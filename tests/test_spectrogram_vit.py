"""Spectrogram ViT of Myna: token counts, positions, masking, kept-token gradients, hybrid, presets."""

from __future__ import annotations

import pytest
import torch

from xrisk.models.audio import (
    PRESETS, PatchEmbedding, SpectrogramViT, num_kept_tokens, random_keep_indices, sincos_positions_2d,
)


def _tiny(patch: str, **kw) -> SpectrogramViT:
    return SpectrogramViT.from_preset("tiny", patch=patch, out_dim=16, **kw)


@pytest.mark.parametrize(("patch", "n_frames", "tokens"), [
    ("square", 96, {"square": 48}), ("vertical", 96, {"vertical": 48}),
    ("hybrid", 96, {"square": 48, "vertical": 48}), ("square", 32, {"square": 16}), ("vertical", 10, {"vertical": 5}),
])
def test_token_counts_per_patch_shape(patch, n_frames, tokens):
    model = _tiny(patch, n_frames=n_frames)
    assert {k: model.num_tokens(k) for k in model.kinds} == tokens
    emb = model.embeddings["vertical" if patch == "vertical" else "square"]
    assert emb.patch == ((128, 2) if patch == "vertical" else (16, 16))


def test_patches_follow_the_reference_layout():
    """``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``: row-major patches, each flattened row-major."""
    emb = PatchEmbedding(32, 8, (16, 4), dim=8)
    spec = torch.arange(2 * 32 * 8, dtype=torch.float32).view(2, 32, 8)
    p = emb.patches(spec)
    assert p.shape == (2, 4, 64) and emb.grid == (2, 2)
    for b in range(2):
        for h in range(2):
            for w in range(2):
                torch.testing.assert_close(p[b, h * 2 + w], spec[b, 16 * h : 16 * h + 16, 4 * w : 4 * w + 4].reshape(-1))


def test_sincos_positions_formula():
    pe = sincos_positions_2d(3, 4, 16)
    assert pe.shape == (12, 16)
    omega = [10_000.0 ** (-j / 3) for j in range(4)]
    y, x = 2, 1  # token 2 * 4 + 1
    expected = ([torch.sin(torch.tensor(x * w)) for w in omega] + [torch.cos(torch.tensor(x * w)) for w in omega]
                + [torch.sin(torch.tensor(y * w)) for w in omega] + [torch.cos(torch.tensor(y * w)) for w in omega])
    torch.testing.assert_close(pe[9], torch.stack(expected).float())
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_positions_2d(2, 2, 6)


def test_masking_keeps_n_minus_int_rn_tokens_different_per_sample():
    assert num_kept_tokens(48, 0.9) == 5 and num_kept_tokens(48, 0.0) == 48 and num_kept_tokens(48, 0.75) == 12
    assert num_kept_tokens(10, 0.99) == 1  # never zero tokens
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="mask_ratio"):
            num_kept_tokens(48, bad)
    idx = random_keep_indices(64, 48, 0.9, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (64, 5)
    assert all(len(set(r)) == 5 and r == sorted(r) for r in idx.tolist())
    assert len({tuple(r) for r in idx.tolist()}) > 60  # different subsets per sample
    counts = torch.bincount(random_keep_indices(4000, 48, 0.9, generator=torch.Generator().manual_seed(1)).flatten(),
                            minlength=48).float()
    assert counts.min() > 0.8 * counts.mean()  # every position is kept about equally often
    again = random_keep_indices(64, 48, 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_masked_forward_equals_embedding_all_tokens_then_dropping():
    """Gathering patches before the (per-token) embedding equals the reference's order."""
    model = _tiny("square")
    spec = torch.rand(3, 128, 96)
    keep = random_keep_indices(3, 48, 0.9, generator=torch.Generator().manual_seed(2))
    emb = model.embeddings["square"]
    all_tokens = emb(spec)
    dropped = all_tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, all_tokens.shape[-1]))
    reference = model.transformer(dropped).mean(1)
    torch.testing.assert_close(model.encode(spec, keep=keep), reference, rtol=1e-5, atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(model(spec, mask_ratio=0.9, generator=g1), model.head(model.encode(
        spec, keep=random_keep_indices(3, 48, 0.9, generator=g2))))


@pytest.mark.parametrize("patch", ["square", "vertical"])
def test_gradients_flow_only_through_kept_tokens(patch):
    model = _tiny(patch)
    spec = torch.rand(4, 128, 96, requires_grad=True)
    keep = random_keep_indices(4, 48, 0.9, generator=torch.Generator().manual_seed(3))
    model.head(model.encode(spec, keep=keep)).square().sum().backward()
    emb = model.embeddings[patch]
    grad_tokens = emb.patches(spec.grad).abs().sum(-1)  # [B, N]: gradient mass per patch
    kept = torch.zeros(4, 48, dtype=torch.bool).scatter_(1, keep, True)
    assert (grad_tokens[~kept] == 0).all()
    assert (grad_tokens[kept] > 0).all()


def test_hybrid_output_is_two_dims_and_shares_one_transformer():
    model = _tiny("hybrid")
    dim = PRESETS["tiny"]["dim"]
    spec = torch.rand(2, 1, 128, 96)  # a channel axis is accepted
    assert model.features(spec).shape == (2, 2 * dim) and model.feature_dim == 2 * dim
    assert model(spec).shape == (2, 32)
    torch.testing.assert_close(model.features(spec), torch.cat([model.encode(spec, "square"),
                                                                model.encode(spec, "vertical")], 1))
    assert model(spec, "vertical", mask_ratio=0.9).shape == (2, 16)
    assert set(model.embeddings) == {"square", "vertical"}
    assert sum(1 for name, _ in model.named_modules() if name == "transformer") == 1
    with pytest.raises(ValueError, match="kind="):
        model.encode(spec)
    single = _tiny("square")
    assert single.features(spec).shape == (2, dim) and single(spec).shape == (2, 16)
    with pytest.raises(ValueError, match="kind must be one of"):
        single(spec, "vertical")


def test_input_validation():
    model = _tiny("square")
    with pytest.raises(ValueError, match=r"\[B, 128, 96\]"):
        model(torch.rand(2, 128, 80))
    with pytest.raises(ValueError, match="does not split"):
        _tiny("square", n_frames=90)
    with pytest.raises(ValueError, match="patch must be"):
        SpectrogramViT(patch="round")
    with pytest.raises(ValueError, match="unknown preset"):
        SpectrogramViT.from_preset("vit-xl")


def test_vit_s_32_has_the_paper_size():
    model = SpectrogramViT.from_preset("vit-s-32", patch="square", out_dim=None)
    n = sum(p.numel() for p in model.parameters())
    assert 21_000_000 < n < 22_500_000  # "Myna-22M": dim 384, depth 12, 6 heads of 64, MLP 1536
    assert "positions" not in model.state_dict() and not any("positions" in k for k in model.state_dict())
