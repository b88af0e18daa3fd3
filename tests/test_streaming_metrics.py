"""Streaming metrics: torchmetrics for AUROC / AP / one-way pAUC (the mapping the docs give),
``TwoWayPartialAUROC`` (exact and binned) against xrisk's functional value and a scikit-learn
ROC oracle, its module behaviour (state_dict, ``.to()``, reset) and a 2-process gloo sync."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _dist import run_distributed
from xrisk.metrics import auroc, average_precision, mcclish_to_normalized, normalized_to_mcclish, partial_auroc

tm = pytest.importorskip("torchmetrics", reason="the streaming metrics need the `metrics` extra")
skm = pytest.importorskip("sklearn.metrics", reason="the ROC oracle is scikit-learn's")
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision  # noqa: E402

from xrisk.metrics import TwoWayPartialAUROC  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def _data(seed: int, n: int, *, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities in [0, 1] (ties: few distinct values) and 0/1 targets with both classes."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.35).long()
    y[0], y[1] = 1, 0
    if ties:
        s = (torch.randint(0, 7, (n,), generator=g) + 2 * y) / 8.0
    else:
        s = torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64) + 1.2 * y)
    return s, y


def _sklearn_two_way(s: torch.Tensor, y: torch.Tensor, max_fpr: float, min_tpr: float) -> float:
    """Integral of max(TPR - alpha, 0) over FPR in [0, beta] on scikit-learn's ROC polyline (fine Riemann sum)."""
    fpr, tpr, _ = skm.roc_curve(y.numpy(), s.double().numpy(), drop_intermediate=False)
    grid = (np.arange(400_000) + 0.5) / 400_000 * max_fpr
    return float(np.maximum(np.interp(grid, fpr, tpr) - min_tpr, 0).mean() / (1 - min_tpr))


# ----------------------------------------------------------------------------- the torchmetrics mapping
@pytest.mark.parametrize("seed", range(4))
def test_torchmetrics_auroc_ap_and_mcclish_pauc_match_the_documented_mapping(seed):
    s, y = _data(seed, 150 + 20 * seed, ties=seed % 2 == 0)
    s = s.float()
    for fn, metric in ((auroc, BinaryAUROC()), (average_precision, BinaryAveragePrecision())):
        for part_s, part_y in zip(s.split(40), y.split(40)):
            metric.update(part_s, part_y)
        assert float(metric.compute()) == pytest.approx(float(fn(s, y)), abs=1e-6)  # torchmetrics: float32
    for max_fpr in (0.1, 0.3, 0.77):
        m = BinaryAUROC(max_fpr=max_fpr)
        m.update(s, y)
        ours = partial_auroc(s, y, max_fpr=max_fpr)
        assert float(m.compute()) == pytest.approx(float(normalized_to_mcclish(ours, max_fpr)), abs=1e-6)
        assert float(mcclish_to_normalized(m.compute().double(), max_fpr)) == pytest.approx(float(ours), abs=1e-6)
        assert abs(float(m.compute()) - float(ours)) > 1e-3  # the two scales really differ


def test_torchmetrics_sigmoid_of_large_float32_logits_ties_them_as_the_docs_warn():
    s, y = torch.tensor([20.0, 30.0, 25.0, 40.0]), torch.tensor([0, 1, 0, 1])
    assert float(auroc(s, y)) == 1.0
    assert float(BinaryAUROC()(s, y)) == 0.5
    assert float(BinaryAUROC()(s.double(), y)) == 1.0


# ----------------------------------------------------------------------------- exact mode
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_tpr,max_fpr", [(0.0, 0.3), (0.3, 0.6), (0.6, 0.4), (0.1, 1.0)])
def test_exact_mode_equals_partial_auroc_and_the_sklearn_roc_integral(seed, min_tpr, max_fpr):
    s, y = _data(seed, 120 + 31 * seed, ties=seed % 2 == 1)
    m = TwoWayPartialAUROC(max_fpr=max_fpr, min_tpr=min_tpr)
    for part_s, part_y in zip(s.split(17), y.split(17)):
        m.update(part_s, part_y)
    value = m.compute()
    assert value.dtype == torch.float64
    assert torch.equal(value, partial_auroc(s, y, max_fpr=max_fpr, min_tpr=min_tpr))
    assert float(value) == pytest.approx(_sklearn_two_way(s, y, max_fpr, min_tpr), abs=1e-5)


def test_exact_mode_stores_detached_copies():
    s = torch.rand(6, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    m = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.2)
    m.update(s * 2, y)
    ref = m.compute()
    with torch.no_grad():
        s.mul_(-1)
    assert torch.equal(m.compute(), ref) and not m.scores[0].requires_grad


# ----------------------------------------------------------------------------- binned mode
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("min_tpr,max_fpr", [(0.0, 0.25), (0.4, 0.5), (0.7, 0.9)])
@pytest.mark.parametrize("thresholds", [11, 200, [0.05, 0.2, 0.5, 0.55, 0.9]])
def test_binned_mode_is_the_exact_value_of_the_bin_numbers_and_within_its_error_bound(
        seed, min_tpr, max_fpr, thresholds):
    s, y = _data(seed, 500, ties=False)
    m = TwoWayPartialAUROC(max_fpr=max_fpr, min_tpr=min_tpr, thresholds=thresholds)
    for part_s, part_y in zip(s.split(64), y.split(64)):
        m.update(part_s, part_y)
    binned, bound = float(m.compute()), float(m.error_bound())
    # the value is that of the scores replaced by their bin number (ties inside a bin)
    th = m.thresholds
    bins = torch.bucketize(s, th, right=True).double()
    assert binned == pytest.approx(float(partial_auroc(bins, y, max_fpr=max_fpr, min_tpr=min_tpr)), abs=1e-12)
    exact = float(partial_auroc(s, y, max_fpr=max_fpr, min_tpr=min_tpr))
    assert abs(binned - exact) <= bound + 1e-12
    # the a-priori bound of the docstring holds too
    n_bins = th.numel() + 1
    eps_pos = float(torch.bincount(bins.long()[y == 1], minlength=n_bins).max()) / int(y.sum())
    eps_neg = float(torch.bincount(bins.long()[y == 0], minlength=n_bins).max()) / int((1 - y).sum())
    assert bound <= min(eps_pos / (1 - min_tpr), eps_neg / max_fpr) + 1e-12


def test_binned_error_shrinks_with_more_bins_and_is_zero_when_no_bin_mixes_classes():
    s, y = _data(7, 4000, ties=False)
    bounds = []
    for k in (10, 100, 1000):
        m = TwoWayPartialAUROC(max_fpr=0.3, min_tpr=0.5, thresholds=k)
        m.update(s, y)
        bounds.append(float(m.error_bound()))
    assert bounds[0] > bounds[1] > bounds[2] and bounds[2] < 0.01
    # scores 0.1 .. 0.9 each in its own bin: binned == exact
    s2 = torch.linspace(0.1, 0.9, 9)
    y2 = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 1])
    m = TwoWayPartialAUROC(max_fpr=0.6, min_tpr=0.2, thresholds=21)
    m.update(s2, y2)
    assert float(m.error_bound()) == 0.0
    assert float(m.compute()) == pytest.approx(float(partial_auroc(s2, y2, max_fpr=0.6, min_tpr=0.2)), abs=1e-12)


def test_binned_memory_is_fixed():
    m = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.1, thresholds=50)
    for seed in range(5):
        m.update(*_data(seed, 1000, ties=False))
    assert m.pos_hist.shape == m.neg_hist.shape == (51,) and int(m.pos_hist.sum() + m.neg_hist.sum()) == 5000


# ----------------------------------------------------------------------------- module behaviour
@pytest.mark.parametrize("thresholds", [None, 64])
def test_state_dict_round_trip_continues_identically_and_reset(thresholds):
    s, y = _data(3, 300, ties=True)
    a = TwoWayPartialAUROC(max_fpr=0.4, min_tpr=0.3, thresholds=thresholds)
    a.update(s[:100], y[:100])
    sd = a.state_dict()
    assert any(k in sd for k in ("scores", "pos_hist"))
    b = TwoWayPartialAUROC(max_fpr=0.4, min_tpr=0.3, thresholds=thresholds)
    b.load_state_dict(sd)
    for m in (a, b):
        m.update(s[100:], y[100:])
    assert torch.equal(a.compute(), b.compute())
    full = TwoWayPartialAUROC(max_fpr=0.4, min_tpr=0.3, thresholds=thresholds)
    full.update(s, y)
    assert torch.equal(b.compute(), full.compute())
    b.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' warning; the value is NaN
        assert math.isnan(float(b.compute()))
    b.update(s[:50], y[:50])
    fresh = TwoWayPartialAUROC(max_fpr=0.4, min_tpr=0.3, thresholds=thresholds)
    fresh.update(s[:50], y[:50])
    assert torch.equal(b.compute(), fresh.compute())
    # persistent(False): the state leaves state_dict (torchmetrics' default)
    b.persistent(False)
    assert not any(k in b.state_dict() for k in ("scores", "targets", "pos_hist", "neg_hist"))


def test_loading_a_state_of_another_mode_or_size_fails_before_writing():
    exact = TwoWayPartialAUROC(max_fpr=0.4)
    binned = TwoWayPartialAUROC(max_fpr=0.4, thresholds=10)
    exact.update(*_data(1, 40, ties=True))
    binned.update(*_data(1, 40, ties=True))
    with pytest.raises(ValueError, match="exact mode"):
        binned.load_state_dict(exact.state_dict())
    with pytest.raises(ValueError, match="binned mode"):
        exact.load_state_dict(binned.state_dict())
    other = TwoWayPartialAUROC(max_fpr=0.4, thresholds=20)
    before = other.pos_hist.clone()
    with pytest.raises(ValueError, match="10 thresholds"):
        other.load_state_dict(binned.state_dict())
    assert torch.equal(other.pos_hist, before)


@pytest.mark.parametrize("thresholds", [None, 16])
def test_to_moves_state_and_thresholds(thresholds):
    m = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.2, thresholds=thresholds)
    m.update(*_data(2, 30, ties=True))
    moved = m.to("meta")  # the only other device a CPU-only machine has: every tensor must follow
    tensors = [*moved.scores, *moved.targets] if thresholds is None else [moved.pos_hist, moved.neg_hist,
                                                                            moved.thresholds]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert moved.device.type == "meta"


def test_bad_inputs_and_arguments_raise_clear_errors():
    m = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.2)
    with pytest.raises(ValueError, match="NaN/inf"):
        m.update(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="binary"):
        m.update(torch.tensor([0.1, 0.2]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="one task"):
        m.update(torch.rand(3, 2), torch.zeros(3, 2))
    assert not m.scores  # nothing was stored by the failed updates
    with pytest.raises(ValueError, match="probabilities"):
        TwoWayPartialAUROC(max_fpr=0.5, thresholds=10).update(torch.tensor([-2.0, 3.0]), torch.tensor([0, 1]))
    logits = TwoWayPartialAUROC(max_fpr=0.5, thresholds=[-1.0, 0.0, 1.0])  # explicit thresholds: any scores
    logits.update(torch.tensor([-2.0, 3.0]), torch.tensor([0, 1]))
    assert float(logits.compute()) == 1.0
    for bad, match in (({"max_fpr": 0.0}, "max_fpr"), ({"max_fpr": 0.5, "min_tpr": 1.0}, "min_tpr"),
                       ({"max_fpr": 0.5, "thresholds": 1}, ">= 2"),
                       ({"max_fpr": 0.5, "thresholds": [0.5, 0.2]}, "increasing"),
                       ({"max_fpr": 0.5, "thresholds": [0.1, float("inf")]}, "finite")):
        with pytest.raises(ValueError, match=match):
            TwoWayPartialAUROC(**bad)
    with pytest.raises(TypeError, match="bool"):
        TwoWayPartialAUROC(max_fpr=0.5, thresholds=True)


def test_one_class_only_gives_nan():
    for thresholds in (None, 10):
        m = TwoWayPartialAUROC(max_fpr=0.5, thresholds=thresholds)
        m.update(torch.tensor([0.2, 0.4]), torch.tensor([1, 1]))
        assert math.isnan(float(m.compute()))


def test_core_imports_without_torchmetrics_and_the_metric_names_the_extra():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torchmetrics' or name.startswith('torchmetrics.'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import xrisk, xrisk.losses, xrisk.optim, xrisk.metrics\n"
        "from xrisk.metrics import *\n"
        "assert 'torchmetrics' not in sys.modules\n"
        "try:\n"
        "    from xrisk.metrics import TwoWayPartialAUROC\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "pip install 'xrisk[metrics]'" in out.stdout


# ----------------------------------------------------------------------------- 2 gloo processes
def _sync_on_rank(rank: int, world: int) -> dict:
    s, y = _data(21, 90, ties=True)
    part = slice(0, 53) if rank == 0 else slice(53, None)  # uneven: 53 and 37 samples
    out = {}
    for name, thresholds in (("exact", None), ("binned", 9)):
        m = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.25, thresholds=thresholds)
        for cs, cy in zip(s[part].split(10), y[part].split(10)):
            m.update(cs, cy)
        out[name] = m.compute()
        local = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.25, thresholds=thresholds, sync_on_compute=False)
        local.update(s[part], y[part])
        out[name + "_local"] = local.compute()
        idle = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.25, thresholds=thresholds)  # rank 1 sees no data
        if rank == 0:
            idle.update(s, y)
        out[name + "_idle"] = idle.compute()
    return out


@pytest.mark.distributed
def test_two_processes_compute_the_value_of_the_union_of_their_data():
    results = run_distributed(_sync_on_rank)
    s, y = _data(21, 90, ties=True)
    exact = partial_auroc(s, y, max_fpr=0.5, min_tpr=0.25)
    single = TwoWayPartialAUROC(max_fpr=0.5, min_tpr=0.25, thresholds=9)
    single.update(s, y)
    for rank, res in enumerate(results):
        assert torch.equal(res["exact"], exact)
        assert torch.equal(res["binned"], single.compute())
        assert torch.equal(res["exact_idle"], exact) and torch.equal(res["binned_idle"], single.compute())
        part = slice(0, 53) if rank == 0 else slice(53, None)
        assert torch.equal(res["exact_local"], partial_auroc(s[part], y[part], max_fpr=0.5, min_tpr=0.25))
    assert not torch.equal(results[0]["exact_local"], exact)
