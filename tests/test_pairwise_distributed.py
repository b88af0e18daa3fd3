"""2-process gloo: AP and pAUC losses under DDP-style gradient averaging equal one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch

from _dist import assert_same_as_one_process, ddp_step, run_distributed
from xrisk.losses import APLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss

NUM_SAMPLES = 12
SPLIT = 6  # rank 0 holds the first 6 samples of each global batch, rank 1 the other 4 (uneven)
CONFIGS = [
    ("ap", 1),
    ("ap", 2),
    ("cvar", 1),
    ("kl", 2),
    ("two_way", 1),
]


def _make_loss(kind: str, num_tasks: int) -> torch.nn.Module:
    if kind == "ap":
        return APLoss(NUM_SAMPLES, num_tasks=num_tasks, gamma=0.6)
    if kind == "cvar":
        return OneWayPartialAUCLoss(NUM_SAMPLES, num_tasks=num_tasks, method="cvar", max_fpr=0.4, eta=0.2)
    if kind == "kl":
        return OneWayPartialAUCLoss(NUM_SAMPLES, num_tasks=num_tasks, method="kl", tau=0.3, gamma=0.7)
    return TwoWayPartialAUCLoss(NUM_SAMPLES, num_tasks=num_tasks, tau=0.3, tau_outer=0.8, gamma0=0.7, gamma1=0.5)


def _data(num_tasks: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Global batches of 10 samples ``(x, y, index)``; positives recycled, indices repeated across ranks."""
    g = torch.Generator().manual_seed(11)
    x_all = torch.randn(NUM_SAMPLES, 3, generator=g)
    labels = torch.zeros(NUM_SAMPLES, num_tasks)
    labels[[0, 1, 2], 0] = 1
    if num_tasks > 1:
        labels[[1, 5, 7], 1] = 1
    batches = [
        [0, 3, 1, 4, 5, 6, 0, 7, 8, 9],  # sample 0 on both ranks; rank 1 holds positive 0
        [2, 2, 3, 4, 9, 10, 11, 5, 6, 8],  # rank 1 has no positive of task 0
        [1, 0, 6, 7, 8, 3, 2, 1, 10, 11],
    ]
    return [(x_all[b], labels[b], torch.tensor(b)) for b in batches]


def _run(kind: str, num_tasks: int, rank: int | None, world: int) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, num_tasks)
    loss_fn = _make_loss(kind, num_tasks)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    record: dict[str, list] = {}
    for x, y, idx in _data(num_tasks):
        if rank is not None:
            part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
            x, y, idx = x[part], y[part], idx[part]
        scores = torch.sigmoid(model(x))
        if num_tasks == 1:
            scores, y = scores[:, 0], y[:, 0]
        ddp_step(model, opt, loss_fn(scores, y, idx), rank, world, record)
    return {**record, "state": {k: v.clone() for k, v in loss_fn.state_dict().items()},
            "objective": loss_fn.objective()}


def _worker(rank: int, world: int) -> list[dict]:
    return [_run(kind, t, rank, world) for kind, t in CONFIGS]


@pytest.mark.distributed
def test_ap_and_pauc_two_ranks_equal_one_process_on_concatenated_batch():
    per_rank = run_distributed(_worker)
    for c, (kind, num_tasks) in enumerate(CONFIGS):
        ref = _run(kind, num_tasks, None, 1)
        for rank, results in enumerate(per_rank):
            assert_same_as_one_process(results[c], ref, f"{kind} T={num_tasks} rank {rank}")
