"""PGD / BIM / C&W stay in their budgets and hurt a trained model; Gaussian noise clips instead of wrapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _trust import one_thread, tiny_model, tiny_suite
from xrisk.trust.adapters import open_image
from xrisk.trust.attacks import (BIM_BUDGET, PGD_BUDGET, bim, candidates_for, carlini_wagner, gaussian_noise, pgd,
                                 white_box_attack)
from xrisk.trust.prompts import closed_prompt
from xrisk.trust.scoring import parse_closed
from xrisk.trust.suite import load_suite, read_scenes
from xrisk.trust.vqa import load_vqa, train_vqa


class TinyWhiteBox:
    """A fixed linear "VLM": logits of A-D (or Yes/No) are linear in the picture."""

    name = "tiny"

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(4, 3 * 8 * 8, generator=g)

    def preprocess(self, image):
        return image

    def choice_logits(self, image_tensor, prompt, candidates):
        return (self.weight[: len(candidates)] @ image_tensor.reshape(-1)) / 10

    def generate(self, image, prompt, **gen):
        return "ABCD"[int(self.choice_logits(image, prompt, "ABCD").argmax())]


def test_budgets_are_the_references():
    assert PGD_BUDGET == {"eps": 16 / 255, "alpha": 2 / 255, "steps": 10}
    assert BIM_BUDGET == {"eps": 8 / 255, "alpha": 0.8 / 255, "steps": 10}
    assert candidates_for("multi-choice") == ["A", "B", "C", "D"] and candidates_for("yes-or-no") == ["Yes", "No"]
    with pytest.raises(ValueError, match="closed-ended"):
        candidates_for("open-ended")


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_its_ball_and_increases_the_loss(random_start):
    x = torch.rand(3, 8, 8)
    x[0, 0, 0], x[1, 1, 1] = 0.0, 1.0  # box edges
    w = torch.randn(3, 8, 8)
    adv = pgd(lambda z: (w * z).sum(), x, eps=0.05, alpha=0.02, steps=7, random_start=random_start,
              generator=torch.Generator().manual_seed(1))
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert float((w * adv).sum()) > float((w * x).sum())
    # without random start and with a linear loss the optimum is x + eps * sign(w), clipped to the box
    if not random_start:
        expected = (x + 0.05 * w.sign()).clamp(0, 1)
        assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.equal(pgd(lambda z: z.sum(), x, eps=0.0, alpha=0.1, steps=3), x)


def test_pgd_validates_inputs():
    x = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match="eps"):
        pgd(lambda z: z.sum(), x, eps=-1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(lambda z: z.sum(), x * 3)
    with pytest.raises(ValueError, match="NaN/inf"):
        pgd(lambda z: z.sum(), torch.full((3, 2, 2), float("nan")))


def test_bim_is_pgd_at_the_bim_budget():
    x = torch.rand(3, 8, 8)
    w = torch.randn(3, 8, 8)
    a = bim(lambda z: (w * z).sum(), x)
    b = pgd(lambda z: (w * z).sum(), x, eps=8 / 255, alpha=0.8 / 255, steps=10)
    assert torch.equal(a, b) and float((a - x).abs().max()) <= 8 / 255 + 1e-6


def test_white_box_attack_on_a_linear_model_flips_its_answers():
    model = TinyWhiteBox()
    flipped = 0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.rand(3, 8, 8, generator=g)
        label = "abcd"[int(model.choice_logits(x, "", "ABCD").argmax())]
        for method in ("pgd", "bim", "cw"):
            adv = white_box_attack(model, x, "q", "multi-choice", label, method=method)
            assert float(adv.min()) >= 0 and float(adv.max()) <= 1
            if method != "cw":
                eps = (PGD_BUDGET if method == "pgd" else BIM_BUDGET)["eps"]
                assert float((adv - x).abs().max()) <= eps + 1e-6
            flipped += model.generate(adv, "q").lower() != label
    assert flipped >= 40  # of 60: every method moves the answer most of the time
    with pytest.raises(ValueError, match="label"):
        white_box_attack(model, torch.rand(3, 8, 8), "q", "multi-choice", "e")


def test_carlini_wagner_returns_the_closest_success():
    x = torch.full((3, 8, 8), 0.5)
    w = torch.zeros(2, 3 * 8 * 8)
    w[0, 0] = 1.0  # logit of the true answer grows with pixel 0; the other is constant 0.2
    logits = lambda z: torch.stack([w[0] @ z.reshape(-1), torch.tensor(0.2)])  # noqa: E731
    adv = carlini_wagner(logits, x, 0, c=10.0, steps=200, lr=0.05)
    z = logits(adv)
    assert float(z[0]) < float(z[1])  # succeeded
    delta = (adv - x).reshape(-1)
    assert float(delta[0]) < -0.29 and float(delta[1:].abs().max()) < 0.02  # moved (almost) only pixel 0


def test_gaussian_noise_clips_instead_of_wrapping():
    black = np.zeros((16, 16, 3), dtype=np.uint8)
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    for img, bad in ((black, lambda a: a > 128), (white, lambda a: a < 128)):
        noisy = gaussian_noise(img, variance=100.0, seed=0)
        assert noisy.dtype == np.uint8 and noisy.shape == img.shape
        assert not bad(noisy).any()  # a uint8 cast of the raw sum wraps -3 to 253 (the reference's bug)
        assert (noisy != img).any()
    mid = np.full((64, 64, 3), 128, dtype=np.uint8)
    noisy = gaussian_noise(mid, variance=6.0, seed=1).astype(float)
    assert abs(noisy.std() ** 2 - 6.0) < 1.0 and abs(noisy.mean() - 128) < 0.2
    assert np.array_equal(gaussian_noise(mid, variance=6.0, seed=1), gaussian_noise(mid, variance=6.0, seed=1))
    with pytest.raises(ValueError, match="variance"):
        gaussian_noise(mid, variance=-1.0)


def test_pgd_lowers_the_trained_models_accuracy(tmp_path_factory):
    """A VQA model trained on questions the picture decides (night, traffic light, weather) answers most of
    them right; PGD at the reference's budget (16/255, 10 steps of 2/255) turns most of those answers wrong."""
    root = tiny_suite(str(tmp_path_factory.getbasetemp()))
    suite = load_suite(root)
    records = [r for r in suite.records("train") if r.get("template") in ("night", "light_state", "weather")]
    with one_thread():
        adapter = train_vqa(records, suite.image_root, epochs=10, dim=32, seed=0, scenes=read_scenes(root))
        right = []
        for r in records[:30]:
            image = open_image(suite.image_root, r.image_path)
            prompt = closed_prompt(r)
            if parse_closed(r.question_type, adapter.generate(image, prompt), r.question) == r.label:
                right.append((r, image, prompt))
        assert len(right) >= 15, f"the model answers only {len(right)} of 30 right"
        still_right = 0
        for r, image, prompt in right:
            clean = adapter.preprocess(image)
            adv = white_box_attack(adapter, image, prompt, r.question_type, r.label, method="pgd")
            assert float((adv - clean).abs().max()) <= 16 / 255 + 1e-6
            assert float(adv.min()) >= 0 and float(adv.max()) <= 1
            still_right += parse_closed(r.question_type, adapter.generate(adv, prompt), r.question) == r.label
    assert still_right <= len(right) // 2, f"{still_right} of {len(right)} answers survive PGD"


def test_vqa_choice_logits_are_differentiable(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    suite = load_suite(tiny_suite(base))
    adapter = load_vqa(tiny_model(base))
    r = next(r for r in suite.records("trustfulness") if r.question_type == "multi-choice")
    x = adapter.preprocess(open_image(suite.image_root, r.image_path)).requires_grad_(True)
    logits = adapter.choice_logits(x, closed_prompt(r), ["A", "B", "C", "D"])
    assert logits.shape == (4,)
    logits[0].backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
