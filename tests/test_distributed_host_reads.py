"""Validation off under torch.distributed (issue 18, section 2): no host read per step on 2 gloo processes.

For every score loss (AUC-M + PESG, compositional AUC + PDSCA, AP, one-way partial AUC CVaR and KL, two-way partial
AUC) and every global contrastive configuration of ``test_compile_contrastive.py`` (``GlobalContrastiveLoss`` in
both modes and every temperature mode, ``NUCLRLoss``, with ``FalseNegativeDetector`` SGD / Adam, with DRRho
``ref_feats``), with replicated state, each of 2 gloo ranks trains on its half of the global batches (equal halves:
with validation off every rank's batch size must be equal, ``xrisk.distributed.agree_on_shapes``), the model's
gradients averaged as DDP does:

* with ``xrisk.set_validation(False)`` training equals the validated default (values, parameters, per-sample
  state; the validated path is held equal to one process on the concatenated batch by the other 2-process tests);
* after the first step, a step (replicated or sharded state) (forward, backward, optimizer step) calls none of ``Tensor.item`` / ``tolist`` /
  ``__bool__`` / ``__int__`` / ``__float__`` / ``__index__`` / ``numpy`` (the counter of ``_compile.py``, which
  sees the validated step's reads);
* the same with sharded state (every loss with per-sample state): the validation-off step opens a window of
  ``B_global`` slots (``xrisk.sharding``, fixed capacity) instead of reading how many rows each rank owns; also
  when one rank owns none of a step's rows;
* the same for a ``FalseNegativeDetector`` used on its own (SGD, and Adam with ``init_quantile``), every placement;
* the same with owner-local sharded state (``state_placement="sharded_local"``, every loss with per-sample state):
  each rank's indices are mapped into its own shard (``xrisk.sharding.shard_range``), its rows travel in the
  batch's one gather, and the validation-off step checks ownership with an on-device assert (no host read);
* a rank whose batch size differs makes every rank raise (on CPU the on-device check fails at once).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import test_compile_contrastive as tcc
import test_compile_score as tcs
import xrisk
from _compile import close, count_host_reads
from xrisk.sharding import shard_range

STEPS = 5


def _score_setup(case: str, placement: str):
    low = case.endswith("-low")  # every index in rank 0's shard: rank 1 owns no row of any sharded window
    case = case.removesuffix("-low")
    make_loss, make_opt = tcs.CASES[case]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(tcs.DIM, 8), nn.Tanh(), nn.Linear(8, 1))
    loss = make_loss()
    if placement != "replicated":
        knobs = {**tcs._KNOBS, "pauc-cvar": ("method", "max_fpr", "eta")}[case]
        loss = type(loss)(tcs.N, **{k: getattr(loss, k) for k in knobs}, state_placement=placement)
    opt = make_opt(net, loss)

    def forward(x, y, index):
        return loss(torch.sigmoid(net(x)).squeeze(1), y, index)

    batches = tcs._batches(STEPS)
    if low:
        batches = [(x, y, index % (tcs.N // 2)) for x, y, index in batches]
    return net, loss, opt, forward, batches


def _contrastive_setup(case: str, placement: str):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(tcc.DIM, 8), nn.Tanh(), nn.Linear(8, 8))
    loss = tcc.CASES[case]()
    if placement != "replicated":
        loss = _sharded_copy(loss, placement)
    loss.set_epoch(0)
    opt = tcc.TraceableSGD([*net.parameters(), *loss.parameters()], lr=0.1)
    ref_net = nn.Linear(tcc.DIM, 5).requires_grad_(False) if case.endswith("-ref") else None

    def forward(x, y, index):
        return loss(net(x), net(y), index, None if ref_net is None else (ref_net(x), ref_net(y)))

    return net, loss, opt, forward, tcc._batches(STEPS)


def _sharded_copy(loss: nn.Module, placement: str) -> nn.Module:
    """The same contrastive loss with ``state_placement=placement`` (detector included)."""
    from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss

    fnd = loss.false_negatives
    if fnd is not None:
        fnd = FalseNegativeDetector(tcc.N, alpha=fnd.alpha, optimizer=fnd.optimizer, init_quantile=fnd.init_quantile,
                                    state_placement=placement)
    if isinstance(loss, GlobalContrastiveLoss):
        kw = {"eps": loss.eps, "normalize": loss.normalize} if loss.eps else {}
        return GlobalContrastiveLoss(tcc.N, mode=loss.mode, temperature=loss.temperature, tau=0.2, rho=0.3,
                                     false_negatives=fnd, state_placement=placement, **kw)
    return type(loss)(tcc.N, tau=0.05, zeta_start_epoch=0, lr_zeta=0.05, false_negatives=fnd,
                      state_placement=placement)


def _detector_setup(case: str, placement: str):
    """A ``FalseNegativeDetector`` on its own (``detector(sim, neg, index)``): each rank's anchors against the
    global batch's columns, its keep-mask weighting a differentiable sum so that the step trains the model."""
    from xrisk.losses import FalseNegativeDetector

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(tcc.DIM, 8), nn.Tanh(), nn.Linear(8, 8))
    det = FalseNegativeDetector(tcc.N, alpha=0.2, lr=0.3, optimizer=case, init_quantile=case == "adam",
                                state_placement=placement)
    det.set_epoch(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def forward(x, y, index):
        a, b = nn.functional.normalize(net(x), dim=1), nn.functional.normalize(net(y), dim=1)
        cols = xrisk.distributed.all_gather(b, grad="sum", sizes=[b.shape[0]] * dist.get_world_size())
        sim = torch.stack([a @ cols.T, a @ cols.T * 0.5], 1)  # [B, 2, C]: two sides
        neg = torch.ones(sim.shape, dtype=torch.bool)
        keep = det(sim.detach(), neg, index)
        return (sim * keep).sum() / sim.numel()

    return net, det, opt, forward, tcc._batches(STEPS)


SETUPS = {**{f"score:{c}": (_score_setup, c) for c in [*tcs.CASES, "ap-sgd-low"]},
          **{f"contrastive:{c}": (_contrastive_setup, c) for c in tcc.CASES},
          **{f"detector:{c}": (_detector_setup, c) for c in ("sgd", "adam")}}
#: every loss with per-sample state
SHARDED = tuple(name for name in SETUPS if not name.startswith(("score:aucm", "score:compauc")))
#: the placements every loss of SHARDED also runs with ("-low" places every index in rank 0's shard: "sharded" only)
PLACEMENTS = {name: ("replicated", "sharded", *(() if name.endswith("-low") else ("sharded_local",)))
              for name in SHARDED}


def _run(rank: int, world: int, name: str, placement: str, validate: bool) -> dict:
    make, case = SETUPS[name]
    net, loss, opt, forward, batches = make(case, placement)
    half = batches[0][0].shape[0] // world
    part = slice(rank * half, (rank + 1) * half)
    if placement == "sharded_local":  # every rank's indices in its own shard
        start, stop = shard_range(tcs.N if name.startswith("score:") else tcc.N, world, rank)
        batches = [(x, y, index.clone().index_put_((torch.arange(part.start, part.stop),),
                                                   start + index[part] % (stop - start)))
                   for x, y, index in batches]
    values = []
    with xrisk.validation(validate), count_host_reads() as reads:
        for step, (x, y, index) in enumerate(batches):
            if step == 1:  # the first step creates the optimizer's lazy state
                reads.clear()
            out = forward(x[part], y[part], index[part])
            out.backward()
            for p in net.parameters():  # what DDP does with the model's gradients
                dist.all_reduce(p.grad)
                p.grad /= world
            opt.step()
            opt.zero_grad(set_to_none=True)
            values.append(out.detach())
        counted = list(reads)
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in loss.state_dict().items()}
    return {"values": torch.stack(values), "params": [p.detach().clone() for p in [*net.parameters(),
                                                                                   *loss.parameters()]],
            "state": state, "reads": counted}


def _all(rank: int, world: int) -> dict:
    out = {}
    for name in SETUPS:
        for placement in PLACEMENTS.get(name, ("replicated",)):
            for validate in (True, False):
                out[(name, placement, validate)] = _run(rank, world, name, placement, validate)
    # uneven batch sizes with validation off: every rank raises (the on-device check runs at once on CPU)
    for name in ("score:ap-sgd", "contrastive:bi-individual"):
        make, case = SETUPS[name]
        _, _, _, forward, batches = make(case, "replicated")
        x, y, index = batches[0]
        n = 5 if rank == 0 else 4
        with xrisk.validation(False):
            try:
                forward(x[:n], y[:n], index[:n])
                out[("uneven", name)] = ""
            except RuntimeError as exc:
                out[("uneven", name)] = str(exc)
    return out


@pytest.mark.distributed
def test_validation_off_on_two_ranks_reads_nothing_and_trains_like_validation_on():
    from _dist import run_distributed

    per_rank = run_distributed(_all, timeout=600.0)
    for rank, got in enumerate(per_rank):
        for key, run in got.items():
            if key[0] == "uneven":
                assert "every rank must send a batch of the same size" in run, (rank, key, run)
                continue
            name, placement, validate = key
            label = f"rank {rank} {name} {placement}"
            if validate:
                assert run["reads"], f"{label}: the counter sees the validated step's reads"
                continue
            assert run["reads"] == [], f"{label}: host reads with validation off: {run['reads']}"
            ref = got[(name, placement, True)]
            close(run["values"], ref["values"], f"{label}: loss values")
            for p, q in zip(run["params"], ref["params"]):
                close(p, q, f"{label}: parameters")
            assert run["state"].keys() == ref["state"].keys()
            for k in ref["state"]:
                close(run["state"][k], ref["state"][k], f"{label}: state {k}")


FOUR = ("score:ap-sgd", "score:tpauc-kl", "score:ap-sgd-low", "contrastive:nuclr-glofnd", "contrastive:uni-individual")


def _four(rank: int, world: int) -> dict:
    return {(name, validate): _run(rank, world, name, "sharded", validate) for name in FOUR for validate in (True, False)}


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_validation_off_on_four_ranks():
    """The fixed-capacity window with 4 owners (3 or 4 samples per rank): no host read, equal to the validated step."""
    from _dist import run_distributed

    for rank, got in enumerate(run_distributed(_four, world_size=4, timeout=600.0)):
        for name in FOUR:
            run, ref = got[(name, False)], got[(name, True)]
            label = f"rank {rank} {name}"
            assert run["reads"] == [], f"{label}: {run['reads']}"
            close(run["values"], ref["values"], f"{label}: loss values")
            for p, q in zip(run["params"], ref["params"]):
                close(p, q, f"{label}: parameters")
            for k in ref["state"]:
                close(run["state"][k], ref["state"][k], f"{label}: state {k}")
