"""NUCLR oracles: exact MIS objective (gamma = 1, full batch), a slow per-anchor loop over several
batches (estimator, zeta momentum, zeta), the zeta warm-up and the xi refresh."""

from __future__ import annotations

import math

import pytest
import torch

from xrisk.functional.contrastive import nuclr_fcco, nuclr_objective
from xrisk.losses import NUCLRLoss

from _contrastive import assert_same_training


def exact_nuclr(a, b, zeta, xi, tau):
    """(1/n) sum_i sum_v tau log((1/(n-1)) [e^{-xi_v/tau} + sum_{j!=i} e^{(d_ij - zeta_jv)/tau}]) + sum_v mean_j zeta_jv."""
    n = a.shape[0]
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    pos = (an * bn).sum(1, keepdim=True)
    off = ~torch.eye(n, dtype=torch.bool)
    total = 0.0
    for v, s in enumerate([an @ bn.T, bn @ an.T]):
        inner = (torch.exp((s - pos - zeta[None, :, v]) / tau) * off).sum(1) + torch.exp(-xi[v] / tau)
        total = total + (tau * torch.log(inner / (n - 1))).sum() / n + zeta[:, v].mean()
    return total


def test_gamma_one_full_batch_exact_gradient_and_zeta_step():
    n, tau, lr = 7, 0.2, 0.3
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.7 * torch.randn(n, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss_fn = NUCLRLoss(n, tau=tau, gamma=1.0, lr_zeta=lr, zeta_start_epoch=0, beta_zeta=0.5).double()
    zeta0 = 0.1 * torch.randn(n, 2, generator=g)
    loss_fn.zeta.value.copy_(zeta0)
    loss_fn.set_epoch(0)  # xi <- max(max zeta, xi_init)
    xi = zeta0.amax(0).clamp_min(0.0).double()
    torch.testing.assert_close(loss_fn.xi, xi.float())
    z = zeta0.double().requires_grad_(True)
    F = exact_nuclr(a, b, z, xi, tau)
    wa, wb, wz = torch.autograd.grad(F, [a, b, z])
    out = loss_fn(a, b, torch.arange(n))
    ga, gb = torch.autograd.grad(out, [a, b])
    torch.testing.assert_close(ga, wa, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(gb, wb, rtol=1e-5, atol=1e-8)
    assert loss_fn.objective().item() == pytest.approx(F.item(), rel=1e-5)
    # first visit: momentum = the gradient estimate n dL/dzeta, then one step of size lr
    torch.testing.assert_close(loss_fn.zeta_momentum.value.double(), n * wz, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_fn.zeta.value.double(), zeta0.double() - lr * n * wz, rtol=1e-5, atol=1e-6)


def oracle_nuclr_step(st, a, b, index, *, n, tau, gamma, beta, lr, update_zeta):
    """Slow loop over anchors and columns (bimodal); st holds python floats keyed by (index, side)."""
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    B = len(index)
    zeta = lambda k, v: st["zeta"].get((k, v), -0.05)  # noqa: E731
    log_pos = [-st["xi"][v] / tau - math.log(n - 1) for v in (0, 1)]
    ghat, keys = {}, []
    for i in range(B):
        pos = an[i] @ bn[i]
        for v in (0, 1):
            x, cols = (an[i], bn) if v == 0 else (bn[i], an)
            terms = {j: torch.exp((x @ cols[j] - pos - zeta(int(index[j]), v)) / tau)
                     for j in range(B) if int(index[j]) != int(index[i])}
            ghat[(i, v)] = terms
            keys.append((i, v))
    groups: dict = {}
    for i, v in keys:
        groups.setdefault((int(index[i]), v), []).append(float(sum(ghat[(i, v)].values()).detach()) / len(ghat[(i, v)]))
    for key, vals in groups.items():
        new = sum(vals) / len(vals)
        st["u"][key] = new if key not in st["u"] else (1 - gamma) * st["u"][key] + gamma * new
    loss, obj, colw = 0.0, 0.0, {}
    for i, v in keys:
        Z = math.exp(log_pos[v]) + st["u"][(int(index[i]), v)]
        m = len(ghat[(i, v)])
        for j, e in ghat[(i, v)].items():
            loss = loss + tau * e / (m * Z) / B  # gradient tau * grad(g_hat) / Z
            colw.setdefault((j, v), []).append(float(e.detach()) / Z)
        obj += tau * math.log(Z) / B
    obj += sum(zeta(int(index[j]), v) for j in range(B) for v in (0, 1)) / B
    if update_zeta:
        zg: dict = {}
        for (j, v), ws in colw.items():
            zg.setdefault((int(index[j]), v), []).append(1.0 - sum(ws) / len(ws))
        zeta_before = {key: zeta(*key) for key in zg}
        for key, gs in zg.items():
            gm = sum(gs) / len(gs)
            st["m"][key] = gm if key not in st["m"] else (1 - beta) * st["m"][key] + beta * gm
            st["zeta"][key] = zeta_before[key] - lr * st["m"][key]
    return loss, obj


def test_matches_slow_loop_oracle_over_batches_with_warmup():
    n, tau, gamma, beta, lr = 12, 0.15, 0.6, 0.7, 0.2
    loss_fn = NUCLRLoss(n, tau=tau, gamma=gamma, beta_zeta=beta, lr_zeta=lr, zeta_start_epoch=1).double()
    st = {"u": {}, "m": {}, "zeta": {}, "xi": [0.0, 0.0]}
    g = torch.Generator().manual_seed(1)
    schedule = [(0, torch.tensor([0, 1, 2, 3, 4])), (1, torch.tensor([3, 5, 6, 3, 0])), (2, torch.tensor([7, 1, 5, 8, 2]))]
    for epoch, index in schedule:
        loss_fn.set_epoch(epoch)
        st["xi"] = [max(max([st["zeta"].get((k, v), -0.05) for k in range(n)]), 0.0) for v in (0, 1)]
        a = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
        b = (a.detach() + 0.7 * torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
        ref, ref_obj = oracle_nuclr_step(st, a, b, index, n=n, tau=tau, gamma=gamma, beta=beta, lr=lr,
                                         update_zeta=epoch >= 1)
        want = torch.autograd.grad(ref, [a, b])
        got = torch.autograd.grad(loss_fn(a, b, index), [a, b])
        for w, gt in zip(want, got):
            torch.testing.assert_close(gt, w, rtol=1e-5, atol=1e-8)
        assert loss_fn.objective().item() == pytest.approx(ref_obj, rel=1e-5)
        for (k, v), u in st["u"].items():
            assert loss_fn.log_u.value[k, v].exp().item() == pytest.approx(u, rel=1e-5)
        if epoch == 0:  # warm-up: zeta untouched
            assert not loss_fn.zeta.seen.any() and torch.all(loss_fn.zeta.value == -0.05)
        for (k, v), z in st["zeta"].items():
            assert loss_fn.zeta.value[k, v].item() == pytest.approx(z, rel=1e-5, abs=1e-7)
            assert loss_fn.zeta_momentum.value[k, v].item() == pytest.approx(st["m"][(k, v)], rel=1e-5, abs=1e-7)
    assert len(st["zeta"]) > 0


def test_small_temperature_finite_and_bad_args():
    loss_fn = NUCLRLoss(20, tau=0.005, zeta_start_epoch=0, lr_zeta=0.01)
    for step in range(3):
        a = (3 * torch.randn(8, 6)).requires_grad_(True)
        out = loss_fn(a, torch.randn(8, 6), torch.arange(8) + step)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(a.grad).all() and torch.isfinite(loss_fn.objective())
    with pytest.raises(ValueError, match="num_samples"):
        NUCLRLoss(1)
    with pytest.raises(ValueError, match="zeta_start_epoch"):
        NUCLRLoss(10, zeta_start_epoch=-1)


@pytest.mark.parametrize("masks", ("none", "shared", "per-side"))
@pytest.mark.parametrize("stable", (True, False))
def test_nuclr_fcco_kernel_gradient_is_exact_when_u_equals_g(masks, stable):
    """The kernel the module calls: with u = g_hat its surrogate gradient is the exact gradient of
    scale * sum_iv nuclr_objective, and col_weight / col_count give the exact zeta-gradient, on the
    per-side path (stable=True) and the shared-exponential path (stable=False)."""
    n, tau, scale = 6, 0.2, 0.5
    g = torch.Generator().manual_seed(8)
    a = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    b = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    s = a @ b.T
    sims = [s, s.T]
    pos = s.detach().diagonal()[:, None].expand(n, 2)
    zeta = (0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    log_pos = torch.tensor([-2.0, -1.5], dtype=torch.float64)
    off = ~torch.eye(n, dtype=torch.bool)
    neg = [None, None]
    full = [off, off]
    if masks != "none":
        m = off & ~(torch.rand(n, n, generator=g) > 0.7)
        if masks == "shared":
            m = m & m.T
            neg, full = [m, m], [m, m]
        else:
            m1 = off & (torch.rand(n, n, generator=g) > 0.3)
            neg, full = [m, m1], [m, m1]
    count = torch.stack([full[0].sum(1), full[1].sum(1)], 1)
    count_arg = n - 1 if masks == "none" else count  # without masks the count may be given as an int
    step = nuclr_fcco(sims, pos, zeta.detach(), tau, log_pos, lambda lg, ok: lg, count=count_arg,
                      neg=neg, transposed=True, scale=scale, stable=stable)
    exact = 0.0
    for v in (0, 1):
        diff = sims[v] - sims[v].diagonal()[:, None]
        exact = exact + nuclr_objective(diff, full[v], zeta[None, :, v], tau, log_pos[v]).sum()
    wa, wb, wz = torch.autograd.grad(scale * exact, [a, b, zeta], retain_graph=True)
    ga, gb = torch.autograd.grad(step.surrogate, [a, b])
    torch.testing.assert_close(ga, wa, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gb, wb, rtol=1e-7, atol=1e-9)
    # d/dzeta_jv of sum_i tau log Z_iv = -sum_i w_ij / |N_iv|
    for v in (0, 1):
        per_anchor = (torch.exp((sims[v] - sims[v].diagonal()[:, None] - zeta[None, :, v]) / tau) * full[v]).detach()
        z = torch.logaddexp(torch.log(per_anchor.sum(1) / count[:, v]), log_pos[v])
        w = per_anchor / z.exp()[:, None]
        torch.testing.assert_close(step.col_weight[:, v], w.sum(0))
        torch.testing.assert_close(-(w / count[:, v : v + 1]).sum(0) * scale, wz[:, v])
        cc = step.col_count[:, v] if isinstance(step.col_count, torch.Tensor) else torch.full((n,), step.col_count)
        torch.testing.assert_close(cc.double(), full[v].sum(0).double())


@pytest.mark.parametrize("tau", (0.1, 0.01))  # one shared exponential / row-max shifted passes
def test_paired_path_equals_general_path(tau):
    def make():
        return NUCLRLoss(40, tau=tau, zeta_start_epoch=1, lr_zeta=0.05, gamma=0.6)

    assert_same_training(make, steps=8)


def test_resume_restores_the_epoch_of_the_zeta_warmup_and_xi():
    """The epoch is also kept on the host (no device read per step): a loaded state_dict must restore it, or
    a resumed run would stay in the zeta warm-up; xi (the cached log of the positive's term) too."""
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randperm(20, generator=g)[:6])
               for _ in range(4)]
    def make():
        return NUCLRLoss(20, tau=0.1, zeta_init=-0.5, xi_init=-1.0, zeta_start_epoch=1, lr_zeta=0.5)

    ref = make()
    ref(*batches[0])
    ref.set_epoch(1)  # zeta updates from now on
    ref(*batches[1])
    ref.set_epoch(2)  # xi refreshed from the moved zeta
    assert ref.xi.max().item() > -0.5
    saved = {k: v.clone() for k, v in ref.state_dict().items()}
    resumed = make()
    resumed(*batches[0])  # a cached log-positive term of the initial xi, which the load must drop
    resumed.load_state_dict(saved)
    assert resumed.current_epoch() == 2
    for a, b, idx in batches[2:]:
        assert ref(a, b, idx).item() == resumed(a, b, idx).item()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
