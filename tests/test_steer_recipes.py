"""Model-steering recipes end to end: ``xrisk run steer`` (every method) and ``xrisk run clip --ref`` (DRRho-CLIP,
JEST, distillation): run folders, the recorded reference, cached vs on-the-fly reference outputs, resume."""

from __future__ import annotations

import functools
import json
import math
import os

import pytest
import torch

import xrisk.data
import xrisk.data.captions as captions
from xrisk.cli import main
from xrisk.recipes.contrastive import CLIPConfig, train_clip
from xrisk.recipes.runner import RunContext
from xrisk.recipes.steer import METHODS, SteerConfig, train_steer

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)

TINY = ["--data", "fashion-mnist", "--max-train", "400", "--batch-size", "32", "--epochs", "1", "--max-steps", "3",
        "--ref-epochs", "1", "--num-threads", "1", "--quiet", "--no-plot"]


@pytest.fixture(autouse=True)
def _load_once(monkeypatch, request):
    """Fashion-MNIST is decoded once per test session (60,000 + 10,000 images), one torch thread."""
    monkeypatch.setattr(xrisk.data, "load_multiclass", _cached_multiclass)
    monkeypatch.setattr(captions, "load_fashion_captions", _cached_captions)
    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))


_cached_multiclass = functools.lru_cache(xrisk.data.load_multiclass)
_cached_captions = functools.lru_cache(captions.load_fashion_captions)


def _final(out):
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "config.json").read_text())


def test_every_steer_method_runs_and_records_its_reference(tmp_path):
    ref = tmp_path / "ref"
    assert main(["run", "steer", *TINY, "--method", "erm", "--pool", "reference", "--arch", "linear", "--out", str(ref)]) == 0
    for method in METHODS:
        for source in (["--ref", str(ref)], []):  # an earlier run's model, or a reference trained in the run
            if method == "erm" and source:
                continue
            out = tmp_path / f"{method}{'-ref' if source else ''}"
            assert main(["run", "steer", *TINY, "--method", method, "--train-fraction", "0.5", *source,
                         "--out", str(out)]) == 0
            final, config = _final(out)
            assert 0.0 <= final["test_acc"] <= 1.0 and final["num_train"] == 160  # half of the 320-sample target pool
            key = "train_surrogate" if method.startswith("drrho") else "train_loss"
            assert math.isfinite(final[key]) and (("train_objective" in final) == method.startswith("drrho"))
            info = config["resolved"]["reference"]
            if method == "erm":
                assert info is None
                continue
            assert info["other_data"] is True and info["smaller_than_target"] is True and info["arch"] == "linear"
            assert final["ref_test_acc"] == info["test_acc"]
            assert (out / "reference_cache" / "meta.json").is_file()  # cached reference logits by default
            assert (out / "reference.pt").is_file() == (not source)


def test_a_reference_from_another_split_is_refused_before_the_run_folder(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(["run", "steer", *TINY, "--method", "erm", "--pool", "reference", "--out", str(ref)]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["run", "steer", *TINY, "--method", "drrho-kl", "--ref", str(ref), "--ref-split", "0.3",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xrisk: error: argument --ref:") and "--ref-split 0.2" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cached_and_on_the_fly_reference_outputs_train_alike(tmp_path):
    base = dict(data="fashion-mnist", method="drrho-kl", max_train=400, batch_size=32, epochs=2, ref_epochs=1,
                num_threads=1, tau=0.5)
    cached = train_steer(SteerConfig(**base, ref_outputs="cached", ref_cache=tmp_path / "cache"))
    fly = train_steer(SteerConfig(**base, ref_outputs="on-the-fly"))
    assert cached.keys() == fly.keys()
    for k in cached:
        assert cached[k] == pytest.approx(fly[k], rel=1e-4, abs=1e-5), k


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["drrho-cvar", "rho-select", "distill"])
def test_steer_resumed_inside_an_epoch_equals_uninterrupted(tmp_path, monkeypatch, method):
    """Checkpoints every step; the process dies in step 5 of 2 x 3 steps; the resumed run (which reloads the
    reference and its filled cache) ends bit-identical."""
    def ctx(folder, **kw):
        return RunContext(tmp_path / folder, recipe="steer", args={"method": method}, quiet=True, plot=False, **kw)

    ref_args = dict(data="fashion-mnist", max_train=400, ref_split=0.2, split_seed=0, arch="linear", pool="reference")
    with RunContext(tmp_path / "ref", recipe="steer", args=ref_args, quiet=True, plot=False) as c:
        train_steer(SteerConfig(method="erm", epochs=1, batch_size=32, num_threads=1, **ref_args), c)
    cfg = SteerConfig(data="fashion-mnist", method=method, max_train=400, batch_size=32, epochs=2, max_steps=3,
                      ref=tmp_path / "ref", num_threads=1)

    full = train_steer(cfg, ctx("a", checkpoint_every=0))
    real, calls = torch.optim.Adam.step, [0]

    def dies_in_step_5(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:
            raise _Crash
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", dies_in_step_5)
    with pytest.raises(_Crash), ctx("b", checkpoint_every=1) as c:
        train_steer(cfg, c)
    monkeypatch.setattr(torch.optim.Adam, "step", real)
    extra = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (1, 1)
    assert train_steer(cfg, ctx("b", resume=True)) == full


# ----------------------------------------------------------------------------- clip --ref
CLIP_TINY = dict(data="fashion-captions", loss="gcl", image_encoder="mlp", subset=128, test_subset=64, eval_size=64,
                 batch_size=32, num_threads=1)


@pytest.fixture
def clip_ref(tmp_path):
    """A small reference CLIP (mlp image tower of width 4, 32-d) trained on another subset."""
    folder = tmp_path / "clipref"
    args = ["run", "clip", "--data", "fashion-captions", "--loss", "gcl", "--image-encoder", "mlp", "--width", "4",
            "--dim", "32", "--subset", "160", "--seed", "9", "--test-subset", "64", "--eval-size", "64",
            "--batch-size", "32", "--epochs", "1", "--num-threads", "1", "--quiet", "--no-plot", "--out", str(folder)]
    assert main(args) == 0
    return folder


@pytest.mark.parametrize("use", ["drrho", "jest", "distill"])
def test_clip_with_a_reference_runs_each_use_through_the_cli(tmp_path, clip_ref, use):
    out = tmp_path / use
    argv = ["run", "clip", "--data", "fashion-captions", "--loss", "gcl", "--image-encoder", "mlp", "--subset", "128",
            "--test-subset", "64", "--eval-size", "64", "--batch-size", "32", "--epochs", "1", "--max-steps", "3",
            "--ref", str(clip_ref), "--ref-use", use, "--num-threads", "1", "--quiet", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    final, config = _final(out)
    info = config["resolved"]["reference"]
    assert info["smaller_than_target"] is True and info["same_pairs_as_target"] is False and info["dim"] == 32
    for key in ("i2t_r1", "t2i_r5", "zero_shot_acc", "ref_i2t_r1", "ref_zero_shot_acc"):
        assert 0.0 <= final[key] <= 1.0
    assert (out / "reference_cache" / "meta.json").is_file()


def test_drrho_clip_cached_equals_on_the_fly_without_augmentation_and_resumes(tmp_path, clip_ref):
    """Without augmentation the cached features are the on-the-fly ones; a run resumed after its first epoch
    (reusing the filled cache) equals the uninterrupted one."""
    def ctx(folder, **kw):
        return RunContext(tmp_path / folder, recipe="clip", args={"ref": "x"}, quiet=True, plot=False, **kw)

    cfg = dict(CLIP_TINY, ref=clip_ref, augment=False, max_steps=2)
    cached = train_clip(CLIPConfig(**cfg, epochs=2), ctx("a"))
    fly = train_clip(CLIPConfig(**cfg, epochs=2, ref_features="on-the-fly"), ctx("b"))
    for k in cached:
        assert cached[k] == pytest.approx(fly[k], rel=1e-4, abs=1e-5), k
    train_clip(CLIPConfig(**cfg, epochs=1), ctx("c"))
    assert train_clip(CLIPConfig(**cfg, epochs=2), ctx("c", resume=True)) == cached


def test_clip_ref_rules_fail_before_the_run_folder(tmp_path, clip_ref, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", "clip", "--loss", "infonce", "--ref", str(clip_ref), "--out", str(out)]) == 2
    assert "argument --ref-use: drrho needs a global loss" in capsys.readouterr().err
    assert main(["run", "clip", "--data", "emoji", "--ref", str(clip_ref), "--out", str(out)]) == 2
    assert "--data 'fashion-captions'" in capsys.readouterr().err
    assert not out.exists()


def test_a_resumed_run_reloads_its_own_reference_instead_of_training_it_again(tmp_path, monkeypatch):
    cfg = dict(data="fashion-mnist", method="drrho-kl", max_train=400, batch_size=32, max_steps=2, ref_epochs=2,
               num_threads=1)

    def ctx(folder, **kw):
        return RunContext(tmp_path / folder, recipe="steer", args={"m": 1}, quiet=True, plot=False, **kw)

    full = train_steer(SteerConfig(**cfg, epochs=2), ctx("a"))
    train_steer(SteerConfig(**cfg, epochs=1), ctx("b"))
    real, calls = torch.optim.Adam.step, [0]

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    assert train_steer(SteerConfig(**cfg, epochs=2), ctx("b", resume=True)) == full
    assert calls[0] == 2  # the second epoch's two steps; the reference (2 epochs x 3 steps) came from reference.pt
