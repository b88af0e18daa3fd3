"""Encoders and text towers: output shapes, features vs projections, tokenizer, input checks."""

import pytest
import torch

from xrisk.models import (
    BagOfTokensTextEncoder,
    ContrastiveEncoder,
    ConvBackbone,
    MLPBackbone,
    PrecomputedTextEncoder,
    ProjectionHead,
    SimpleTokenizer,
    TinyViT,
)


@pytest.mark.parametrize(
    "make,shape,feat",
    [
        (lambda: ConvBackbone(1, width=8), (1, 28, 28), 32),
        (lambda: ConvBackbone(3, width=8), (3, 32, 32), 32),
        (lambda: MLPBackbone((1, 28, 28), (32, 16)), (1, 28, 28), 16),
        (lambda: TinyViT(image_size=32, patch_size=4, in_channels=3, dim=32, depth=1, heads=4), (3, 32, 32), 32),
    ],
)
def test_image_encoder_shapes_and_backward(make, shape, feat):
    enc = ContrastiveEncoder(make(), out_dim=12)
    x = torch.rand(5, *shape)
    z = enc(x)
    assert z.shape == (5, 12) and enc.features(x).shape == (5, feat)
    z.square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_encoder_rejects_wrong_input():
    with pytest.raises(ValueError, match="expects images"):
        ConvBackbone(3)(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="multiple"):
        TinyViT(image_size=30, patch_size=4)
    with pytest.raises(TypeError, match="feature_dim"):
        ContrastiveEncoder(torch.nn.Linear(3, 4))


def test_projection_head_linear_option():
    head = ProjectionHead(8, 4, hidden_dim=0)
    assert isinstance(head.net, torch.nn.Linear)


def test_tokenizer_vocab_order_and_padding():
    tok = SimpleTokenizer(["a photo of a bag", "A photo of a coat!"])
    ids = tok.encode(["a bag", "a hat coat"])
    # "a" is most frequent (id 2); unknown "hat" is 1; padding 0
    assert ids.tolist() == [[2, tok.vocab["bag"], 0], [2, 1, tok.vocab["coat"]]]
    assert len(tok) == 2 + 5
    assert tok.encode(["one two three"], max_len=2).shape == (1, 2)


def test_bag_of_tokens_ignores_padding():
    torch.manual_seed(0)
    enc = BagOfTokensTextEncoder(10, embed_dim=8, out_dim=6)
    a = enc(torch.tensor([[3, 4, 0, 0]]))
    b = enc(torch.tensor([[3, 4]]))
    torch.testing.assert_close(a, b)
    assert enc(torch.tensor([[3, 4], [5, 0]])).shape == (2, 6)
    with pytest.raises(ValueError, match="int64"):
        enc(torch.rand(2, 3))


def test_precomputed_text_encoder_shape():
    enc = PrecomputedTextEncoder(384, out_dim=16)
    assert enc(torch.randn(3, 384)).shape == (3, 16)
    with pytest.raises(ValueError, match="384"):
        enc(torch.randn(3, 100))
