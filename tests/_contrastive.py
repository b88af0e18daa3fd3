"""Shared helpers of the contrastive loss tests."""

from __future__ import annotations

import torch


def run_steps(loss, *, seed: int, steps: int = 6, n: int = 40, batch: int = 12, dim: int = 6, dtype=torch.float32):
    """Train ``loss`` alone on a fixed stream of batches (unique indices); per step (value, grads, objective)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(list(loss.parameters()), lr=0.05) if list(loss.parameters()) else None
    out = []
    for step in range(steps):
        loss.set_epoch(step // 2)
        a = torch.randn(batch, dim, generator=g, dtype=dtype, requires_grad=True)
        b = (a.detach() + 0.7 * torch.randn(batch, dim, generator=g, dtype=dtype)).requires_grad_(True)
        idx = torch.randperm(n, generator=g)[:batch]
        value = loss(a, b, idx)
        value.backward()
        params = [p.grad.clone() for p in loss.parameters()]
        if opt is not None:
            opt.step()
            opt.zero_grad()
        out.append([value.detach(), a.grad, b.grad, loss.objective(), *params])
    return out


def assert_same_training(make, seed: int = 0, **kw) -> None:
    """The lean one-process image-text path (``_paired_step``) and the general path give the same values,
    gradients, objectives and state after every step."""
    lean, general = make(), make()
    general._paired_path = False
    got, want = run_steps(lean, seed=seed, **kw), run_steps(general, seed=seed, **kw)
    for step, (g_row, w_row) in enumerate(zip(got, want)):
        for k, (x, y) in enumerate(zip(g_row, w_row)):
            torch.testing.assert_close(x, y, equal_nan=True, msg=lambda m: f"step {step}, item {k}: {m}")
    sl, sg = lean.state_dict(), general.state_dict()
    assert sl.keys() == sg.keys()
    for key in sl:
        torch.testing.assert_close(sl[key], sg[key], equal_nan=True, msg=lambda m: f"{key}: {m}")
