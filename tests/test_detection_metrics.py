"""Detection metrics: TPR at a fixed FPR and every metric against scikit-learn; per-group evaluation equals a
slow loop over the groups; feature separability; Spearman against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xrisk.metrics.detection import (DETECTION_METRICS, detection_metrics, feature_separability,
                                     grouped_detection_metrics, spearman, tpr_at_fpr)

sk = pytest.importorskip("sklearn.metrics")


def _random_case(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.randint(0, 12, (n,), generator=g).double() / 3  # ties on purpose
    y = torch.randint(0, 2, (n,), generator=g)
    y[0], y[1] = 0, 1
    return s, y


def _tpr_at_fpr_reference(s: np.ndarray, y: np.ndarray, beta: float) -> float:
    """Every point of scikit-learn's ROC curve at FPR <= beta, and the curve's value at beta."""
    fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    best = tpr[fpr <= beta].max()
    k = np.searchsorted(fpr, beta, side="right")
    if k < len(fpr) and fpr[k] > fpr[k - 1]:
        best = max(best, tpr[k - 1] + (beta - fpr[k - 1]) / (fpr[k] - fpr[k - 1]) * (tpr[k] - tpr[k - 1]))
    return float(best)


def test_tpr_at_fpr_matches_the_sklearn_roc_curve():
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        s, y = _random_case(g, int(torch.randint(4, 80, (1,), generator=g)))
        for beta in (0.0, 0.01, 0.1, float(torch.rand(1, generator=g)), 1.0):
            assert float(tpr_at_fpr(s, y, max_fpr=beta)) == pytest.approx(
                _tpr_at_fpr_reference(s.numpy(), y.numpy(), beta), abs=1e-12)


def test_tpr_at_fpr_hand_case_and_errors():
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]); y = torch.tensor([1, 1, 0, 1, 0])
    assert float(tpr_at_fpr(s, y, max_fpr=0.0)) == pytest.approx(2 / 3)
    assert float(tpr_at_fpr(s, y, max_fpr=0.25)) == pytest.approx(2 / 3)  # (0, 2/3) -> (0.5, 2/3) is flat
    tied = torch.tensor([5.0, 4.0, 3.0, 3.0, 1.0])  # a tie of a negative and a positive: a diagonal segment
    assert float(tpr_at_fpr(tied, y, max_fpr=0.25)) == pytest.approx(2 / 3 + 0.5 * 1 / 3)  # halfway to (0.5, 1)
    assert math.isnan(float(tpr_at_fpr(s, torch.ones(5), max_fpr=0.1)))
    with pytest.raises(ValueError, match="max_fpr"):
        tpr_at_fpr(s, y, max_fpr=1.5)
    with pytest.raises(ValueError, match="NaN/inf"):
        tpr_at_fpr(torch.tensor([float("nan"), 1.0]), torch.tensor([0, 1]))


def test_detection_metrics_match_sklearn():
    g = torch.Generator().manual_seed(1)
    s, y = _random_case(g, 300)
    m = detection_metrics(s, y, max_fpr=0.1, min_tpr=0.5)
    assert list(m) == list(DETECTION_METRICS)
    assert m["auroc"] == pytest.approx(sk.roc_auc_score(y, s))
    assert m["ap"] == pytest.approx(sk.average_precision_score(y, s))
    mcclish = sk.roc_auc_score(y, s, max_fpr=0.1)  # sklearn's one-way pAUC is McClish-standardised
    assert 0.05 + (2 * mcclish - 1) * (1 - 0.05) == pytest.approx(m["pauc"])
    assert m["tpr_at_1pct_fpr"] == pytest.approx(_tpr_at_fpr_reference(s.numpy(), y.numpy(), 0.01))


def _two_way_reference(s: np.ndarray, y: np.ndarray, beta: float, alpha: float) -> float:
    """Area of the ROC region FPR <= beta, TPR >= alpha on a fine grid of the interpolated curve."""
    fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    xs = np.linspace(0, beta, 200001)
    # right-continuous interpolation of the polyline (vertical segments take their upper end)
    vals = np.array([max(tpr[fpr <= x].max(), np.interp(x, fpr, tpr)) for x in xs[::1000]])
    area = np.trapezoid(np.maximum(vals - alpha, 0), xs[::1000])
    return float(area / ((1 - alpha) * beta))


def test_two_way_partial_auroc_against_a_grid_integral():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(400, generator=g).double()
    y = (torch.rand(400, generator=g) < 0.3).long()
    s = s + 1.5 * y  # a separable-ish case, so the region TPR >= 0.5 is not empty
    m = detection_metrics(s, y, max_fpr=0.3, min_tpr=0.5)
    assert m["tpauc"] == pytest.approx(_two_way_reference(s.numpy(), y.numpy(), 0.3, 0.5), abs=2e-3)


def test_grouped_metrics_equal_a_slow_loop_over_domains():
    g = torch.Generator().manual_seed(3)
    n = 600
    s = torch.randn(n, generator=g).double()
    domains = [["news", "forum", "tech"][int(i)] for i in torch.randint(0, 3, (n,), generator=g)]
    gens = [["gA", "gB"][int(i)] for i in torch.randint(0, 2, (n,), generator=g)]
    y = (torch.rand(n, generator=g) < 0.25).long()
    gens = [x if t else "human" for x, t in zip(gens, y.tolist())]
    s = s + y * torch.tensor([0.5 if d == "news" else 1.5 for d in domains], dtype=torch.float64)
    got = grouped_detection_metrics(s, y, domains)
    assert list(got) == list(dict.fromkeys(domains))
    for d in ("news", "forum", "tech"):  # the slow loop: one domain's samples at a time, scikit-learn
        idx = [i for i in range(n) if domains[i] == d]
        ss, yy = s[idx].numpy(), y[idx].numpy()
        assert got[d]["auroc"] == pytest.approx(sk.roc_auc_score(yy, ss))
        assert got[d]["ap"] == pytest.approx(sk.average_precision_score(yy, ss))
        assert got[d]["pauc"] == pytest.approx(0.05 + (2 * sk.roc_auc_score(yy, ss, max_fpr=0.1) - 1) * 0.95)
        assert got[d]["tpr_at_1pct_fpr"] == pytest.approx(_tpr_at_fpr_reference(ss, yy, 0.01))
    assert got["news"]["auroc"] < got["tech"]["auroc"]  # the domain that was made harder is harder
    by_gen = grouped_detection_metrics(s, y, gens, shared_negatives=True)
    assert sorted(by_gen) == ["gA", "gB"]  # human texts are the shared negatives, not a group
    for name in ("gA", "gB"):
        idx = [i for i in range(n) if gens[i] in (name, "human")]
        assert by_gen[name]["auroc"] == pytest.approx(sk.roc_auc_score(y[idx].numpy(), s[idx].numpy()))


def test_grouped_metrics_single_class_group_is_nan_and_lengths_checked():
    s = torch.tensor([0.1, 0.9, 0.3]); y = torch.tensor([0, 1, 0])
    got = grouped_detection_metrics(s, y, ["a", "a", "b"])
    assert got["a"]["auroc"] == 1.0 and all(math.isnan(v) for v in got["b"].values())
    with pytest.raises(ValueError, match="differ in length"):
        grouped_detection_metrics(s, y, ["a"])


def test_feature_separability_and_spearman():
    feats = {"f": torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan"), 0.5]), "g": torch.tensor([4.0, 3.0, 2.0, 1.0, 0, 0])}
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    out = feature_separability(feats, y, ["d", "d", "d", "d", "d", "e"])
    assert out["d"]["f"] == {"auroc": 1.0, "mean_positive": 3.5, "mean_negative": 1.5}  # NaN row skipped
    assert out["d"]["g"]["auroc"] == 0.0  # machine texts have the smaller values
    assert math.isnan(out["e"]["f"]["auroc"]) and out["e"]["f"]["mean_negative"] == 0.5
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, 9).astype(float), rng.normal(size=9)
        ref = stats.spearmanr(a, b).statistic
        assert spearman(list(a), list(b)) == pytest.approx(ref) or (math.isnan(ref) and math.isnan(spearman(a, b)))
    assert math.isnan(spearman([1.0, 2.0], [1.0, 2.0])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_recipe_evaluation_equals_a_slow_loop_over_domains_and_generators():
    from xrisk.recipes.textdetect import evaluate_groups

    g = torch.Generator().manual_seed(5)
    n = 400
    y = (torch.rand(n, generator=g) < 0.3).long()
    domains = [["news", "forum"][int(i)] for i in torch.randint(0, 2, (n,), generator=g)]
    gens = [["gA", "gB", "gC"][int(i)] if t else "human" for i, t in zip(torch.randint(0, 3, (n,), generator=g), y.tolist())]
    s = torch.randn(n, generator=g).double() + y * torch.tensor([{"gA": 2.0, "gB": 1.0, "gC": 0.2}.get(x, 0.0) for x in gens],
                                                                  dtype=torch.float64)
    ev = evaluate_groups(s, y, domains, gens, max_fpr=0.1, min_tpr=0.5)
    assert ev["overall"]["auroc"] == pytest.approx(sk.roc_auc_score(y.numpy(), s.numpy()))
    for d in ("news", "forum"):
        idx = [i for i in range(n) if domains[i] == d]
        assert ev["by_domain"][d]["auroc"] == pytest.approx(sk.roc_auc_score(y[idx].numpy(), s[idx].numpy()))
        for name in ("gA", "gB", "gC"):  # a generator's texts of the domain against the domain's human texts
            idx = [i for i in range(n) if domains[i] == d and gens[i] in (name, "human")]
            ss, yy = s[idx].numpy(), y[idx].numpy()
            got = ev["by_domain_generator"][d][name]
            assert got["auroc"] == pytest.approx(sk.roc_auc_score(yy, ss))
            assert got["ap"] == pytest.approx(sk.average_precision_score(yy, ss))
            assert got["tpr_at_1pct_fpr"] == pytest.approx(_tpr_at_fpr_reference(ss, yy, 0.01))
    assert list(ev["by_generator"]) == ["gA", "gB", "gC"]
    assert ev["by_generator"]["gA"]["auroc"] > ev["by_generator"]["gC"]["auroc"]  # the weaker shift is harder
