"""DRRho-CLIP: the global contrastive losses on ``d_ij - d_ij^ref`` (reference features as a per-pair offset)."""

from __future__ import annotations

import pytest
import torch

from test_global_contrastive import MODES, TEMPS, oracle_loss, oracle_step, oracle_tau
from xrisk.functional import contrastive as fc
from xrisk.functional.contrastive import gcl_fcco, gcl_fcco_square, nuclr_fcco, nuclr_fcco_square, reference_offset
from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss


def _feats(g, B, d, dtype=torch.float64):
    a = torch.randn(B, d, generator=g, dtype=dtype, requires_grad=True)
    b = (a.detach() + 0.7 * torch.randn(B, d, generator=g, dtype=dtype)).requires_grad_(True)
    return a, b


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", TEMPS)
def test_drrho_clip_matches_slow_loop_over_pairs(mode, temperature):
    """Gradients (features, global tau), estimator rows, individual temperatures and objective equal a loop over
    pairs with d_ij - d_ij^ref; batches with and without duplicate indices (general and lean paths)."""
    n, B, d, dr = 12, 5, 4, 3
    hp, loss_fn = oracle_loss(n, mode, temperature)
    st = {"u": {}, "tau": {}, "m": {}}
    g = torch.Generator().manual_seed(1)
    indices = [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 5, 6, 3, 0]), torch.tensor([7, 1, 5, 8, 2])]
    for step, index in enumerate(indices):
        a, b = _feats(g, B, d)
        ref = (torch.randn(B, dr, generator=g, dtype=torch.float64), torch.randn(B, dr, generator=g, dtype=torch.float64))
        tau_arg, kw = oracle_tau(loss_fn, hp, temperature, step)
        want_loss, want_obj = oracle_step(st, a, b, index, mode=mode, temperature=temperature, tau=tau_arg, ref=ref, **kw)
        want = torch.autograd.grad(want_loss, [a, b] + ([tau_arg] if temperature == "global" else []))
        out = loss_fn(a, b, index, ref_feats=ref)
        got = torch.autograd.grad(out, [a, b] + ([loss_fn.tau] if temperature == "global" else []))
        for w, gt in zip(want, got):
            torch.testing.assert_close(gt, w.to(gt.dtype), rtol=1e-5, atol=1e-7)
        assert loss_fn.objective().item() == pytest.approx(want_obj, rel=1e-5)
        for (k, v), u in st["u"].items():
            assert loss_fn.log_u.value[k, v].exp().item() == pytest.approx(u, rel=1e-5)
        if temperature == "individual":
            for (k, v), t in st["tau"].items():
                assert loss_fn.tau_individual.value[k, v].item() == pytest.approx(t, rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------- kernels: offset == shifted input
def _estimator(log_g, valid):
    return log_g


def _kernel_pairs():
    """(name, run(sim_leaf, offset or None) -> outputs): every kernel path that takes an offset."""
    def square_gcl(tau, stable):
        return lambda s, o: gcl_fcco_square(s, tau, _estimator, scale=0.2, stable=stable, eps=1e-3, offset=o)

    def rows_gcl(tau, unimodal):
        def run(s, o):  # s: [2B, C] stacked (unimodal, columns = both views) or two sides of a [B, B] batch
            n = s.shape[0] // 2
            if unimodal:
                pos = torch.stack([s.detach()[:n].diagonal(n), s.detach()[n:].diagonal(0)], 1)
                return gcl_fcco([s[:n], s[n:]], pos, tau, _estimator, count=2 * n - 2, pos_offset=(n, 0),
                                self_offset=(0, n), stacked=s, scale=0.2, offset=o)
            sims = [s[:n], s[n:]]
            pos = torch.stack([sims[0].detach().diagonal(), sims[1].detach().diagonal()], 1)
            offs = None if o is None else [o[:n], o[n:]]
            return gcl_fcco(sims, pos, tau, _estimator, count=n - 1, scale=0.2, offset=offs)
        return run

    def square_nuclr(stable):
        zeta = torch.linspace(-0.1, 0.1, 12, dtype=torch.float64).view(6, 2)
        log_pos = torch.tensor([-3.0, -2.5], dtype=torch.float64)
        return lambda s, o: nuclr_fcco_square(s, zeta, 0.2, log_pos, _estimator, scale=0.2, stable=stable, offset=o)

    per_anchor = torch.full((6, 2), 0.25, dtype=torch.float64)
    return [
        ("gcl-square-shared-exp", square_gcl(0.2, False), (6, 6)),
        ("gcl-square-stable", square_gcl(0.2, True), (6, 6)),
        ("gcl-square-per-anchor", square_gcl(per_anchor, True), (6, 6)),
        ("gcl-square-learnable", square_gcl(torch.tensor(0.3, dtype=torch.float64), False), (6, 6)),
        ("gcl-rows-unimodal", rows_gcl(0.2, True), (12, 12)),
        ("gcl-rows-per-side", rows_gcl(per_anchor, False), (12, 6)),
        ("nuclr-square-shared-exp", square_nuclr(False), (6, 6)),
        ("nuclr-square-stable", square_nuclr(True), (6, 6)),
    ]


@pytest.mark.parametrize("name,run,shape", _kernel_pairs(), ids=[p[0] for p in _kernel_pairs()])
def test_every_kernel_path_with_an_offset_equals_the_kernel_on_shifted_similarities(name, run, shape):
    """kernel(s, offset=o) == kernel(s + o) in state rows, tau/zeta statistics, the gradient w.r.t. s and the value
    (taken on s, i.e. minus sum w o, where the kernel does not compute per-anchor values on s + o anyway): the offset enters once, as a
    detached shift of every similarity (the positive's included)."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(*shape, generator=g, dtype=torch.float64).tanh()
    o = -0.8 * torch.rand(*shape, generator=g, dtype=torch.float64)
    s1 = base.clone().requires_grad_(True)
    s2 = base.clone().requires_grad_(True)
    got = run(s1, o)
    want = run(s2 + o, None)
    got[0].backward()
    want[0].backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    for x, y in zip(got[1:], want[1:]):  # state rows, tau / zeta statistics
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x.detach(), y.detach())
    # a learnable temperature, shared or per anchor: the value computed on s + o, by every path (the per-anchor
    # square kernel took it on s while the rows kernel took it on s + o: validation on and off, one process and
    # several, reported different values for a bimodal DRRho-CLIP step; found by tests/test_placement_fuzz.py),
    # and NUCLR's square kernel likewise (its rows kernel took the value on s + o)
    if name in ("gcl-square-learnable", "gcl-square-per-anchor", "gcl-rows-per-side", "nuclr-square-shared-exp",
                "nuclr-square-stable"):
        torch.testing.assert_close(got[0].detach(), want[0].detach())
    else:  # the value is sum_ij w_ij s_ij on the target's similarities, with the same weights
        torch.testing.assert_close(got[0].detach() + (s1.grad * o).sum(), want[0].detach())


def test_reference_offset_is_minus_the_reference_similarities():
    ra, rb = torch.randn(4, 3), torch.randn(5, 3)
    torch.testing.assert_close(reference_offset(ra, rb), -(ra @ rb.T))


# ----------------------------------------------------------------------------- modules
def _configs():
    fnd = lambda n: FalseNegativeDetector(n, alpha=0.3, lr=0.5, start_epoch=0)  # noqa: E731
    out = {f"gcl-{m}-{t}": (lambda n, m=m, t=t: GlobalContrastiveLoss(n, mode=m, temperature=t, tau=0.2, rho=0.3))
           for m in MODES for t in TEMPS}
    out["gcl-bimodal-fnd"] = lambda n: GlobalContrastiveLoss(n, mode="bimodal", tau=0.2, false_negatives=fnd(n))
    out["gcl-unimodal-individual-fnd"] = lambda n: GlobalContrastiveLoss(
        n, mode="unimodal", temperature="individual", tau=0.2, rho=0.3, false_negatives=fnd(n))
    out["nuclr"] = lambda n: NUCLRLoss(n, tau=0.2, zeta_start_epoch=0, lr_zeta=0.1)
    out["nuclr-fnd"] = lambda n: NUCLRLoss(n, tau=0.2, zeta_start_epoch=0, lr_zeta=0.1, false_negatives=fnd(n))
    return out


CONFIGS = _configs()


def _train(make, ref_of, steps=4, n=20, B=6, d=5, dtype=torch.float64):
    """Train ``make(n)`` on a fixed stream (duplicates on odd steps); ``ref_of(a, b) -> ref_feats or None``."""
    loss = make(n).to(dtype)
    g = torch.Generator().manual_seed(7)
    opt = torch.optim.SGD(list(loss.parameters()), lr=0.05) if list(loss.parameters()) else None
    rows = []
    for step in range(steps):
        loss.set_epoch(step)
        a, b = _feats(g, B, d, dtype)
        idx = torch.randperm(n, generator=g)[:B]
        if step % 2:
            idx[-1] = idx[0]
        out = loss(a, b, idx, ref_feats=ref_of(a.detach(), b.detach()))
        out.backward()
        rows.append([out.detach(), a.grad, b.grad, loss.objective(), *[p.grad.clone() for p in loss.parameters()]])
        if opt is not None:
            opt.step()
            opt.zero_grad()
    return rows, {k: v.clone() for k, v in loss.state_dict().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_reference_that_ranks_every_pair_alike_changes_nothing(name):
    """Reference features all equal (every s^ref_ij = 1, d^ref = 0): training equals training without them."""
    const = lambda a, b: (torch.ones(a.shape[0], 3, dtype=a.dtype), torch.ones(a.shape[0], 3, dtype=a.dtype))  # noqa: E731
    got, st_got = _train(CONFIGS[name], const)
    want, st_want = _train(CONFIGS[name], lambda a, b: None)
    for x_row, y_row in zip(got, want):
        for x, y in zip(x_row, y_row):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)
    for k in st_want:
        torch.testing.assert_close(st_got[k], st_want[k], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_zero_offset_is_bit_identical_to_no_reference(name):
    """Zero reference features give an offset of exactly 0: every path with an offset then reproduces the path
    without one bit for bit (float32, the temperature on the same side of the stability gates)."""
    zero = lambda a, b: (torch.zeros(a.shape[0], 3, dtype=a.dtype), torch.zeros(a.shape[0], 3, dtype=a.dtype))  # noqa: E731
    got, st_got = _train(CONFIGS[name], zero, dtype=torch.float32)
    want, st_want = _train(CONFIGS[name], lambda a, b: None, dtype=torch.float32)
    for x_row, y_row in zip(got, want):
        for x, y in zip(x_row, y_row):
            assert torch.equal(x, y)
    for k in st_want:
        assert torch.equal(st_got[k], st_want[k]), k


def test_without_reference_features_no_reference_code_runs(monkeypatch):
    """No ref_feats: the step never builds an offset (the plain loss's path, unchanged)."""
    def boom(*args, **kwargs):
        raise AssertionError("reference code ran without reference features")

    import xrisk.losses._contrastive_base as base

    monkeypatch.setattr(base, "reference_offset", boom)
    monkeypatch.setattr(fc, "reference_offset", boom)
    for name in ("gcl-bimodal-fixed", "gcl-unimodal-global", "gcl-bimodal-fnd", "nuclr"):
        _train(CONFIGS[name], lambda a, b: None, steps=2)


@pytest.mark.parametrize("name", ["gcl-bimodal-fixed", "gcl-bimodal-global", "gcl-unimodal-fixed", "nuclr"])
def test_reference_equal_to_the_target_gives_uniform_pair_weights(name):
    """ref_feats = the target's own features: d_ij - d_ij^ref = 0 for every pair, so (gamma = 1) every negative
    of an anchor gets the same weight: the gradient is that of the mean pairwise difference (1/B) sum_iv mean_j d_ij
    (NUCLR: times the anchor's share g / Z of its normaliser, the same for every pair)."""
    n, B, d, tau = 20, 6, 5, 0.2
    loss_fn = CONFIGS[name](n).double()
    loss_fn.gamma = 1.0
    g = torch.Generator().manual_seed(3)
    a, b = _feats(g, B, d)
    out = loss_fn(a, b, torch.arange(B), ref_feats=(a.detach(), b.detach()))
    got = torch.autograd.grad(out, [a, b])
    an, bn = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    pos = (an * bn).sum(1, keepdim=True)
    eye = torch.eye(B, dtype=torch.bool)
    if loss_fn.mode == "bimodal":
        sims, neg = [an @ bn.T, bn @ an.T], ~eye
    else:
        cols = torch.cat([an, bn])
        sims, neg = [an @ cols.T, bn @ cols.T], ~torch.cat([eye, eye], 1)
    share = 1.0
    if name == "nuclr":  # w_ij = exp(-zeta_j / tau) / Z_i with zeta = -0.05 everywhere, Z = g + exp(-xi / tau) / (n - 1)
        g_i = torch.exp(torch.tensor(0.05 / tau, dtype=torch.float64))
        share = g_i / (g_i + 1.0 / (n - 1))
    mean_diff = sum(((sims[v] - pos) * neg).sum(1).div(neg.sum(1)).sum() for v in (0, 1)) / B
    want = torch.autograd.grad(share * mean_diff, [a, b])
    for w, gt in zip(want, got):
        torch.testing.assert_close(gt, w, rtol=1e-6, atol=1e-8)


def test_reference_equal_to_the_target_gives_uniform_weights_over_masked_negatives():
    """With negative masks (what GloFND hands the kernel) the weights are uniform over each anchor's remaining
    negatives and 0 on the masked pairs, the positive carrying minus their sum."""
    g = torch.Generator().manual_seed(4)
    n = 6
    sims = [torch.randn(n, n, generator=g, dtype=torch.float64).tanh().requires_grad_(True) for _ in range(2)]
    neg = [(torch.rand(n, n, generator=g) > 0.3) & ~torch.eye(n, dtype=torch.bool) for _ in range(2)]
    for m in neg:
        m[:, 0] |= ~torch.eye(n, dtype=torch.bool)[:, 0]  # every anchor keeps a negative
    count = torch.stack([m.sum(1) for m in neg], 1)
    pos = torch.stack([s.detach().diagonal() for s in sims], 1)
    step = gcl_fcco(sims, pos, 0.2, _estimator, count=count, neg=neg, scale=1.0,
                    offset=[-s.detach() for s in sims])
    grads = torch.autograd.grad(step.surrogate, sims)
    for v in (0, 1):
        want = neg[v].double() / count[:, v : v + 1]
        want = want - torch.diag(want.sum(1))
        torch.testing.assert_close(grads[v], want)


def test_bad_reference_features_raise_and_leave_state_untouched():
    loss_fn = GlobalContrastiveLoss(10, mode="bimodal")
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    loss_fn(a, b, torch.arange(4), ref_feats=(torch.randn(4, 2), torch.randn(4, 2)))
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    bad = torch.randn(4, 2)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"ref_feats\[0\] contains \d+ NaN/inf"):
        loss_fn(a, b, torch.arange(4), ref_feats=(bad, torch.randn(4, 2)))
    with pytest.raises(ValueError, match=r"ref_feats\[1\] must have shape \[B, d_ref\] with B = 4"):
        loss_fn(a, b, torch.arange(4), ref_feats=(torch.randn(4, 2), torch.randn(3, 2)))
    with pytest.raises(ValueError, match=r"ref_feats\[0\] shape \(4, 2\) and ref_feats\[1\] shape \(4, 3\)"):
        loss_fn(a, b, torch.arange(4), ref_feats=(torch.randn(4, 2), torch.randn(4, 3)))
    with pytest.raises(TypeError, match="pair"):
        loss_fn(a, b, torch.arange(4), ref_feats=torch.randn(4, 2))
    for k, v in loss_fn.state_dict().items():
        assert torch.equal(v, before[k]), k
