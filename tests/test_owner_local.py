"""Owner-local batches (issue 18): ``state_placement="sharded_local"`` trains exactly like replicated state.

Every rank draws its batch from the rows it owns (:func:`xrisk.sharding.shard_range`), so its state rows travel in
the one gather a replicated step makes. The same per-rank index streams (uneven local sizes, indices repeated
within a rank, ``num_samples`` not divisible by the number of ranks) train a score loss, a partial-AUC loss and the
global contrastive losses with replicated and with ``sharded_local`` state on 2 gloo processes (4 in the slow test):
gradients, returned values, objectives and the state after every step are bit-identical. Also: one collective per
step, validation off (equal sizes, no host read), the error for an index outside the rank's shard (with validation
on and off), and resuming from a sharded checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import xrisk
from _dist import run_distributed
from test_sharded_state import N, PAIR_LOSSES, SCORE_LOSSES, _equal, _full, _state
from xrisk.losses import APLoss, FalseNegativeDetector
from xrisk.sharding import shard_range

# per step, each rank's batch, drawn from its own shard of N = 13 rows (2 ranks: [0, 7) [7, 13); 4 ranks: [0, 4)
# [4, 8) [8, 12) [12, 13)); uneven sizes, duplicates inside a rank
SCORE_STEPS = {
    1: [[[0, 3, 1, 4, 5, 0, 12, 7, 8, 9, 8]], [[2, 2, 3, 4, 6, 9, 10, 11, 8, 12, 7]]],
    2: [[[0, 3, 1, 4, 5, 0], [12, 7, 8, 9, 8]],
        [[2, 2, 3, 4, 6], [9, 10, 11, 8, 12, 7]],
        [[1, 0, 6, 5], [7, 8, 10, 11, 12, 12, 9]],
        [[6, 0, 5, 1, 4, 2], [10, 11, 8]],
        [[3, 4, 0, 6, 1], [12, 9, 7, 10, 8, 11]]],
    4: [[[0, 3, 1, 0], [4, 5, 7], [8, 9, 8, 11], [12]],
        [[2, 2, 3], [4, 6, 5, 7], [9, 10], [12, 12]],
        [[1, 0], [6, 7, 5, 4], [8, 10, 11], [12]],
        [[3, 0, 1, 2], [5, 6], [11, 8, 9, 10], [12]],
        [[0, 1], [4, 4, 7], [9, 8], [12]]],
}
PAIR_STEPS = {
    2: [[[0, 1, 2, 4, 2], [12, 9, 7, 8]], [[6, 2, 0, 3], [7, 8, 9, 11, 10]], [[3, 5, 1, 4, 0], [10, 12, 7, 8]]],
    4: [[[0, 1, 2], [4, 5], [9, 8], [12]], [[2, 2, 3], [6, 7], [8, 10, 11], [12]], [[3, 1], [5, 4, 7], [10, 8], [12]]],
}
# validation off: every rank's batch has one size
EVEN_STEPS = {2: [[[0, 5, 1, 5], [12, 7, 8, 9]], [[2, 3, 4, 6], [9, 10, 7, 12]], [[1, 0, 2, 6], [8, 11, 11, 12]]]}
# a rank with an empty batch (each rank in turn), then every rank empty (validation on: uneven sizes allowed)
EMPTY_STEPS = {2: [[[0, 3, 1, 4, 5, 0], []], [[], [9, 10, 11, 8, 12, 7]], [[], []], [[1, 0, 6, 5], [7, 8, 12]]]}
# validation off: equal sizes, so an empty batch means every rank's is empty
EVEN_EMPTY_STEPS = {2: [[[0, 3], [12, 7]], [[], []], [[1, 0], [8, 8]]]}
SCORE_NAMES = ("ap", "pauc-kl", "tpauc")
PAIR_NAMES = ("gcl-unimodal-individual", "gcl-bimodal-individual-fnd-adam", "nuclr-fnd")


def _labels() -> torch.Tensor:
    y = torch.zeros(N, 2)
    y[[0, 1, 2, 12], 0] = 1
    y[[1, 5, 7, 9], 1] = 1
    return y


def _train_score(name: str, placement: str, rank: int, steps: list) -> list[dict]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    loss_fn = SCORE_LOSSES[name](placement)
    tasks = loss_fn.num_tasks
    x_all, y_all = torch.randn(N, 3, generator=torch.Generator().manual_seed(1)), _labels()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = []
    for step, parts in enumerate(steps):
        idx = torch.tensor(parts[rank], dtype=torch.long)
        scores = torch.sigmoid(model(x_all[idx]))[:, :tasks]
        loss_fn.train(step != 2)  # an eval-mode step writes nothing
        y = y_all[idx, :tasks]
        loss = loss_fn(scores.squeeze(1) if tasks == 1 else scores, y.squeeze(1) if tasks == 1 else y, idx)
        opt.zero_grad()
        loss.backward()
        out.append({"loss": loss.detach().clone(), "grad": [p.grad.clone() for p in model.parameters()],
                    "state": _state(loss_fn), "objective": loss_fn.objective()})
        opt.step()
    return out


def _train_pairs(name: str, placement: str, rank: int, steps: list) -> list[dict]:
    torch.manual_seed(0)
    enc = nn.Linear(6, 4)
    loss_fn = PAIR_LOSSES[name](placement)
    g = torch.Generator().manual_seed(2)
    x_all = torch.randn(N, 6, generator=g)
    opt = torch.optim.SGD(list(enc.parameters()) + list(loss_fn.parameters()), lr=0.1)
    out = []
    for step, parts in enumerate(steps):
        idx = torch.tensor(parts[rank], dtype=torch.long)
        noise = torch.randn(N, 6, generator=g)
        loss = loss_fn(enc(x_all[idx]), enc(x_all[idx] + 0.3 * noise[idx]), idx)
        opt.zero_grad()
        loss.backward()
        out.append({"loss": loss.detach().clone(), "grad": [p.grad.clone() for p in enc.parameters()],
                    "grad.loss": [p.grad.clone() for p in loss_fn.parameters() if p.grad is not None],
                    "state": _state(loss_fn), "objective": loss_fn.objective()})
        opt.step()
        loss_fn.set_epoch(step + 1)
    return out


def _count_collectives(fn, *args) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    """``fn(*args)`` and the number of all_gather calls it made (torch.distributed patched for the call)."""
    calls = [0]
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_gather_into_tensor")}

    def counting(original):  # type: ignore[no-untyped-def]
        def call(*a, **k):  # type: ignore[no-untyped-def]
            calls[0] += 1
            return original(*a, **k)
        return call

    for name, original in originals.items():
        setattr(dist, name, counting(original))
    try:
        out = fn(*args)
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return out, calls[0]


def _host_reads(name: str, rank: int, steps: list) -> dict[bool, list[str]]:
    """The host reads of the ``sharded_local`` steps after the first (forward, backward, SGD step), per validation
    setting (with it on the counter must see the validated step's reads)."""
    from _compile import count_host_reads

    out = {}
    for validate in (True, False):
        torch.manual_seed(0)
        pairs = name in PAIR_LOSSES
        loss_fn = (PAIR_LOSSES if pairs else SCORE_LOSSES)[name]("sharded_local")
        net = nn.Linear(6 if pairs else 3, 4 if pairs else loss_fn.num_tasks)
        x_all, y_all = torch.randn(N, 6 if pairs else 3, generator=torch.Generator().manual_seed(1)), _labels()
        with xrisk.validation(validate), count_host_reads() as reads:
            for step, parts in enumerate(steps):
                if step == 1:
                    reads.clear()
                idx = torch.tensor(parts[rank], dtype=torch.long)
                if pairs:
                    loss = loss_fn(net(x_all[idx]), net(x_all[idx].flip(1)), idx)
                else:
                    loss = loss_fn(torch.sigmoid(net(x_all[idx])), y_all[idx, : loss_fn.num_tasks], idx)
                loss.backward()
                for p in net.parameters():
                    dist.all_reduce(p.grad)
                    p.data.sub_(0.1 * p.grad)
                    p.grad = None
            out[validate] = list(reads)
    return out


def _violation(rank: int, world: int, validate: bool) -> str:
    """The error of a step where rank 1 sends an index of rank 0's shard."""
    loss_fn = APLoss(N, state_placement="sharded_local")
    idx = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([8, 3, 9])
    try:
        with xrisk.validation(validate):
            loss_fn(torch.rand(3), torch.tensor([1.0, 0.0, 1.0]), idx)
    except (IndexError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _empty(rank: int, world: int) -> dict:
    """APLoss and GCL on steps where some or every rank's batch is empty, in every placement (validation on), with
    every rank's batch empty (validation off), and with one rank's batch empty (validation off: the error of uneven
    sizes)."""
    out: dict = {}
    for name, train in (("ap", _train_score), ("gcl-unimodal-individual", _train_pairs)):
        for placement in ("replicated", "sharded", "sharded_local"):
            out[("on", name, placement)] = train(name, placement, rank, EMPTY_STEPS[world])
            with xrisk.validation(False):
                out[("off", name, placement)] = train(name, placement, rank, EVEN_EMPTY_STEPS[world])
                try:
                    train(name, placement, rank, EMPTY_STEPS[world][:1])
                    out[("uneven", name, placement)] = "no error"
                except RuntimeError as exc:
                    out[("uneven", name, placement)] = str(exc)
    return out


def _detector(placement: str, rank: int, steps: list, optimizer: str = "sgd", eval_last: bool = True) -> list[dict]:
    """A FalseNegativeDetector on its own: per step, this rank's anchors (their similarities to every sample of
    the data set, on two sides) -> the keep-mask and the thresholds (``eval_last``: the last step in eval mode)."""
    fnd = FalseNegativeDetector(N, alpha=0.3, lr=0.5, optimizer=optimizer, init_quantile=True,
                                state_placement=placement)
    fnd.set_epoch(0)
    g = torch.Generator().manual_seed(3)
    out = []
    for step, parts in enumerate(steps):
        z = nn.functional.normalize(torch.randn(2, N, 5, generator=g), dim=-1)
        idx = torch.tensor(parts[rank], dtype=torch.long)
        sim = torch.stack([z[0, idx] @ z[1].T, z[1, idx] @ z[0].T], 1)  # [B, 2, N]
        neg = (torch.arange(N) != idx.unsqueeze(1)).unsqueeze(1).expand(-1, 2, -1)
        fnd.train(not eval_last or step != len(steps) - 1)
        out.append({"keep": fnd(sim, neg, idx), "state": _state(fnd)})
    return out


def _detector_worker(rank: int, world: int) -> dict:
    steps = PAIR_STEPS[world] + [[[6, 1], []], [[2, 2, 5], [12, 7]]]  # an empty batch on one rank; eval mode
    out: dict = {"rows": shard_range(N, world, rank), "steps": steps}
    for opt in ("sgd", "adam"):
        out[opt] = {p: _detector(p, rank, steps, opt) for p in ("replicated", "sharded", "sharded_local")}
    out["rounds"] = {p: _count_collectives(_detector, p, rank, steps[:1], "sgd", False)[1]  # a training step
                     for p in ("replicated", "sharded", "sharded_local")}
    counted = FalseNegativeDetector(N, alpha=0.3, start_epoch=1)  # no set_epoch: the epoch follows samples_seen
    with pytest.warns(UserWarning, match="set_epoch"):
        for parts in steps:
            idx = torch.tensor(parts[rank], dtype=torch.long)
            counted(torch.zeros(idx.numel(), 2, 4), torch.ones(idx.numel(), 2, 4, dtype=torch.bool), idx)
    out["samples_seen"] = int(counted.samples_seen)
    fnd = FalseNegativeDetector(N, alpha=0.3, state_placement="sharded_local")
    idx = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([8, 3, 9])  # rank 1 sends an index of rank 0's
    try:
        fnd(torch.zeros(3, 2, 4), torch.ones(3, 2, 4, dtype=torch.bool), idx)
        out["violation"] = "no error"
    except IndexError as exc:
        out["violation"] = f"IndexError: {exc}"
    out["untouched"] = _state(fnd)
    return out


@pytest.mark.distributed
def test_standalone_detector_with_owner_local_batches():
    """``FalseNegativeDetector(state_placement="sharded_local")`` on its own takes the owner-local path: the same
    masks and thresholds as replicated state (SGD and Adam, an empty batch on one rank, an eval-mode step), in fewer
    collectives than ``"sharded"``; an index outside the rank's shard raises on every rank the IndexError naming
    rank 1, the index and its shard, and writes nothing. Every rank counts the global batch's samples (the inferred
    epoch), also with uneven or empty local batches."""
    per_rank = run_distributed(_detector_worker, timeout=240.0)
    for opt in ("sgd", "adam"):
        for placement in ("sharded", "sharded_local"):
            _check_runs(per_rank, (opt,), placement=placement)
    start, stop = shard_range(N, 2, 1)
    for res in per_rank:
        rounds = res["rounds"]
        assert rounds["sharded_local"] < rounds["sharded"], rounds
        # the detector counts the global batch (uneven and empty local batches too), the same on every rank
        assert res["samples_seen"] == sum(len(part) for step in res["steps"] for part in step), res["samples_seen"]
        assert res["violation"].startswith("IndexError"), res["violation"]
        assert f"rank 1: dataset index 3 is outside its shard [{start}, {stop})" in res["violation"]
        assert all(not v.any() for k, v in res["untouched"].items() if k.endswith("seen")), res["untouched"]


def _window_rows(rank: int, name: str, placement: str, steps: list) -> list[int]:
    """The rows of every step window opened by ``name``'s ``placement`` run (one entry per state and step)."""
    from xrisk.state import SampleState

    rows: list[int] = []
    original = SampleState._begin_window

    def begin(self, uniq, cuts, value, *rest):  # type: ignore[no-untyped-def]
        rows.append(value.shape[0])
        return original(self, uniq, cuts, value, *rest)

    SampleState._begin_window = begin  # type: ignore[method-assign]
    try:
        _train_score(name, placement, rank, steps)
    finally:
        SampleState._begin_window = original  # type: ignore[method-assign]
    return rows


def _worker(rank: int, world: int, slow: bool) -> dict:
    out: dict = {"rows": shard_range(N, world, rank)}
    for name in SCORE_NAMES if not slow else SCORE_LOSSES:
        out[name] = {p: _train_score(name, p, rank, SCORE_STEPS[world]) for p in ("replicated", "sharded_local")}
    for name in PAIR_NAMES if not slow else PAIR_LOSSES:
        out[name] = {p: _train_pairs(name, p, rank, PAIR_STEPS[world]) for p in ("replicated", "sharded_local")}
    if world == 2:
        out["rounds"] = {p: _count_collectives(_train_score, "ap", p, rank, SCORE_STEPS[world][:1])[1]
                         for p in ("replicated", "sharded", "sharded_local")}
        out["window"] = _window_rows(rank, "ap", "sharded_local", SCORE_STEPS[world])
        with xrisk.validation(False):
            out["even"] = {p: _train_score("ap", p, rank, EVEN_STEPS[world]) for p in ("replicated", "sharded_local")}
            out["even-pairs"] = {p: _train_pairs("gcl-unimodal-individual", p, rank, EVEN_STEPS[world])
                                 for p in ("replicated", "sharded_local")}
        out["reads"] = {name: _host_reads(name, rank, EVEN_STEPS[world]) for name in ("ap", "gcl-unimodal-individual")}
        out["empty"] = _empty(rank, world)
        out["violation"] = _violation(rank, world, True)
        out["violation-off"] = _violation(rank, world, False)
    return out


def _check_runs(per_rank: list[dict], names, runs=lambda res, name: res[name], placement: str = "sharded_local"
                ) -> None:  # type: ignore[no-untyped-def]
    """``runs(res, name)[placement]`` equals ``runs(res, name)["replicated"]`` at every step on every rank (values,
    gradients, objectives; the state put back together from the shards)."""
    for name in names:
        for step in range(len(runs(per_rank[0], name)["replicated"])):
            want = runs(per_rank[0], name)["replicated"][step]
            for r, res in enumerate(per_rank):
                rep, sh = runs(res, name)["replicated"][step], runs(res, name)[placement][step]
                _equal({k: v for k, v in sh.items() if k != "state"}, {k: v for k, v in rep.items() if k != "state"},
                       f"{name} rank {r} step {step}")
            full = _full(per_rank, lambda res: runs(res, name)[placement][step]["state"], want["state"])
            _equal(full, want["state"], f"{name} {placement} state step {step}")
        sample = next(v for k, v in runs(per_rank[0], name)[placement][0]["state"].items() if k.endswith("value"))
        assert sample.shape[0] == per_rank[0]["rows"][1] - per_rank[0]["rows"][0] < N  # really split


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_distributed(_worker, False, timeout=240.0)


@pytest.mark.distributed
def test_owner_local_batches_train_exactly_like_replicated_on_two_ranks(two_ranks):
    _check_runs(two_ranks, (*SCORE_NAMES, *PAIR_NAMES))


@pytest.mark.distributed
def test_owner_local_step_makes_the_collectives_of_a_replicated_step(two_ranks):
    for res in two_ranks:
        rounds = res["rounds"]
        assert rounds["sharded_local"] == rounds["replicated"] < rounds["sharded"], rounds


@pytest.mark.distributed
def test_owner_local_window_holds_only_the_distinct_rows_the_step_uses(two_ranks):
    # APLoss keeps state for the positives (of any task) only: each rank sends the rows of its distinct positives,
    # so the window holds the global batch's distinct positives, not every entry (nor a slot per repeat)
    positive = set(_labels().any(1).nonzero().squeeze(1).tolist())
    want = [len(positive.intersection(i for part in parts for i in part)) for parts in SCORE_STEPS[2]]
    assert want != [len({i for part in parts for i in part}) for parts in SCORE_STEPS[2]]  # the test can tell
    for res in two_ranks:
        rows = res["window"]
        per_step = len(rows) // len(want)
        assert per_step >= 1 and rows == [w for w in want for _ in range(per_step)], (rows, want)


@pytest.mark.distributed
def test_owner_local_with_validation_off_equals_replicated(two_ranks):
    _check_runs(two_ranks, ("even", "even-pairs"))


@pytest.mark.distributed
def test_owner_local_step_with_validation_off_reads_nothing_on_the_host(two_ranks):
    for res in two_ranks:
        for name, reads in res["reads"].items():
            assert reads[True], f"{name}: the counter sees the validated step's reads"
            assert reads[False] == [], f"{name}: host reads with validation off: {reads[False]}"


@pytest.mark.distributed
@pytest.mark.parametrize("validate", ["on", "off"])
def test_empty_local_batches_train_like_replicated(two_ranks, validate):
    """A rank whose batch is empty (validation on: while the other's is not, and both; off: both) gives what
    replicated (and ``"sharded"``) state gives: its share of the global loss (a connected zero for GCL's rows, the
    global AP surrogate), the same gradients and the same state."""
    names = ("ap", "gcl-unimodal-individual")
    for placement in ("sharded", "sharded_local"):
        _check_runs(two_ranks, names, lambda res, name: {p: res["empty"][(validate, name, p)]
                                                         for p in ("replicated", placement)}, placement)
    empty = [i for i, step in enumerate((EMPTY_STEPS if validate == "on" else EVEN_EMPTY_STEPS)[2]) if not any(step)]
    for res in two_ranks:  # the step empty on every rank leaves the per-sample state as it was
        for key, run in res["empty"].items():
            if key[0] == validate:
                for i in empty:
                    before, after = run[i - 1]["state"], run[i]["state"]
                    assert all(torch.equal(before[k], after[k]) for k in after if k.endswith(("value", "seen")))


@pytest.mark.distributed
def test_empty_local_batch_with_validation_off_is_an_uneven_batch(two_ranks):
    """Validation off needs equal batch sizes: one rank's empty batch raises the uneven-size error on every rank,
    whatever the placement."""
    for res in two_ranks:
        for key, err in res["empty"].items():
            if key[0] == "uneven":
                assert "every rank must send a batch of the same size" in err, (key, err)


@pytest.mark.distributed
def test_index_outside_the_rank_shard_is_refused(two_ranks):
    start, stop = shard_range(N, 2, 1)
    for res in two_ranks:  # every rank raises the error of rank 1, which names the index and its shard
        assert res["violation"].startswith("IndexError"), res["violation"]
        assert f"rank 1: dataset index 3 is outside its shard [{start}, {stop})" in res["violation"]
    assert f"rank 1: a dataset index is outside its shard [{start}, {stop})" in two_ranks[1]["violation-off"]


@pytest.mark.slow
@pytest.mark.distributed
def test_owner_local_batches_train_exactly_like_replicated_on_four_ranks():
    per_rank = run_distributed(_worker, True, world_size=4, timeout=600.0)
    _check_runs(per_rank, (*SCORE_LOSSES, *PAIR_LOSSES))


def test_one_process_sharded_local_is_the_replicated_step():
    for name in SCORE_NAMES:
        _equal(_train_score(name, "sharded_local", 0, SCORE_STEPS[1]),
               _train_score(name, "replicated", 0, SCORE_STEPS[1]), name)


def test_one_process_sharded_local_compiles_whole():
    """One process: ``sharded_local`` is the replicated step, which ``torch.compile(fullgraph=True)`` takes whole."""
    import functools

    import test_compile_score as tcs
    from _compile import close, compiled_without_recompiles, train

    def setup(placement: str):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(tcs.DIM, 8), nn.Tanh(), nn.Linear(8, 1))
        loss = APLoss(tcs.N, gamma=0.7, state_placement=placement)
        opt = tcs.TraceableSGD(net.parameters())

        def step(x, y, index):  # type: ignore[no-untyped-def]
            out = loss(torch.sigmoid(net(x)).squeeze(1), y, index)
            out.backward()
            opt.step()
            return out.detach()

        return net, loss, opt, step

    batches = tcs._batches(5)
    want, net_want, _ = train(functools.partial(setup, "replicated"), True, batches)
    got, net_got, _ = compiled_without_recompiles(
        lambda after: train(functools.partial(setup, "sharded_local"), False, batches, "aot_eager", after))
    close(got, want, "loss values")
    for p, q in zip(net_got.parameters(), net_want.parameters()):
        close(p.detach(), q.detach(), "parameters")


# ----------------------------------------------------------------------------- resume from a sharded checkpoint
def _resume(rank: int, world: int, folder: str, placement: str, load: bool) -> dict:
    """APLoss on the owner-local steps; ``load``: start from the folder saved after step 2 (else save it there)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    loss_fn = APLoss(N, num_tasks=2, gamma=0.6, state_placement=placement)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    x_all, y_all = torch.randn(N, 3, generator=torch.Generator().manual_seed(1)), _labels()
    steps = SCORE_STEPS[world]
    if load:
        xrisk.load_sharded_checkpoint(folder, model=model, loss=loss_fn, optimizer=opt)
    for step in range(2 if load else 0, len(steps)):
        idx = torch.tensor(steps[step][rank])
        out = loss_fn(torch.sigmoid(model(x_all[idx])), y_all[idx], idx)
        opt.zero_grad()
        out.backward()
        for p in model.parameters():  # what DDP does with the model's gradients
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        if not load and step == 1:
            xrisk.save_sharded_checkpoint(folder, model=model, loss=loss_fn, optimizer=opt)
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "loss": _state(loss_fn)}


def _resume_worker(rank: int, world: int, folder: str) -> dict:
    full = _resume(rank, world, folder + "/a", "sharded_local", False)
    return {"full": full, "resumed": _resume(rank, world, folder + "/a", "sharded_local", True),
            "replicated": _resume(rank, world, folder + "/b", "replicated", False)}


@pytest.mark.distributed
def test_resume_from_a_sharded_checkpoint_with_owner_local_batches(tmp_path: Path):
    per_rank = run_distributed(_resume_worker, str(tmp_path), timeout=240.0)
    for r, res in enumerate(per_rank):
        _equal(res["resumed"], res["full"], f"resumed rank {r}")
        _equal(res["full"]["model"], res["replicated"]["model"], f"model rank {r}")
    want = per_rank[0]["replicated"]["loss"]
    _equal(_full(per_rank, lambda res: res["full"]["loss"], want), want, "state")
