"""2-process gloo: DFTLoss (DFT and DFT2) under DDP-style gradient averaging equals one process on the
concatenated batch (gradients, losses, the log u state, the objective), with uneven local batches and a
prompt present on both ranks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _dist import assert_same_as_one_process, ddp_step, run_distributed
from xrisk.losses import DFTLoss

NUM_PROMPTS = 10
SPLIT = 5  # rank 0 holds the first 5 prompts of each global batch of 8, rank 1 the other 3
BATCHES = [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 0, 2, 4, 1, 3, 9], [5, 6, 7, 8, 5, 0, 1, 2]]


def _run(variant: str, rank: int | None, world: int) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)  # one score per answer: the positive and 2 negatives
    loss_fn = DFTLoss(NUM_PROMPTS, variant, gamma=0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(NUM_PROMPTS, 4, generator=g)
    ref_all = -3 * torch.rand(NUM_PROMPTS, 2, generator=g)
    record: dict[str, list] = {}
    for b in BATCHES:
        idx = torch.tensor(b)
        if rank is not None:
            idx = idx[:SPLIT] if rank == 0 else idx[SPLIT:]
        logp = -F.softplus(model(feats[idx])) * 4  # log-probabilities of answer and negatives
        ref = ref_all[idx] if variant == "dft" else None
        ddp_step(model, opt, loss_fn(logp[:, 0], logp[:, 1:], idx, ref_logp_neg=ref), rank, world, record)
    return {**record, "state": {k: v.clone() for k, v in loss_fn.state_dict().items()},
            "objective": loss_fn.objective()}


def _worker(rank: int, world: int) -> list[dict]:
    return [_run(v, rank, world) for v in ("dft", "dft2")]


@pytest.mark.distributed
def test_dft_two_ranks_equal_one_process_on_concatenated_batch():
    per_rank = run_distributed(_worker)
    for c, variant in enumerate(("dft", "dft2")):
        ref = _run(variant, None, 1)
        assert bool(ref["state"]["log_u.seen"].all())
        for rank, results in enumerate(per_rank):
            assert_same_as_one_process(results[c], ref, f"{variant} rank {rank}")
