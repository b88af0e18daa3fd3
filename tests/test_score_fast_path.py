"""The score losses' fast paths give the same results, bit for bit, as the general code they replace.

* With every index once (the usual batch) the estimators are stepped directly; with duplicates (or a
  gathered batch) :func:`~xrisk.state.update_states` merges them. Forcing the general path on a batch
  without duplicates must change nothing: values, gradients, state, objectives.
* The kernels that share work (one pairwise pass for the loss and its slope, one comparison for the CVaR
  step and weights, one ``L / tau`` for both KL-DRO kernels, the gradient scattered into the score vector)
  equal the separate kernels.
"""

from __future__ import annotations

import pytest
import torch

import xrisk.losses.base as base
from xrisk.functional.ap import ap_inner_estimates
from xrisk.functional.pauc import (
    cvar_step, cvar_threshold_grad, kl_logits, log_mean_exp_inner, pauc_cvar_weights, pauc_kl_weights,
    tpauc_kl_weights,
)
from xrisk.functional.surrogates import (
    SHORTFALL_LOSSES, SURROGATES, pairwise_shortfall, pairwise_surrogate, weighted_pairwise_mean,
    weighted_pairwise_mean_of,
)
from xrisk.losses import APLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss

N = 50
LOSSES = {
    "ap": lambda T: APLoss(N, num_tasks=T, gamma=0.7),
    "ap-exp": lambda T: APLoss(N, num_tasks=T, gamma=1.0, surrogate="exponential", margin=0.5),
    "cvar": lambda T: OneWayPartialAUCLoss(N, num_tasks=T, method="cvar", max_fpr=0.4, eta=0.2),
    "cvar-hinge": lambda T: OneWayPartialAUCLoss(N, num_tasks=T, method="cvar", surrogate="hinge"),
    "kl": lambda T: OneWayPartialAUCLoss(N, num_tasks=T, method="kl", tau=0.3, gamma=0.6),
    "kl-tau1": lambda T: OneWayPartialAUCLoss(N, num_tasks=T, method="kl", tau=1.0, surrogate="logistic"),
    "tpauc": lambda T: TwoWayPartialAUCLoss(N, num_tasks=T, tau=0.4, tau_outer=0.8, gamma0=0.7, gamma1=0.5),
    "tpauc-equal-tau": lambda T: TwoWayPartialAUCLoss(N, num_tasks=T, tau=1.0, tau_outer=1.0, surrogate="square"),
}


def _batches(num_tasks: int, dtype: torch.dtype, seed: int = 0):
    """Batches without duplicate indices that revisit samples (first visits and moving averages both occur)."""
    g = torch.Generator().manual_seed(seed)
    for step in range(8):
        index = torch.randperm(30, generator=g)[:16]
        targets = torch.rand(16, num_tasks, generator=g) < 0.35
        targets[0], targets[1] = True, False
        scores = (torch.rand(16, num_tasks, generator=g, dtype=torch.float64) * 3 - 1).to(dtype)
        if num_tasks == 1:
            scores, targets = scores[:, 0], targets[:, 0]
        yield scores, targets.float() if step % 2 else targets, index


def _run(loss: torch.nn.Module, num_tasks: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for scores, targets, index in _batches(num_tasks, dtype):
        s = scores.clone().requires_grad_(True)
        value = loss(s, targets, index)
        value.backward()
        out.append((value.detach(), s.grad, loss.objective()))
    loss.eval()
    out.append((loss(scores, targets, index),))
    return out


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("num_tasks", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_state_step_equals_the_general_update(name, num_tasks, dtype, monkeypatch):
    fast = LOSSES[name](num_tasks)
    got = _run(fast, num_tasks, dtype)
    check = base.check_index_bounds

    def not_known(*a, **k):  # the indices' uniqueness "not known": the general update
        idx, _, bounds = check(*a, **k)
        return idx, False, bounds

    monkeypatch.setattr(base, "check_index_bounds", not_known)
    general = LOSSES[name](num_tasks)
    want = _run(general, num_tasks, dtype)
    for a, b in zip(got, want):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    for k, v in general.state_dict().items():
        assert torch.equal(fast.state_dict()[k], v), k


@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_pairwise_kernels_equal_the_separate_ones(surrogate, dtype):
    g = torch.Generator().manual_seed(1)
    col = torch.randn(12, generator=g, dtype=dtype)
    pos = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    pi, ni = pos.nonzero().view(-1), (~pos).nonzero().view(-1)
    for i_idx, j_idx in ((pi, None), (pi, ni)):  # AP: positives against the batch; pAUC: against the negatives
        s_i, s_j = col[i_idx], col if j_idx is None else col[j_idx]
        r = pairwise_shortfall(s_i, s_j, margin=0.7)
        losses = SHORTFALL_LOSSES[surrogate](r)
        assert torch.equal(losses, pairwise_surrogate(s_i, s_j, margin=0.7, surrogate=surrogate))
        w = torch.rand(losses.shape, generator=g, dtype=dtype) - 0.3
        x = col.clone().requires_grad_(True)
        a = weighted_pairwise_mean_of(x, i_idx, j_idx, w, losses=losses, shortfall=r, surrogate=surrogate)
        (a * 0.7).backward()  # a gradient other than 1 flows through the same products
        y = col.clone().requires_grad_(True)
        b = weighted_pairwise_mean(y[i_idx], y if j_idx is None else y[j_idx], w, margin=0.7, surrogate=surrogate,
                                   losses=losses)
        (b * 0.7).backward()
        assert torch.equal(a, b) and torch.equal(x.grad, y.grad)
    # AP's inner estimates from the shortfall: L and both means as pairwise_surrogate + mean
    L, g_all, g_pos = ap_inner_estimates(col[pi], col, pos, margin=0.7, surrogate=surrogate)
    ref = pairwise_surrogate(col[pi], col, margin=0.7, surrogate=surrogate)
    assert torch.equal(L, ref) and torch.equal(g_all, ref.mean(1))
    assert torch.equal(g_pos, (ref * pos.to(dtype)).mean(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pauc_kernels_sharing_work_equal_the_separate_ones(dtype):
    g = torch.Generator().manual_seed(2)
    losses = torch.rand(5, 9, generator=g, dtype=dtype) * 3
    thr = torch.rand(5, generator=g, dtype=dtype) * 2
    step, weights = cvar_step(losses, thr, 0.3)
    assert torch.equal(step, cvar_threshold_grad(losses, thr, 0.3))
    assert torch.equal(weights, pauc_cvar_weights(losses, thr, 0.3))
    log_u, log_w = torch.randn(5, generator=g, dtype=dtype), torch.randn((), generator=g, dtype=dtype)
    for tau in (1.0, 0.37):
        z = kl_logits(losses, tau)
        assert torch.equal(z, losses / tau)
        assert torch.equal(log_mean_exp_inner(losses, tau, scaled=z), log_mean_exp_inner(losses, tau))
        assert torch.equal(pauc_kl_weights(losses, log_u, tau, scaled=z),
                           torch.exp(losses / tau - log_u.unsqueeze(1)))
        for tau_outer in (tau, 2.0):
            want = torch.exp((tau / tau_outer - 1.0) * log_u.unsqueeze(1) + losses / tau - log_w)
            assert torch.equal(tpauc_kl_weights(losses, log_u, log_w, tau, tau_outer, scaled=z), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cached_constants_give_the_python_scalar_results(dtype):
    """The hot kernels use :func:`xrisk._tensors.constant` in place of Python numbers: the same values bit for bit."""
    from xrisk._tensors import constant

    x = (torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5).to(dtype)
    for v in (0.1, -2.0, 1.0 / 3.0, 192.0, -0.10536051565782628, 1e-3):
        c = constant(v, x)
        assert c is constant(v, x)  # cached
        assert torch.equal(x + c, x + v) and torch.equal(torch.rsub(x, c), v - x)
        assert torch.equal(x * c, x * v) and torch.equal(x / c, x / v) and (x + c).dtype == dtype
    with torch.inference_mode():  # made under inference mode: still a normal tensor, usable with autograd later
        c = constant(0.123456, x)
    y = x.double().requires_grad_(True) if dtype not in (torch.float32, torch.float64) else x.clone().requires_grad_(True)
    (y * constant(0.123456, y)).sum().backward()
    assert not c.is_inference() and torch.equal(y.grad, torch.full_like(y, 0.123456))


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("scratch", [None, {}])
def test_loss_and_slope_matrices_equal_the_surrogate_tables(surrogate, scratch):
    from xrisk.functional.surrogates import SHORTFALL_SLOPES, SLOPE_SCALE, shortfall_loss_and_slope

    r = torch.linspace(-3, 3, 42, dtype=torch.float64).reshape(6, 7)  # both sides of every kink
    losses, slope = shortfall_loss_and_slope(r.clone(), surrogate, scratch=scratch)
    torch.testing.assert_close(losses, SHORTFALL_LOSSES[surrogate](r), rtol=0, atol=1e-12)
    torch.testing.assert_close(SLOPE_SCALE[surrogate] * slope, SHORTFALL_SLOPES[surrogate](r), rtol=0, atol=1e-12)
