"""2-process gloo: constraint estimates and gradients equal one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch

from _dist import ddp_step, run_distributed
from xrisk.constrained import HingePenalty, Lagrangian, ProblemState, non_forgetting_constraints, \
    roc_fairness_constraints

pytestmark = pytest.mark.distributed

SPLIT = 10  # rank 0 holds the first 10 samples of each global batch of 16, rank 1 the other 6 (uneven)


def _flat_grads(record: dict) -> list[torch.Tensor]:
    """The per-step parameter gradients recorded by :func:`_dist.ddp_step` (averaged over ranks), flattened."""
    return [torch.cat([g.reshape(-1) for g in step]) for step in record["grads"]]


def _data() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(4):
        x = torch.randn(16, 3, generator=g)
        y = torch.tensor([1, 0] * 8)
        groups = torch.tensor([0, 0, 1, 1] * 4)
        out.append((x, y, groups))
    return out


def _formulation(kind: str) -> torch.nn.Module:
    if kind == "hinge":
        return HingePenalty(8, beta=3.0, gamma=0.6)
    return Lagrangian(8, dual_lr=0.7, gamma=0.6)


def _fairness_run(rank: int | None, world: int, kind: str) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    f = _formulation(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    record: dict = {}
    estimates = []
    for x, y, groups in _data():
        total = y.numel()
        if rank is not None:
            part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
            x, y, groups = x[part], y[part], groups[part]
        scores = torch.sigmoid(model(x)).squeeze(1)
        bce = torch.nn.functional.binary_cross_entropy(scores, y.float(), reduction="sum")
        objective = bce * world / total  # DDP averages over ranks: the global mean
        cons = roc_fairness_constraints(scores, y, groups, [0.4, 0.6], 0.02, temperature=0.2)
        loss = f(ProblemState.from_constraints(objective, cons))
        ddp_step(model, opt, loss, rank, world, record)
        estimates.append(f.u.value.clone())
    return {"grads": _flat_grads(record), "estimates": estimates,
            "state": {k: v.clone() for k, v in f.state_dict().items()}}


def _fairness_worker(rank: int, world: int, kind: str) -> dict:
    return _fairness_run(rank, world, kind)


@pytest.mark.parametrize("kind", ["hinge", "lagrangian"])
def test_fairness_penalty_two_processes_equal_one(kind: str) -> None:
    single = _fairness_run(None, 1, kind)
    assert any(bool((e > 0).any()) for e in single["estimates"])  # some constraint is violated: the penalty acts
    ranks = run_distributed(_fairness_worker, kind)
    for out in ranks:
        for a, b in zip(out["grads"], single["grads"]):
            assert torch.allclose(a, b, atol=1e-6)
        for a, b in zip(out["estimates"], single["estimates"]):
            assert torch.allclose(a, b, atol=1e-6)
        for k, v in single["state"].items():
            assert torch.allclose(out["state"][k].float(), v.float(), atol=1e-6), k


def _mean_run(rank: int | None, world: int) -> dict:
    """Equal halves, per-rank non-forgetting values averaged by sync='mean' vs one process averaging them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    f = HingePenalty(3, beta=2.0, gamma=0.5, sync="mean" if rank is not None else "replicated")
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(9)
    record: dict = {}
    estimates = []
    for _ in range(3):
        x = torch.randn(8, 3, generator=g)
        labels = torch.randint(0, 2, (8,), generator=g)
        tasks = torch.tensor([0, 1, 2, 0, 0, 1, 2, 1])
        before = torch.rand(8, generator=g)
        halves = [slice(0, 4), slice(4, 8)]

        def values(part: slice) -> torch.Tensor:
            per_sample = torch.nn.functional.cross_entropy(model(x[part]), labels[part], reduction="none")
            c = non_forgetting_constraints(per_sample, before[part], tasks[part], 0.0, gather=False)
            assert c.index.tolist() == [0, 1, 2]
            return c.values

        obj = model(x).square().mean() * 0.0
        if rank is None:
            cons = torch.stack([values(h) for h in halves]).mean(0)
        else:
            cons = values(halves[rank])
        loss = f(ProblemState(obj, cons))
        ddp_step(model, opt, loss, rank, world, record)
        estimates.append(f.u.value.clone())
    return {"grads": _flat_grads(record), "estimates": estimates}


def _mean_worker(rank: int, world: int) -> dict:
    return _mean_run(rank, world)


def test_sync_mean_two_processes_equal_one() -> None:
    single = _mean_run(None, 1)
    for out in run_distributed(_mean_worker):
        for a, b in zip(out["grads"], single["grads"]):
            assert torch.allclose(a, b, atol=1e-6)
        for a, b in zip(out["estimates"], single["estimates"]):
            assert torch.allclose(a, b, atol=1e-6)


def _fault_worker(rank: int, world: int) -> dict:
    """A bad batch on rank 1 only: both ranks raise the same error and no state changes anywhere."""
    out = {}
    f = HingePenalty(2, beta=1.0, sync="mean")
    values = torch.tensor([0.1, float("nan")]) if rank == 1 else torch.tensor([0.1, 0.2])
    try:
        f(ProblemState(torch.tensor(0.0), values))
    except ValueError as e:
        out["formulation"] = str(e)
    out["seen"] = f.u.seen.clone()
    scores = torch.tensor([0.2, 0.7, 0.4]) if rank == 0 else torch.tensor([0.5, float("inf")])
    targets = torch.tensor([1, 0, 1]) if rank == 0 else torch.tensor([0, 1])
    groups = torch.tensor([0, 1, 1]) if rank == 0 else torch.tensor([1, 0])
    try:
        roc_fairness_constraints(scores, targets, groups, [0.5], 0.1)
    except ValueError as e:
        out["fairness"] = str(e)
    return out


def test_a_bad_batch_on_one_rank_raises_on_every_rank() -> None:
    ranks = run_distributed(_fault_worker)
    for out in ranks:
        assert "NaN/inf" in out["formulation"] and "rank 1" in out["formulation"]
        assert "NaN/inf" in out["fairness"] and "rank 1" in out["fairness"]
        assert not out["seen"].any()
    assert ranks[0]["formulation"] == ranks[1]["formulation"] and ranks[0]["fairness"] == ranks[1]["fairness"]
