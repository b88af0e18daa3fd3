"""The bootstrap of part f of ``bench/fidelity_constrained.py`` (sampling noise of the fairness verdict): cell-stratified
resampling counts, weighted AUROC and max gap against unweighted oracles on repeated rows, paired intervals, and the
verdict's wording."""

from __future__ import annotations

import math

import pytest
import torch

from _bench import load_bench
from xrisk.metrics import auroc
from xrisk.recipes.fair import fairness_metrics

bench = load_bench("fidelity_constrained")
THRESHOLDS = [0.3, 0.5, 0.7]


def _data(n: int, seed: int, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prob, target, group)``: positives score higher, group 1 a little higher than group 0."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=gen) < 0.4).long()
    g = (torch.rand(n, generator=gen) < 0.3).long()
    prob = torch.sigmoid(torch.randn(n, generator=gen, dtype=torch.float64) + 1.2 * y + 0.3 * g)
    return (prob.mul(20).round().div(20) if ties else prob), y, g


def test_counts_keep_every_cell_size_and_resample():
    _, y, g = _data(300, 0)
    cell = 2 * g + y
    counts = bench.bootstrap_counts(cell, 50, torch.Generator().manual_seed(1))
    assert counts.shape == (300, 50)
    assert torch.equal(counts, counts.round()) and bool((counts >= 0).all())
    for c in range(4):
        assert torch.equal(counts[cell == c].sum(0), torch.full((50,), float((cell == c).sum())))
    assert not torch.equal(counts[:, 0], counts[:, 1])  # replicates differ
    assert not bool((counts == 1).all(0).any())  # no replicate is the original rows
    again = bench.bootstrap_counts(cell, 50, torch.Generator().manual_seed(1))
    assert torch.equal(counts, again)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("positives", ["fewer", "more"])  # the running sum runs over the smaller class
def test_weighted_auroc_is_auroc_of_repeated_rows(ties, positives):
    prob, y, _ = _data(200, 2, ties)
    if positives == "more":
        y = 1 - y
    w = torch.randint(0, 4, (200, 5), generator=torch.Generator().manual_seed(3)).float()
    got = bench.weighted_auroc(prob, y, w)
    for r in range(5):
        rep = w[:, r].long()
        want = auroc(prob.repeat_interleave(rep), y.repeat_interleave(rep))
        assert math.isclose(float(got[r]), float(want), rel_tol=0, abs_tol=1e-12)
    ones = torch.ones(200, 1)
    assert math.isclose(float(bench.weighted_auroc(prob, y, ones)), float(auroc(prob, y)), abs_tol=1e-12)


def test_weighted_max_gap_is_the_table_gap_of_repeated_rows():
    prob, y, g = _data(400, 4, ties=True)
    w = torch.randint(0, 3, (400, 4), generator=torch.Generator().manual_seed(5)).float()
    got = bench.weighted_max_gap(prob, y, g, THRESHOLDS, w)
    for r in range(4):
        rep = w[:, r].long()
        want = fairness_metrics(prob.repeat_interleave(rep), y.repeat_interleave(rep), g.repeat_interleave(rep),
                                THRESHOLDS, 0.05)["test_max_gap"]
        assert math.isclose(float(got[r]), want, abs_tol=1e-12)
    # a cell without weight leaves its label's gap out; no label observable -> NaN
    empty = torch.ones(400, 2)
    empty[(g == 1) & (y == 1), 0] = 0
    empty[g == 1, 1] = 0
    out = bench.weighted_max_gap(prob, y, g, THRESHOLDS, empty)
    keep = ~((g == 1) & (y == 1))
    assert math.isclose(float(out[0]), fairness_metrics(prob[keep], y[keep], g[keep], THRESHOLDS, 0.05)["test_max_gap"],
                        abs_tol=1e-12)
    assert math.isnan(float(out[1]))


def test_several_models_of_the_same_rows_at_once():
    prob, y, g = _data(300, 10, ties=True)
    probs = torch.stack([prob, prob.sqrt(), 1 - prob])
    w = bench.bootstrap_counts(2 * g + y, 20, torch.Generator().manual_seed(0))
    gaps, aucs = bench.weighted_max_gap(probs, y, g, THRESHOLDS, w), bench.weighted_auroc(probs, y, w)
    assert gaps.shape == aucs.shape == (3, 20)
    for m in range(3):
        assert torch.equal(gaps[m], bench.weighted_max_gap(probs[m], y, g, THRESHOLDS, w))
        assert torch.equal(aucs[m], bench.weighted_auroc(probs[m], y, w))


def test_rates_fixed_by_the_cells_give_a_zero_width_gap_interval():
    """Scores constant within each (group, label) cell: every replicate has the same rates, so the interval is the
    exact gap with zero width."""
    _, y, g = _data(500, 6)
    prob = torch.where(g == 1, torch.where(y == 1, 0.8, 0.4), torch.where(y == 1, 0.6, 0.2)).double()
    w = bench.bootstrap_counts(2 * g + y, 200, torch.Generator().manual_seed(0))
    lo, hi = bench.percentile_interval(bench.weighted_max_gap(prob, y, g, THRESHOLDS, w))
    assert lo == hi == 1.0  # TPR at 0.7: 1 (group 1) vs 0 (group 0)


def test_identical_predictions_give_a_zero_width_difference_interval():
    prob, y, g = _data(300, 7)
    w = bench.bootstrap_counts(2 * g + y, 500, torch.Generator().manual_seed(0))
    same = bench.weighted_auroc(prob, y, w) - bench.weighted_auroc(prob.clone(), y, w)
    assert bench.percentile_interval(same) == (0.0, 0.0)
    other = bench.weighted_auroc(prob, y, w) - bench.weighted_auroc(prob.sqrt() + 0.05 * torch.randn(
        300, generator=torch.Generator().manual_seed(8), dtype=torch.float64), y, w)
    lo, hi = bench.percentile_interval(other)
    assert lo < hi


def _delong_se(prob: torch.Tensor, y: torch.Tensor) -> float:
    """DeLong's asymptotic standard error of the AUROC (labels fixed), from the pairwise comparisons."""
    pos, neg = prob[y == 1], prob[y == 0]
    k = (pos.unsqueeze(1) > neg).double() + 0.5 * (pos.unsqueeze(1) == neg).double()
    return math.sqrt(float(k.mean(1).var() / pos.numel() + k.mean(0).var() / neg.numel()))


def test_interval_shrinks_around_the_auroc_at_the_delong_rate():
    """With the labels' counts fixed (stratified), the bootstrap's spread is DeLong's standard error; the interval
    holds the sample's AUROC and narrows as 1 / sqrt(n)."""
    widths = []
    for n in (500, 4000):
        prob, y, g = _data(n, 9)
        w = bench.bootstrap_counts(2 * g + y, 2000, torch.Generator().manual_seed(0))
        reps = bench.weighted_auroc(prob, y, w)
        lo, hi = bench.percentile_interval(reps)
        assert lo < float(auroc(prob, y)) < hi
        assert float(reps.std()) == pytest.approx(_delong_se(prob, y), rel=0.1)
        widths.append(hi - lo)
    assert widths[1] / widths[0] == pytest.approx(math.sqrt(500 / 4000), rel=0.2)


def _summary(gap: tuple[float, float], diff: tuple[float, float]) -> tuple[dict, dict]:
    ours, other = "hinge (ours)", "baseline"
    evals = {("d", ours): {"test_max_gap": 0.05, "test_auroc": 0.80}, ("d", other): {"test_max_gap": 0.04,
                                                                                      "test_auroc": 0.81}}
    summary = {("d", ours): {"gap": gap, "share": 0.5, "auroc": (0.7, 0.9)},
               ("d", other): {"gap": (0.01, 0.05), "share": 1.0, "auroc": (0.7, 0.9), "diff": -0.01,
                              "diff_interval": diff}}
    return summary, evals


def test_verdict_line_says_which_decisions_the_data_make():
    summary, evals = _summary((0.04, 0.07), (-0.02, -0.005))
    line = bench._noise_line("d", summary, evals)
    assert "feasibility is within sampling noise" in line and "contains 0.06" in line
    assert "baseline -0.010 [-0.020, -0.005]: decided by the data" in line
    assert "own feasibility is within sampling noise: none" in line
    summary, evals = _summary((0.02, 0.05), (-0.02, 0.005))
    line = bench._noise_line("d", summary, evals)
    assert "feasibility is decided by the data" in line and "excludes 0.06" in line
    assert "[-0.020, +0.005]: within sampling noise" in line


def test_summary_pairs_the_methods_replicates():
    boot = {("d", "hinge (ours)"): {"gap": torch.tensor([0.05, 0.07, 0.03]), "auroc": torch.tensor([0.8, 0.7, 0.9])},
            ("d", "baseline"): {"gap": torch.tensor([0.01, 0.02, 0.03]), "auroc": torch.tensor([0.8, 0.7, 0.9])}}
    evals = {("d", "hinge (ours)"): {"test_auroc": 0.8}, ("d", "baseline"): {"test_auroc": 0.8}}
    s = bench._noise_summary(boot, evals)
    assert s[("d", "baseline")]["diff_interval"] == (0.0, 0.0)  # paired: equal replicates, no spread
    assert s[("d", "hinge (ours)")]["share"] == pytest.approx(2 / 3)
    assert "diff" not in s[("d", "hinge (ours)")]
