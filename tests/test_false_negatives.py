"""GloFND: thresholds converge to the brute-force quantile; detected false negatives leave the loss and
the estimator; start epoch; only the batch rows are touched."""

from __future__ import annotations

import math

import pytest
import torch

from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss


def _bimodal_sims(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sim = torch.stack([a[idx] @ b[idx].T, b[idx] @ a[idx].T], 1)
    neg = (idx[None, :] != idx[:, None]).unsqueeze(1).expand(-1, 2, -1)
    return sim, neg


def test_thresholds_converge_to_bruteforce_quantile_on_frozen_embeddings():
    n, alpha = 60, 0.1
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(n, 8, generator=g), dim=1)
    fnd = FalseNegativeDetector(n, alpha=alpha, lr=0.05, init_quantile=True)
    for epoch in range(200):
        fnd.lr = 0.3 / (1 + epoch / 10)  # Robbins-Monro decay: SGD on the pinball loss converges
        for idx in torch.randperm(n, generator=g).split(20):
            fnd(*_bimodal_sims(a, b, idx), idx)
    off = ~torch.eye(n, dtype=torch.bool)
    for v, s in enumerate([a @ b.T, b @ a.T]):
        negs = s[off].view(n, n - 1)
        q = torch.quantile(negs, 1 - alpha, dim=1)
        lam = fnd.lam.value[:, v]
        assert (lam - q).abs().mean() < 0.03, (lam - q).abs().mean()
        frac_above = (negs > lam[:, None]).float().mean(1)
        assert (frac_above.mean() - alpha).abs() < 0.02


def _exact_masked_gcl(a, b, tau, keep):
    """(1/n) sum_i sum_v tau log mean_{j != i, kept} exp(d_ij / tau), bimodal, full data."""
    n = a.shape[0]
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    pos = (an * bn).sum(1, keepdim=True)
    total = 0.0
    for v, s in enumerate([an @ bn.T, bn @ an.T]):
        m = keep[:, v]
        g = (torch.exp((s - pos) / tau) * m).sum(1) / m.sum(1)
        total = total + (tau * torch.log(g)).sum()
    return total / n


def test_masked_negatives_leave_loss_and_estimator():
    n, tau, lam0 = 8, 0.2, 0.2
    g = torch.Generator().manual_seed(2)
    a = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.6 * torch.randn(n, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    fnd = FalseNegativeDetector(n, alpha=0.2, lr=1e-9, init=lam0)  # thresholds stay at lam0
    loss_fn = GlobalContrastiveLoss(n, mode="bimodal", tau=tau, gamma=1.0, false_negatives=fnd).double()
    out = loss_fn(a, b, torch.arange(n))
    ga, gb = torch.autograd.grad(out, [a, b])
    with torch.no_grad():
        an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        sims = torch.stack([an @ bn.T, bn @ an.T], 1)
        keep = (sims <= fnd.lam.value.double()[:, :, None]) & ~torch.eye(n, dtype=torch.bool)[:, None, :]
    assert (~keep).sum() > 2 * n, "the test needs some detected false negatives"
    F = _exact_masked_gcl(a, b, tau, keep)
    wa, wb = torch.autograd.grad(F, [a, b])
    torch.testing.assert_close(ga, wa, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(gb, wb, rtol=1e-5, atol=1e-8)
    assert loss_fn.objective().item() == pytest.approx(F.item(), rel=1e-6)
    unmasked = _exact_masked_gcl(a, b, tau, torch.ones_like(keep) & ~torch.eye(n, dtype=torch.bool)[:, None, :])
    assert abs(unmasked.item() - F.item()) > 1e-3


def _negative_sims(a: torch.Tensor, b: torch.Tensor, unimodal: bool) -> list[torch.Tensor]:
    """Per side ``[n, C]`` cosine similarities of each anchor with its candidate negatives, NaN elsewhere."""
    n = a.shape[0]
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    rows = torch.arange(n)
    if unimodal:  # columns [views a; views b]: an anchor's own column and its twin's are not negatives
        z = torch.cat([an, bn])
        sims = [(z @ z.T)[:n], (z @ z.T)[n:]]
        for v in (0, 1):
            sims[v][rows, rows] = sims[v][rows, rows + n] = float("nan")
        return sims
    sims = [an @ bn.T, bn @ an.T]
    for s in sims:
        s[rows, rows] = float("nan")
    return sims


@pytest.mark.parametrize("make", ["bimodal", "bimodal-individual", "unimodal", "nuclr"])
def test_anchor_whose_negatives_are_all_flagged_keeps_its_state(make):
    """Masking can leave an anchor without negatives (its threshold below all its similarities): the step goes
    on, that anchor's estimator (and temperature) rows stay as they were, the others are written, and (bimodal,
    gamma = 1) the gradient is the exact masked objective's over the anchors that keep negatives.
    Regression: such a step used to write the state rows unmasked and raise FloatingPointError."""
    n, tau = 8, 0.3
    g = torch.Generator().manual_seed(5)
    a = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.6 * torch.randn(n, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    sims = _negative_sims(a.detach(), b.detach(), make == "unimodal")
    lowest = torch.stack([s.nan_to_num(2.0).amin(1) for s in sims], 1)  # each anchor's smallest negative sim
    lam0 = lowest.median().item()  # about half of the anchors lose every negative
    fnd = FalseNegativeDetector(n, alpha=0.2, lr=1e-9, init=lam0)  # thresholds stay at lam0
    if make == "nuclr":
        loss_fn = NUCLRLoss(n, tau=tau, gamma=1.0, zeta_start_epoch=0, lr_zeta=0.1, false_negatives=fnd)
    else:
        loss_fn = GlobalContrastiveLoss(
            n, mode="unimodal" if make == "unimodal" else "bimodal", tau=tau, gamma=1.0, false_negatives=fnd,
            temperature="individual" if make == "bimodal-individual" else "fixed",
        )
    loss_fn = loss_fn.double()
    out = loss_fn(a, b, torch.arange(n))
    ga, gb = torch.autograd.grad(out, [a, b])
    assert torch.isfinite(out) and torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert math.isfinite(loss_fn.objective().item())
    has = lowest <= lam0  # [n, 2]: the anchor keeps a negative on that side
    assert (~has).any() and has.any(), "the test needs anchors with and without kept negatives"
    assert torch.equal(loss_fn.log_u.seen, has)  # the anchors left without negatives were not written
    assert (loss_fn.log_u.value[~has] == 0).all()
    if make == "bimodal-individual":
        assert torch.equal(loss_fn.tau_individual.seen, has) and (loss_fn.tau_individual.value[~has] == tau).all()
    if make == "bimodal":  # the exact masked objective; anchors without negatives contribute nothing
        an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        pos = (an * bn).sum(1, keepdim=True)
        exact = 0.0
        for v, s in enumerate([an @ bn.T, bn @ an.T]):
            keep = sims[v] <= lam0  # NaN (not a negative) compares False
            inner = (torch.exp((s - pos) / tau) * keep).sum(1)
            ok = keep.any(1)
            exact = exact + (tau * torch.log(inner[ok] / keep.sum(1)[ok])).sum()
        wa, wb = torch.autograd.grad(exact / n, [a, b])
        torch.testing.assert_close(ga, wa, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(gb, wb, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("make", ["gcl", "nuclr"])
def test_start_epoch_learns_without_masking_and_touches_only_batch_rows(make):
    n = 30
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    idx = torch.tensor([3, 7, 8, 12, 20, 21])

    def build(fnd):
        if make == "gcl":
            return GlobalContrastiveLoss(n, mode="unimodal", false_negatives=fnd)
        return NUCLRLoss(n, tau=0.1, zeta_start_epoch=0, lr_zeta=0.1, false_negatives=fnd)

    fnd = FalseNegativeDetector(n, alpha=0.3, lr=0.9, start_epoch=1)
    with_fnd, plain = build(fnd), build(None)
    for _ in range(2):  # epoch 0: no masking yet. Equal up to rounding: with a detector the kernel gets (all-True)
        # masks and sums the two sides' weights in another order than the mask-free kernel
        assert with_fnd(a, b, idx).item() == pytest.approx(plain(a, b, idx).item(), rel=1e-6, abs=0.0)
    assert torch.equal(fnd.lam.seen.any(1).nonzero().squeeze(1), idx)  # only batch rows were touched
    assert (fnd.lam.value[idx] < 1.0).all()  # but the thresholds were learned
    with_fnd.set_epoch(1)
    plain.set_epoch(1)
    assert int(fnd.epoch) == 1 and fnd.masking
    assert "false_negatives.lam.value" in with_fnd.state_dict()
    assert with_fnd(a, b, idx).item() != plain(a, b, idx).item()


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        FalseNegativeDetector(10, alpha=1.0)
    with pytest.raises(ValueError, match="lr"):
        FalseNegativeDetector(10, lr=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        GlobalContrastiveLoss(11, false_negatives=FalseNegativeDetector(10))
    with pytest.raises(TypeError, match="FalseNegativeDetector"):
        GlobalContrastiveLoss(10, false_negatives=torch.nn.Identity())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="optimizer"):
        FalseNegativeDetector(10, optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="betas"):
        FalseNegativeDetector(10, optimizer="adam", betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        FalseNegativeDetector(10, optimizer="adam", eps=0.0)
    assert FalseNegativeDetector(10).lr == 0.5 and FalseNegativeDetector(10, optimizer="adam").lr == 0.05


def test_adam_thresholds_match_a_per_sample_loop():
    """optimizer="adam": GloFND's per-sample Adam (moments from 0, bias correction with t = epoch + 1), only for
    the batch anchors with negatives; init_quantile sets a first visit's threshold and leaves its moments at 0."""
    from xrisk.functional.contrastive import masked_upper_quantile

    n, alpha, lr, (b1, b2), eps = 12, 0.2, 0.05, (0.9, 0.98), 1e-8
    g = torch.Generator().manual_seed(5)
    a = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(a + torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1)
    for init_quantile in (False, True):
        fnd = FalseNegativeDetector(n, alpha=alpha, lr=lr, optimizer="adam", init_quantile=init_quantile)
        lam, m, v, seen = {}, {}, {}, set()
        for epoch in range(3):
            fnd.set_epoch(epoch)
            for idx in torch.randperm(n, generator=g).split(5):
                sim, neg = _bimodal_sims(a, b, idx)
                neg = neg.clone()
                neg[0, 1] = False  # an anchor side without negatives keeps its threshold and moments
                fnd(sim.float(), neg, idx)
                t = epoch + 1
                for r, i in enumerate(idx.tolist()):
                    for s in range(2):
                        mask = neg[r, s]
                        if not mask.any():
                            continue
                        key = (i, s)
                        if init_quantile and key not in seen:
                            lam[key] = masked_upper_quantile(sim[r, s].float(), mask, alpha).item()
                            m[key] = v[key] = 0.0
                            seen.add(key)
                            continue
                        old = lam.get(key, 1.0)
                        grad = alpha - (sim[r, s].float()[mask] > old).float().mean().item()
                        m[key] = b1 * m.get(key, 0.0) + (1 - b1) * grad
                        v[key] = b2 * v.get(key, 0.0) + (1 - b2) * grad**2
                        step = (m[key] / (1 - b1**t)) / (math.sqrt(v[key] / (1 - b2**t)) + eps)
                        lam[key] = min(1.0, max(-1.0, old - lr * step))
                        seen.add(key)
                for (i, s), want in lam.items():
                    assert fnd.lam.value[i, s].item() == pytest.approx(want, abs=1e-5)
                    assert fnd.lam_m.value[i, s].item() == pytest.approx(m[(i, s)], abs=1e-6)
                    assert fnd.lam_v.value[i, s].item() == pytest.approx(v[(i, s)], abs=1e-7)
        assert set(fnd.state_dict()) == {"lam.value", "lam.seen", "lam_m.value", "lam_m.seen", "lam_v.value",
                                         "lam_v.seen", "epoch", "samples_seen", "epoch_is_set"}


def test_threshold_kernels_against_loops():
    from xrisk.functional.contrastive import masked_upper_quantile, quantile_threshold_step

    g = torch.Generator().manual_seed(7)
    sim = torch.rand(5, 2, 9, generator=g) * 2 - 1
    mask = torch.rand(5, 2, 9, generator=g) > 0.3
    mask[0, 0] = False  # a row without negatives
    lam = torch.rand(5, 2, generator=g) - 0.5
    alpha, lr = 0.2, 0.1
    q = masked_upper_quantile(sim, mask, alpha)
    new = quantile_threshold_step(sim, mask, lam, alpha=alpha, lr=lr)
    for i in range(5):
        for v in range(2):
            vals = sorted(sim[i, v][mask[i, v]].tolist(), reverse=True)
            if not vals:
                assert q[i, v] == 1.0 and new[i, v] == lam[i, v]
                continue
            k = min(int(alpha * len(vals)), len(vals) - 1)
            assert q[i, v].item() == vals[k]
            frac = sum(x > lam[i, v].item() for x in vals) / len(vals)
            want = min(1.0, max(-1.0, lam[i, v].item() - lr * (alpha - frac)))
            assert new[i, v].item() == pytest.approx(want, abs=1e-6)


def test_default_lr_converges_and_masked_fraction_is_reported():
    """The default step size reaches the (1 - alpha) quantile within a few epochs from init = 1 (plain SGD
    moves by at most lr * alpha per visit); last_masked_fraction reports the flagged share of negatives."""
    n, alpha = 60, 0.1
    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(n, 8, generator=g), dim=1)
    fnd = FalseNegativeDetector(n, alpha=alpha, start_epoch=5)
    assert fnd.lr == 0.5
    assert math.isnan(fnd.last_masked_fraction)
    for epoch in range(40):
        fnd.set_epoch(epoch)
        for idx in torch.randperm(n, generator=g).split(20):
            keep = fnd(*_bimodal_sims(a, b, idx), idx)
            sim, neg = _bimodal_sims(a, b, idx)
            flagged = (neg & (sim > fnd.lam.value[idx][:, :, None])).sum() / neg.sum()
            assert fnd.last_masked_fraction == pytest.approx(flagged.item(), abs=1e-6)
            if epoch >= 5:
                assert torch.equal(keep, sim <= fnd.lam.value[idx][:, :, None])
    assert abs(fnd.last_masked_fraction - alpha) < 0.08
    assert fnd.state_dict().keys() == {"lam.value", "lam.seen", "epoch", "samples_seen", "epoch_is_set"}


def test_count_true_equals_sum_for_every_layout():
    """The mask counter every GloFND step uses (uint8 blocks along the contiguous axis) is exact."""
    from xrisk.functional.contrastive import count_true

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (300, 1000), (1000, 300), (7, 128), (128, 7), (3, 0), (0, 4), (256, 300), (255, 256)]:
        m = torch.rand(shape, generator=g) < 0.6
        for x in (m, m.T, m.T.contiguous(), m[:, ::2]):  # row-major, transposed view, copy, strided
            for d in (0, 1, -1):
                assert torch.equal(count_true(x, d), x.sum(d)), (shape, d, x.stride())
        assert count_true(m) == m.sum()
    m3 = torch.rand(4, 2, 9, generator=g) < 0.5
    assert torch.equal(count_true(m3[:, 0], 1), m3[:, 0].sum(1)) and torch.equal(count_true(m3, -1), m3.sum(-1))
    big = torch.ones(3, 1000, dtype=torch.bool)  # blocks of 128 ones: no uint8 overflow
    assert count_true(big, 1).tolist() == [1000] * 3
    for n in (255, 256):  # one uint8 sum up to 255 entries, blocks above
        full = torch.ones(n, n, dtype=torch.bool)
        assert count_true(full, 1).tolist() == [n] * n and count_true(full.T, 0).tolist() == [n] * n
        assert count_true(full, 1).dtype == torch.int64


def test_detect_with_counts_returns_the_kept_counts():
    g = torch.Generator().manual_seed(4)
    fnd = FalseNegativeDetector(50, alpha=0.1, start_epoch=0)
    sim = torch.rand(6, 10, generator=g) * 2 - 1
    neg = torch.rand(6, 10, generator=g) < 0.8
    kept, counts = fnd.detect_with_counts([sim, sim.T[:6]], [neg, neg.T[:6]], torch.arange(6))
    assert torch.equal(counts, torch.stack([kept[0].sum(1), kept[1].sum(1)], 1))
    assert all(not (k & ~n).any() for k, n in zip(kept, (neg, neg.T[:6])))  # only candidates are kept


def test_excluded_diagonals_equal_explicit_masks():
    """Without duplicate indices the losses hand the detector the excluded diagonals instead of a [B, C] mask:
    thresholds, kept negatives, counts and the masked fraction equal those of the explicit mask."""
    from xrisk.functional.contrastive import negatives_mask, quantile_threshold_step

    g = torch.Generator().manual_seed(11)
    blocks = [(0, 6, 6), (0, 6, 0)]  # two views: anchor i excludes its own column i and its positive i + 6
    mask = negatives_mask((6, 12), blocks, torch.device("cpu"))
    want = torch.ones(6, 12, dtype=torch.bool)
    for i in range(6):
        want[i, i] = want[i, i + 6] = False
    assert torch.equal(mask, want)
    sim, lam = torch.rand(6, 12, generator=g) * 2 - 1, torch.rand(6, generator=g) - 0.5
    got = quantile_threshold_step(sim, None, lam, alpha=0.2, lr=0.1, count=mask.sum(1), excluded=blocks)
    assert torch.equal(got, quantile_threshold_step(sim, mask, lam, alpha=0.2, lr=0.1))
    with pytest.raises(ValueError, match="count"):
        quantile_threshold_step(sim, None, lam, alpha=0.2, lr=0.1, excluded=blocks)

    diag = [(0, 8, 0)]
    m = negatives_mask((8, 8), diag, torch.device("cpu"))
    counts = torch.full((8, 2), 7)
    for start, init_quantile, opt in [(0, False, "sgd"), (0, True, "sgd"), (5, False, "sgd"), (0, True, "adam")]:
        fast, slow = (FalseNegativeDetector(30, alpha=0.2, start_epoch=start, init_quantile=init_quantile,
                                            optimizer=opt)  # type: ignore[arg-type]
                      for _ in range(2))
        for _ in range(3):  # image anchors x texts and its transposed view, as a one-process image-text batch
            s, idx = torch.rand(8, 8, generator=g) * 2 - 1, torch.randperm(30, generator=g)[:8]
            k1, c1 = fast.detect_with_counts([s, s.T], [None, None], idx, counts=counts, excluded=[diag, diag])
            k2, c2 = slow.detect_with_counts([s, s.T], [m, m.T], idx, counts=counts)
            assert all(torch.equal(x, y) for x, y in zip(k1, k2)) and torch.equal(c1, c2)
            assert torch.equal(fast.lam.value, slow.lam.value) and torch.equal(fast.lam.seen, slow.lam.seen)
            assert fast.last_masked_fraction == slow.last_masked_fraction
    with pytest.raises(ValueError, match="explicit negative masks"):
        fast.detect_with_counts([s, s.T], [None, None], idx, counts=counts)
    with pytest.raises(ValueError, match="needs counts"):
        fast.detect_with_counts([s, s.T], [None, None], idx, excluded=[diag, diag])
