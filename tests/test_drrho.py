"""DRRhoLoss: oracles written from the DRRho risk (Wei, Lin, Yang, ICML 2025), limits, state rules, 2 ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _dist import run_distributed
from xrisk.functional.drrho import drrho_cvar_objective, drrho_kl_objective
from xrisk.losses import DRRhoLoss


def _problem(seed: int = 0, n: int = 24, d: int = 5, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    ref = torch.nn.Linear(d, classes).double()
    with torch.no_grad():
        ref_losses = F.cross_entropy(ref(x), y, reduction="none")
    return x, y, ref_losses


@pytest.mark.parametrize("divergence", ["kl", "cvar"])
def test_full_batch_gamma1_gradient_equals_autograd_of_the_objective(divergence):
    """Batch = the whole data set, gamma = 1: the surrogate's gradient is the gradient of the exact risk (KL,
    every step). CVaR: on the first step (threshold at the quantile) the gradient of the exact CVaR, on every step
    the gradient of the Rockafellar-Uryasev objective F(theta, s) at the threshold s the step used."""
    x, y, ref_losses = _problem()
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 3).double()
    alpha = 0.25  # alpha n = 6: the RU minimiser has 6 entries above it
    loss_fn = DRRhoLoss(divergence=divergence, tau=0.3, gamma=1.0, alpha=alpha, eta=0.05).double()
    for step in range(3):
        s_used = None if step == 0 or divergence == "kl" else loss_fn.threshold.double().clone()
        losses = F.cross_entropy(model(x), y, reduction="none")
        model.zero_grad()
        loss_fn(losses, ref_losses).backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        excess = F.cross_entropy(model(x), y, reduction="none") - ref_losses
        if divergence == "kl":
            exact = drrho_kl_objective(excess, 0.3)
        elif s_used is None:
            exact = drrho_cvar_objective(excess, alpha)
        else:
            exact = s_used + torch.relu(excess - s_used).mean() / alpha
        exact.backward()
        for a, b in zip(got, model.parameters()):
            torch.testing.assert_close(a, b.grad)
        # with u = g (KL) or the optimal threshold (CVaR, first step) the estimate is the exact objective
        torch.testing.assert_close(loss_fn.objective().double(), exact.detach(), rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad


def _kl_oracle(batches, tau, gamma):
    """Slow loop from the formula: u <- (1 - gamma) u + gamma mean_i exp(x_i / tau) (first visit: the batch mean),
    gradient weights exp(x_i / tau) / u, objective tau log u."""
    u = None
    out = []
    for x in batches:
        g = sum(math.exp(v / tau) for v in x) / len(x)
        u = g if u is None else (1 - gamma) * u + gamma * g
        out.append(([math.exp(v / tau) / u / len(x) for v in x], tau * math.log(u)))
    return out


def _cvar_oracle(batches, alpha, eta):
    """Slow loop: s = the (1 - alpha) quantile of the first batch (floor(alpha B) entries above it), weights
    1[x_i > s] / (alpha B), objective s + sum (x - s)_+ / (alpha B), s <- s - eta (alpha - share above s)."""
    s = None
    out = []
    for x in batches:
        b = len(x)
        if s is None:
            s = sorted(x, reverse=True)[min(int(math.floor(alpha * b)), b - 1)]
        above = [v > s for v in x]
        w = [float(a) / (alpha * b) for a in above]
        obj = s + sum(max(v - s, 0.0) for v in x) / (alpha * b)
        out.append((w, obj))
        s = s - eta * (alpha - sum(above) / b)
    return out


@pytest.mark.parametrize("divergence", ["kl", "cvar"])
def test_module_matches_slow_loop_over_several_batches(divergence):
    g = torch.Generator().manual_seed(5)
    batches = [(torch.rand(b, generator=g, dtype=torch.float64) * 3, torch.rand(b, generator=g, dtype=torch.float64))
               for b in (7, 10, 5, 8)]
    tau, gamma, alpha, eta = 0.4, 0.6, 0.3, 0.2
    loss_fn = DRRhoLoss(divergence=divergence, tau=tau, gamma=gamma, alpha=alpha, eta=eta)
    excess = [(l - r).tolist() for l, r in batches]
    want = _kl_oracle(excess, tau, gamma) if divergence == "kl" else _cvar_oracle(excess, alpha, eta)
    for (losses, ref), (w, obj) in zip(batches, want):
        losses = losses.clone().requires_grad_(True)
        loss_fn(losses, ref).backward()
        torch.testing.assert_close(losses.grad, torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=1e-7)
        assert loss_fn.objective().item() == pytest.approx(obj, rel=1e-5, abs=1e-6)


def test_kl_large_tau_is_the_plain_mean_and_cvar_alpha1_is_exactly_the_mean():
    """tau -> inf: uniform weights 1/B, and tau log u -> the moving average of the batch means of x (the
    estimator of the plain mean); alpha = 1: exactly the mean, whatever the state."""
    g = torch.Generator().manual_seed(2)
    losses, ref = torch.rand(9, generator=g, dtype=torch.float64), torch.rand(9, generator=g, dtype=torch.float64)
    kl, cvar = DRRhoLoss(divergence="kl", tau=1e7, gamma=0.5), DRRhoLoss(divergence="cvar", alpha=1.0)
    running = None
    for _ in range(3):  # also after the estimator / threshold carry state
        mean = (losses - ref).mean().item()
        running = mean if running is None else 0.5 * running + 0.5 * mean
        for loss_fn, tol, want in ((kl, 1e-6, running), (cvar, 0.0, mean)):
            x = losses.clone().requires_grad_(True)
            loss_fn(x, ref).backward()
            torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 9), rtol=tol, atol=tol)
            assert loss_fn.objective().item() == pytest.approx(want, rel=1e-5)
        losses = losses.roll(1) * 1.1


def test_ref_losses_zero_or_none_is_plain_kl_dro_and_cvar():
    """No reference: the same class is the KL-DRO risk tau log mean exp(l / tau) and the CVaR of l."""
    g = torch.Generator().manual_seed(4)
    losses = torch.rand(12, generator=g, dtype=torch.float64) * 2
    for divergence, exact in (("kl", drrho_kl_objective(losses, 0.5)), ("cvar", drrho_cvar_objective(losses, 0.25))):
        a = DRRhoLoss(divergence=divergence, tau=0.5, gamma=1.0, alpha=0.25)
        b = DRRhoLoss(divergence=divergence, tau=0.5, gamma=1.0, alpha=0.25)
        xa, xb = losses.clone().requires_grad_(True), losses.clone().requires_grad_(True)
        a(xa, torch.zeros_like(losses)).backward()
        b(xb, None).backward()
        assert torch.equal(xa.grad, xb.grad)
        assert a.objective().item() == pytest.approx(exact.item(), rel=1e-6)


def test_kl_weights_favour_samples_the_reference_fits_but_the_target_does_not():
    """Equal target losses: the sample with the lowest reference loss (largest excess) gets the largest weight."""
    losses = torch.full((4,), 1.0, requires_grad=True)
    ref = torch.tensor([0.1, 0.5, 1.0, 2.0])
    DRRhoLoss(divergence="kl", tau=0.2, gamma=1.0)(losses, ref).backward()
    assert losses.grad.argsort(descending=True).tolist() == [0, 1, 2, 3]


def test_small_tau_never_overflows_and_eval_writes_nothing():
    loss_fn = DRRhoLoss(divergence="kl", tau=1e-3, gamma=0.5)
    x = torch.tensor([50.0, -20.0, 3.0], requires_grad=True)
    value = loss_fn(x, torch.zeros(3))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and torch.isfinite(loss_fn.objective())
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    loss_fn.eval()
    with torch.no_grad():
        v_eval = loss_fn(torch.tensor([60.0, 1.0, 2.0]), torch.zeros(3))
    assert torch.isfinite(v_eval)
    for k, v in loss_fn.state_dict().items():
        assert torch.equal(v, before[k]), k
    loss_fn.train()
    loss_fn(torch.tensor([60.0, 1.0, 2.0]), torch.zeros(3))
    assert not torch.equal(loss_fn.log_u, before["log_u"])


def test_bad_inputs_raise_and_leave_state_untouched():
    loss_fn = DRRhoLoss(divergence="cvar", alpha=0.5)
    loss_fn(torch.rand(4), torch.rand(4))
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    with pytest.raises(ValueError, match="ref_losses contains 1 NaN/inf"):
        loss_fn(torch.rand(4), torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"ref_losses shape \(3,\) does not match losses shape \(4,\)"):
        loss_fn(torch.rand(4), torch.rand(3))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        loss_fn(torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(TypeError, match="index"):
        loss_fn(torch.rand(4), torch.rand(4), torch.rand(4))
    with pytest.raises(ValueError, match="divergence"):
        DRRhoLoss(divergence="chi2")  # type: ignore[arg-type]
    for k, v in loss_fn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpoint_of_one_divergence_refuses_the_other(tmp_path):
    from xrisk.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint

    a = DRRhoLoss(divergence="kl")
    a(torch.rand(3), torch.rand(3))
    save_checkpoint(tmp_path / "c.pt", loss=a)
    with pytest.raises(CheckpointMismatchError, match="divergence"):
        load_checkpoint(tmp_path / "c.pt", loss=DRRhoLoss(divergence="cvar"))


# ----------------------------------------------------------------------------- 2 processes
SIZES = (5, 2)  # uneven local batches


def _train(rank: int, world: int, divergence: str) -> list[dict]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    ref_model = torch.nn.Linear(4, 3).double()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = DRRhoLoss(divergence=divergence, tau=0.3, gamma=0.6, alpha=0.4, eta=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(9)
    lo = 0 if world == 1 else sum(SIZES[:rank])
    hi = sum(SIZES) if world == 1 else lo + SIZES[rank]
    out = []
    for _ in range(3):
        x = torch.randn(sum(SIZES), 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (sum(SIZES),), generator=g)
        with torch.no_grad():
            ref = F.cross_entropy(ref_model(x[lo:hi]), y[lo:hi], reduction="none")
        losses = F.cross_entropy(ddp(x[lo:hi]), y[lo:hi], reduction="none")
        opt.zero_grad()
        loss_fn(losses, ref, torch.arange(lo, hi)).backward()
        out.append({**{f"grad.{k}": p.grad.clone() for k, p in model.named_parameters()},
                    **{f"state.{k}": v.clone() for k, v in loss_fn.state_dict().items()},
                    "objective": loss_fn.objective()})
        opt.step()
    return out


@pytest.mark.parametrize("divergence", ["kl", "cvar"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(divergence):
    single = _train(0, 1, divergence)
    ranks = run_distributed(_train, divergence)
    for rank_out in ranks:
        for step, (got, want) in enumerate(zip(rank_out, single)):
            assert got.keys() == want.keys()
            for k in want:
                torch.testing.assert_close(got[k], want[k], msg=lambda m: f"step {step} {k}: {m}")


def test_the_steering_guide_example_runs(capsys):
    from pathlib import Path

    from _examples import marked_code

    page = Path(__file__).resolve().parents[1] / "docs" / "steering.md"
    code = marked_code(page.read_text(encoding="utf-8"), "steering-example")
    exec(compile(code, str(page), "exec"), {"__name__": "__steering__"})  # noqa: S102
    assert "DRRho-KL risk estimate" in capsys.readouterr().out


@pytest.mark.parametrize("level", [0.0, 40.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kl_shift_by_the_state_and_by_the_batch_maximum_give_the_same_steps(dtype, level):
    """The one-pass KL step (exponentials shifted by the stored log u, or unshifted while ``|log u| <= 30``) and the
    max-shifted step agree: weights, state, objective, over several steps, in every float dtype; a batch far above
    the estimate (the sum leaves the float32 range) falls back to the max shift and still agrees. ``level = 40``
    (``x / tau`` near 100, ``log u`` near 100 after the first step) takes the shifted branch."""
    from xrisk.functional.drrho import drrho_kl

    g = torch.Generator().manual_seed(8)
    state = {"state": (0.0, False), "max": (0.0, False)}
    for step in range(5):
        x = (torch.randn(13, generator=g) * 3 + level + (400.0 if step == 3 else 0.0)).to(dtype)
        for shift in ("max", "state"):
            old, seen = state[shift]
            out = drrho_kl(x, old, seen, tau=0.4, gamma=0.6, shift=shift)
            state[shift] = (out.state, True)
            if shift == "max":
                want = out
                continue
            tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
            assert out.weights.dtype == want.weights.dtype == (torch.float64 if dtype == torch.float64
                                                               else torch.float32)
            torch.testing.assert_close(out.weights, want.weights, rtol=tol, atol=tol)
            assert out.state == pytest.approx(want.state, rel=tol, abs=tol)
            assert out.objective == pytest.approx(want.objective, rel=tol, abs=tol)
            assert out.surrogate.dtype == dtype


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("divergence,alpha", [("kl", 0.3), ("cvar", 0.3), ("cvar", 1.0)])
def test_a_non_finite_excess_loss_gives_nan_floats_in_every_step(divergence, alpha, bad):
    """Every kernel path reports a NaN/inf entry (at -inf it has weight 0 and leaves the sums finite) through its
    returned floats, first visit or not, so the module raises before writing."""
    from xrisk.functional.drrho import drrho_cvar, drrho_kl

    for seen in (False, True):
        x = torch.tensor([0.5, bad, 1.0, 2.0])
        if divergence == "kl":
            out = drrho_kl(x, 0.3, seen, tau=0.4, gamma=0.6)
        else:
            out = drrho_cvar(x, 0.3, seen, alpha=alpha, eta=0.2)
        assert not (math.isfinite(out.state) and math.isfinite(out.objective)), (seen, out)


@pytest.mark.parametrize("alpha", [0.3, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cvar_steps_in_every_dtype_match_float64(dtype, alpha):
    """The CVaR step of a float32 / half batch equals the float64 step of the same values (weights in float32,
    surrogate in the batch's dtype), over several steps."""
    from xrisk.functional.drrho import drrho_cvar

    g = torch.Generator().manual_seed(5)
    state = {dtype: (0.0, False), torch.float64: (0.0, False)}
    for _ in range(4):
        x = (torch.randn(13, generator=g) * 3).to(dtype)
        want = drrho_cvar(x.double(), *state[torch.float64], alpha=alpha, eta=0.2)
        out = drrho_cvar(x, *state[dtype], alpha=alpha, eta=0.2)
        state[torch.float64], state[dtype] = (want.state, True), (out.state, True)
        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
        assert out.weights.dtype == torch.float32 and out.surrogate.dtype == dtype
        torch.testing.assert_close(out.weights, want.weights.float(), rtol=tol, atol=tol)
        assert out.state == pytest.approx(want.state, rel=tol, abs=tol)
        assert out.objective == pytest.approx(want.objective, rel=tol, abs=tol)
