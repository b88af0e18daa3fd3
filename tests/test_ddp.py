"""2-process gloo: the loss as a submodule of a ``DistributedDataParallel`` model (issue 10).

With DDP's default ``broadcast_buffers=True`` every forward used to re-broadcast all per-sample state
from rank 0 (``O(num_samples)`` bytes per step, 3-4x slower steps at 2e6 samples), though it is identical
on every rank. :class:`xrisk.SampleState` keeps it out of DDP's buffer broadcast; this test runs the
same training with default DDP and with ``broadcast_buffers=False`` and checks identical gradients and
state, equal to one process on the concatenated batch, while counting the bytes DDP broadcasts: only
the model's own buffer, none of the loss's state (per-sample or scalar).
The AUC-M run also uses ``PESG(model.parameters(), loss=model.loss)`` (the loss's ``a, b, alpha``
are DDP parameters too).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from _dist import run_distributed
from xrisk.losses import APLoss, AUCMLoss, GlobalContrastiveLoss
from xrisk.optim import PESG

N = 16
SIZES = (5, 3)  # uneven local batches
KINDS = ("ap", "gcl", "aucm")


class _ScoreModel(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.net, self.loss = nn.Linear(3, 1), loss
        self.register_buffer("marker", torch.zeros(1))  # the model's own buffer: DDP still broadcasts it

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.loss(torch.sigmoid(self.net(x)).squeeze(1), y, index)


class _PairModel(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.net, self.loss = nn.Linear(3, 4), loss
        self.register_buffer("marker", torch.zeros(1))

    def forward(self, xa: torch.Tensor, xb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.loss(self.net(xa), self.net(xb), index)


def _build(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    if kind == "gcl":
        model: nn.Module = _PairModel(GlobalContrastiveLoss(N, mode="unimodal", temperature="global", tau=0.3,
                                                            gamma=0.7, rho=0.3, lr_tau=0.1))
    else:
        model = _ScoreModel(APLoss(N, gamma=0.6) if kind == "ap" else AUCMLoss())
    if kind == "aucm":  # the Lightning pattern: model.parameters() holds a, b, alpha
        opt: torch.optim.Optimizer = PESG(model.parameters(), loss=model.loss, lr=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return model, opt


def _batches(kind: str) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for step in range(3):
        idx = torch.randperm(N, generator=g)[: sum(SIZES)]
        x = torch.randn(sum(SIZES), 3, generator=g)
        if kind == "gcl":
            out.append((x, x + 0.3 * torch.randn(sum(SIZES), 3, generator=g), idx))
        else:
            y = torch.zeros(sum(SIZES))
            y[[0, 6, step + 1]] = 1.0  # positives on both ranks
            out.append((x, y, idx))
    return out


def _train(kind: str, rank: int | None, broadcast: bool | None) -> dict:
    """Three steps; ``rank`` None: one process on the global batches."""
    model, opt = _build(kind)
    wrapped: nn.Module = model
    sent: list[int] = []
    if rank is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers
            wrapped = (nn.parallel.DistributedDataParallel(model) if broadcast is None
                       else nn.parallel.DistributedDataParallel(model, broadcast_buffers=broadcast))
        original = wrapped._distributed_broadcast_coalesced  # what DDP calls to broadcast buffers before a forward

        def counting(tensors, *args, **kwargs):
            sent.append(sum(t.numel() * t.element_size() for t in tensors))
            return original(tensors, *args, **kwargs)

        wrapped._distributed_broadcast_coalesced = counting  # type: ignore[method-assign]
    grads = []
    for batch in _batches(kind):
        if rank is not None:
            lo = sum(SIZES[:rank])
            batch = tuple(t[lo : lo + SIZES[rank]] for t in batch)
        opt.zero_grad()
        wrapped(*batch).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        opt.step()
    return {"grads": grads, "state": {k: v.clone() for k, v in model.state_dict().items()}, "sent": sent,
            "state_bytes": sum(v.numel() * v.element_size() for k, v in model.loss.state_dict().items())}


def _guide_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    found = re.search(r"<!-- ddp-example -->\s*```python\n(.*?)```\s*<!-- /ddp-example -->", text, re.S)
    assert found, "docs/guide.md lost its ddp-example block"
    return found.group(1)


def _run_guide(code: str) -> dict[str, torch.Tensor]:
    namespace: dict = {"__name__": "__guide__"}
    exec(compile(code, "docs/guide.md", "exec"), namespace)  # noqa: S102 - our own documentation
    return {k: v.detach().clone() for k, v in namespace["model"].module.state_dict().items()}


def _worker(rank: int, world: int, guide: str) -> dict:
    out: dict = {(kind, b): _train(kind, rank, b) for kind in KINDS for b in (None, False)}
    out["guide"] = _run_guide(guide)
    return out


@pytest.fixture(scope="module")
def per_rank() -> list[dict]:
    return run_distributed(_worker, _guide_example(), timeout=120.0)


@pytest.mark.distributed
def test_guide_ddp_example_trains_with_identical_state_on_every_rank(per_rank):
    a, b = per_rank[0]["guide"], per_rank[1]["guide"]
    assert a.keys() == b.keys() and "loss.u_all.value" in a
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    assert a["loss.u_all.seen"].sum() > 0  # the loop ran (u_all is kept for the positives)


@pytest.mark.distributed
def test_default_ddp_does_not_broadcast_per_sample_state_and_equals_no_broadcast(per_rank):
    for kind in KINDS:
        ref = _train(kind, None, None)
        for rank, res in enumerate(per_rank):
            default, off = res[(kind, None)], res[(kind, False)]
            for step, (gd, go, gr) in enumerate(zip(default["grads"], off["grads"], ref["grads"])):
                for k in gr:
                    assert torch.equal(gd[k], go[k]), f"{kind} rank {rank} step {step}: grad {k} differs"
                    torch.testing.assert_close(gd[k], gr[k], rtol=1e-5, atol=1e-6,
                                               msg=f"{kind} rank {rank} step {step}: grad {k} vs one process")
            for k, v in ref["state"].items():
                assert torch.equal(default["state"][k], off["state"][k]) or (
                    v.isnan().all() and default["state"][k].isnan().all()), f"{kind} rank {rank}: state {k} differs"
                torch.testing.assert_close(default["state"][k], v, rtol=1e-5, atol=1e-6, equal_nan=True,
                                           msg=f"{kind} rank {rank}: state {k} vs one process")
            assert off["sent"] == []
            # default DDP broadcasts the model's own 4-byte buffer before each of the 3 forwards, none of the loss's
            assert default["sent"] == [4, 4, 4], default["sent"]
            assert default["state_bytes"] > 4
