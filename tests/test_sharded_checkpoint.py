"""Checkpoints of sharded state (issue 18): ``torch.distributed.checkpoint`` folders that reshard.

A run with sharded state on 2 gloo processes (4 in the slow test) is saved mid-way with
``xrisk.save_sharded_checkpoint`` (every rank writes its rows) and resumed on another number of processes,
with sharded or replicated state: the resumed runs end where the uninterrupted run ends. A replicated
checkpoint (single file or folder) loads into a sharded loss and a sharded one into a replicated loss;
``xrisk.save_checkpoint`` refuses sharded state and names what to use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import xrisk
from _dist import run_distributed
from xrisk import CheckpointError, CheckpointMismatchError
from xrisk.losses import APLoss, FalseNegativeDetector, GlobalContrastiveLoss

N = 11
STEPS, SAVE_AT = 4, 2  # save after the second step
KINDS = ("ap", "gcl")


def _loss(kind: str, placement: str, num_samples: int = N) -> nn.Module:
    if kind == "ap":
        return APLoss(num_samples, num_tasks=2, gamma=0.6, state_placement=placement)
    fnd = FalseNegativeDetector(num_samples, alpha=0.3, lr=0.05, optimizer="adam", state_placement=placement)
    return GlobalContrastiveLoss(num_samples, mode="bimodal", temperature="individual", tau=0.2, gamma=0.7, rho=0.3,
                                 lr_tau=0.1, tau_min=0.05, false_negatives=fnd, state_placement=placement)


def _batch(kind: str, step: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(100 + step)
    idx = torch.cat([torch.randperm(N, generator=g)[:7], torch.tensor([step % N])])  # one duplicate
    x = torch.randn(8, 5, generator=g)
    if kind == "ap":
        y = torch.zeros(8, 2)
        y[[0, 3, 7], 0] = 1
        y[[1, 4], 1] = 1
        return x, y, idx
    return x, x + 0.3 * torch.randn(8, 5, generator=g), idx


def _full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``state_dict()`` whole (DTensor shards put together: collective)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in module.state_dict().items()}


def _run(kind: str, placement: str, rank: int, world: int, *, load: str | None = None, save: str | None = None,
         steps: range = range(STEPS)) -> dict:
    """Train ``steps`` of the global batches (each rank its part); optionally load a folder first and save after
    step ``SAVE_AT - 1``. Returns the final model, loss and optimizer state."""
    torch.manual_seed(0)
    model = nn.Linear(5, 2 if kind == "ap" else 4)
    loss_fn = _loss(kind, placement)
    opt = torch.optim.SGD(list(model.parameters()) + list(loss_fn.parameters()), lr=0.3, momentum=0.5)
    if load is not None:
        extra = xrisk.load_sharded_checkpoint(load, model=model, loss=loss_fn, optimizer=opt)
        assert extra == {"step": SAVE_AT}
    for step in steps:
        if kind == "gcl":
            loss_fn.set_epoch(step)
        part = torch.tensor_split(torch.arange(8), world)[rank]
        x, y, idx = (t[part] for t in _batch(kind, step))
        out = loss_fn(torch.sigmoid(model(x)), y, idx) if kind == "ap" else loss_fn(model(x), model(y), idx)
        opt.zero_grad()
        out.backward()
        if world > 1:  # what DDP does with the model's gradients
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
        if save is not None and step == SAVE_AT - 1:
            xrisk.save_sharded_checkpoint(save, model=model, loss=loss_fn, optimizer=opt, extra={"step": SAVE_AT})
    return {"model": _full_state(model), "loss": _full_state(loss_fn),
            "momentum": [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]}


def _two_ranks(rank: int, world: int, folder: str, replicated_file: str, replicated_folder: str) -> dict:
    out: dict = {}
    for kind in KINDS:  # the uninterrupted sharded run, saved mid-way
        out[kind] = _run(kind, "sharded", rank, world, save=f"{folder}/{kind}")
        # the sharded folder into a replicated loss on the same ranks
        rep = _loss(kind, "replicated")
        xrisk.load_sharded_checkpoint(f"{folder}/{kind}", loss=rep)
        out[f"{kind}-as-replicated"] = _full_state(rep)
    for source, load in (("file", xrisk.load_checkpoint), ("folder", xrisk.load_sharded_checkpoint)):
        sharded = _loss("ap", "sharded")
        load(replicated_file if source == "file" else replicated_folder, loss=sharded)
        out[f"replicated-{source}"] = _full_state(sharded)
        out[f"rows-{source}"] = sharded.u_all.value.shape[0]
    try:
        xrisk.save_checkpoint(f"{folder}/single.pt", loss=sharded)
    except ValueError as e:
        out["refused"] = str(e)
    try:  # another data-set size: refused before anything is loaded
        xrisk.load_sharded_checkpoint(f"{folder}/ap", loss=_loss("ap", "sharded", N + 1))
    except CheckpointMismatchError as e:
        out["mismatch"] = str(e)
    return out


def _close(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for k in want:
        if isinstance(want[k], dict):
            _close(got[k], want[k], f"{where}.{k}")
        elif isinstance(want[k], list):
            for i, (g, w) in enumerate(zip(got[k], want[k])):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=f"{where}.{k}[{i}]")
        elif want[k].is_floating_point():
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, equal_nan=True, msg=f"{where}.{k}")
        else:
            assert torch.equal(got[k], want[k]), f"{where}.{k}"


def _replicated_sources(tmp: Path) -> tuple[str, str, dict]:
    """A replicated AP loss after two steps, saved as a single file and as a folder (one process)."""
    loss_fn = _loss("ap", "replicated")
    for step in range(2):
        x, y, idx = _batch("ap", step)
        loss_fn(torch.sigmoid(nn.Linear(5, 2)(x)), y, idx)
    file = xrisk.save_checkpoint(tmp / "replicated.pt", loss=loss_fn)
    folder = xrisk.save_sharded_checkpoint(tmp / "replicated", loss=loss_fn)
    return str(file), str(folder), _full_state(loss_fn)


@pytest.mark.distributed
def test_sharded_checkpoint_resumes_on_one_process_and_converts_placements(tmp_path):
    file, folder, replicated = _replicated_sources(tmp_path)
    ranks = run_distributed(_two_ranks, str(tmp_path), file, folder, timeout=240.0)
    for kind in KINDS:
        whole = _run(kind, "replicated", 0, 1)  # one process, never interrupted
        _close(ranks[0][kind], whole, f"{kind} 2 ranks sharded")
        _close(ranks[1][kind], ranks[0][kind], f"{kind} rank 1")
        for placement in ("replicated", "sharded"):  # saved on 2 ranks, resumed on 1
            resumed = _run(kind, placement, 0, 1, load=str(tmp_path / kind), steps=range(SAVE_AT, STEPS))
            _close(resumed, whole, f"{kind} resumed on one process ({placement})")
        # loaded mid-way into a replicated loss on the same 2 ranks: the saved state
        mid = _loss(kind, "replicated")
        xrisk.load_sharded_checkpoint(tmp_path / kind, loss=mid)
        _close(ranks[0][f"{kind}-as-replicated"], _full_state(mid), f"{kind} sharded -> replicated")
    for r in range(2):
        for source in ("file", "folder"):
            _close(ranks[r][f"replicated-{source}"], replicated, f"replicated {source} -> sharded rank {r}")
            assert ranks[r][f"rows-{source}"] == (6, 5)[r]  # each rank holds its rows only
        assert "save_sharded_checkpoint" in ranks[r]["refused"]
        assert "11 samples" in ranks[r]["mismatch"]


def test_single_file_and_folder_loaders_name_each_other(tmp_path):
    loss_fn = _loss("ap", "sharded")  # one process: every row, a plain single file works
    file = xrisk.save_checkpoint(tmp_path / "one.pt", loss=loss_fn)
    folder = xrisk.save_sharded_checkpoint(tmp_path / "folder", loss=loss_fn)
    with pytest.raises(CheckpointError, match="load_sharded_checkpoint"):
        xrisk.load_checkpoint(folder, loss=loss_fn)
    with pytest.raises(CheckpointError, match="load_sharded_checkpoint"):
        xrisk.load_checkpoint(folder / "xrisk.pt", loss=loss_fn)
    with pytest.raises(CheckpointError, match="load_checkpoint"):
        xrisk.load_sharded_checkpoint(file, loss=loss_fn)
    with pytest.raises(CheckpointMismatchError, match="no model state"):
        xrisk.load_sharded_checkpoint(folder, model=nn.Linear(2, 2))
    xrisk.save_sharded_checkpoint(tmp_path / "folder", loss=loss_fn)  # an existing checkpoint is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "one.pt"]


def _four_ranks(rank: int, world: int, folder: str) -> dict:
    return {kind: _run(kind, "sharded", rank, world, save=f"{folder}/{kind}") for kind in KINDS}


def _resume_two(rank: int, world: int, folder: str) -> dict:
    return {kind: _run(kind, "sharded", rank, world, load=f"{folder}/{kind}", steps=range(SAVE_AT, STEPS))
            for kind in KINDS}


@pytest.mark.slow
@pytest.mark.distributed
def test_saved_on_four_ranks_resumes_on_two_and_on_one(tmp_path):
    four = run_distributed(_four_ranks, str(tmp_path), world_size=4, timeout=600.0)
    two = run_distributed(_resume_two, str(tmp_path), timeout=300.0)
    for kind in KINDS:
        whole = _run(kind, "replicated", 0, 1)
        _close(four[0][kind], whole, f"{kind} on 4 ranks")
        _close(two[0][kind], whole, f"{kind} saved on 4, resumed on 2")
        one = _run(kind, "sharded", 0, 1, load=str(tmp_path / kind), steps=range(SAVE_AT, STEPS))
        _close(one, whole, f"{kind} saved on 4, resumed on 1")
