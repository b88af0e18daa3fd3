"""The step contract of every loss (issue 10): all or nothing, causes named, one dtype rule, the epoch.

The registry-driven halves (eval mode writes nothing, a forced failure writes nothing, empty and
degenerate batches) are in ``tests/test_conformance.py``; here are the natural failures and the rules
that need a specific set-up.
"""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch

from cases.cases_contrastive import CASES as CONTRASTIVE_CASES
from xrisk.losses import (
    APLoss, FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss,
)
from xrisk.schedules import CosineGammaSchedule

INFERRED = r"set_epoch\(\) was never called"


def _buffers(mod: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in mod.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"


# ----------------------------------------------------------------------------- all or nothing, causes named
def _two_task_batch(overflow: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two tasks with positives and negatives; with ``overflow`` task 1's negatives score 100 above its positives."""
    g = torch.Generator().manual_seed(0)
    targets = torch.zeros(10, 2)
    targets[:3, 0] = 1
    targets[4:7, 1] = 1
    scores = torch.rand(10, 2, generator=g)
    if overflow:
        scores[:, 1] = torch.where(targets[:, 1] > 0, 0.0, 100.0)  # exp(margin + 100) overflows float32
    return scores, targets, torch.arange(10)


MULTI_TASK = {
    "ap": lambda: APLoss(20, num_tasks=2, surrogate="exponential"),
    "pauc-cvar": lambda: OneWayPartialAUCLoss(20, num_tasks=2, method="cvar", surrogate="exponential"),
    "pauc-kl": lambda: OneWayPartialAUCLoss(20, num_tasks=2, method="kl", surrogate="exponential"),
    "tpauc": lambda: TwoWayPartialAUCLoss(20, num_tasks=2, surrogate="exponential"),
}


@pytest.mark.parametrize("name", list(MULTI_TASK))
def test_overflow_in_the_last_task_writes_nothing_and_names_the_cause(name):
    """Regression: task 0's estimators used to be written before task 1 raised (AP, KL, two-way); the CVaR
    loss returned inf and wrote its thresholds."""
    loss = MULTI_TASK[name]()
    loss(*_two_task_batch(overflow=False))  # some state first
    before = _buffers(loss)
    scores, targets, index = _two_task_batch(overflow=True)
    with pytest.raises(FloatingPointError, match=r"scores overflow the exponential surrogate: task 1 has scores in "
                                                 r"\[0, 100\].*no state was changed"):
        loss(scores.requires_grad_(True), targets, index)
    _same(before, _buffers(loss))
    assert not torch.isnan(loss.objective()), "the failed step does not replace the last objective estimate"


def test_single_task_cvar_raises_instead_of_returning_inf():
    loss = OneWayPartialAUCLoss(20, method="cvar", surrogate="exponential")
    scores = torch.tensor([0.0, 0.0, 100.0, 100.0, 100.0])
    with pytest.raises(FloatingPointError, match="scores overflow the exponential surrogate"):
        loss(scores, torch.tensor([1, 1, 0, 0, 0]), torch.arange(5))
    assert not loss.threshold.seen.any()


def test_kl_overflow_of_losses_over_tau_is_named():
    loss = OneWayPartialAUCLoss(20, method="kl", tau=1e-3)  # squared hinge: L ~ 1e36 is finite, L / tau is not
    scores = torch.tensor([0.0, 1e18, 1e18, 1e18])
    with pytest.raises(FloatingPointError, match=r"divided by tau=0.001 overflow"):
        loss(scores, torch.tensor([1, 0, 0, 0]), torch.arange(4))
    assert not loss.log_u.seen.any()


@pytest.mark.parametrize("mode", ["unimodal", "bimodal"])
@pytest.mark.parametrize("temperature", ["fixed", "individual"])
def test_contrastive_similarity_overflow_is_named_and_writes_nothing(mode, temperature):
    loss = GlobalContrastiveLoss(20, mode=mode, temperature=temperature, normalize=False)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    loss(a, b, torch.arange(4))
    before = _buffers(loss)
    with pytest.raises(FloatingPointError, match=r"similarities overflow .* normalize=False .*no state was changed"):
        loss(a * 1e20, b * 1e20, torch.arange(4))
    _same(before, _buffers(loss))


@pytest.mark.parametrize("where, make, bad", [
    # NUCLR's zeta step is staged last: a non-finite zeta row leaves log_u and the momentum untouched too
    ("xrisk.losses.nuclr", lambda: NUCLRLoss(20, tau=0.1, zeta_start_epoch=0, lr_zeta=0.05), float("inf")),
    # per-sample temperatures with GloFND (general path): the detector's thresholds are not written either
    ("xrisk.losses._contrastive_base", lambda: GlobalContrastiveLoss(
        20, mode="unimodal", temperature="individual", rho=0.5, false_negatives=FalseNegativeDetector(20, alpha=0.2, lr=0.3),
    ), float("nan")),
], ids=["nuclr-zeta", "individual-tau-with-glofnd"])
def test_failure_in_the_last_state_writes_nothing(where, make, bad, monkeypatch):
    loss = make()
    loss.set_epoch(0)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    loss(a, b, torch.arange(4))
    before = _buffers(loss)
    monkeypatch.setattr(importlib.import_module(where), "sgd_rows", lambda before, m, lr, bounds=None: m * bad)
    with pytest.raises(FloatingPointError, match="no state was changed"):
        loss(a, b, torch.arange(4))
    _same(before, _buffers(loss))


# ----------------------------------------------------------------------------- one dtype rule
@pytest.mark.parametrize("case", CONTRASTIVE_CASES, ids=[c.name for c in CONTRASTIVE_CASES])
def test_contrastive_features_of_mixed_dtypes_are_promoted(case):
    """Regression: bimodal float32/float64 features raised a raw matmul error while unimodal promoted."""
    a, b, index = case.batch(0)
    mixed, ref = case.make(), case.make()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*" + INFERRED)
        out = mixed(a.float(), b.double(), index)
        want = ref(a.double(), b.double(), index)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want)
    for k, v in _buffers(ref).items():
        torch.testing.assert_close(_buffers(mixed)[k], v)


@pytest.mark.parametrize("make", [lambda: APLoss(20), lambda: OneWayPartialAUCLoss(20, method="kl"),
                                  lambda: TwoWayPartialAUCLoss(20)], ids=["ap", "pauc-kl", "tpauc"])
@pytest.mark.parametrize("scores_dtype", [torch.float32, torch.float64])
def test_score_losses_compute_in_the_scores_dtype_whatever_the_targets_dtype(make, scores_dtype):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(8, generator=g, dtype=torch.float64).to(scores_dtype)
    labels = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0])
    outs = []
    for targets in (labels.bool(), labels, labels.float(), labels.double(), labels.half()):
        loss = make()
        outs.append((loss(scores, targets, torch.arange(8)), _buffers(loss)))
    for out, state in outs:
        assert out.dtype == scores_dtype
        assert torch.equal(out, outs[0][0])
        _same(state, outs[0][1])


# ----------------------------------------------------------------------------- the epoch
def _pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 6, generator=g)
    return a, a + 0.3 * torch.randn(n, 6, generator=g)


def test_nuclr_warm_up_ends_without_set_epoch_and_warns_once():
    """Regression: without set_epoch NUCLR's zeta never left its warm-up."""
    n = 12
    a, b = _pairs(n)
    loss = NUCLRLoss(n, tau=0.1, zeta_start_epoch=1, lr_zeta=0.05)
    with pytest.warns(UserWarning, match=INFERRED + r".*zeta warm-up \(zeta_start_epoch=1\)") as record:
        for step, idx in enumerate(torch.arange(n).split(4) * 2):
            zeta = loss.zeta.value.clone()
            loss(a[idx], b[idx], idx)
            assert loss.current_epoch() == (step + 1) * 4 // n
            assert torch.equal(loss.zeta.value, zeta) == (step < 3), "zeta moves from the second epoch on"
    assert len([w for w in record if "set_epoch" in str(w.message)]) == 1
    assert int(loss.samples_seen) == 2 * n and int(loss.epoch) == 2 and not bool(loss.epoch_is_set)


def test_explicit_set_epoch_always_wins():
    n = 8
    a, b = _pairs(n)
    loss = NUCLRLoss(n, tau=0.1, zeta_start_epoch=1, lr_zeta=0.05)
    loss.set_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once set_epoch was called
        for _ in range(3):
            loss(a, b, torch.arange(n))
    assert loss.current_epoch() == 0 and int(loss.samples_seen) == 3 * n
    assert not loss.zeta.seen.any(), "still in the warm-up: the explicit epoch is 0"


def test_inferred_epoch_survives_a_checkpoint_and_eval_does_not_count():
    n = 6
    a, b = _pairs(n)
    sched = CosineGammaSchedule(gamma_min=0.2, decay_epochs=4)
    loss = GlobalContrastiveLoss(n, mode="bimodal", gamma_schedule=sched)
    with pytest.warns(UserWarning, match=INFERRED + ".*gamma_schedule"):
        loss(a, b, torch.arange(n))
    assert loss.current_epoch() == 1 and loss.current_gamma() == sched(1)
    loss.eval()
    loss(a, b, torch.arange(n))
    assert int(loss.samples_seen) == n and loss.current_epoch() == 1
    loss.train()
    resumed = GlobalContrastiveLoss(n, mode="bimodal", gamma_schedule=sched)
    resumed.load_state_dict(copy.deepcopy(loss.state_dict()))
    assert resumed.current_epoch() == 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*" + INFERRED)
        for mod in (loss, resumed):
            mod(a[:3], b[:3], torch.arange(3))
            mod(a[3:], b[3:], torch.arange(3, 6))
    assert resumed.current_epoch() == loss.current_epoch() == 2
    _same(_buffers(loss), _buffers(resumed))


def test_detector_start_epoch_is_reached_without_set_epoch():
    n = 8
    a, b = _pairs(n)
    fnd = FalseNegativeDetector(n, alpha=0.3, lr=0.5, start_epoch=1, init_quantile=True)
    loss = GlobalContrastiveLoss(n, mode="bimodal", false_negatives=fnd)
    with pytest.warns(UserWarning, match=INFERRED + r".*start_epoch=1"):
        loss(a, b, torch.arange(n))
    assert not fnd._fraction_counts is None
    assert fnd.current_epoch() == 1 and fnd.masking and not bool(fnd.epoch_is_set)
    loss.set_epoch(0)
    assert not fnd.masking and bool(fnd.epoch_is_set)


def test_detector_on_its_own_infers_its_epoch():
    n = 6
    fnd = FalseNegativeDetector(n, alpha=0.2, start_epoch=1)
    sim = torch.rand(n, 2, n)
    neg = torch.ones(n, 2, n, dtype=torch.bool)
    with pytest.warns(UserWarning, match=INFERRED):
        assert fnd(sim, neg, torch.arange(n)).all()  # epoch 0: nothing masked
    assert fnd.masking
    fnd.eval()
    lam = fnd.lam.value.clone()
    fnd(sim, neg, torch.arange(n))
    assert torch.equal(fnd.lam.value, lam) and int(fnd.samples_seen) == n


def test_checkpoint_without_the_epoch_counters_still_loads():
    """A state_dict written before the epoch could be inferred (no samples_seen / epoch_is_set) loads as set."""
    loss = NUCLRLoss(10, tau=0.1)
    loss.set_epoch(3)
    old = {k: v for k, v in loss.state_dict().items() if k not in ("samples_seen", "epoch_is_set")}
    fresh = NUCLRLoss(10, tau=0.1)
    fresh.load_state_dict(old)
    assert fresh.current_epoch() == 3 and bool(fresh.epoch_is_set)
