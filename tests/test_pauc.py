"""Partial-AUC losses (SOPA, SOPA-s, SOTA-s): slow-loop oracles, hard negatives, overflow, training."""

from __future__ import annotations

import math

import pytest
import torch
from _training import badly_ranked_problem, train_on_dual_batches

from xrisk.functional.pauc import top_fraction_mean
from xrisk.losses import APLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss

MARGIN = 0.8


def _sq_hinge(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(MARGIN - t, min=0) ** 2


def _cvar(values: list[float], frac: float) -> float:
    """Average of the top ``frac`` share (fractional last element), by the definition min_s s + E(v-s)_+/frac."""
    best = math.inf
    for s in values:  # the minimum is attained at one of the values
        best = min(best, s + sum(max(v - s, 0.0) for v in values) / (frac * len(values)))
    return best


def _pairs(scores, targets, t):
    B = scores.shape[0]
    rows = [r for r in range(B) if targets[r, t]]
    cols = [c for c in range(B) if not targets[c, t]]
    return rows, cols, {(r, c): _sq_hinge(scores[r, t] - scores[c, t]) for r in rows for c in cols}


def _merge(fresh: dict, state: dict, key_t: int, gamma: float) -> None:
    for i, vals in fresh.items():
        m = sum(vals) / len(vals)
        key = (key_t, i)
        state[key] = (1 - gamma) * state[key] + gamma * m if key in state else m


def oracle_step(kind: str, state: dict, scores, targets, index, hp: dict):
    """One step of SOPA / SOPA-s / SOTA-s written from Zhu et al. (ICML 2022), per positive and pair.

    state: ``{(t, i): s_i or u_i}``, plus ``{("w", t): w}`` for SOTA-s. Returns (loss, risk).
    """
    B, T = scores.shape
    task_losses, risks = [], []
    for t in range(T):
        rows, cols, L = _pairs(scores, targets, t)
        if not rows or not cols:
            continue
        N = len(cols)
        total = scores.sum() * 0.0
        if kind == "cvar":
            beta, eta = hp["max_fpr"], hp["eta"]
            fresh: dict[int, list[float]] = {}
            for r in rows:
                s_i = state.get((t, int(index[r])), 0.0)
                above = [c for c in cols if float(L[r, c].detach()) > s_i]
                for c in above:
                    total = total + L[r, c] / beta
                fresh.setdefault(int(index[r]), []).append(s_i - eta * (1 - len(above) / (beta * N)))
            _merge(fresh, state, t, 1.0)
        else:
            tau = hp["tau"]
            fresh = {}
            for r in rows:
                fresh.setdefault(int(index[r]), []).append(
                    sum(math.exp(float(L[r, c].detach()) / tau) for c in cols) / N)
            _merge(fresh, state, t, hp["gamma"] if kind == "kl" else hp["gamma0"])
            if kind == "kl":
                for r in rows:
                    u = state[(t, int(index[r]))]
                    for c in cols:
                        total = total + math.exp(float(L[r, c].detach()) / tau) / u * L[r, c]
            else:
                ratio = tau / hp["tau_outer"]
                new_w = sum(state[(t, int(index[r]))] ** ratio for r in rows) / len(rows)
                key = ("w", t)
                state[key] = (1 - hp["gamma1"]) * state[key] + hp["gamma1"] * new_w if key in state else new_w
                for r in rows:
                    u = state[(t, int(index[r]))]
                    for c in cols:
                        p = u ** (ratio - 1) * math.exp(float(L[r, c].detach()) / tau) / state[key]
                        total = total + p * L[r, c]
        task_losses.append(total / (len(rows) * N))
        per_pos = [_cvar([float(L[r, c].detach()) for c in cols], hp["max_fpr"]) for r in rows]
        frac_pos = 1.0 - hp.get("min_tpr", 0.0)
        risks.append(_cvar(per_pos, frac_pos) if kind == "two_way" else sum(per_pos) / len(per_pos))
    return torch.stack(task_losses).mean(), torch.tensor(sum(risks) / len(risks), dtype=torch.float64)


LABELS = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 1], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0], [1, 1]], dtype=torch.bool)
BATCHES = [  # repeated indices within and across batches
    [0, 3, 3, 2, 4, 6, 8, 9],
    [0, 0, 5, 2, 4, 8, 6],  # task 1: no positive
    [3, 5, 1, 7, 7, 2, 9, 6, 4],
    [9, 5, 3, 0, 2, 1, 8],
    [1, 3, 7, 9, 9],  # task 1: no negative
]

CONFIGS = {
    "cvar": ({"method": "cvar", "max_fpr": 0.4, "eta": 0.3}, OneWayPartialAUCLoss),
    "kl": ({"method": "kl", "max_fpr": 0.3, "tau": 0.5, "gamma": 0.7}, OneWayPartialAUCLoss),
    "two_way": ({"min_tpr": 0.4, "max_fpr": 0.5, "tau": 0.4, "tau_outer": 1.5, "gamma0": 0.8, "gamma1": 0.6},
                TwoWayPartialAUCLoss),
}


def _module_state(loss_fn, kind: str, num_tasks: int) -> dict:
    out = {}
    st = loss_fn.threshold if kind == "cvar" else loss_fn.log_u
    for t in range(num_tasks):
        for i in range(st.num_samples):
            if st.seen[i, t]:
                v = float(st.value[i, t])
                out[(t, i)] = v if kind == "cvar" else math.exp(v)
        if kind == "two_way" and loss_fn.log_w.seen[0, t]:
            out[("w", t)] = math.exp(float(loss_fn.log_w.value[0, t]))
    return out


@pytest.mark.parametrize("num_tasks", [1, 2])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_matches_slow_oracle_over_batches(kind: str, num_tasks: int):
    hp, cls = CONFIGS[kind]
    loss_fn = cls(len(LABELS), num_tasks=num_tasks, margin=MARGIN, **hp)
    state: dict = {}
    g = torch.Generator().manual_seed(1)
    for b in BATCHES:
        index = torch.tensor(b)
        y = LABELS[index][:, :num_tasks]
        base = torch.rand(len(b), num_tasks, generator=g, dtype=torch.float64)
        s1, s2 = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
        out = loss_fn(s1 if num_tasks > 1 else s1[:, 0], y if num_tasks > 1 else y[:, 0], index)
        ref, ref_risk = oracle_step(kind, state, s2, y, index, hp)
        out.backward()
        ref.backward()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(loss_fn.objective().double(), ref_risk, rtol=1e-5, atol=1e-6)
        got = _module_state(loss_fn, kind, num_tasks)
        assert got.keys() == state.keys()
        for k, v in state.items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_cvar_with_tiny_max_fpr_weights_only_the_hardest_negative():
    """With beta * N < 1 the thresholds climb to the largest loss: only the hardest negative of each positive
    gets a gradient, and the reported risk is the mean of the per-positive maximum."""
    scores = torch.tensor([0.9, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 0.0, 0.05], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    loss_fn = OneWayPartialAUCLoss(10, method="cvar", max_fpr=0.05, eta=0.01, margin=1.0)
    hardest = scores[2:].argmax() + 2
    for step in range(400):
        s = scores.clone().requires_grad_(True)
        loss_fn(s, y, torch.arange(10)).backward()
        if step >= 300:  # after warm-up: at most the hardest negative has weight
            neg_grad = s.grad[2:].clone()
            neg_grad[hardest - 2] = 0
            assert torch.equal(neg_grad, torch.zeros_like(neg_grad))
    L = torch.clamp(1.0 - (scores[:2, None] - scores[None, 2:]), min=0) ** 2
    assert float(loss_fn.objective()) == pytest.approx(float(L.max(1).values.mean()), rel=1e-6)
    s_max = L.max(1).values
    second = L.sort(1, descending=True).values[:, 1]
    thr = loss_fn.threshold.value[:2, 0].double()
    assert ((thr > second) & (thr < s_max + 0.02)).all()  # oscillates just around the largest loss


@pytest.mark.parametrize("kind", ["kl", "two_way"])
def test_no_overflow_with_tiny_tau_and_large_losses(kind: str):
    """tau = 0.01 with L up to ~400 (L / tau ~ 4e4): LibAUC's exp overflows; ours is finite and, with
    gamma = 1 (fresh state), its gradient equals the gradient of the KL-DRO objective in float64."""
    g = torch.Generator().manual_seed(3)
    base = 10 * torch.randn(12, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    tau, tau2 = 0.01, 0.05
    if kind == "kl":
        loss_fn = OneWayPartialAUCLoss(12, method="kl", tau=tau, gamma=1.0)
    else:
        loss_fn = TwoWayPartialAUCLoss(12, tau=tau, tau_outer=tau2, gamma0=1.0, gamma1=1.0)
    s = base.clone().requires_grad_(True)
    out = loss_fn(s, y, torch.arange(12))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all() and torch.isfinite(loss_fn.log_u.value).all()
    x = base.clone().requires_grad_(True)
    L = torch.clamp(1.0 - (x[y == 1][:, None] - x[y == 0][None, :]), min=0) ** 2
    assert float(L.detach().max()) / tau > 1e4  # exp(L / tau) is inf even in float64
    lme = torch.logsumexp(L / tau, 1) - math.log(L.shape[1])
    if kind == "kl":
        objective = (tau * lme).mean()
    else:
        objective = tau2 * (torch.logsumexp(tau / tau2 * lme, 0) - math.log(L.shape[0]))
    objective.backward()
    # float32 state rounding of log u (~|log u| * 6e-8) bounds the agreement
    torch.testing.assert_close(s.grad, x.grad, rtol=2e-3, atol=1e-6 * float(x.grad.abs().max()))


def test_top_fraction_mean_is_the_cvar_definition():
    g = torch.Generator().manual_seed(5)
    for frac in (0.05, 0.3, 0.5, 0.77, 1.0):
        v = torch.randn(13, generator=g, dtype=torch.float64)
        assert float(top_fraction_mean(v, frac)) == pytest.approx(_cvar(v.tolist(), frac), rel=1e-9)


def test_positives_without_negatives_is_connected_zero_and_keeps_state():
    for loss_fn in (OneWayPartialAUCLoss(8), OneWayPartialAUCLoss(8, method="kl"), TwoWayPartialAUCLoss(8)):
        s = torch.randn(4, requires_grad=True)
        before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
        out = loss_fn(s, torch.ones(4), torch.arange(4))
        out.backward()
        assert out.item() == 0.0 and torch.equal(s.grad, torch.zeros(4))
        assert all(torch.equal(v, loss_fn.state_dict()[k]) for k, v in before.items())
        assert torch.isnan(loss_fn.objective())


@pytest.mark.parametrize(
    ("cls", "kwargs", "bad"),
    [
        (OneWayPartialAUCLoss, {"method": "dro"}, "dro"),
        (OneWayPartialAUCLoss, {"max_fpr": 0.0}, "0.0"),
        (OneWayPartialAUCLoss, {"max_fpr": 1.2}, "1.2"),
        (OneWayPartialAUCLoss, {"tau": 0.0}, "tau"),
        (OneWayPartialAUCLoss, {"eta": -1.0}, "eta"),
        (TwoWayPartialAUCLoss, {"min_tpr": 1.0}, "min_tpr"),
        (TwoWayPartialAUCLoss, {"tau_outer": -2.0}, "tau_outer"),
        (TwoWayPartialAUCLoss, {"gamma1": 0.0}, "gamma1"),
    ],
)
def test_bad_arguments_raise(cls, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        cls(10, **kwargs)


@pytest.mark.parametrize("kind", ["cvar", "kl", "two_way"])
def test_training_with_stock_sgd_raises_auroc(kind: str):
    sk = pytest.importorskip("sklearn.metrics")
    x, y, model = badly_ranked_problem()
    n = len(x)
    if kind == "two_way":
        loss_fn = TwoWayPartialAUCLoss(n, tau=0.5, tau_outer=1.0)
    else:
        loss_fn = OneWayPartialAUCLoss(n, method=kind, max_fpr=0.3, tau=0.5, eta=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def auroc() -> float:
        with torch.no_grad():
            return float(sk.roc_auc_score(y.numpy(), model(x)[:, 0].numpy()))

    before = auroc()
    train_on_dual_batches(model, loss_fn, opt, x, y)
    after = auroc()
    assert after > before + 0.2 and after > 0.85, (before, after)


@pytest.mark.parametrize("num_tasks", [1, 2])
@pytest.mark.parametrize("make", [
    lambda t: OneWayPartialAUCLoss(20, num_tasks=t), lambda t: OneWayPartialAUCLoss(20, num_tasks=t, method="kl"),
    lambda t: TwoWayPartialAUCLoss(20, num_tasks=t), lambda t: APLoss(20, num_tasks=t),
])
def test_label_positions_kept_across_steps_follow_the_labels(make, num_tasks: int):
    """The positions of positives kept from the last step (repeated labels: no tensor op) are replaced when the labels
    move, also with the same number of positives: every step equals a step that recomputes them."""
    g = torch.Generator().manual_seed(3)
    base = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.float32)
    moved = base[torch.tensor([2, 0, 1, 5, 3, 4, 7, 6])]  # the same count at other positions
    patterns = [base, base, moved, base, torch.tensor([0, 1, 0, 0, 0, 0, 0, 1.0]), moved]
    cached, fresh = make(num_tasks), make(num_tasks)
    for step, y in enumerate(patterns):
        targets = y if num_tasks == 1 else torch.stack([y, y.roll(step)], 1)
        scores = torch.rand(targets.shape, generator=g)
        index = torch.randperm(20, generator=g)[:8]
        fresh.__dict__.pop("_label_cache", None)
        outs = []
        for loss_fn in (cached, fresh):
            s = scores.clone().requires_grad_()
            out = loss_fn(s, targets, index)
            out.backward()
            outs.append((out.detach(), s.grad))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in cached.state_dict().items())
    assert "_label_cache" in cached.__dict__  # the kept positions were used
