"""2-process gloo: a bad batch on one rank raises the same error on every rank (issue 10).

Before, ranks sending different feature widths or dtypes aborted the job with SIGABRT inside gloo, and a
rank that raised on its own input left the others waiting in the gather (or, if it caught the error and
went on, paired its next batch with their current one). Every gather site now validates locally, then
the ranks agree (:func:`xrisk.distributed.agree_on_batch`): the same exception type and message on every
rank, naming the rank and the fault, nothing gathered and no state written anywhere.
"""

from __future__ import annotations

import pytest
import torch

from _dist import run_distributed
from xrisk.losses import APLoss, FalseNegativeDetector, GlobalContrastiveLoss, OneWayPartialAUCLoss
from xrisk import distributed as xdist
from xrisk.state import SampleState

N = 12
TIMEOUT = 60.0  # per collective and per test: a hang fails the test


def _outcome(call) -> tuple[str, str]:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test compares what every rank raised
        return type(exc).__name__, str(exc)
    return "ok", ""


def _snapshot(mod: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in mod.state_dict().items()}


def _unchanged(mod: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = mod.state_dict()
    return all(torch.equal(before[k], after[k]) or (before[k].isnan().all() and after[k].isnan().all())
               for k in before)


# ----------------------------------------------------------------------------- score losses
SCORE_FAULTS = {  # fault on rank 1 -> (exception type, words the message must contain)
    "dtype": ("TypeError", ["dtype of scores", "rank 0 sends float32", "rank 1 sends float64"]),
    "tasks": ("ValueError", ["shape of scores", "rank 0 sends [B, 1]", "rank 1 sends [B, 2]"]),
    "nan": ("ValueError", ["bad batch on rank 1 of 2", "NaN/inf"]),
    "index": ("IndexError", ["bad batch on rank 1 of 2", "dataset index 17 is out of range"]),
    "targets": ("ValueError", ["bad batch on rank 1 of 2", "binary"]),
}


def _score_faults(rank: int, world: int) -> dict:
    out = {}
    for fault in SCORE_FAULTS:
        for make in (lambda t: APLoss(N, num_tasks=t, gamma=0.5),
                     lambda t: OneWayPartialAUCLoss(N, num_tasks=t, method="kl", tau=0.5, gamma=0.5)):
            tasks = 2 if fault == "tasks" and rank == 1 else 1
            loss = make(tasks)
            scores = torch.rand(4, tasks).squeeze(1)
            targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
            targets = targets if tasks == 1 else targets[:, None].expand(4, 2)
            index = torch.arange(4) + 4 * rank
            if rank == 1:
                if fault == "dtype":
                    scores = scores.double()
                    targets = targets.double()
                elif fault == "nan":
                    scores[2] = float("nan")
                elif fault == "index":
                    index[1] = N + 5
                elif fault == "targets":
                    targets = targets * 2
            before = _snapshot(loss)
            got = _outcome(lambda: loss(scores, targets, index))
            out[(fault, type(loss).__name__)] = (got, _unchanged(loss, before))
        # the ranks are still in step: a valid batch afterwards goes through on both
        loss = APLoss(N, gamma=0.5)
        y = torch.tensor([1, 0, 0])
        out[(fault, "next")] = _outcome(lambda: loss(torch.rand(3), y, 3 * rank + torch.arange(3)))
    return out


def _assert_same_error_everywhere(per_rank: list[dict], expected: dict, name_of) -> None:
    for key, res in per_rank[0].items():
        if key[1] == "next":
            assert all(r[key] == ("ok", "") for r in per_rank), f"{key}: ranks out of step after the error: {res}"
            continue
        (kind, msg), unchanged = res
        want_kind, words = expected[key[0]]
        assert kind == want_kind, f"{key}: {kind}: {msg}"
        for w in words:
            assert w in msg, f"{key}: {w!r} not in {msg!r}"
        assert name_of(key) in msg, f"{key}: the call site is not named in {msg!r}"
        for r, other in enumerate(per_rank):
            assert other[key][0] == (kind, msg), f"{key}: rank {r} raised {other[key][0]}, rank 0 {(kind, msg)}"
            assert other[key][1], f"{key}: state written on rank {r}"


def _all_cases(rank: int, world: int) -> dict:
    """Every scenario of this file in one pair of processes (spawning them costs more than the scenarios)."""
    return {"score": _score_faults(rank, world), "contrastive": _contrastive_faults(rank, world),
            "state": _state_faults(rank, world), "skip": _train_skipping(rank, world),
            "skip_backward": _skip_backward_together(rank, world)}


@pytest.fixture(scope="module")
def results() -> dict[str, list]:
    per_rank = run_distributed(_all_cases, timeout=TIMEOUT)
    return {k: [r[k] for r in per_rank] for k in per_rank[0]}


@pytest.mark.distributed
def test_score_loss_bad_batch_on_one_rank_raises_the_same_error_on_every_rank(results):
    per_rank = results["score"]
    _assert_same_error_everywhere(per_rank, SCORE_FAULTS, lambda key: key[1])


# ----------------------------------------------------------------------------- contrastive losses
CONTRASTIVE_FAULTS = {
    "width": ("ValueError", ["shape of feats_a", "rank 0 sends [B, 4]", "rank 1 sends [B, 6]"]),
    "dtype": ("TypeError", ["dtype of feats_a", "rank 0 sends float32", "rank 1 sends float64"]),
    "nan": ("ValueError", ["bad batch on rank 1 of 2", "feats_b", "NaN/inf"]),
    "index": ("IndexError", ["bad batch on rank 1 of 2", "dataset index 30 is out of range"]),
}
CONTRASTIVE_CONFIGS = {
    "unimodal": dict(mode="unimodal"),
    "bimodal-global": dict(mode="bimodal", temperature="global"),
    "bimodal-fnd": dict(mode="bimodal", fnd=True),
}


def _contrastive_faults(rank: int, world: int) -> dict:
    out = {}
    for fault in CONTRASTIVE_FAULTS:
        for name, cfg in CONTRASTIVE_CONFIGS.items():
            cfg = dict(cfg)
            fnd = FalseNegativeDetector(N, alpha=0.2) if cfg.pop("fnd", False) else None
            loss = GlobalContrastiveLoss(N, tau=0.2, gamma=0.7, false_negatives=fnd, **cfg)
            d = 6 if fault == "width" and rank == 1 else 4
            a, b = torch.randn(3, d), torch.randn(3, d)
            index = torch.arange(3) + 3 * rank
            if rank == 1:
                if fault == "dtype":
                    a, b = a.double(), b.double()
                elif fault == "nan":
                    b[0, 1] = float("inf")
                elif fault == "index":
                    index[2] = 30
            before = _snapshot(loss)
            got = _outcome(lambda: loss(a, b, index))
            out[(fault, name)] = (got, _unchanged(loss, before))
        loss = GlobalContrastiveLoss(N, mode="unimodal")
        out[(fault, "next")] = _outcome(lambda: loss(torch.randn(2, 4), torch.randn(2, 4), torch.arange(2) + 2 * rank))
    return out


@pytest.mark.distributed
def test_contrastive_bad_batch_on_one_rank_raises_the_same_error_on_every_rank(results):
    per_rank = results["contrastive"]
    _assert_same_error_everywhere(per_rank, CONTRASTIVE_FAULTS, lambda key: "GlobalContrastiveLoss")


# ----------------------------------------------------------------------------- SampleState(local=True), detector
STATE_FAULTS = {
    "index": ("IndexError", ["bad batch on rank 1 of 2", "dataset index 10 is out of range"]),
    "nan": ("FloatingPointError", ["bad batch on rank 1 of 2", "non-finite"]),
    "shape": ("ValueError", ["shape of new", "rank 0 sends [B, 1]", "rank 1 sends [B, 2]"]),
    "dtype": ("ok", []),  # new values of different float dtypes are fine: gathered as float32 (the state's)
}


def _state_faults(rank: int, world: int) -> dict:
    out = {}
    for fault in STATE_FAULTS:
        width = 2 if fault == "shape" and rank == 1 else 1
        s = SampleState(10, (width,))
        index = torch.tensor([1, 2]) + 2 * rank
        new = torch.rand(2, width)
        if rank == 1:
            if fault == "index":
                index[0] = 10
            elif fault == "nan":
                new[1, 0] = float("nan")
            elif fault == "dtype":
                new = new.double()
        before = _snapshot(s)
        got = _outcome(lambda: s.update(index, new, gamma=0.5, local=True))
        out[(fault, "SampleState.update(local=True)")] = (got, got[0] == "ok" or _unchanged(s, before))
        # the detector's own entry point (outside a loss): a bad index on one rank
        det = FalseNegativeDetector(N, alpha=0.2)
        idx = torch.tensor([0, 1]) + 2 * rank
        if rank == 1 and fault == "index":
            idx[1] = -1
        before = _snapshot(det)
        got = _outcome(lambda: det(torch.rand(2, 2, 5), torch.ones(2, 2, 5, dtype=torch.bool), idx))
        out[(fault, "FalseNegativeDetector")] = (got, _unchanged(det, before) or got[0] == "ok")
    return out


@pytest.mark.distributed
def test_sample_state_and_detector_bad_rows_on_one_rank_raise_on_every_rank(results):
    per_rank = results["state"]
    for key, ((kind, msg), unchanged) in per_rank[0].items():
        for r, other in enumerate(per_rank):
            assert other[key][0] == (kind, msg), f"{key}: rank {r} raised {other[key][0]}, rank 0 {(kind, msg)}"
            assert other[key][1], f"{key}: state written on rank {r}"
        fault, site = key
        if site == "FalseNegativeDetector":
            want = ("IndexError", ["FalseNegativeDetector: bad batch on rank 1 of 2", "dataset index -1"]) \
                if fault == "index" else ("ok", [])
        else:
            want = STATE_FAULTS[fault]
        assert kind == want[0], f"{key}: {kind}: {msg}"
        for w in want[1]:
            assert w in msg, f"{key}: {w!r} not in {msg!r}"
    # the dtype case went through and both ranks hold the same (float32) state
    ok = [r[("dtype", "SampleState.update(local=True)")][0] for r in per_rank]
    assert ok == [("ok", ""), ("ok", "")]


# ----------------------------------------------------------------------------- skipping a bad batch together
def _scores(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 * step + rank)
    return torch.rand(4, generator=g), torch.tensor([1, 0, 1, 0]), torch.arange(4) + 4 * rank


def _train_skipping(rank: int, world: int) -> dict:
    """Three steps; at step 1 rank 1's batch has a NaN. Every rank catches the error and skips the step."""
    loss = APLoss(N, gamma=0.5)
    errors = []
    for step in range(3):
        s, y, idx = _scores(step, rank)
        if step == 1 and rank == 1:
            s[0] = float("nan")
        try:
            loss(s, y, idx)
        except ValueError as exc:
            errors.append(str(exc))
    return {"state": _snapshot(loss), "errors": errors}


@pytest.mark.distributed
def test_ranks_that_skip_a_bad_batch_stay_in_step(results):
    per_rank = results["skip"]
    ref = APLoss(N, gamma=0.5)
    for step in (0, 2):  # one process on the concatenated batches that every rank kept
        parts = [_scores(step, r) for r in range(2)]
        ref(*[torch.cat([p[i] for p in parts]) for i in range(3)])
    for r, res in enumerate(per_rank):
        assert len(res["errors"]) == 1 and "rank 1 of 2" in res["errors"][0], f"rank {r}: {res['errors']}"
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(res["state"][k], v, equal_nan=True, msg=f"rank {r} state {k}")



# ----------------------------------------------------------------------------- skipping backward together
def _skip_backward_together(rank: int, world: int) -> dict:
    """Step 1: rank 1 rejects its loss value after the forward (a check of its own, which xrisk cannot see). The
    ranks decide together (``all_reduce_max`` of the flag, as docs/guide.md says) and all skip that backward."""
    loss = APLoss(N, gamma=0.5)
    skipped, grads = [], []
    for step in range(3):
        s, y, idx = _scores(step, rank)
        s.requires_grad_(True)
        value = loss(s, y, idx)
        bad = torch.tensor(float(step == 1 and rank == 1))
        if xdist.all_reduce_max(bad).item() > 0:
            skipped.append(step)
            continue
        value.backward()
        grads.append(s.grad.clone())
    return {"skipped": skipped, "state": _snapshot(loss), "grads": grads}


@pytest.mark.distributed
def test_ranks_that_skip_a_backward_together_stay_in_step(results):
    """A rank that skips backward alone leaves its peers waiting in the gradient all-reduce of the gather until
    the process group's timeout (measured: gloo "Timed out waiting ... for recv/send" on both ranks, the group closed
    afterwards); agreeing on the skip keeps every rank in step, with the state and gradients of one process."""
    per_rank = results["skip_backward"]
    ref = APLoss(N, gamma=0.5)
    ref_grads = []
    for step in range(3):  # the forward of the skipped step still updated the state, on every rank alike
        parts = [_scores(step, r) for r in range(2)]
        s = torch.cat([p[0] for p in parts]).requires_grad_(True)
        value = ref(s, *[torch.cat([p[i] for p in parts]) for i in (1, 2)])
        if step != 1:
            value.backward()
            ref_grads.append(s.grad)
    for r, res in enumerate(per_rank):
        assert res["skipped"] == [1], f"rank {r}: {res['skipped']}"
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(res["state"][k], v, equal_nan=True, msg=f"rank {r} state {k}")
        for got, want in zip(res["grads"], ref_grads):  # the gather's "sum" policy: K x one process's rows
            torch.testing.assert_close(got, 2 * want[4 * r : 4 * r + 4], msg=f"rank {r} gradient")


# ----------------------------------------------------------------------------- tags of the agreement
def _tags(rank: int, world: int) -> dict:
    """Every rank's own number travels in the agreement's header (not compared between ranks); a failed check on
    one rank raises everywhere without calling ``tag``; ``all_gather_with(more=...)`` gathers tensors of other
    per-rank sizes in the same collective."""
    called: list[int] = []

    def tag(out: torch.Tensor) -> int:
        called.append(1)
        return int(out.numel()) * 10 + rank

    batch = torch.arange(3 + rank, dtype=torch.float32)
    _, layout = xdist.agree_on_batch("tags", lambda: batch, lambda t: {"x": t}, tag=tag)
    _, untagged = xdist.agree_on_batch("tags", lambda: batch, lambda t: {"x": t})

    def bad() -> torch.Tensor:
        if rank == 1:
            raise ValueError("rank 1 refuses")
        return batch

    before = len(called)
    failed = _outcome(lambda: xdist.agree_on_batch("tags", bad, lambda t: {"x": t}, tag=tag))
    x = torch.ones(2, 3, requires_grad=True)
    more = [torch.full((rank + 1, 2), float(rank)), torch.full((rank + 1,), rank == 1)]
    xs, (e, m0, m1) = xdist.all_gather_with(x, [torch.full((2,), rank)], grad="sum", sizes=[2, 2],
                                            extra_sizes=[2, 2], more=more, more_sizes=[1, 2])
    (xs * torch.arange(4.0).unsqueeze(1)).sum().backward()
    return {"sizes": layout.sizes, "tags": layout.tags, "untagged": untagged.tags, "failed": failed,
            "tag_calls_when_failed": len(called) - before - (1 if rank == 0 else 0), "extras": e, "m0": m0, "m1": m1,
            "grad": x.grad}


@pytest.mark.distributed
def test_agreement_carries_every_rank_tag_and_gathers_more_sizes():
    per_rank = run_distributed(_tags, timeout=TIMEOUT)
    for rank, res in enumerate(per_rank):
        assert res["sizes"] == (3, 4) and res["tags"] == (30, 41) and res["untagged"] == (), res
        assert res["failed"][0] == "ValueError" and "rank 1 refuses" in res["failed"][1]
        assert res["tag_calls_when_failed"] == 0  # rank 1 failed before its tag; rank 0's call is discounted
        assert torch.equal(res["extras"], torch.tensor([0, 0, 1, 1]))
        assert torch.equal(res["m0"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert torch.equal(res["m1"], torch.tensor([False, True, True]))
        want = torch.arange(4.0).view(2, 2)[rank].unsqueeze(1).expand(2, 3) * 2  # summed over the 2 ranks
        assert torch.equal(res["grad"], want)
