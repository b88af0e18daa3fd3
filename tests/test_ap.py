"""APLoss (SOAP): slow-loop oracle from the paper's formulas, duplicates, multi-label, training."""

from __future__ import annotations

import pytest
import torch
from _training import badly_ranked_problem, train_on_dual_batches

from xrisk.losses import APLoss

MARGIN = 0.8


def _sq_hinge(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(MARGIN - t, min=0) ** 2


def soap_oracle(state: dict, scores: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, gamma: float):
    """One SOAP step written from Qi et al. (NeurIPS 2021), per positive and per pair.

    ``state[(t, i)] = [u_all, u_pos]`` (python floats). Duplicated indices: their new values are
    averaged and one moving-average step is applied; a never-seen entry takes the new value.
    Returns (loss, objective) as tensors; the loss keeps the graph to ``scores``.
    """
    B, T = scores.shape
    task_losses, task_objs = [], []
    for t in range(T):
        rows = [r for r in range(B) if targets[r, t]]
        if not rows:
            continue
        pair = {(r, c): _sq_hinge(scores[r, t] - scores[c, t]) for r in rows for c in range(B)}
        fresh: dict[int, list[tuple[float, float]]] = {}
        for r in rows:
            g_all = sum(float(pair[r, c].detach()) for c in range(B)) / B
            g_pos = sum(float(pair[r, c].detach()) for c in range(B) if targets[c, t]) / B
            fresh.setdefault(int(index[r]), []).append((g_all, g_pos))
        for i, vals in fresh.items():
            m_all = sum(v[0] for v in vals) / len(vals)
            m_pos = sum(v[1] for v in vals) / len(vals)
            if (t, i) in state:
                a, p = state[(t, i)]
                state[(t, i)] = [(1 - gamma) * a + gamma * m_all, (1 - gamma) * p + gamma * m_pos]
            else:
                state[(t, i)] = [m_all, m_pos]
        total = scores.sum() * 0.0
        ratios = []
        for r in rows:
            u_all, u_pos = state[(t, int(index[r]))]
            ratios.append(u_pos / u_all)
            for c in range(B):
                w = (u_pos - u_all * float(targets[c, t])) / u_all**2
                total = total + w * pair[r, c]
        task_losses.append(total / (len(rows) * B))
        task_objs.append(sum(ratios) / len(ratios))
    return torch.stack(task_losses).mean(), torch.tensor(sum(task_objs) / len(task_objs), dtype=torch.float64)


LABELS = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 1], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0], [0, 0]], dtype=torch.bool)
BATCHES = [  # dataset indices; repeated within and across batches (positives 0, 3, 5 recycled)
    [0, 3, 3, 2, 4, 6, 8, 9],
    [0, 0, 5, 2, 4, 8, 6],  # task 1 has no positive in this batch
    [3, 5, 1, 7, 7, 2, 9, 6, 4],
    [0, 5, 3, 0, 2, 1, 8],
]


@pytest.mark.parametrize("num_tasks", [1, 2])
@pytest.mark.parametrize("gamma", [0.9, 0.3])
def test_matches_slow_oracle_over_batches(num_tasks: int, gamma: float):
    loss_fn = APLoss(len(LABELS), num_tasks=num_tasks, gamma=gamma, margin=MARGIN)
    state: dict = {}
    g = torch.Generator().manual_seed(0)
    for b in BATCHES:
        index = torch.tensor(b)
        y = LABELS[index][:, :num_tasks]
        base = torch.rand(len(b), num_tasks, generator=g, dtype=torch.float64)
        s1 = base.clone().requires_grad_(True)
        s2 = base.clone().requires_grad_(True)
        out = loss_fn(s1 if num_tasks > 1 else s1[:, 0], y if num_tasks > 1 else y[:, 0], index)
        ref, ref_obj = soap_oracle(state, s2, y, index, gamma)
        out.backward()
        ref.backward()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss_fn.objective().double(), ref_obj, rtol=1e-5, atol=1e-6)
        seen = {(t, i) for t in range(num_tasks) for i in range(len(LABELS)) if loss_fn.u_all.seen[i, t]}
        assert seen == set(state)
        for (t, i), (u_all, u_pos) in state.items():
            assert loss_fn.u_all.value[i, t].item() == pytest.approx(u_all, rel=1e-5)
            assert loss_fn.u_pos.value[i, t].item() == pytest.approx(u_pos, rel=1e-5, abs=1e-7)


def test_duplicates_are_order_independent_and_consistent():
    """A positive sampled twice gets one merged estimate; permuting the batch changes nothing."""
    s = torch.tensor([0.9, 0.2, 0.9, 0.4, 0.1])
    y = torch.tensor([1, 0, 1, 0, 0])
    idx = torch.tensor([7, 1, 7, 2, 3])
    a, b = APLoss(10), APLoss(10)
    a(s, y, idx)
    perm = torch.tensor([4, 2, 3, 0, 1])
    b(s[perm], y[perm], idx[perm])
    assert torch.equal(a.u_all.value, b.u_all.value) and torch.equal(a.u_pos.value, b.u_pos.value)
    # the two copies of sample 7 got the same scores here, so the merged value is their common one
    L = torch.clamp(1.0 - (0.9 - s), min=0) ** 2
    assert a.u_all.value[7, 0].item() == pytest.approx(float(L.mean()), rel=1e-6)


def test_no_positive_in_one_task_leaves_that_task_untouched():
    loss_fn = APLoss(6, num_tasks=2)
    s = torch.randn(4, 2, requires_grad=True)
    y = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    out = loss_fn(s, y, torch.arange(4))
    out.backward()
    assert not loss_fn.u_all.seen[:, 1].any() and loss_fn.u_all.seen[[0, 2], 0].all()
    assert torch.equal(s.grad[:, 1], torch.zeros(4))


def test_objective_tracks_true_average_precision_with_fresh_state():
    """With gamma=1 the estimate is the batch smoothed AP; it orders like sklearn's AP."""
    sk = pytest.importorskip("sklearn.metrics")
    y = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    good = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.2, 0.1, 0.95, 0.4, 0.0])
    bad = torch.tensor([0.1, 0.8, 0.7, 0.2, 0.9, 0.5, 0.6, 0.3, 0.4, 1.0])
    est = []
    for s in (good, bad):
        loss_fn = APLoss(10, gamma=1.0, margin=0.5)
        loss_fn(s, y, torch.arange(10))
        est.append(float(loss_fn.objective()))
    assert sk.average_precision_score(y, good) > sk.average_precision_score(y, bad)
    assert est[0] > est[1] and 0 <= est[1] <= est[0] <= 1


@pytest.mark.parametrize("kwargs", [{"gamma": 0.0}, {"gamma": 1.5}, {"margin": -1.0}, {"surrogate": "nope"}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=str(list(kwargs.values())[0])):
        APLoss(10, **kwargs)


def test_training_with_stock_adam_raises_average_precision():
    sk = pytest.importorskip("sklearn.metrics")
    x, y, model = badly_ranked_problem()
    n = len(x)
    loss_fn = APLoss(n, gamma=0.9, margin=0.8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def ap() -> float:
        with torch.no_grad():
            return float(sk.average_precision_score(y.numpy(), model(x)[:, 0].numpy()))

    before = ap()
    train_on_dual_batches(model, loss_fn, opt, x, y)
    after = ap()
    assert after > before + 0.2 and after > 0.7, (before, after)
