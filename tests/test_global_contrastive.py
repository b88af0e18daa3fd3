"""Oracles for GlobalContrastiveLoss: a slow per-anchor loop written from the SogCLR / iSogCLR /
FastCLIP formulas (estimator, temperatures, FCCO gradient) and the exact GCL objective."""

from __future__ import annotations

import math

import pytest
import torch

import xrisk

from xrisk.functional.contrastive import (
    detached_weights_dot, gcl_fcco, gcl_fcco_square, gcl_objective, nuclr_fcco, nuclr_fcco_square, row_exp,
)
from xrisk.losses import GlobalContrastiveLoss, NUCLRLoss
from xrisk.schedules import CosineGammaSchedule

from _contrastive import assert_same_training

MODES = ("unimodal", "bimodal")
TEMPS = ("fixed", "global", "individual")


# ----------------------------------------------------------------------------- slow loop oracle
def _columns(an, bn, index, v, mode):
    """(feature, dataset index) of every candidate column of side v."""
    B = len(index)
    if mode == "bimodal":
        src = bn if v == 0 else an
        return [(src[j], int(index[j])) for j in range(B)]
    return [(an[j], int(index[j])) for j in range(B)] + [(bn[j], int(index[j])) for j in range(B)]


def oracle_step(st, a, b, index, *, mode, temperature, tau, gamma, rho, eps, lr_tau, beta, clip, tmin, tmax,
                ref=None):
    """One step of the method written anchor by anchor; returns (loss whose grad is the estimator, objective).

    ``st``: dict of python floats keyed by (dataset index, side): u, tau, m. ``tau`` is a float or a
    0-dim tensor requiring grad (global temperature). ``ref``: DRRho-CLIP's reference features ``(ref_a, ref_b)``:
    every pair then enters with ``d_ij - d_ij^ref`` (the reference's similarity differences, same temperature).
    """
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    if ref is not None:
        ran, rbn = (r / r.norm(dim=1, keepdim=True) for r in ref)
    B = len(index)
    ghat, taus, keys = {}, {}, []
    for i in range(B):
        pos = an[i] @ bn[i]
        for v in (0, 1):
            x = an[i] if v == 0 else bn[i]
            key = (int(index[i]), v)
            if temperature == "individual":
                t = torch.tensor(st["tau"].get(key, tau), dtype=a.dtype, requires_grad=True)
            else:
                t = tau
            cols = _columns(an, bn, index, v, mode)
            diffs = [x @ z - pos for z, _ in cols]
            if ref is not None:  # the reference's difference of the same pair
                xr = ran[i] if v == 0 else rbn[i]
                diffs = [d - (xr @ zr - ran[i] @ rbn[i]) for d, (zr, _) in zip(diffs, _columns(ran, rbn, index, v, mode))]
            terms = [torch.exp(d / t) for d, (_, k) in zip(diffs, cols) if k != key[0]]
            ghat[(i, v)] = sum(terms) / len(terms)
            taus[(i, v)] = t
            keys.append((i, v, key))
    # estimator update: duplicates averaged, first visit takes the new value
    groups: dict = {}
    for i, v, key in keys:
        groups.setdefault(key, []).append(float(ghat[(i, v)].detach()))
    for key, vals in groups.items():
        new = sum(vals) / len(vals)
        st["u"][key] = new if key not in st["u"] else (1 - gamma) * st["u"][key] + gamma * new
    loss, obj, tgrads = 0.0, 0.0, {}
    rho_eff = 0.0 if temperature == "fixed" else rho
    for i, v, key in keys:
        t, u = taus[(i, v)], st["u"][key]
        tc = t.detach() if isinstance(t, torch.Tensor) else t
        term = tc * ghat[(i, v)] / (eps + u) + t * math.log(eps + u) + rho_eff * t
        obj += float(tc) * math.log(eps + u) + rho_eff * float(tc)
        if temperature == "individual":
            (gt,) = torch.autograd.grad(term, t, retain_graph=True)
            tgrads.setdefault(key, []).append(max(-clip, min(clip, float(gt))))
        loss = loss + term / B
    for key, gs in tgrads.items():
        g = sum(gs) / len(gs)
        st["m"][key] = g if key not in st["m"] else (1 - beta) * st["m"][key] + beta * g
        st["tau"][key] = min(tmax, max(tmin, st["tau"].get(key, tau) - lr_tau * st["m"][key]))
    return loss, obj / B


def oracle_loss(n: int, mode: str, temperature: str) -> tuple[dict, GlobalContrastiveLoss]:
    """The hyperparameters of the slow-loop oracle tests (``oracle_step``'s keywords) and the float64 loss built
    from them."""
    hp = dict(tau=0.3, gamma=0.6, rho=0.4, eps=1e-3, lr_tau=0.05, beta=0.7, clip=5.0, tmin=0.05, tmax=1.0)
    loss_fn = GlobalContrastiveLoss(
        n, mode=mode, temperature=temperature, tau=hp["tau"], gamma=hp["gamma"], rho=hp["rho"], eps=hp["eps"],
        lr_tau=hp["lr_tau"], beta_tau=hp["beta"], tau_grad_clip=hp["clip"], tau_min=hp["tmin"], tau_max=hp["tmax"],
    ).double()
    return hp, loss_fn


def oracle_tau(loss_fn: GlobalContrastiveLoss, hp: dict, temperature: str, step: int) -> tuple[object, dict]:
    """The oracle's temperature at ``step`` and its other keywords. A global temperature moves every step: the
    loss's parameter is set to it and the oracle gets a leaf tensor (its gradient is compared); else ``hp["tau"]``."""
    kw = {k: v for k, v in hp.items() if k != "tau"}
    if temperature != "global":
        return hp["tau"], kw
    tau = hp["tau"] + 0.05 * step
    loss_fn.tau.data.fill_(tau)
    return torch.tensor(tau, dtype=torch.float64, requires_grad=True), kw


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", TEMPS)
def test_matches_slow_loop_oracle_over_batches(mode, temperature):
    n, B, d = 12, 5, 4
    hp, loss_fn = oracle_loss(n, mode, temperature)
    st = {"u": {}, "tau": {}, "m": {}}
    g = torch.Generator().manual_seed(1)
    indices = [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 5, 6, 3, 0]), torch.tensor([7, 1, 5, 8, 2])]
    for step, index in enumerate(indices):
        a = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
        b = (a.detach() + 0.7 * torch.randn(B, d, generator=g, dtype=torch.float64)).requires_grad_(True)
        tau_arg, kw = oracle_tau(loss_fn, hp, temperature, step)
        ref, ref_obj = oracle_step(st, a, b, index, mode=mode, temperature=temperature, tau=tau_arg, **kw)
        want = torch.autograd.grad(ref, [a, b] + ([tau_arg] if temperature == "global" else []))
        out = loss_fn(a, b, index)
        got = torch.autograd.grad(out, [a, b] + ([loss_fn.tau] if temperature == "global" else []))
        for w, gt in zip(want, got):
            torch.testing.assert_close(gt, w.to(gt.dtype), rtol=1e-5, atol=1e-7)
        assert loss_fn.objective().item() == pytest.approx(ref_obj, rel=1e-5)
        for (k, v), u in st["u"].items():
            assert loss_fn.log_u.value[k, v].exp().item() == pytest.approx(u, rel=1e-5)
        assert int(loss_fn.log_u.seen.sum()) == len(st["u"])
        if temperature == "individual":
            for (k, v), t in st["tau"].items():
                assert loss_fn.tau_individual.value[k, v].item() == pytest.approx(t, rel=1e-5, abs=1e-7)
                assert loss_fn.tau_momentum.value[k, v].item() == pytest.approx(st["m"][(k, v)], rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- exact objective
def exact_gcl(a, b, mode, tau, rho, eps):
    """F = (1/n) sum_i sum_v [tau_iv log(eps + mean_{j != i} exp(d_ij / tau_iv)) + rho tau_iv] on the full data."""
    n = a.shape[0]
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    pos = (an * bn).sum(1, keepdim=True)
    eye = torch.eye(n, dtype=torch.bool)
    if mode == "bimodal":
        sims, mask = [an @ bn.T, bn @ an.T], ~eye
    else:
        cols = torch.cat([an, bn])
        sims, mask = [an @ cols.T, bn @ cols.T], ~torch.cat([eye, eye], 1)
    total = 0.0
    for v, s in enumerate(sims):
        t = tau[:, v : v + 1] if isinstance(tau, torch.Tensor) and tau.dim() else tau
        g = (torch.exp((s - pos) / t) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        total = total + (t * torch.log(eps + g) + rho * t).sum()
    return total / n


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", TEMPS)
def test_gamma_one_full_batch_is_exact_gradient(mode, temperature):
    """gamma = 1 and B = whole data set: the FCCO gradient is the gradient of the exact (robust) GCL."""
    n, d, rho, eps = 7, 5, 0.3, 1e-4
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss_fn = GlobalContrastiveLoss(n, mode=mode, temperature=temperature, tau=0.2, gamma=1.0, rho=rho, eps=eps).double()
    if temperature == "individual":
        tau = torch.full((n, 2), 0.2, dtype=torch.float64, requires_grad=True)
    elif temperature == "global":
        tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    else:
        tau = 0.2
    F = exact_gcl(a, b, mode, tau, 0.0 if temperature == "fixed" else rho, eps)
    wants = torch.autograd.grad(F, [a, b] + ([tau] if temperature != "fixed" else []))
    out = loss_fn(a, b, torch.arange(n))
    gots = torch.autograd.grad(out, [a, b] + ([loss_fn.tau] if temperature == "global" else []))
    for w, gt in zip(wants, gots):
        torch.testing.assert_close(gt, w.to(gt.dtype), rtol=1e-5, atol=1e-8)
    assert loss_fn.objective().item() == pytest.approx(F.item(), rel=1e-6)
    if temperature == "individual":  # first visit: momentum = the per-anchor tau-gradient = n dF/dtau_iv
        torch.testing.assert_close(loss_fn.tau_momentum.value.double(), n * wants[2], rtol=1e-5, atol=1e-7)


def test_small_temperature_never_overflows():
    """tau = 0.01 (d / tau up to 200): finite, and equal to the float64 exact gradient at gamma = 1."""
    n, d = 10, 6
    g = torch.Generator().manual_seed(5)
    a = torch.randn(n, d, generator=g)
    b = a + 0.3 * torch.randn(n, d, generator=g)
    b[0] = -a[0]  # an anchor whose positive is the farthest sample: exp(d / tau) ~ e^200 in the naive form
    loss_fn = GlobalContrastiveLoss(n, mode="bimodal", tau=0.01, gamma=0.5)
    a32, b32 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    out = loss_fn(a32, b32, torch.arange(n))
    out.backward()
    a64, b64 = a.double().requires_grad_(True), b.double().requires_grad_(True)
    exact_gcl(a64, b64, "bimodal", 0.01, 0.0, 0.0).backward()
    torch.testing.assert_close(a32.grad, a64.grad.float(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(b32.grad, b64.grad.float(), rtol=1e-3, atol=1e-4)
    for step in range(5):  # moving average across very different scales stays finite
        x = (a + step * torch.randn(n, d, generator=g)).requires_grad_(True)
        out = loss_fn(x, b, torch.arange(n))
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all() and torch.isfinite(loss_fn.objective())
        assert torch.isfinite(loss_fn.log_u.value).all()


def test_cosine_gamma_schedule_and_epoch_buffer():
    sched = CosineGammaSchedule(gamma_min=0.2, decay_epochs=4)
    assert sched(0) == 1.0 and sched(4) == 0.2 and sched(9) == 0.2
    assert sched(2) == pytest.approx(0.2 + 0.8 * 0.5)
    loss_fn = GlobalContrastiveLoss(6, mode="bimodal", gamma_schedule=sched)
    loss_fn.set_epoch(0)  # explicit: the epoch is not inferred from the samples seen
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    loss_fn(a, b, torch.arange(6))
    first = loss_fn.log_u.value.clone()
    loss_fn(a.flip(1), b, torch.arange(6))  # epoch 0: gamma = 1, u forgets the first batch
    second = loss_fn.log_u.value.clone()
    fresh = GlobalContrastiveLoss(6, mode="bimodal")
    fresh(a.flip(1), b, torch.arange(6))
    torch.testing.assert_close(second, fresh.log_u.value)
    assert not torch.allclose(first, second)
    loss_fn.set_epoch(3)
    assert loss_fn.current_gamma() == pytest.approx(sched(3))
    assert int(loss_fn.state_dict()["epoch"]) == 3
    with pytest.raises(ValueError, match="gamma_min"):
        CosineGammaSchedule(gamma_min=0.0, decay_epochs=3)


def test_duplicates_and_no_negatives():
    loss_fn = GlobalContrastiveLoss(5, mode="bimodal")
    a = torch.randn(2, 3, requires_grad=True)
    out = loss_fn(a, torch.randn(2, 3), torch.tensor([4, 4]))  # same sample twice: no negative at all
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
    assert not loss_fn.log_u.seen.any()
    assert torch.isnan(loss_fn.objective())


@pytest.mark.parametrize("index", [[4], [4, 4]])
def test_no_negative_batch_gives_the_learnable_temperature_a_zero_gradient_with_validation_on_and_off(index):
    # regression (found by tests/test_placement_fuzz.py): validation on returned a zero connected to the features
    # only (tau.grad None, so SGD with momentum skipped tau) while the device path reached tau through masks (a zero
    # gradient, momentum moved it): the two paths trained tau differently after such a batch
    taus = []
    for on in (True, False):
        loss_fn = GlobalContrastiveLoss(5, temperature="global", tau=0.2)
        opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1, momentum=0.9)
        loss_fn.tau.grad = torch.tensor(-1.0)  # momentum from an earlier step
        opt.step()
        opt.zero_grad(set_to_none=True)
        a = torch.randn(len(index), 3, requires_grad=True)
        with xrisk.validation(on):
            out = loss_fn(a, torch.randn(len(index), 3), torch.tensor(index))
        out.backward()
        assert out.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))
        assert loss_fn.tau.grad is not None and loss_fn.tau.grad.item() == 0.0
        opt.step()
        taus.append(loss_fn.tau.detach().clone())
    assert torch.equal(taus[0], taus[1]) and taus[0].item() > 0.2 + 0.1 + 1e-6  # momentum moved tau again


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="trimodal"), "mode"),
        (dict(temperature="learned"), "temperature"),
        (dict(gamma=0.0), "gamma"),
        (dict(temperature="global", tau=0.001), "tau_min"),
        (dict(tau=-1.0), "tau"),
        (dict(eps=-1.0), "eps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalContrastiveLoss(10, **kwargs)


def test_index_errors():
    loss_fn = GlobalContrastiveLoss(4)
    with pytest.raises(IndexError):
        loss_fn(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="entries"):
        loss_fn(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("make", [
    lambda: GlobalContrastiveLoss(6, mode="bimodal", temperature="individual"),
    lambda: GlobalContrastiveLoss(6, mode="unimodal", temperature="global"),
    lambda: GlobalContrastiveLoss(6, mode="bimodal", normalize=False),
    lambda: NUCLRLoss(6),
], ids=["bimodal-individual", "unimodal-global", "unnormalized", "nuclr"])
@pytest.mark.parametrize("where", ["feats_a", "feats_b"])
def test_nonfinite_features_raise_naming_them_and_leave_state_untouched(make, where):
    """Without a detector finiteness is checked by the estimator update, before any state is written;
    the error still names the bad input."""
    loss_fn = make()
    g = torch.Generator().manual_seed(0)
    loss_fn(torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.tensor([0, 1, 2]))
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    (a if where == "feats_a" else b)[1, 2] = float("nan")
    with pytest.raises(ValueError, match=where):
        loss_fn(a, b, torch.tensor([3, 4, 1]))
    for k, v in loss_fn.state_dict().items():
        assert torch.equal(v, before[k]) or (v.isnan().all() and before[k].isnan().all()), k


def test_global_tau_is_projected_and_state_dict_has_everything():
    loss_fn = GlobalContrastiveLoss(8, temperature="individual")
    assert {"log_u.value", "log_u.seen", "tau_individual.value", "tau_momentum.value", "epoch"} <= set(
        loss_fn.state_dict()
    )
    glob = GlobalContrastiveLoss(8, temperature="global", tau=0.05, tau_min=0.02)
    glob.tau.data.fill_(0.001)  # an optimizer step went below the floor
    glob(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4))
    assert glob.tau.item() == pytest.approx(0.02)


# ----------------------------------------------------------------------------- kernels the module calls
def _features(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    b = torch.nn.functional.normalize(a + 0.7 * torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    return a.requires_grad_(True), b.requires_grad_(True)


def test_row_exp_equals_naive_masked_exp_and_is_stable():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(6, 9, generator=g, dtype=torch.float64) * 2 - 1
    inv_tau = 1.0 / (0.2 + torch.rand(6, generator=g, dtype=torch.float64))
    row_bias = torch.randn(6, generator=g, dtype=torch.float64)
    col_bias = torch.randn(9, generator=g, dtype=torch.float64)
    neg = torch.rand(6, 9, generator=g) > 0.3
    neg[2] = False  # a row without negatives
    logits = sim * inv_tau[:, None] + row_bias[:, None] + col_bias[None, :]
    naive = torch.exp(logits) * neg
    for stable in (True, False):
        e, log_s, shift = row_exp(sim, inv_tau, row_bias, col_bias=col_bias, neg=neg, stable=stable)
        assert (shift is None) == (not stable)  # no shift pass without stable
        torch.testing.assert_close(e if shift is None else e * shift.exp()[:, None], naive)
        torch.testing.assert_close(log_s, naive.sum(1).log())
        assert log_s[2] == float("-inf") and torch.all(e[2] == 0)
    # excluded diagonals instead of a mask: the same as the mask that drops them. Blocks (first, count,
    # offset): anchors 0-2 exclude columns i + 3 and i, anchors 3-5 exclude columns i' + 1 (i' = i - 3)
    mask = torch.ones(6, 9, dtype=torch.bool)
    for i in range(3):
        mask[i, i + 3] = mask[i, i] = False
        mask[3 + i, i + 1] = False
    e, log_s, shift = row_exp(sim, 3.0, row_bias, excluded=[(0, 3, 3), (0, 3, 0), (3, 3, 1)])
    want = torch.exp(sim * 3.0 + row_bias[:, None]) * mask
    torch.testing.assert_close(e * shift.exp()[:, None], want)
    # tau = 0.01 in float32: logits up to +-200 (naive exp overflows), log_s still exact
    big = (torch.rand(6, 9, generator=g) * 2 - 1)
    big[0] = 1.0
    big[1] = -1.0
    e, log_s, shift = row_exp(big, 100.0, torch.zeros(6), neg=neg)
    assert torch.isfinite(e).all() and torch.isfinite(log_s[neg.any(1)]).all()
    assert torch.isinf(torch.exp(big.double() * 100.0).float()).any()  # the naive form overflows
    want = torch.logsumexp((big.double() * 100.0).masked_fill(~neg, float("-inf")), 1)
    torch.testing.assert_close(log_s.double(), want, rtol=1e-6, atol=1e-4)
    assert float(e.max()) <= 1.0


def test_row_exp_along_columns_equals_rows_of_the_transpose():
    """dim=0 (anchors are the columns) gives the same numbers as dim=1 on sim.T, in sim's layout."""
    g = torch.Generator().manual_seed(5)
    sim = torch.randn(5, 7, generator=g, dtype=torch.float64)
    inv = 1.0 + torch.rand(7, generator=g, dtype=torch.float64)
    row_bias, col_bias = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    neg = torch.rand(5, 7, generator=g) > 0.3
    for kw in (dict(neg=neg), dict(excluded=[(0, 4, 1), (4, 3, -2)])):
        for stable in (True, False):
            kw_t = {"neg": neg.T} if "neg" in kw else kw
            want = row_exp(sim.T, inv, row_bias, col_bias=col_bias, stable=stable, **kw_t)
            got = row_exp(sim, inv, row_bias, col_bias=col_bias, stable=stable, dim=0, **kw)
            torch.testing.assert_close(got[0], want[0].T)
            torch.testing.assert_close(got[1], want[1])
            if stable:
                torch.testing.assert_close(got[2], want[2])
            else:
                assert got[2] is None and want[2] is None


def test_detached_weights_dot_gradient_is_the_weights():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64)
    out = detached_weights_dot(x, w)
    torch.testing.assert_close(out, (w * x).sum())
    (grad,) = torch.autograd.grad(3.0 * out, x)
    torch.testing.assert_close(grad, 3.0 * w)
    assert torch.autograd.gradcheck(lambda t: detached_weights_dot(t, w), (x,))
    assert torch.autograd.gradcheck(lambda t: detached_weights_dot(t.T, w.T), (x,))  # views are fine
    given = detached_weights_dot(x, w, torch.tensor(7.0, dtype=torch.float64))  # value passed by the caller
    assert given.item() == 7.0
    torch.testing.assert_close(torch.autograd.grad(given, x)[0], w)


def _layout(a, b, mode):
    """Single-process batch layout of the module: sims, pos_offset, self_offset, stacked matrix (unimodal),
    and the positive / own columns as [n, 2] index tensors for the reference computations."""
    n = a.shape[0]
    rows = torch.arange(n)
    if mode == "bimodal":
        s = a @ b.T
        return [s, s.T], (0, 0), None, None, torch.stack([rows, rows], 1), None
    s = torch.cat([a, b]) @ torch.cat([a, b]).T
    return [s[:n], s[n:]], (n, 0), (0, n), s, torch.stack([rows + n, rows], 1), torch.stack([rows, rows + n], 1)


@pytest.mark.parametrize("mode", MODES + ("unimodal-per-side",))
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("masks", ("none", "shared", "per-side"))
@pytest.mark.parametrize("stable", (True, False))
def test_gcl_fcco_kernel_gradient_is_exact_when_u_equals_g(mode, temperature, masks, stable):
    """With u = g_hat the kernel's surrogate gradient (features and tau) and tau_grad are the exact
    derivatives of scale * sum_iv [tau_iv log(eps + g_iv) + rho tau_iv] (gcl_objective), on every path:
    the shared-exponential path (bimodal, shared tau, stable=False), the transposed-layout path (bimodal
    otherwise: side 1 along the columns of sims[0]), the stacked path (unimodal: both sides' rows in one
    matrix) and the per-side copy into one stack (unimodal without ``stacked``); without masks the count is
    passed as an int."""
    n, eps, rho, scale = 6, 1e-3, 0.4, 0.5
    a, b = _features(n, 4, seed=2)
    sims, pos_offset, self_offset, stacked, pos_col, self_col = _layout(a, b, mode[:8])
    if mode == "unimodal-per-side":
        mode, stacked = "unimodal", None
    rows = torch.arange(n)
    pos = torch.stack([sims[v][rows, pos_col[:, v]] for v in (0, 1)], 1)
    cols = sims[0].shape[1]
    base = torch.ones(n, cols, dtype=torch.bool)
    for c in [pos_col] + ([self_col] if self_col is not None else []):
        base[rows, c[:, 0]] = False
    g = torch.Generator().manual_seed(4)
    neg: list = [None, None]
    if masks != "none":
        drop = torch.rand(n, cols, generator=g) > 0.8
        m0 = base & ~(drop & drop.T if mode == "bimodal" else drop)
        if masks == "shared":
            neg = [m0, m0]
        else:
            m1 = base.clone()
            m1[rows, pos_col[:, 1]] = False
            if self_col is not None:
                m1[rows, self_col[:, 1]] = False
            neg = [m0, m1 & (torch.rand(n, cols, generator=g) > 0.2)]
    if masks == "shared" and mode == "unimodal":
        neg[1] = neg[0].clone()
        neg[1][rows, pos_col[:, 1]] = False
        neg[1][rows, self_col[:, 1]] = False
    full = [
        neg[0] if neg[0] is not None else base,
        neg[1] if neg[1] is not None else _side1_base(n, cols, pos_col, self_col),
    ]
    count = torch.stack([m.sum(1) for m in full], 1)
    count_arg = int(count[0, 0]) if masks == "none" else count
    if temperature == "individual":
        tau = (0.2 + 0.3 * torch.rand(n, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    elif temperature == "global":
        tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    else:
        tau = 0.3
    seen = []
    step = gcl_fcco(
        sims, pos, tau.detach() if temperature == "individual" else tau, lambda lg, ok: seen.append((lg, ok)) or lg,
        pos_offset=pos_offset, count=count_arg, self_offset=self_offset, neg=neg, transposed=mode == "bimodal",
        stacked=stacked,
        eps=eps, rho=rho, scale=scale, stable=stable,
    )
    exact = 0.0
    for v in (0, 1):
        diff = sims[v] - sims[v][rows, pos_col[:, v]][:, None]
        t = tau[:, v] if temperature == "individual" else tau
        exact = exact + gcl_objective(diff, full[v], t, eps=eps, rho=rho).sum()
    exact = scale * exact
    wrt = [a, b] + ([tau] if temperature != "fixed" else [])
    want = torch.autograd.grad(exact, wrt, retain_graph=True)
    got = torch.autograd.grad(step.surrogate, [a, b] + ([tau] if temperature == "global" else []))
    for w, gt in zip(want, got):
        torch.testing.assert_close(gt, w, rtol=1e-7, atol=1e-9)
    if temperature == "individual":
        torch.testing.assert_close(step.tau_grad, want[2] / scale, rtol=1e-7, atol=1e-9)
    else:
        assert step.tau_grad is None
    ((log_g, valid),) = seen
    assert torch.equal(valid, count > 0) and torch.equal(step.log_u, log_g)


def _side1_base(n, cols, pos_col, self_col):
    m = torch.ones(n, cols, dtype=torch.bool)
    m[torch.arange(n), pos_col[:, 1]] = False
    if self_col is not None:
        m[torch.arange(n), self_col[:, 1]] = False
    return m


def test_gcl_fcco_kernel_estimator_and_small_tau():
    """The surrogate's weights use the estimator's u (FCCO), and tau = 0.01 stays finite in float32."""
    n = 5
    a, b = _features(n, 4, seed=6)
    sims, *_ = _layout(a, b, "bimodal")
    pos = sims[0].detach().diagonal()[:, None].expand(n, 2)
    count = torch.full((n, 2), n - 1)
    log_u = torch.randn(n, 2, dtype=torch.float64)
    step = gcl_fcco(sims, pos, 0.3, lambda lg, ok: log_u, count=count, transposed=True, stable=False)
    got = torch.autograd.grad(step.surrogate, [a, b], retain_graph=True)
    # reference: sum_iv 0.3 * g_hat_iv / u_iv (gradient tau grad(g_hat) / u)
    ref = 0.0
    off = ~torch.eye(n, dtype=torch.bool)
    for v in (0, 1):
        diff = sims[v] - sims[v].diagonal()[:, None]
        g_hat = (torch.exp(diff / 0.3) * off).sum(1) / (n - 1)
        ref = ref + (0.3 * g_hat / log_u[:, v].exp()).sum()
    for w, gt in zip(torch.autograd.grad(ref, [a, b]), got):
        torch.testing.assert_close(gt, w)
    a32, b32 = (x.detach().float().requires_grad_(True) for x in (a, b))
    b32.data[0] = -a32.data[0]
    s32 = a32 @ b32.T
    pos32 = s32.detach().diagonal()[:, None].expand(n, 2)
    step = gcl_fcco([s32, s32.T], pos32, 0.01, lambda lg, ok: lg, count=count, transposed=True)
    step.surrogate.backward()
    assert torch.isfinite(step.surrogate) and torch.isfinite(a32.grad).all() and torch.isfinite(step.log_u).all()


def test_square_kernels_equal_the_transposed_layout_and_refuse_bad_layouts():
    """gcl_fcco_square / nuclr_fcco_square with count=None are gcl_fcco / nuclr_fcco(transposed=True) with every
    off-diagonal column a negative; a mask with count=None, or positives off the main diagonal, is refused."""
    n = 6
    a, b = _features(n, 4, seed=8)
    sims, *_ = _layout(a, b, "bimodal")
    pos = sims[0].detach().diagonal()[:, None].expand(n, 2)
    tau = 0.2 + 0.3 * torch.rand(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for stable in (True, False):
        want = gcl_fcco(sims, pos, tau, lambda lg, ok: lg, count=n - 1, transposed=True, rho=0.3, stable=stable)
        got = gcl_fcco_square(sims[0], tau, lambda lg, ok: lg, rho=0.3, stable=stable)
        torch.testing.assert_close(got.surrogate, want.surrogate, rtol=0, atol=0)
        torch.testing.assert_close(got.tau_grad, want.tau_grad, rtol=0, atol=0)
        zeta, log_pos = 0.1 * tau, torch.tensor([-2.0, -1.5], dtype=torch.float64)
        want_n = nuclr_fcco(sims, pos, zeta, 0.3, log_pos, lambda lg, ok: lg, count=n - 1, transposed=True, stable=stable)
        got_n = nuclr_fcco_square(sims[0], zeta, 0.3, log_pos, lambda lg, ok: lg, stable=stable,
                                  zeta_min=zeta.amin(0) if not stable else None)
        torch.testing.assert_close(got_n.surrogate, want_n.surrogate, rtol=0, atol=0)
        torch.testing.assert_close(got_n.col_weight, want_n.col_weight, rtol=0, atol=0)
        # the square kernel (both passes) against the two-sided one on sims[0] and its transpose (side by side)
        rows = nuclr_fcco(sims, pos, zeta, 0.3, log_pos, lambda lg, ok: lg, count=n - 1, stable=stable)
        for field in ("surrogate", "log_u", "col_weight"):
            torch.testing.assert_close(getattr(got_n, field), getattr(rows, field))
        a.grad = b.grad = None
        got_n.surrogate.backward()
        grads = a.grad.clone(), b.grad.clone()
        a.grad = b.grad = None
        sims2, *_ = _layout(a, b, "bimodal")
        nuclr_fcco(sims2, pos, zeta, 0.3, log_pos, lambda lg, ok: lg, count=n - 1, stable=stable).surrogate.backward()
        torch.testing.assert_close(grads, (a.grad, b.grad))
        sims, *_ = _layout(a, b, "bimodal")
    mask = ~torch.eye(n, dtype=torch.bool)
    with pytest.raises(ValueError, match="count=None means no masks"):
        gcl_fcco_square(sims[0], 0.3, lambda lg, ok: lg, neg=(mask, mask))
    with pytest.raises(ValueError, match="count=None means no masks"):
        nuclr_fcco_square(sims[0], zeta, 0.3, log_pos, lambda lg, ok: lg, neg=(mask, None), stable=False)
    with pytest.raises(ValueError, match="main diagonal"):
        gcl_fcco(sims, pos, 0.3, lambda lg, ok: lg, count=n - 1, transposed=True, pos_offset=(1, 1))
    with pytest.raises(ValueError, match="main diagonal"):
        nuclr_fcco(sims, pos, zeta, 0.3, log_pos, lambda lg, ok: lg, count=n - 1, transposed=True, stable=False,
                   pos_offset=(0, 1))


# ----------------------------------------------------------------------------- lean path = general path
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("tau", (0.1, 0.02))  # one exponential for both sides / row-max shifted passes
def test_paired_path_equals_general_path(temperature, tau):
    def make():
        return GlobalContrastiveLoss(40, mode="bimodal", temperature=temperature, tau=tau, tau_min=0.01, rho=1.0,
                                     gamma=0.7, lr_tau=0.05, eps=1e-3 if temperature == "global" else 0.0)

    assert_same_training(make)


def test_paired_path_equals_general_path_without_normalisation_in_float64():
    def make():
        return GlobalContrastiveLoss(40, mode="bimodal", temperature="individual", tau=0.5, normalize=False).double()

    assert_same_training(make, dtype=torch.float64)


def test_paired_path_is_taken_only_when_it_applies():
    """The lean path runs for unique indices on one process without a detector; duplicates take the general path."""
    calls = []

    class Spy(GlobalContrastiveLoss):
        def _paired_step(self, sim, index, *args):
            calls.append(index.numel())
            return super()._paired_step(sim, index, *args)

    loss = Spy(20, mode="bimodal")
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    loss(a, b, torch.tensor([0, 1, 2, 3]))
    loss(a, b, torch.tensor([0, 1, 1, 3]))  # duplicates: merged by the general estimator step
    loss(a[:1], b[:1], torch.tensor([5]))  # one pair: no negative at all
    Spy(20, mode="unimodal")(a, b, torch.tensor([0, 1, 2, 3]))
    assert calls == [4]


def test_objective_is_evaluated_on_request_from_the_last_step():
    """objective() / state_dict() give the last step's estimate even after the optimizer changed tau in place;
    a loaded checkpoint's objective replaces a pending one."""
    a, b, idx = torch.randn(6, 4), torch.randn(6, 4), torch.arange(6)
    eager, lazy = (GlobalContrastiveLoss(20, mode="bimodal", temperature="global", tau=0.1) for _ in range(2))
    eager(a, b, idx)
    want = eager.objective()
    lazy(a, b, idx)
    with torch.no_grad():
        lazy.tau.mul_(2.0)  # an optimizer step after the forward
    assert torch.equal(lazy.state_dict()["_objective"], want)
    assert torch.equal(lazy.objective(), want) and torch.isfinite(want)
    other = GlobalContrastiveLoss(20, mode="bimodal", temperature="global", tau=0.1)
    other(b, a, idx)  # a pending objective of another batch ...
    other.load_state_dict(eager.state_dict())  # ... is replaced by the checkpoint's
    assert torch.equal(other.objective(), want)


@pytest.mark.parametrize("kind", ("fixed-shared-exp", "fixed-stable", "global", "individual", "individual-stable",
                                  "nuclr", "nuclr-stable"))
def test_square_kernels_with_the_features_node_equal_the_dot_with_the_similarities(kind):
    """``weighted_sum`` (the lean path's node of the features, cosine_weighted_sum) gives the kernels' value, state
    rows and gradients of the default surrogate (a dot with ``sim``), on every square-kernel branch (float64)."""
    from xrisk.functional.similarity import cosine_similarity_detached, cosine_similarity_matrix, cosine_weighted_sum

    n = 7
    g = torch.Generator().manual_seed(5)
    a = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.6 * torch.randn(n, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    stable = kind.endswith("stable")
    tau_g = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    tau_i = 0.2 + 0.3 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    zeta = 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    log_pos = torch.tensor([-3.0, -2.5], dtype=torch.float64)

    def run(sim, ws):
        est = lambda lg, ok: lg - 0.1  # noqa: E731
        if kind.startswith("nuclr"):
            return nuclr_fcco_square(sim, zeta, 0.3, log_pos, est, scale=0.2, stable=stable, weighted_sum=ws)
        tau = {"global": tau_g, "individual": tau_i, "individual-stable": tau_i}.get(kind, 0.3)
        return gcl_fcco_square(sim, tau, est, scale=0.2, rho=0.4, stable=stable, weighted_sum=ws)

    want = run(cosine_similarity_matrix(a, b), None)
    grads_want = torch.autograd.grad(want[0], [a, b] + ([tau_g] if kind == "global" else []))
    s, factors = cosine_similarity_detached(a, b)
    got = run(s, lambda w, v: cosine_weighted_sum(factors, w, v))
    grads_got = torch.autograd.grad(got[0], [a, b] + ([tau_g] if kind == "global" else []))
    torch.testing.assert_close(got[0].detach(), want[0].detach())
    for x, y in zip(grads_got, grads_want):
        torch.testing.assert_close(x, y)
    for x, y in zip(got[1:], want[1:]):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y)
