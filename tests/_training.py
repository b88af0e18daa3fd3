"""Shared set-up of the small end-to-end training tests of the score losses."""

from __future__ import annotations

import numpy as np
import torch


def badly_ranked_problem(n: int = 400, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """``(x [n, d], y [n] ~10 % positives, model)``: separable-ish data and an MLP that starts out
    ranking it badly (its output layer is negated)."""
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(n, generator=g) < 0.1).float()
    x = torch.randn(n, d, generator=g) + 1.2 * y[:, None] * torch.linspace(1.0, -1.0, d)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        model[2].weight.mul_(-1.0)
    return x, y, model


def train_on_dual_batches(model: torch.nn.Module, loss_fn: torch.nn.Module, opt: torch.optim.Optimizer,
                          x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> None:
    """``steps`` DualSampler-like batches (8 recycled positives + 24 negatives) of
    ``loss_fn(sigmoid(model(x)), y, index)``."""
    pos, neg = torch.nonzero(y).flatten(), torch.nonzero(1 - y).flatten()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = torch.cat([torch.as_tensor(rng.choice(pos.numpy(), 8)), torch.as_tensor(rng.choice(neg.numpy(), 24))])
        loss = loss_fn(torch.sigmoid(model(x[idx])[:, 0]), y[idx], idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
