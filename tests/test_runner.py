"""RunContext: run folder files, bit-exact resume, mismatch errors, progress output, plots."""

from __future__ import annotations

import argparse
import io
import json
import sys

import pytest
import torch
from torch import nn

from xrisk.checkpoint import CheckpointMismatchError
from xrisk.models import MLP
from xrisk.recipes.auc import ShuffleBatches
from xrisk.recipes.progress import ProgressBar, format_duration
from xrisk.recipes.runner import RunContext


def _toy_run(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    """A small recipe: synthetic data, MLP with dropout (uses the global RNG), BCE, Adam."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(96, generator=g) > 0.8).float()
    torch.manual_seed(args.seed)
    model = MLP(5, hidden=(8,), dropout=0.2)
    loss = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sampler = ShuffleBatches(len(y), 16, seed=args.seed)
    start = ctx.resume(model=model, loss=loss, optimizer=opt, sampler=sampler)
    bar = ctx.progress((args.epochs - start) * len(sampler), "toy")
    for epoch in range(start + 1, args.epochs + 1):
        sampler.set_epoch(epoch)
        total = 0.0
        for idx in sampler:
            value = loss(model(x[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
            total += value.item()
            bar.update(loss=value.item())
        ctx.log_epoch(epoch, {"train_loss": total / len(sampler), "noise": torch.rand(()).item()})
        ctx.save(model=model, loss=loss, optimizer=opt, sampler=sampler, epoch=epoch)
    bar.close()
    with torch.no_grad():
        w = torch.cat([p.flatten() for p in model.parameters()])
    return ctx.finish({"weight_sum": w.sum().item(), "train_loss": ctx.history[-1]["train_loss"]})


def _ns(**kw: object) -> argparse.Namespace:
    base = {"epochs": 4, "seed": 0, "width": 8}
    base.update(kw)
    return argparse.Namespace(**base)


def _ctx(out, args, **kw) -> RunContext:
    kw.setdefault("stream", io.StringIO())
    kw.setdefault("plot", False)
    return RunContext(out, recipe="toy", args=args, **kw)


def _read(out):
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), jsonl


def test_run_folder_files(tmp_path):
    out = tmp_path / "run"
    final = _toy_run(_ns(epochs=2), _ctx(out, _ns(epochs=2)))
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "metrics.json", "checkpoint.pt"}
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "toy" and config["args"]["epochs"] == 2
    assert config["versions"]["torch"] == torch.__version__
    metrics, jsonl = _read(out)
    assert metrics == final and [r["epoch"] for r in jsonl] == [1, 2]


def test_resume_is_bit_identical(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _toy_run(_ns(epochs=4), _ctx(full, _ns(epochs=4)))
    _toy_run(_ns(epochs=2), _ctx(part, _ns(epochs=2)))
    torch.manual_seed(999)  # a resumed process starts from another RNG state
    ctx = _ctx(part, _ns(epochs=4), resume=True)
    _toy_run(_ns(epochs=4), ctx)
    assert ctx.start_epoch == 2
    assert _read(part) == _read(full)  # final metrics and every epoch line, bit for bit
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])


def test_resume_from_nothing_starts_at_zero_and_refuses_overwrite(tmp_path):
    out = tmp_path / "run"
    ctx = _ctx(out, _ns(epochs=1), resume=True)
    _toy_run(_ns(epochs=1), ctx)
    assert ctx.start_epoch == 0 and "no checkpoint" in ctx.stream.getvalue()
    with pytest.raises(FileExistsError, match="--resume"):
        _ctx(out, _ns(epochs=1))


def test_resume_with_other_arguments_fails(tmp_path):
    out = tmp_path / "run"
    _toy_run(_ns(epochs=1), _ctx(out, _ns(epochs=1)))
    before = (out / "config.json").read_text()
    with pytest.raises(CheckpointMismatchError, match="--seed 0 -> 1"):
        _ctx(out, _ns(epochs=2, seed=1), resume=True)  # fails before writing anything
    assert (out / "config.json").read_text() == before
    ctx = _ctx(out, _ns(epochs=2), resume=True)  # only --epochs changed: fine
    _toy_run(_ns(epochs=2), ctx)
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["epochs"] == 2 and config["resumed_from_epoch"] == 1 and len(config["resumed"]) == 1


def test_resume_with_other_data_size_fails(tmp_path):
    from xrisk.losses import APLoss

    out = tmp_path / "run"
    model = nn.Linear(2, 1)
    ctx = _ctx(out, _ns())
    ctx.resume(model=model, loss=APLoss(10))
    ctx.save(model=model, loss=APLoss(10), epoch=1)
    ctx = _ctx(out, _ns(), resume=True)
    with pytest.raises(CheckpointMismatchError, match="num_samples=12"):
        ctx.resume(model=model, loss=APLoss(12))
    with pytest.raises(CheckpointMismatchError, match="loss"):
        ctx.resume(model=model, loss=nn.BCEWithLogitsLoss())


def test_quiet_writes_nothing_and_loud_writes_progress(tmp_path):
    loud, quiet = io.StringIO(), io.StringIO()
    _toy_run(_ns(epochs=2), _ctx(tmp_path / "a", _ns(epochs=2), stream=loud))
    _toy_run(_ns(epochs=2), _ctx(tmp_path / "b", _ns(epochs=2), stream=quiet, quiet=True))
    assert quiet.getvalue() == ""
    text = loud.getvalue()
    assert "epoch 2: train_loss" in text and "toy |" in text and "12/12" in text


def test_plots_written_and_missing_matplotlib_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _toy_run(_ns(epochs=2), _ctx(tmp_path / "a", _ns(epochs=2), plot=True))
    assert (tmp_path / "a" / "loss.png").stat().st_size > 0
    assert (tmp_path / "a" / "metrics.png").stat().st_size > 0
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    stream = io.StringIO()
    _toy_run(_ns(epochs=1), _ctx(tmp_path / "b", _ns(epochs=1), plot=True, stream=stream))
    notices = [line for line in stream.getvalue().splitlines() if "matplotlib" in line]
    assert notices == ["xrisk: matplotlib is not installed, so no plots were written (pip install 'xrisk[plot]')"]
    assert not list((tmp_path / "b").glob("*.png"))
    assert (tmp_path / "b" / "metrics.json").exists()


def test_progress_bar_render_and_eta():
    s = io.StringIO()
    bar = ProgressBar(4, "epoch 1/2", stream=s, log_interval=0.0)
    bar.update(loss=0.5)
    line = s.getvalue().splitlines()[-1]
    assert line.startswith("epoch 1/2 |") and "1/4" in line and "loss 0.5000" in line and "ETA" in line
    for _ in range(3):
        bar.update()
    bar.close()
    assert "4/4 100%" in s.getvalue().splitlines()[-1]
    assert format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "?"
    off = io.StringIO()
    ProgressBar(3, stream=off, enabled=False).update()
    assert off.getvalue() == ""


def test_shuffle_batches_depend_on_seed_and_epoch_only():
    a, b = ShuffleBatches(10, 4, seed=1), ShuffleBatches(10, 4, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert [t.tolist() for t in a] == [t.tolist() for t in b]
    assert sorted(torch.cat(list(a)).tolist()) == list(range(10)) and len(a) == 3
    b.set_epoch(4)
    assert [t.tolist() for t in a] != [t.tolist() for t in b]
