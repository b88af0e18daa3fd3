"""Retrieval metrics against hand-computed examples; the linear probe on separable toy data."""

import pytest
import torch

from xrisk.metrics import image_text_recall, linear_probe, recall_at_k, zero_shot_accuracy


def test_recall_identity_hand_computed():
    sim = torch.tensor([
        [0.9, 0.1, 0.0],   # positive ranked 1st
        [0.8, 0.2, 0.5],   # positive (0.2) ranked 3rd
        [0.1, 0.7, 0.6],   # positive (0.6) ranked 2nd
    ])
    assert recall_at_k(sim, ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}


def test_recall_ties_count_against_and_positive_sets():
    assert recall_at_k(torch.zeros(4, 4), ks=(1, 3)) == {1: 0.0, 3: 0.0}
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    pos = torch.tensor([[True, True, False], [False, False, True]])
    # query 0: best positive 0.9 is top; query 1: only positive 0.1 is last of 3
    assert recall_at_k(sim, pos, ks=(1, 2, 3)) == {1: 0.5, 2: 0.5, 3: 1.0}
    # a query without positives is skipped
    pos2 = torch.tensor([[True, False, False], [False, False, False]])
    assert recall_at_k(sim, pos2, ks=(1, 3)) == {1: 0.0, 3: 1.0}


def test_image_text_recall_both_directions():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.1], [0.0, 2.0], [1.0, -1.0]])
    out = image_text_recall(img, txt, ks=(1,))
    # cos(img_i, txt_j): img0 -> txt0 best (hit), img1 -> txt1 (hit), img2 -> txt0 (0.77) beats txt2 (0): miss
    assert out["i2t_r1"] == pytest.approx(2 / 3)
    # txt0 -> img0 (0.995) vs img2 (0.77): hit; txt1 -> img1: hit; txt2 -> img0 (0.707) beats img2 (0): miss
    assert out["t2i_r1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="NaN/inf"):
        recall_at_k(torch.tensor([[float("nan")]]))


def test_zero_shot_accuracy_hand_computed():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    img = torch.tensor([[2.0, 0.1], [0.3, 0.2], [0.1, 5.0], [1.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 0])  # predictions 0, 0, 1, 1 -> 2 of 4
    assert zero_shot_accuracy(img, classes, labels) == 0.5
    with pytest.raises(IndexError):
        zero_shot_accuracy(img, classes, torch.tensor([0, 1, 2, 0]))


def test_linear_probe_separable_and_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(3, 10, generator=g)
    y = torch.randint(3, (600,), generator=g)
    x = centers[y] + torch.randn(600, 10, generator=g)
    res = linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert res.test_accuracy > 0.97 and res.train_accuracy > 0.97
    # labels independent of the features: the probe cannot beat chance by much on held-out data
    noise = torch.randn(600, 10, generator=g)
    res2 = linear_probe(noise[:400], y[:400], noise[400:], y[400:], num_classes=3)
    assert res2.test_accuracy < 0.5
    assert linear_probe(x[:400], y[:400], x[400:], y[400:]) == res  # deterministic
