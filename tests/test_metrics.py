"""xrisk.metrics: AUROC / AP / partial AUROC against scikit-learn and slow oracles (streaming: test_streaming_metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xrisk.metrics import auroc, average_precision, partial_auroc
from xrisk.metrics.ranking import mcclish_to_normalized, normalized_to_mcclish, roc_curve

skm = pytest.importorskip("sklearn.metrics", reason="the metric oracles are scikit-learn's")


def _random_case(seed: int, n: int, *, ties: bool, pos_frac: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < pos_frac).long()
    y[0], y[1] = 1, 0  # both classes present
    if ties:  # few distinct values: many ties inside and across classes
        s = torch.randint(0, 6, (n,), generator=g).float() / 5 + 0.3 * y
    else:
        s = torch.randn(n, generator=g) + 0.8 * y
    return s, y


# ----------------------------------------------------------------------------- scikit-learn oracle
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_ap_match_sklearn(seed, ties):
    s, y = _random_case(seed, 50 + 37 * seed, ties=ties)
    assert float(auroc(s, y)) == pytest.approx(skm.roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
    assert float(average_precision(s, y)) == pytest.approx(
        skm.average_precision_score(y.numpy(), s.numpy()), abs=1e-12)


def test_roc_curve_matches_sklearn_without_dropping_points():
    s, y = _random_case(3, 80, ties=True)
    fpr, tpr, thr = roc_curve(s, y)
    f_ref, t_ref, thr_ref = skm.roc_curve(y.numpy(), s.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), f_ref, atol=1e-15)
    np.testing.assert_allclose(tpr.numpy(), t_ref, atol=1e-15)
    np.testing.assert_allclose(thr.numpy()[1:], thr_ref[1:], atol=1e-6)


def test_ties_count_one_half_and_the_sklearn_documentation_example():
    # one positive, one negative, same score: the single pair counts 1/2
    assert float(auroc(torch.tensor([0.3, 0.3]), torch.tensor([1, 0]))) == 0.5
    s, y = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    assert float(auroc(s, y)) == pytest.approx(0.75)
    assert float(average_precision(s, y)) == pytest.approx(0.8333333333333333)
    # a tie group is ONE threshold for AP (no interpolation inside it): P = 1/2 at R = 1
    assert float(average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))) == 0.5


def test_multilabel_macro_skips_single_class_tasks_and_none_returns_nan_for_them():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(60, 4, generator=g)
    y = (torch.rand(60, 4, generator=g) < 0.4).long()
    y[:, 2] = 0  # task 2 has no positive
    per_task = auroc(s, y, average="none")
    assert per_task.shape == (4,) and torch.isnan(per_task[2])
    for t in (0, 1, 3):
        assert float(per_task[t]) == pytest.approx(skm.roc_auc_score(y[:, t].numpy(), s[:, t].numpy()), abs=1e-12)
        assert float(average_precision(s, y, average="none")[t]) == pytest.approx(
            skm.average_precision_score(y[:, t].numpy(), s[:, t].numpy()), abs=1e-12)
    assert float(auroc(s, y)) == pytest.approx(float(per_task[[0, 1, 3]].mean()), abs=1e-15)
    # all tasks valid: macro equals scikit-learn's macro average
    y[:5, 2] = 1
    assert float(auroc(s, y)) == pytest.approx(skm.roc_auc_score(y.numpy(), s.numpy(), average="macro"), abs=1e-12)
    assert float(average_precision(s, y)) == pytest.approx(
        skm.average_precision_score(y.numpy(), s.numpy(), average="macro"), abs=1e-12)


def test_no_valid_task_gives_nan_and_none_gives_one_entry_for_1d_inputs():
    s = torch.tensor([0.1, 0.7, 0.3])
    for fn in (auroc, average_precision):
        assert math.isnan(float(fn(s, torch.tensor([1, 1, 1]))))
        assert math.isnan(float(fn(torch.zeros(0), torch.zeros(0))))
    assert math.isnan(float(partial_auroc(s, torch.tensor([0, 0, 0]), max_fpr=0.5)))
    assert auroc(s, torch.tensor([0, 1, 0]), average="none").shape == (1,)
    assert auroc(s, torch.tensor([0, 1, 0])).shape == ()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 0.5, 0.77])
def test_one_way_pauc_equals_sklearn_after_mcclish_conversion(seed, max_fpr):
    s, y = _random_case(seed, 90, ties=seed % 2 == 0)
    ours = float(partial_auroc(s, y, max_fpr=max_fpr))
    ref = skm.roc_auc_score(y.numpy(), s.numpy(), max_fpr=max_fpr)  # McClish-standardised
    assert normalized_to_mcclish(ours, max_fpr) == pytest.approx(ref, abs=1e-12)
    assert mcclish_to_normalized(ref, max_fpr) == pytest.approx(ours, abs=1e-12)


def test_pauc_scales_differ_from_sklearn_on_a_random_ranking():
    # constant scores: the ROC curve is the diagonal; A(beta) = beta^2 / 2
    s, y = torch.zeros(10), torch.tensor([1, 0] * 5)
    assert float(partial_auroc(s, y, max_fpr=0.2)) == pytest.approx(0.1)  # beta / 2
    assert skm.roc_auc_score(y.numpy(), s.numpy(), max_fpr=0.2) == pytest.approx(0.5)  # McClish: 0.5
    # two-way on the diagonal: int_alpha^beta (f - alpha) df / ((1 - alpha) beta)
    a, b = 0.1, 0.4
    assert float(partial_auroc(s, y, max_fpr=b, min_tpr=a)) == pytest.approx((b - a) ** 2 / 2 / ((1 - a) * b))
    assert float(partial_auroc(s, y, max_fpr=0.3, min_tpr=0.5)) == 0.0


def test_full_range_pauc_is_auroc_and_perfect_ranking_is_one():
    s, y = _random_case(9, 70, ties=True)
    assert float(partial_auroc(s, y, max_fpr=1.0)) == pytest.approx(float(auroc(s, y)), abs=1e-14)
    perfect = y.float() + 0.01 * torch.rand(70)
    for a, b in [(0.0, 0.1), (0.5, 0.3), (0.9, 1.0)]:
        assert float(partial_auroc(perfect, y, max_fpr=b, min_tpr=a)) == pytest.approx(1.0, abs=1e-14)
        assert float(partial_auroc(-perfect, y, max_fpr=b, min_tpr=a)) == pytest.approx(0.0, abs=1e-14)


# ----------------------------------------------------------------------------- brute-force oracles
def _pairwise_pauc_oracle(s: list[float], y: list[int], max_fpr: float, min_tpr: float) -> float:
    """Yang et al. (ICML 2021) / Zhu et al. (ICML 2022): correctly ordered pairs between the
    (1 - min_tpr) P lowest-scored positives and the max_fpr N highest-scored negatives."""
    pos = sorted(v for v, t in zip(s, y) if t == 1)            # ascending: lowest first
    neg = sorted((v for v, t in zip(s, y) if t == 0), reverse=True)  # descending: highest first
    n_pos = round((1 - min_tpr) * len(pos))
    n_neg = round(max_fpr * len(neg))
    total = 0.0
    for sp in pos[:n_pos]:
        for sn in neg[:n_neg]:
            total += 1.0 if sp > sn else (0.5 if sp == sn else 0.0)
    return total / (n_pos * n_neg)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_tpr,max_fpr", [(0.0, 0.25), (0.0, 0.5), (0.25, 0.5), (0.5, 0.25), (0.75, 1.0)])
def test_pauc_matches_the_pairwise_definition(seed, min_tpr, max_fpr):
    g = torch.Generator().manual_seed(100 + seed)
    num_pos, num_neg = 24, 40  # (1 - alpha) P and beta N are integers for every config
    s = torch.cat([torch.randn(num_pos, generator=g) + 1.0, torch.randn(num_neg, generator=g)])
    y = torch.cat([torch.ones(num_pos), torch.zeros(num_neg)]).long()
    perm = torch.randperm(num_pos + num_neg, generator=g)
    s, y = s[perm].double(), y[perm]
    ref = _pairwise_pauc_oracle(s.tolist(), y.tolist(), max_fpr, min_tpr)
    assert float(partial_auroc(s, y, max_fpr=max_fpr, min_tpr=min_tpr)) == pytest.approx(ref, abs=1e-12)


def test_pairwise_definition_holds_with_ties_away_from_the_cut_points():
    # positives {5,3,3,1}, negatives {4,3,2,0}: alpha=1/2 keeps positives {1,3}; beta=1/2 keeps negatives {4,3}
    s = torch.tensor([5.0, 3.0, 3.0, 1.0, 4.0, 3.0, 2.0, 0.0])
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    ref = _pairwise_pauc_oracle(s.tolist(), y.tolist(), 0.5, 0.5)
    assert ref == pytest.approx(0.5 * 1 / 4)  # only the tie (3, 3) counts, 1/2
    got = float(partial_auroc(s, y, max_fpr=0.5, min_tpr=0.5))
    # the tie group {3: two positives, one negative} is the ROC segment (1/4, 1/4) -> (1/2, 3/4), which
    # crosses TPR = 1/2 at FPR = 3/8: the area above min_tpr is the triangle 1/2 * 1/8 * 1/4, normalised
    # by (1 - 1/2) * 1/2; the pairwise rule (1/8) differs because the cut splits the tie group
    assert got == pytest.approx((0.5 * 0.125 * 0.25) / 0.25, abs=1e-12)
    # away from the cut (min_tpr = 0), the pairwise rule with 1/2 for ties is exact
    assert float(partial_auroc(s, y, max_fpr=0.5)) == pytest.approx(
        _pairwise_pauc_oracle(s.tolist(), y.tolist(), 0.5, 0.0), abs=1e-12)


def _roc_integration_oracle(s: np.ndarray, y: np.ndarray, max_fpr: float, min_tpr: float) -> float:
    """Integrate max(TPR - alpha, 0) on [0, beta] over scikit-learn's ROC polyline: insert the
    points where a segment crosses TPR = alpha or FPR = beta, then apply the trapezoid rule."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    xs, ys = [fpr[0]], [tpr[0]]
    for k in range(1, len(fpr)):
        f0, f1, t0, t1 = fpr[k - 1], fpr[k], tpr[k - 1], tpr[k]
        cuts = []
        if (t0 - min_tpr) * (t1 - min_tpr) < 0 and f1 > f0:
            cuts.append(f0 + (min_tpr - t0) / (t1 - t0) * (f1 - f0))
        if f0 < max_fpr < f1:
            cuts.append(max_fpr)
        for c in sorted(cuts):
            xs.append(c)
            ys.append(t0 + (c - f0) / (f1 - f0) * (t1 - t0))
        xs.append(f1)
        ys.append(t1)
    xs_a, ys_a = np.array(xs), np.maximum(np.array(ys) - min_tpr, 0.0)
    keep = xs_a <= max_fpr + 1e-15
    return float(np.trapezoid(ys_a[keep], xs_a[keep])) / ((1 - min_tpr) * max_fpr)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_tpr,max_fpr", [(0.0, 0.13), (0.3, 0.6), (0.62, 0.41), (0.1, 0.9), (0.9, 0.05)])
def test_pauc_matches_roc_integration_with_ties_and_fractional_cuts(seed, min_tpr, max_fpr):
    s, y = _random_case(seed, 41 + 13 * seed, ties=seed % 2 == 0)
    ref = _roc_integration_oracle(s.numpy().astype(np.float64), y.numpy(), max_fpr, min_tpr)
    got = float(partial_auroc(s, y, max_fpr=max_fpr, min_tpr=min_tpr))
    assert got == pytest.approx(ref, abs=1e-12)
    # a fine Riemann sum of the same integral agrees too (independent of the crossing algebra)
    fpr, tpr, _ = skm.roc_curve(y.numpy(), s.numpy(), drop_intermediate=False)
    grid = (np.arange(200_000) + 0.5) / 200_000 * max_fpr
    riemann = np.maximum(np.interp(grid, fpr, tpr) - min_tpr, 0).mean() * max_fpr / ((1 - min_tpr) * max_fpr)
    # np.interp at a vertical segment takes its first point; the measure-zero set does not matter
    assert got == pytest.approx(riemann, abs=1e-4)


def test_multilabel_pauc_per_task_and_macro():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(80, 3, generator=g)
    y = (torch.rand(80, 3, generator=g) < 0.3).long()
    per = partial_auroc(s, y, max_fpr=0.4, min_tpr=0.2, average="none")
    for t in range(3):
        assert float(per[t]) == pytest.approx(
            float(partial_auroc(s[:, t], y[:, t], max_fpr=0.4, min_tpr=0.2)), abs=0)
    assert float(partial_auroc(s, y, max_fpr=0.4, min_tpr=0.2)) == pytest.approx(float(per.mean()), abs=1e-15)


# ----------------------------------------------------------------------------- input checks
def test_bad_inputs_raise_with_clear_messages():
    s, y = torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="NaN/inf"):
        auroc(s, y)
    with pytest.raises(ValueError, match="binary"):
        average_precision(torch.rand(3), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        auroc(torch.rand(3, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="max_fpr"):
        partial_auroc(torch.rand(3), torch.tensor([0, 1, 1]), max_fpr=0.0)
    with pytest.raises(ValueError, match="min_tpr"):
        partial_auroc(torch.rand(3), torch.tensor([0, 1, 1]), max_fpr=0.5, min_tpr=1.0)
    with pytest.raises(ValueError, match="average"):
        auroc(torch.rand(3), torch.tensor([0, 1, 1]), average="micro")  # type: ignore[arg-type]


def test_integer_and_bool_inputs_and_monotone_invariance():
    s, y = _random_case(4, 60, ties=True)
    ref = auroc(s, y)
    assert auroc((s * 10).round().long(), y.bool()) == ref  # s = k/5 + 0.3 y: same ranking as integers
    assert auroc(torch.sigmoid(s.double() * 3), y.float()) == ref
    assert average_precision(s.exp(), y) == average_precision(s, y)
