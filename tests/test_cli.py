"""The `xrisk` command: parsing, a tiny `run auc` end to end, resume, quiet, missing plot extra."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from xrisk.cli import main

pytest.importorskip("sklearn", reason="the auc end-to-end runs use the breast-cancer data (scikit-learn)")
import xrisk.data  # noqa: E402
import xrisk.metrics  # noqa: E402

_E2E_READY = all(hasattr(xrisk.data, n) for n in ("load_binary", "DualSampler", "DataNotInstalledError")) and all(
    hasattr(xrisk.metrics, n) for n in ("auroc", "average_precision", "partial_auroc"))
needs_data = pytest.mark.skipif(
    not _E2E_READY,
    reason="xrisk.data.load_binary/DualSampler or xrisk.metrics.auroc/average_precision/partial_auroc not exported yet",
)

TINY = ["run", "auc", "--data", "breast-cancer", "--pos-ratio", "0.1", "--batch-size", "32", "--seed", "3"]


def _read(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in lines:
        row.pop("epoch_seconds")  # wall time: the only field that may differ
    return json.loads((out / "metrics.json").read_text()), lines


def test_list_shows_recipes_with_help(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "auc" in out and "imbalanced binary classification" in out and "demo" in out


def test_run_auc_help_shows_recipe_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "auc", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--loss", "--pos-ratio", "--data", "--sampler", "--resume", "--out", "--quiet", "pauc-cvar"):
        assert option in out


def test_unknown_recipe_and_bad_choice_are_usage_errors(capsys):
    for argv in (["run", "nope"], ["run", "auc", "--loss", "hinge"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@needs_data
def test_tiny_run_writes_the_run_folder(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert main([*TINY, "--loss", "aucm", "--epochs", "2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.json", "checkpoint.pt", "loss.png", "metrics.png"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["loss"] == "aucm" and config["resolved"]["optimizer"] == "PESG"
    assert config["resolved"]["lr"] == 0.1 and config["resolved"]["sampler"] == "dual"
    assert "torch" in config["versions"] and "xrisk" in config["versions"]
    final, lines = _read(out)
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("test_auroc", "test_ap", "test_pauc", "test_tpauc"):
        assert 0.0 <= final[key] <= 1.0 and key in lines[-1]
    assert final["test_auroc"] == lines[-1]["test_auroc"]
    assert final["test_auroc"] > 0.8  # breast-cancer is easy; a broken loop would be near 0.5
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.err and "final metrics" in captured.out


@needs_data
@pytest.mark.parametrize("loss", ["aucm", "ap", "ce"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, loss):
    full, part = tmp_path / "full", tmp_path / "part"
    common = [*TINY, "--loss", loss, "--quiet", "--no-plot"]
    assert main([*common, "--epochs", "4", "--out", str(full)]) == 0
    assert main([*common, "--epochs", "2", "--out", str(part)]) == 0
    assert main([*common, "--epochs", "4", "--out", str(part), "--resume"]) == 0
    assert _read(part) == _read(full)


@needs_data
@pytest.mark.parametrize("change", [["--loss", "ap"], ["--pos-ratio", "0.2"]])
def test_resume_with_other_loss_or_data_fails_clearly(tmp_path, capsys, change):
    out = tmp_path / "run"
    base = [*TINY, "--loss", "aucm", "--quiet", "--no-plot", "--out", str(out)]
    assert main([*base, "--epochs", "1"]) == 0
    argv = [*base, "--epochs", "2", "--resume"]
    i = argv.index(change[0])
    argv[i + 1] = change[1]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CheckpointMismatchError" in err and change[0] in err and "Traceback" not in err


@needs_data
def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--loss", "ce", "--epochs", "1", "--quiet", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


@needs_data
def test_quiet_prints_no_progress(tmp_path, capsys):
    assert main([*TINY, "--loss", "ce", "--epochs", "2", "--quiet", "--no-plot", "--out", str(tmp_path / "q")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "test_auroc" in captured.out  # the final table still goes to stdout


@needs_data
def test_missing_plot_extra_is_a_notice_not_a_traceback(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "run"
    assert main([*TINY, "--loss", "ce", "--epochs", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "Traceback" not in err
    assert (out / "metrics.json").exists() and not list(out.glob("*.png"))


@needs_data
def test_demo_falls_back_to_breast_cancer_and_writes_a_table(tmp_path, capsys, monkeypatch):
    import xrisk.data

    real = xrisk.data.load_binary

    def no_fashion(name, **kw):
        if name == "fashion-mnist":
            raise xrisk.data.DataNotInstalledError("fashion-mnist needs the Debian package dataset-fashion-mnist")
        return real(name, **kw)

    monkeypatch.setattr(xrisk.data, "load_binary", no_fashion)
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "dataset-fashion-mnist" in captured.err and "uses breast-cancer instead" in captured.err
    assert "Traceback" not in captured.err
    for method in ("cross-entropy", "AUC-M (PESG)", "AP (SOAP)"):
        assert method in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == "breast-cancer" and summary["epochs"] == 2 and summary["pos_ratio"] == 0.1
    assert set(summary["methods"]) == {"cross-entropy", "AUC-M (PESG)", "AP (SOAP)"}
    for sub in ("ce", "aucm", "ap"):
        assert (out / sub / "metrics.json").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "comparison.png").exists()


def test_demo_defaults_are_the_sized_ones():
    """`xrisk demo` without options trains DEFAULT_MAX_TRAIN images for DEFAULT_EPOCHS epochs per method
    (sized for about 2.5 minutes on 2 cores); breast-cancer keeps its own epochs and positive ratio."""
    from xrisk.cli import build_parser
    from xrisk.recipes import demo

    args = build_parser().parse_args(["demo"])
    assert args.max_train == demo.DEFAULT_MAX_TRAIN and args.epochs is None and args.pos_ratio is None
    demo._fill_defaults(args, "fashion-mnist")
    assert (args.epochs, args.pos_ratio) == (demo.DEFAULT_EPOCHS, 0.02)
    small = build_parser().parse_args(["demo", "--data", "breast-cancer"])
    demo._fill_defaults(small, "breast-cancer")
    assert (small.epochs, small.pos_ratio) == (demo.SMALL_EPOCHS, 0.1)


# ---------------------------------------------------------------------------------------------- issue 10
import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from xrisk.cli import build_parser  # noqa: E402
from xrisk.recipes.flags import FlagType  # noqa: E402


def _commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every sub-command that takes flags: ``run RECIPE`` for every registered recipe, ``demo``, and the
    commands of every other command group (``trust COMMAND``, ``textdetect generate``)."""
    def subparsers(p):
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices

    top = subparsers(build_parser())
    out = [(["run", name], p) for name, p in sorted(subparsers(top["run"]).items())]
    groups = [([group, name], p) for group in sorted(top) if group not in ("run", "demo", "list")
              and any(isinstance(a, argparse._SubParsersAction) for a in top[group]._actions)
              for name, p in sorted(subparsers(top[group]).items())]
    return [*out, (["demo"], top["demo"]), *groups]


def _flag(action: argparse.Action) -> str:
    """How the error line names the argument: the long option, or a positional's name."""
    return action.option_strings[-1] if action.option_strings else action.dest


def _value_flags():
    for prefix, p in _commands():
        for action in p._actions:
            if action.nargs != 0 and not isinstance(
                    action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                yield prefix, action


VALUE_FLAGS = list(_value_flags())
_HAS_OUT = {" ".join(p): any("--out" in a.option_strings for a in parser._actions) for p, parser in _commands()}
BAD_VALUES = [(prefix, _flag(a), bad, bool(a.option_strings), _HAS_OUT[" ".join(prefix)])
              for prefix, a in VALUE_FLAGS
              for bad in (a.type.bad if isinstance(a.type, FlagType) else ("no-such-choice",))]


def _one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xrisk: error: ") and "usage:" not in err and "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_the_flag_walk_reaches_every_command():
    """The walk below covers every recipe, the demo, every `xrisk trust` command (positionals too) and
    `xrisk textdetect generate`."""
    names = {" ".join(p) for p, _ in _commands()}
    assert {"run auc", "run textdetect", "demo", "trust make-suite", "trust train", "trust run", "trust report",
            "trust demo", "textdetect generate"} <= names
    assert (["trust", "report"], "run_dir") in [(p, _flag(a)) for p, a in VALUE_FLAGS]


@pytest.mark.parametrize("prefix, action", VALUE_FLAGS, ids=[f"{' '.join(p)} {_flag(a)}" for p, a in VALUE_FLAGS])
def test_every_value_flag_declares_what_it_accepts(prefix, action):
    """A new flag without a FlagType or choices fails here, so every future recipe is covered below."""
    assert isinstance(action.type, FlagType) or action.choices, (prefix, _flag(action))
    if isinstance(action.type, FlagType):
        assert action.type.bad, (prefix, _flag(action))


@pytest.mark.parametrize("prefix, flag, bad, optional, has_out", BAD_VALUES,
                         ids=[f"{' '.join(p)} {f}={b!r}" for p, f, b, _, _ in BAD_VALUES])
def test_every_bad_flag_value_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, prefix, flag, bad, optional,
                                                                   has_out):
    out = tmp_path / "run"
    argv = [*prefix, f"{flag}={bad}" if optional else bad]
    argv += ["--out", str(out)] if has_out and flag != "--out" else []
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, flag)
    assert not out.exists() and not list(tmp_path.iterdir())


ISSUE_EXAMPLES = [
    ["run", "auc", "--decay-factor", "0"], ["run", "auc", "--decay-factor", "nan"], ["run", "auc", "--lr", "nan"],
    ["run", "auc", "--lr=-1"], ["run", "auc", "--lr", "inf"], ["run", "auc", "--batch-pos-ratio", "0"],
    ["run", "auc", "--batch-pos-ratio", "1.5"], ["run", "auc", "--margin=-1"], ["run", "sogclr", "--gamma", "0"],
    ["run", "clip", "--gamma", "0"], ["run", "clip", "--tau=-1"], ["run", "simclr", "--tau=-1"],
    ["run", "clip", "--fnd-alpha", "2"], ["run", "clip", "--eval-size", "0"], ["demo", "--pos-ratio", "1"],
]


@pytest.mark.parametrize("argv", ISSUE_EXAMPLES, ids=[" ".join(a) for a in ISSUE_EXAMPLES])
def test_issue_examples_fail_at_parse_time(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, argv[-1].split("=")[0] if "=" in argv[-1] else argv[-2])
    assert not (tmp_path / "run").exists()


VALIDATE_EXAMPLES = [
    (["run", "auc", "--positive-class", "bogus"], "--positive-class"),
    (["run", "auc", "--data", "digits", "--positive-class", "10"], "--positive-class"),
    (["demo", "--data", "breast-cancer", "--positive-class", "bogus"], "--positive-class"),
    (["run", "clip", "--loss", "infonce", "--fnd"], "--fnd"),
    (["run", "clip", "--subset", "10", "--batch-size", "32"], "--batch-size"),
    (["run", "sogclr", "--subset", "10", "--batch-size", "32"], "--batch-size"),
    (["run", "simclr", "--image-encoder", "vit", "--width", "3"], "--width"),
    (["run", "sogclr", "--gamma-decay-epochs", "3"], "--gamma-decay-epochs"),
    (["run", "clip", "--loss", "infonce", "--gamma-decay-epochs", "3"], "--gamma-decay-epochs"),
    (["run", "auc", "--resume"], "--resume"),
    (["run", "steer", "--data", "bbc", "--arch", "cnn"], "--arch"),
    (["run", "steer", "--data", "bbc", "--ref-arch", "cnn"], "--ref-arch"),
    (["run", "steer", "--method", "drrho-kl", "--pool", "reference"], "--pool"),
    (["run", "steer", "--method", "distill", "--ref", "/"], "--ref"),
    (["run", "clip", "--ref", "/"], "--ref"),
    (["trust", "make-suite", "--train-scenes", "0", "--test-scenes", "0"], "--test-scenes"),
    (["trust", "demo", "--train-scenes", "0"], "--train-scenes"),
    (["trust", "demo", "--test-scenes", "0"], "--test-scenes"),
    (["trust", "train", "--suite", "."], "--suite"),
    (["trust", "run", "--adapter", "refuse", "--suite", "."], "--suite"),
    (["trust", "run", "--adapter", "vqa", "--suite", "."], "--model"),
    (["trust", "run", "--adapter", "refuse", "--model", "m.pt", "--suite", "."], "--model"),
    (["trust", "run", "--adapter", "refuse", "--surrogate-model", "m.pt", "--suite", "."], "--surrogate-model"),
    (["trust", "run", "--adapter", "refuse", "--surrogate", "vqa", "--suite", "."], "--surrogate-model"),
    (["trust", "run", "--adapter", "refuse", "--suite", ".", "--resume"], "--resume"),
]


@pytest.mark.parametrize("argv, flag", VALIDATE_EXAMPLES, ids=[" ".join(a) for a, _ in VALIDATE_EXAMPLES])
def test_cross_flag_and_data_rules_run_before_the_run_folder_exists(tmp_path, capsys, argv, flag):
    out = tmp_path / "run"
    assert main([*argv] + ([] if "--resume" in argv else ["--out", str(out)])) == 2
    _one_error_line(capsys.readouterr().err, flag)
    assert not out.exists()


def test_out_under_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "sub", f / "sub" / "deeper"):
        with pytest.raises(SystemExit) as e:
            main(["run", "auc", "--out", str(out)])
        assert e.value.code == 2
        _one_error_line(capsys.readouterr().err, "--out")


def test_model_file_under_a_file_or_a_folder_is_refused(tmp_path, capsys):
    """``trust train --out`` is a file to write (``out_file``): not a folder, not under a file."""
    f = tmp_path / "file"
    f.write_text("x")
    for out, why in ((f / "m.pt", "is a file"), (f / "sub" / "m.pt", "is a file"), (tmp_path, "it is a folder")):
        with pytest.raises(SystemExit) as e:
            main(["trust", "train", "--suite", str(tmp_path), "--out", str(out)])
        assert e.value.code == 2
        _one_error_line(capsys.readouterr().err, "--out", why)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and f.read_text() == "x"


def test_version(capsys):
    import xrisk

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"xrisk {xrisk.__version__}"


@pytest.mark.parametrize("prefix, action", VALUE_FLAGS[:0] + [(p, a) for p, parser in _commands() for a in parser._actions
                                                              if a.option_strings and a.help != argparse.SUPPRESS
                                                              and not isinstance(a, (argparse._HelpAction,))],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v.option_strings[-1])
def test_help_states_each_default_once(prefix, action):
    from xrisk.cli import HelpFormatter

    text = HelpFormatter("x")._expand_help(action)
    # a required option has no default: the formatter adds none (its help may still say "default: none")
    assert text.count("default:") == 1 or action.required and text.count("default:") == 0, (
        prefix, action.option_strings, text)
    assert "None" not in text, text  # a default of None is explained in words
    if action.nargs == 0:
        assert text.endswith("(default: off)"), text


def test_no_augment_reads_as_off_by_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "clip", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--no-augment turn off image augmentation" in help_text
    start = help_text.index("--no-augment turn off")
    assert "(default: off)" in help_text[start:start + 120] and "(default: True)" not in help_text


def test_one_name_per_concept_across_recipes():
    options = {" ".join(p): {s for a in parser._actions for s in a.option_strings} for p, parser in _commands()}
    assert not any("--encoder" in o for o in options.values())
    for name in ("run simclr", "run sogclr", "run clip"):
        assert "--image-encoder" in options[name]


def test_a_locked_run_folder_refuses_a_second_run(tmp_path, capsys):
    from xrisk.recipes.lock import RunLock

    out = tmp_path / "run"
    with RunLock(out):
        assert main([*TINY, "--loss", "ce", "--epochs", "1", "--quiet", "--no-plot", "--out", str(out)]) == 2
        _one_error_line(capsys.readouterr().err, "RunFolderLocked", "in use by another run", f"pid {os.getpid()}")
        assert main(["demo", "--data", "breast-cancer", "--epochs", "1", "--quiet", "--out", str(out)]) == 2
        _one_error_line(capsys.readouterr().err, "in use by another run")
    assert {p.name for p in out.iterdir()} == set()  # nothing written by the refused runs


@needs_data
@pytest.mark.parametrize("damage", ["truncate", "empty", "text", "config"])
def test_damaged_run_files_on_resume_are_one_line(tmp_path, capsys, damage):
    out = tmp_path / "run"
    base = [*TINY, "--loss", "ce", "--quiet", "--no-plot", "--out", str(out)]
    assert main([*base, "--epochs", "1"]) == 0
    ckpt = out / "checkpoint.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "text":
        ckpt.write_text("not a checkpoint")
    else:
        (out / "config.json").write_text("{ broken")
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--resume"]) == 2
    name = "config.json" if damage == "config" else "checkpoint.pt"
    _one_error_line(capsys.readouterr().err, "CheckpointError", name)


@needs_data
def test_metric_names_say_surrogate(tmp_path):
    for loss, key in (("aucm", "train_surrogate"), ("ap", "train_surrogate"), ("ce", "train_loss")):
        out = tmp_path / loss
        assert main([*TINY, "--loss", loss, "--epochs", "1", "--quiet", "--no-plot", "--out", str(out)]) == 0
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert key in row and ("train_objective" in row) == (key == "train_surrogate")
        assert {"train_loss", "train_surrogate"} - {key} & set(row) == set()
        assert json.loads((out / "config.json").read_text())["resolved"]["loss_class"]


_CHILD = """
import sys, time
from pathlib import Path
import xrisk.recipes.auc as auc
from xrisk.cli import main

sent, at_epoch, at_batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
real, epoch = auc._batches, [0]

def batches(sampler, batch_size):
    epoch[0] += 1
    for i, b in enumerate(real(sampler, batch_size)):
        if (epoch[0], i) == (at_epoch, at_batch):
            print("ready", flush=True)     # the parent sends SIGINT now, then creates `sent`
            deadline = time.monotonic() + 120
            while not sent.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        yield b

auc._batches = batches
sys.exit(main(sys.argv[4:]))
"""


@needs_data
def test_ctrl_c_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real `xrisk run` subprocess gets SIGINT in the middle of epoch 2; it writes a checkpoint after the step in
    progress and exits 130; `--resume` then gives the same metrics and weights as a run never interrupted."""
    full, part = tmp_path / "full", tmp_path / "part"
    common = [*TINY, "--loss", "ap", "--batch-size", "8", "--epochs", "2", "--quiet", "--no-plot"]
    assert main([*common, "--out", str(full)]) == 0
    sent = tmp_path / "sent"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(sent), "2", "5", *common, "--out", str(part),
                              "--checkpoint-every", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        sent.write_text("")
        _, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert f"interrupted (continue with --resume --out {part})" in err and "Traceback" not in err
    extra = torch.load(part / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (1, 6)  # inside epoch 2, after the step in progress
    assert main([*common, "--out", str(part), "--resume"]) == 0
    assert _read(part) == _read(full)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for part_name in ("model", "loss"):
        assert all(torch.equal(a[part_name][k], b[part_name][k]) for k in a[part_name])
