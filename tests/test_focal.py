"""FocalLoss: reduces to BCE, down-weights easy examples, validates inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xrisk.losses import FocalLoss


def test_gamma_zero_is_weighted_bce():
    z, y = torch.randn(50, dtype=torch.float64), (torch.rand(50) > 0.7).double()
    bce = F.binary_cross_entropy_with_logits(z, y)
    assert torch.allclose(FocalLoss(alpha=None, gamma=0.0)(z, y), bce)
    assert torch.allclose(FocalLoss(alpha=0.5, gamma=0.0)(z, y), 0.5 * bce)


def test_matches_formula_from_probabilities():
    z = torch.tensor([3.0, -2.0, 0.5, -0.1], dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1])
    p = torch.sigmoid(z)
    expected = []
    for pi, yi in zip(p.tolist(), y.tolist()):
        pt, at = (pi, 0.25) if yi == 1 else (1 - pi, 0.75)
        expected.append(-at * (1 - pt) ** 2 * math.log(pt))
    assert torch.allclose(FocalLoss()(z, y), torch.tensor(sum(expected) / 4, dtype=torch.float64))


def test_easy_examples_weigh_less_than_in_bce_and_gradcheck():
    z = torch.tensor([4.0, -4.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ratio = FocalLoss(alpha=None)(z, y) / F.binary_cross_entropy_with_logits(z, y)
    assert ratio < 1e-3
    zz = torch.randn(6, dtype=torch.float64, requires_grad=True)
    yy = (torch.rand(6) > 0.5).double()
    assert torch.autograd.gradcheck(lambda t: FocalLoss()(t, yy), (zz,))


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN/inf"):
        FocalLoss()(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        FocalLoss()(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="binary"):
        FocalLoss()(torch.zeros(2), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
