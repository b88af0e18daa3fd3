"""Selection baselines (RHO-LOSS top-k, JEST joint selection) and distillation: written from their definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xrisk.functional.distillation import distillation_losses
from xrisk.functional.drrho import drrho_cvar
from xrisk.functional.selection import jest_learnability, jest_select, pairwise_sigmoid_losses, rho_select


def test_rho_select_keeps_the_largest_excess_losses_like_cvar_inside_one_batch():
    g = torch.Generator().manual_seed(0)
    losses, ref = torch.rand(20, generator=g), torch.rand(20, generator=g)
    picked = rho_select(losses, ref, 5)
    excess = (losses - ref).tolist()
    assert sorted(picked.tolist()) == sorted(sorted(range(20), key=lambda i: -excess[i])[:5])
    assert picked.tolist() == sorted(picked.tolist(), key=lambda i: -excess[i])
    # DRRho-CVaR at alpha = k / B, first step: the same samples carry the (equal) weights
    step = drrho_cvar(losses - ref, torch.zeros(()), False, alpha=5 / 20, eta=0.1)
    assert set(torch.nonzero(step.weights).flatten().tolist()) == set(picked.tolist())
    with pytest.raises(ValueError, match=r"k must be in \[1, 20\]"):
        rho_select(losses, ref, 0)


def test_pairwise_sigmoid_losses_match_the_siglip_definition():
    sim = torch.tensor([[0.9, -0.2], [0.3, 0.5]])
    L = pairwise_sigmoid_losses(sim, 0.5, bias=-1.0)
    for i in range(2):
        for j in range(2):
            z = 1.0 if i == j else -1.0
            assert L[i, j].item() == pytest.approx(math.log(1 + math.exp(-z * (sim[i, j].item() / 0.5 - 1.0))), rel=1e-6)


def _draws(learner, ref, k, chunks, n):
    g = torch.Generator().manual_seed(1)
    return [tuple(jest_select(learner, ref, k, tau=0.5, n_chunks=chunks, generator=g).tolist()) for _ in range(n)]


def test_jest_first_chunk_is_drawn_proportionally_to_exp_of_each_pairs_learnability():
    g = torch.Generator().manual_seed(2)
    learner, ref = torch.rand(4, 4, generator=g) * 2 - 1, torch.rand(4, 4, generator=g) * 2 - 1
    p = torch.softmax(jest_learnability(learner, ref, 0.5).diagonal(), 0)
    counts = torch.zeros(4)
    for (i,) in _draws(learner, ref, 1, 1, 6000):
        counts[i] += 1
    torch.testing.assert_close(counts / 6000, p, atol=0.025, rtol=0)


def test_jest_second_chunk_is_conditioned_on_the_first():
    """P(second = j | first = i) is proportional to exp(A_jj + A_ij + A_ji) over j != i."""
    g = torch.Generator().manual_seed(3)
    learner, ref = torch.rand(4, 4, generator=g) * 2 - 1, torch.rand(4, 4, generator=g) * 2 - 1
    a = jest_learnability(learner, ref, 0.5)
    draws = _draws(learner, ref, 2, 2, 8000)
    first = max(range(4), key=lambda i: sum(d[0] == i for d in draws))
    seconds = [d[1] for d in draws if d[0] == first]
    cond = torch.tensor([a[j, j] + a[first, j] + a[j, first] if j != first else -math.inf for j in range(4)])
    want = torch.softmax(cond, 0)
    got = torch.tensor([seconds.count(j) / len(seconds) for j in range(4)])
    torch.testing.assert_close(got, want, atol=0.04, rtol=0)


def test_jest_returns_k_distinct_pairs_on_one_process_reproducibly():
    g = torch.Generator().manual_seed(4)
    learner, ref = torch.randn(10, 10, generator=g), torch.randn(10, 10, generator=g)
    a = jest_select(learner, ref, 7, tau=0.2, n_chunks=3, generator=torch.Generator().manual_seed(5))
    b = jest_select(learner, ref, 7, tau=0.2, n_chunks=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.numel() == 7 and a.unique().numel() == 7
    with pytest.raises(ValueError, match=r"\[B, B\]"):
        jest_select(learner[:3], ref, 2, tau=0.2)


def test_distillation_losses_are_the_tempered_kl_and_vanish_at_the_teacher():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, 4, generator=g)
    got = distillation_losses(s, t, temperature=2.0)
    want = F.kl_div(F.log_softmax(s / 2, 1), F.log_softmax(t / 2, 1), log_target=True, reduction="none").sum(1) * 4
    torch.testing.assert_close(got, want)
    assert torch.allclose(distillation_losses(t, t), torch.zeros(5), atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(s.grad).all()
