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
