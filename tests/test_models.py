"""MLP and SmallCNN: shapes, validation, training signal."""

from __future__ import annotations

import pytest
import torch

from xrisk.models import MLP, SmallCNN


def test_mlp_shapes_and_flatten():
    assert MLP(30)(torch.randn(4, 30)).shape == (4, 1)
    assert MLP(64, hidden=(16, 8), out_features=3)(torch.randn(2, 8, 8)).shape == (2, 3)
    linear = MLP(5, hidden=())
    assert len(list(linear.parameters())) == 2  # one Linear layer only
    assert any(isinstance(m, torch.nn.Dropout) for m in MLP(5, dropout=0.5).modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in MLP(5).modules())


@pytest.mark.parametrize("kwargs", [{"in_features": 0}, {"in_features": 3, "hidden": (0,)},
                                    {"in_features": 3, "dropout": 1.0}, {"in_features": 3, "out_features": 0}])
def test_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MLP(**kwargs)


def test_mlp_rejects_wrong_input_size():
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        MLP(4)(torch.randn(2, 5))


def test_cnn_shapes_for_several_sizes():
    m = SmallCNN()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 1)
    assert m(torch.randn(2, 28, 28)).shape == (2, 1)  # one channel implied
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 1)
    rgb = SmallCNN(in_channels=3, num_outputs=5, width=4)
    assert rgb(torch.randn(2, 3, 32, 40)).shape == (2, 5)
    assert rgb.features(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="in_channels|images"):
        rgb(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="4x4"):
        m(torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError):
        SmallCNN(width=0)


def test_models_learn_a_simple_rule():
    torch.manual_seed(0)
    x = torch.randn(128, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > 0).float()
    for model in (SmallCNN(width=4), MLP(64, hidden=(16,))):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(40):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        acc = ((model(x).squeeze(1) > 0).float() == y).float().mean()
        assert acc > 0.9, type(model).__name__
