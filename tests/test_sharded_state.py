"""Sharded per-sample state (issue 18, section 1): ``state_placement="sharded"`` trains exactly like replicated state.

Every loss family with per-sample state runs the same steps twice in 2 gloo processes (4 in the slow test), once
with replicated and once with sharded state: uneven local batches, indices repeated within and across ranks,
``num_samples`` not divisible by the number of ranks. Gradients, returned values, objectives and the state after
every step must be bit-identical (the shards of all ranks put together equal the replicated state); the public
SampleState calls (``update(local=True)``, ``read``, ``amax``), the detector on its own and DDP with the default
buffer broadcast are checked the same way.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from _dist import run_distributed
from xrisk import SampleState
from xrisk.losses import (
    APLoss, FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss,
)
from xrisk.sharding import shard_range

N = 13  # not divisible by 2 or 4: uneven shards (7/6; 4/4/4/1)
SCORE_BATCHES = [  # global batches of 11: duplicates inside a rank and across ranks
    [0, 3, 1, 4, 5, 12, 0, 7, 8, 9, 5],
    [2, 2, 3, 4, 9, 10, 11, 5, 6, 8, 12],
    [1, 0, 6, 7, 8, 3, 2, 1, 10, 11, 4],
    [6, 0, 5, 1, 4, 2, 3, 6, 0, 5, 1],  # rows of the first shard only: on 2 ranks rank 1 owns none of the batch
    [3, 4, 0, 3, 8, 9, 12, 6, 4, 10, 7],  # distinct positives (0, 12 | 7), duplicated negatives: the distinct path
]
PAIR_BATCHES = [[0, 1, 2, 12, 4, 2, 5, 9, 6], [6, 2, 7, 8, 0, 9, 2, 11, 3], [3, 5, 1, 10, 12, 4, 7, 0, 8]]
SPLITS = {1: None, 2: (6, 5), 4: (4, 3, 2, 2)}  # local sizes of the score batches of 11
PAIR_SPLITS = {2: (5, 4), 4: (3, 2, 2, 2)}  # of the pair batches of 9

SCORE_LOSSES = {
    "ap": lambda p: APLoss(N, num_tasks=2, gamma=0.6, state_placement=p),
    "pauc-cvar": lambda p: OneWayPartialAUCLoss(N, method="cvar", max_fpr=0.4, eta=0.2, state_placement=p),
    "pauc-kl": lambda p: OneWayPartialAUCLoss(N, num_tasks=2, method="kl", tau=0.3, gamma=0.7, state_placement=p),
    "tpauc": lambda p: TwoWayPartialAUCLoss(N, tau=0.3, tau_outer=0.8, gamma0=0.7, gamma1=0.5, state_placement=p),
}


def _fnd(p: str, opt: str = "sgd") -> FalseNegativeDetector:
    return FalseNegativeDetector(N, alpha=0.3, lr=0.5, optimizer=opt, state_placement=p)


PAIR_LOSSES = {
    "gcl-unimodal-individual": lambda p: GlobalContrastiveLoss(
        N, mode="unimodal", temperature="individual", tau=0.2, gamma=0.7, rho=0.3, lr_tau=0.1, tau_min=0.05,
        state_placement=p),
    "gcl-bimodal-global-fnd": lambda p: GlobalContrastiveLoss(
        N, mode="bimodal", temperature="global", tau=0.2, gamma=0.7, rho=0.3, tau_min=0.05,
        false_negatives=_fnd(p), state_placement=p),
    "gcl-bimodal-individual-fnd-adam": lambda p: GlobalContrastiveLoss(
        N, mode="bimodal", temperature="individual", tau=0.2, gamma=0.7, rho=0.3, lr_tau=0.1, tau_min=0.05,
        false_negatives=_fnd(p, "adam"), state_placement=p),
    "nuclr-fnd": lambda p: NUCLRLoss(N, tau=0.1, gamma=0.7, zeta_start_epoch=0, lr_zeta=0.2,
                                     false_negatives=_fnd(p), state_placement=p),
}


def _split(batch: list[int], sizes: tuple[int, ...] | None, rank: int) -> slice:
    if sizes is None:
        return slice(0, len(batch))
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


def _state(loss: nn.Module) -> dict[str, torch.Tensor]:
    """The loss's state as this rank holds it (DTensor shards as their local rows)."""
    out = {}
    for k, v in loss.state_dict().items():
        out[k] = (v.to_local() if hasattr(v, "to_local") else v).detach().clone()
    return out


def _train_score(name: str, placement: str, rank: int, world: int) -> list[dict]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    loss_fn = SCORE_LOSSES[name](placement)
    tasks = loss_fn.num_tasks
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(N, 3, generator=g)
    y_all = torch.zeros(N, 2)
    y_all[[0, 1, 2, 12], 0] = 1
    y_all[[1, 5, 7], 1] = 1
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = []
    for step, batch in enumerate(SCORE_BATCHES):
        part = _split(batch, SPLITS[world], rank)
        idx = torch.tensor(batch)[part]
        scores = torch.sigmoid(model(x_all[idx]))[:, :tasks]
        loss_fn.train(step != 2)  # an eval-mode step writes nothing (sharded: nothing written back)
        loss = loss_fn(scores.squeeze(1) if tasks == 1 else scores, y_all[idx, :tasks].squeeze(1) if tasks == 1
                       else y_all[idx, :tasks], idx)
        opt.zero_grad()
        loss.backward()
        out.append({"loss": loss.detach().clone(), "grad": [p.grad.clone() for p in model.parameters()],
                    "state": _state(loss_fn), "objective": loss_fn.objective()})
        opt.step()
    return out


def _train_pairs(name: str, placement: str, rank: int, world: int) -> list[dict]:
    torch.manual_seed(0)
    enc = nn.Linear(6, 4)
    loss_fn = PAIR_LOSSES[name](placement)
    g = torch.Generator().manual_seed(2)
    x_all = torch.randn(N, 6, generator=g)
    opt = torch.optim.SGD(list(enc.parameters()) + list(loss_fn.parameters()), lr=0.1)
    out = []
    for step, batch in enumerate(PAIR_BATCHES):
        idx = torch.tensor(batch)[_split(batch, PAIR_SPLITS.get(world), rank)]
        noise = torch.randn(N, 6, generator=g)
        loss = loss_fn(enc(x_all[idx]), enc(x_all[idx] + 0.3 * noise[idx]), idx)
        opt.zero_grad()
        loss.backward()
        rec = {"loss": loss.detach().clone(), "grad": [p.grad.clone() for p in enc.parameters()],
               "grad.loss": [p.grad.clone() for p in loss_fn.parameters() if p.grad is not None],
               "state": _state(loss_fn), "objective": loss_fn.objective()}
        out.append(rec)
        opt.step()
        loss_fn.set_epoch(step + 1)  # collective for sharded NUCLR (the xi refresh reduces over ranks)
    return out


def _api(placement: str, rank: int, world: int) -> dict:
    """SampleState's own calls: update(local=True) with duplicates, read, amax; the detector on its own."""
    st = SampleState(N, (2,), placement=placement)
    idx = [torch.tensor([0, 5, 5, 12]), torch.tensor([5, 1, 11])][rank % 2] if world > 1 else torch.tensor(
        [0, 5, 5, 12, 5, 1, 11])
    new = torch.arange(idx.numel() * 2, dtype=torch.float32).view(-1, 2) + 10 * rank
    first = st.update(idx, new, 0.5, local=True)
    second = st.update(idx, new * 2 - 3, 0.5, local=True)
    read = st.read(torch.tensor([12, 0, 3]) if rank == 0 else torch.tensor([11]))
    fnd = _fnd(placement)
    sim = torch.linspace(-1, 1, 4 * 2 * 6).view(4, 2, 6) * (1 + rank)
    neg = torch.ones(4, 2, 6, dtype=torch.bool)
    keep = fnd(sim, neg, torch.tensor([3, 7, 7, 12]) - rank)
    return {"first": first, "second": second, "read": read, "amax": st.amax(), "state": _state(st), "keep": keep,
            "fnd": _state(fnd)}


def _ddp(placement: str, rank: int, world: int) -> dict:
    """The loss as a submodule of a DDP model with the default buffer broadcast: shards of different sizes are
    not DDP buffers (DDP would refuse buffers whose shapes differ between ranks), and nothing of them is sent."""
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.loss = nn.Linear(3, 1), APLoss(N, gamma=0.6, state_placement=placement)

        def forward(self, x, y, index):
            return self.loss(torch.sigmoid(self.net(x)).squeeze(1), y, index)

    model = Model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ddp = nn.parallel.DistributedDataParallel(model)
    sent: list[int] = []
    original = ddp._distributed_broadcast_coalesced

    def counting(tensors, *args, **kwargs):
        sent.append(sum(t.numel() * t.element_size() for t in tensors))
        return original(tensors, *args, **kwargs)

    ddp._distributed_broadcast_coalesced = counting  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(4)
    x_all, y_all = torch.randn(N, 3, generator=g), (torch.arange(N) % 3 == 0).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = []
    for batch in SCORE_BATCHES:
        idx = torch.tensor(batch)[_split(batch, SPLITS[world], rank)]
        opt.zero_grad()
        ddp(x_all[idx], y_all[idx], idx).backward()
        grads.append([p.grad.clone() for p in model.net.parameters()])
        opt.step()
    return {"grads": grads, "state": _state(model.loss), "sent": sent,
            "buffers": [k for k, _ in model.named_buffers()]}


def _window_rows(rank: int, world: int) -> list[int]:
    """The rows of every sharded APLoss step's window: only the positives' (the state it reads and writes)."""
    sizes: list[int] = []
    original = SampleState._begin_window

    def begin(self, uniq, *args):  # type: ignore[no-untyped-def]
        sizes.append(uniq.numel())
        return original(self, uniq, *args)

    SampleState._begin_window = begin  # type: ignore[method-assign]
    try:
        _train_score("ap", "sharded", rank, world)
    finally:
        SampleState._begin_window = original  # type: ignore[method-assign]
    return sizes


def _packed(rank: int, world: int) -> dict:
    """What a sharded step's fetch relies on: ``all_gather_with`` / ``all_gather_many`` carry tensors of any dtype as
    their bytes, with uneven sizes and a rank that sends no row, and the gathered tensor's gradient is summed."""
    from xrisk import distributed as xdist

    g = torch.Generator().manual_seed(rank)
    sizes, extra_sizes = [3 + r for r in range(world)], [0 if r == 0 else 2 + r for r in range(world)]
    x = torch.randn(sizes[rank], 2, dtype=torch.float64, generator=g).requires_grad_()
    k = extra_sizes[rank]
    extras = [torch.full((k, 3), 2**62 + 7 * rank + 1, dtype=torch.int64), torch.arange(k) % 2 == rank % 2,
              torch.randn(k, 1, generator=g).half(), torch.randn(k, 2, generator=g)]
    xs, es = xdist.all_gather_with(x, extras, grad="sum", sizes=sizes, extra_sizes=extra_sizes)
    (xs * torch.arange(xs.numel(), dtype=xs.dtype).view_as(xs)).sum().backward()
    return {"x": x.detach(), "xs": xs.detach(), "es": es, "extras": extras, "grad": x.grad,
            "many": xdist.all_gather_many(extras, sizes=extra_sizes)}


def _worker(rank: int, world: int, names: tuple[str, ...]) -> dict:
    out: dict = {"windows": _window_rows(rank, world), "packed": _packed(rank, world)}
    for name in names:
        train = _train_score if name in SCORE_LOSSES else _train_pairs
        out[name] = {p: train(name, p, rank, world) for p in ("replicated", "sharded")}
    out["api"] = {p: _api(p, rank, world) for p in ("replicated", "sharded")}
    if world == 2:
        out["ddp"] = {p: _ddp(p, rank, world) for p in ("replicated", "sharded")}
    out["rows"] = shard_range(N, world, rank)
    return out


def _full(per_rank: list[dict], pick, want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Sharded state put back together: each rank's rows of every ``[N, ...]`` entry of ``want``, concatenated in
    rank order (entries every rank holds whole are taken from rank 0)."""
    states = [pick(res) for res in per_rank]
    out = {}
    for k, w in want.items():
        parts = [s[k] for s in states]
        split = w.dim() > 0 and w.shape[0] == N and parts[0].shape[0] != N
        out[k] = torch.cat(parts, 0) if split else parts[0]
    return out


def _equal(got, want, where: str) -> None:  # type: ignore[no-untyped-def]
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _equal(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _equal(g, w, f"{where}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert got.shape == want.shape and got.dtype == want.dtype, f"{where}: {got.shape} vs {want.shape}"
        assert torch.equal(got, want) or (want.is_floating_point() and torch.equal(got.isnan(), want.isnan())
                                          and torch.equal(got.nan_to_num(), want.nan_to_num())), f"{where} differs"
    else:
        assert got == want, where


def _check(per_rank: list[dict], names: tuple[str, ...]) -> None:
    world = len(per_rank)
    for name in names:
        for step in range(len(per_rank[0][name]["replicated"])):
            want = per_rank[0][name]["replicated"][step]
            for r in range(world):
                rep, sh = per_rank[r][name]["replicated"][step], per_rank[r][name]["sharded"][step]
                _equal({k: v for k, v in sh.items() if k != "state"}, {k: v for k, v in rep.items() if k != "state"},
                       f"{name} rank {r} step {step}")
                _equal(rep["state"], want["state"], f"{name} replicated rank {r} step {step}")
            full = _full(per_rank, lambda res: res[name]["sharded"][step]["state"], want["state"])
            _equal(full, want["state"], f"{name} sharded state step {step}")
        # the shards really are split: rank 0 holds its rows only
        sample = next(v for k, v in per_rank[0][name]["sharded"][0]["state"].items() if k.endswith("value"))
        assert sample.shape[0] == per_rank[0]["rows"][1] - per_rank[0]["rows"][0] < N
    for r in range(world):
        rep, sh = per_rank[r]["api"]["replicated"], per_rank[r]["api"]["sharded"]
        _equal({k: v for k, v in sh.items() if k not in ("state", "fnd")},
               {k: v for k, v in rep.items() if k not in ("state", "fnd")}, f"api rank {r}")
    for key in ("state", "fnd"):
        want = per_rank[0]["api"]["replicated"][key]
        _equal(_full(per_rank, lambda res: res["api"]["sharded"][key], want), want, f"api {key}")


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_distributed(_worker, (*SCORE_LOSSES, *PAIR_LOSSES), timeout=240.0)


@pytest.mark.distributed
def test_sharded_state_trains_exactly_like_replicated_on_two_ranks(two_ranks):
    _check(two_ranks, (*SCORE_LOSSES, *PAIR_LOSSES))
    # APLoss keeps state for positives only: a sharded step fetches their rows, each distinct index once (two states)
    y = torch.zeros(N, dtype=torch.bool)
    y[[0, 1, 2, 12, 5, 7]] = True
    want = [n for batch in SCORE_BATCHES for n in [len({i for i in batch if y[i]})] * 2]
    assert all(res["windows"] == want for res in two_ranks)


@pytest.mark.distributed
def test_packed_gathers_carry_every_dtype_exactly(two_ranks):
    parts = [res["packed"] for res in two_ranks]
    full = torch.cat([p["x"] for p in parts])
    weights = torch.arange(full.numel(), dtype=full.dtype).view_as(full)
    for r, p in enumerate(parts):
        assert torch.equal(p["xs"], full) and p["xs"].dtype == torch.float64
        for k in range(len(p["extras"])):
            want = torch.cat([q["extras"][k] for q in parts])
            for got in (p["es"][k], p["many"][k]):
                assert got.dtype == want.dtype and torch.equal(got, want), (r, k)
        start = sum(q["x"].shape[0] for q in parts[:r])
        assert torch.equal(p["grad"], len(parts) * weights[start : start + p["x"].shape[0]])  # summed over ranks


@pytest.mark.distributed
def test_ddp_never_broadcasts_sharded_state(two_ranks):
    for r, res in enumerate(two_ranks):
        rep, sh = res["ddp"]["replicated"], res["ddp"]["sharded"]
        _equal(sh["grads"], rep["grads"], f"ddp grads rank {r}")
        assert sh["buffers"] == [] and all(b == 0 for b in sh["sent"]), "DDP saw or sent loss state"
    want = two_ranks[0]["ddp"]["replicated"]["state"]
    _equal(_full(two_ranks, lambda res: res["ddp"]["sharded"]["state"], want), want, "ddp state")


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_state_trains_exactly_like_replicated_on_four_ranks():
    names = (*SCORE_LOSSES, *PAIR_LOSSES)
    _check(run_distributed(_worker, names, world_size=4, timeout=600.0), names)


def test_one_process_sharded_state_holds_every_row_and_trains_like_replicated():
    for name in SCORE_LOSSES:
        _equal(_train_score(name, "sharded", 0, 1), _train_score(name, "replicated", 0, 1), name)
    for name in PAIR_LOSSES:
        _equal(_train_pairs(name, "sharded", 0, 1), _train_pairs(name, "replicated", 0, 1), name)


def test_shard_range_partitions_every_index_once():
    for n in (1, 5, 10, 13, 64):
        for k in (1, 2, 3, 4, 7):
            ranges = [shard_range(n, k, r) for r in range(k)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert all(0 <= hi - lo <= -(-n // k) for lo, hi in ranges)


def test_placement_is_validated():
    with pytest.raises(ValueError, match="placement"):
        SampleState(4, placement="everywhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gather=True"):
        from xrisk.losses.base import ScoreLoss

        ScoreLoss(gather=False, state_placement="sharded")
    with pytest.raises(ValueError, match="same placement"):
        GlobalContrastiveLoss(N, false_negatives=_fnd("replicated"), state_placement="sharded")
