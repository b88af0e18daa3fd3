"""RunContext: run folder files, lock, bit-exact resume (also from inside an epoch), mismatch errors, progress
output, plots."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import pytest
import torch
from torch import nn

from xrisk.checkpoint import CheckpointMismatchError
from xrisk.models import MLP
from xrisk.recipes.auc import ShuffleBatches
from xrisk.recipes.progress import ProgressBar, format_duration
from xrisk.recipes.runner import RunContext


class _Crash(Exception):
    """Stands for a process killed in the middle of an epoch."""


def _toy_run(args: argparse.Namespace, ctx: RunContext, crash_at: tuple[int, int] | None = None) -> dict[str, float]:
    """A small recipe: synthetic data, MLP with dropout (uses the global RNG), BCE, Adam, and a per-epoch
    generator drawn from in every step (like an augmentation). ``crash_at=(epoch, step)`` raises after
    that step, as a killed process would stop."""
    g0 = torch.Generator().manual_seed(123)
    x = torch.randn(96, 5, generator=g0)
    y = (x[:, 0] + 0.3 * torch.randn(96, generator=g0) > 0.8).float()
    torch.manual_seed(args.seed)
    model = MLP(5, hidden=(8,), dropout=0.2)
    loss = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sampler = ShuffleBatches(len(y), 16, seed=args.seed)
    start = ctx.resume(model=model, loss=loss, optimizer=opt, sampler=sampler)
    bar = ctx.progress((args.epochs - start) * len(sampler) - ctx.start_step, "toy")
    for epoch in range(start + 1, args.epochs + 1):
        sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(1000 + epoch)
        acc = {"total": 0.0, "noise": []}
        for step, idx in enumerate(ctx.steps(epoch, sampler, state=acc, generators=[g]), start=1):
            jitter = 0.01 * torch.randn(len(idx), 5, generator=g)
            value = loss(model(x[idx] + jitter).squeeze(1), y[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
            acc["total"] += value.item()
            acc["noise"].append(torch.rand(()).item())
            bar.update(loss=value.item())
            if crash_at == (epoch, step + ctx.start_step * (epoch == start + 1)):
                raise _Crash
        ctx.log_epoch(epoch, {"train_loss": acc["total"] / len(sampler), "noise": sum(acc["noise"])})
        ctx.save(epoch=epoch)
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


def test_resume_reads_the_checkpoint_once(tmp_path, monkeypatch):
    """--resume loads the file once: the arguments are checked, the parts validated and restored from that one
    read (a file replaced between the check and the load cannot slip through)."""
    out = tmp_path / "run"
    _toy_run(_ns(epochs=2), _ctx(out, _ns(epochs=2)))
    loads: list[object] = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.samefile(f, out / "checkpoint.pt"):
            loads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    ctx = _ctx(out, _ns(epochs=3), resume=True)
    _toy_run(_ns(epochs=3), ctx)
    assert ctx.start_epoch == 2
    assert len(loads) == 1, f"the checkpoint was read {len(loads)} times"


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
    with _ctx(out, _ns()) as ctx:
        ctx.resume(model=model, loss=APLoss(10))
        ctx.save(model=model, loss=APLoss(10), epoch=1)
    with _ctx(out, _ns(), resume=True) as ctx:
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


# ---------------------------------------------------------------------------------------------- issue 10
def _weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("every", [5, 4])
def test_step_checkpoint_then_crash_resumes_bit_identically(tmp_path, every):
    """A checkpoint every N steps: a run killed mid-epoch and resumed equals the uninterrupted run (model,
    optimizer, global RNG, the epoch's generator and running sums); the step checkpoint itself changes nothing."""
    full, part = tmp_path / "full", tmp_path / "part"
    _toy_run(_ns(epochs=3), _ctx(full, _ns(epochs=3), checkpoint_every=0))
    with pytest.raises(_Crash):
        with _ctx(part, _ns(epochs=3), checkpoint_every=every) as ctx:
            _toy_run(_ns(epochs=3), ctx, crash_at=(2, 6))  # in the last of 6 steps: the last checkpoint is at step 4 or 5
    extra = torch.load(part / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (1, every)
    torch.manual_seed(999)  # another process state
    ctx = _ctx(part, _ns(epochs=3), resume=True, checkpoint_every=every)
    _toy_run(_ns(epochs=3), ctx)
    assert (ctx.start_epoch, ctx.start_step) == (1, every)
    assert "resumed" in ctx.stream.getvalue() and f"step {every} of epoch 2" in ctx.stream.getvalue()
    assert _read(part) == _read(full)
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_steps_needs_resume_and_the_resumed_epoch(tmp_path):
    with _ctx(tmp_path / "a", _ns()) as ctx:
        with pytest.raises(RuntimeError, match="resume"):
            next(iter(ctx.steps(1, [1, 2])))
    out = tmp_path / "b"
    with pytest.raises(_Crash):
        with _ctx(out, _ns(epochs=2), checkpoint_every=2) as ctx:
            _toy_run(_ns(epochs=2), ctx, crash_at=(1, 3))
    with _ctx(out, _ns(epochs=2), resume=True) as ctx:
        ctx.resume()
        with pytest.raises(RuntimeError, match="inside epoch 1"):
            next(iter(ctx.steps(2, [1, 2])))
    with pytest.raises(CheckpointMismatchError, match="--epochs 1 or more"):
        with _ctx(out, _ns(epochs=0), resume=True) as ctx:  # the checkpoint is inside epoch 1
            ctx.resume()


def test_sigint_handler_is_installed_only_while_stepping(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGINT)
    with _ctx(tmp_path / "a", _ns()) as ctx:
        ctx.resume()
        it = iter(ctx.steps(1, [1, 2, 3]))
        next(it)
        assert signal.getsignal(signal.SIGINT) == ctx._on_sigint
        list(it)
        assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_inside_steps_checkpoints_after_the_step_then_stops(tmp_path):
    import os
    import signal

    out = tmp_path / "run"
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with _ctx(out, _ns(), checkpoint_every=0) as ctx:
            ctx.resume(model=nn.Linear(2, 1))
            for i in ctx.steps(1, range(10), state={"i": 0}):
                seen.append(i)
                if i == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # delivered now; the step still completes
    assert seen == [0, 1, 2, 3]
    extra = torch.load(out / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (0, 4)
    assert "checkpoint written after step 4 of epoch 1" in ctx.stream.getvalue()


def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    from xrisk.recipes.lock import RunFolderLocked

    out = tmp_path / "run"
    with _ctx(out, _ns()):
        assert (out / "run.lock").exists()
        with pytest.raises(RunFolderLocked, match=r"in use by another run \(pid \d+ on "):
            _ctx(out, _ns())
    assert not (out / "run.lock").exists()  # released by close()
    _toy_run(_ns(epochs=1), _ctx(out, _ns(epochs=1), resume=True))  # free again; finish() releases
    assert not (out / "run.lock").exists()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    import os
    import signal
    import subprocess

    out = tmp_path / "run"
    code = ("import sys, time; from xrisk.recipes.lock import RunLock; lk = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        from xrisk.recipes.lock import RunFolderLocked

        with pytest.raises(RunFolderLocked, match=f"pid {child.pid} "):
            _ctx(out, _ns())
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert (out / "run.lock").exists()  # left behind by the killed process
    ctx = _ctx(out, _ns())
    assert f"took over the lock of a run that is gone (pid {child.pid} on " in ctx.stream.getvalue()
    ctx.close()


def test_lock_without_flock_uses_pid_and_hostname(tmp_path, monkeypatch):
    import json as _json
    import socket
    import subprocess

    from xrisk.recipes import lock as lockmod

    monkeypatch.setattr(lockmod, "fcntl", None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    host = socket.gethostname()
    for holder, refused in [({"pid": dead.pid, "hostname": host}, False),
                            ({"pid": os.getpid(), "hostname": host}, True),
                            ({"pid": dead.pid, "hostname": host + "-other"}, True)]:
        (folder / "run.lock").write_text(_json.dumps(holder))
        lk = lockmod.RunLock(folder)
        if refused:
            with pytest.raises(lockmod.RunFolderLocked, match=f"pid {holder['pid']} on {holder['hostname']}"):
                lk.acquire()
        else:
            lk.acquire()
            assert lk.stale["pid"] == dead.pid
            assert _json.loads((folder / "run.lock").read_text())["pid"] == os.getpid()
            lk.release()


def test_damaged_config_json_on_resume_is_a_checkpoint_error(tmp_path):
    from xrisk.checkpoint import CheckpointError

    out = tmp_path / "run"
    _toy_run(_ns(epochs=1), _ctx(out, _ns(epochs=1)))
    (out / "config.json").write_text('{"recipe": "toy", "args": {')
    with pytest.raises(CheckpointError, match="config.json is damaged"):
        _ctx(out, _ns(epochs=2), resume=True)
    assert not (out / "run.lock").exists()


def test_run_metric_key_names_surrogates():
    from xrisk.losses import APLoss
    from xrisk.recipes.runner import train_loss_key

    assert train_loss_key(APLoss(4)) == "train_surrogate"
    assert train_loss_key(nn.BCEWithLogitsLoss()) == "train_loss" and train_loss_key(None) == "train_loss"


def test_one_epoch_plot_shows_points_and_labels_the_surrogate():
    pytest.importorskip("matplotlib")
    from xrisk.recipes.plots import history_figures

    figs = history_figures([{"epoch": 1, "train_surrogate": -0.2, "train_objective": 0.4, "test_auroc": 0.9}],
                           title="auc")
    (ax,) = figs["loss.png"].axes
    labels = [line.get_label() for line in ax.lines]
    assert any("surrogate" in lab and "not the objective" in lab for lab in labels)
    assert "surrogate" in ax.get_title()
    for line in ax.lines + figs["metrics.png"].axes[0].lines:
        assert line.get_marker() == "o" and line.get_markersize() >= 6  # a lone point is visible
    lo, hi = ax.get_xlim()
    assert lo <= 0.5 and hi >= 1.5  # the point is inside the axes, not on its edge
