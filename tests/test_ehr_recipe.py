"""``xrisk run ehr``: tiny end-to-end runs, the run folder, bad data, flags, and bit-identical resume."""

import json
import math

import pytest
import torch

import xrisk.recipes.ehr as ehr
from xrisk.cli import main
from xrisk.recipes.ehr import EHRConfig, select_labelled, train_ehr
from xrisk.recipes.runner import RunContext

TINY = ["--stays", "40", "--eval-stays", "40", "--hours", "12", "--dim", "8", "--heads", "2", "--ff-dim", "16",
        "--layers", "1", "--max-tokens", "48", "--crop", "16", "--batch-size", "8", "--pretrain-epochs", "1",
        "--finetune-epochs", "1", "--finetune-steps", "2", "--finetune-batch-size", "8", "--labels", "0.5",
        "--seed", "1", "--quiet"]
TINY_CONFIG = dict(stays=40, eval_stays=40, hours=12.0, dim=8, heads=2, ff_dim=16, layers=1, max_tokens=48, crop=16,
                   batch_size=8, finetune_steps=2, finetune_batch_size=8, labels=0.5, seed=1)


@pytest.mark.parametrize("method", ["gcl", "infonce", "none"])
def test_tiny_run_writes_the_run_folder(tmp_path, method):
    out = tmp_path / method
    assert main(["run", "ehr", "--pretrain", method, *TINY, "--out", str(out)]) == 0
    final = json.loads((out / "metrics.json").read_text())
    for key in ("test_auroc", "test_auprc", "external_auroc", "external_auprc", "probe_auroc", "probe_auprc",
                "probe_external_auroc", "finetune_loss"):
        assert 0 <= final[key] <= 1 or key == "finetune_loss", key
        assert math.isfinite(final[key])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if method == "none":
        assert [r["epoch"] for r in rows] == [1] and "imputation_mse" not in final
    else:
        assert [r["epoch"] for r in rows] == [1, 2] and "imputation_loss" in rows[0]
        assert final["imputation_mse_mean"] > 0 and final["imputation_mse_locf"] > 0
        assert ("objective" in rows[0]) == (method == "gcl")
    assert (out / "checkpoint.pt").is_file() and (out / "loss.png").is_file() and (out / "metrics.png").is_file()
    assert (out / "data" / "external" / "events.csv").is_file()  # the generated data went through the reader
    norm = json.loads((out / "normalization.json").read_text())
    assert norm["variables"][0] == "heart_rate" and len(norm["mean"]) == len(norm["variables"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert torch.allclose(ckpt["model"]["encoder.value_mean"][1:], torch.tensor(norm["mean"], dtype=torch.float32))
    if method == "gcl":
        assert any("log_u" in k for k in ckpt["loss"]) and ckpt["loss_meta"]["num_samples"] == 40
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved"]["num_train"] == 40 and cfg["resolved"]["num_external"] == 40


def _interrupt_at(monkeypatch, name, epoch):
    real = getattr(ehr, name)

    def wrapped(*args, **kwargs):
        if args[6 if name == "finetune_epoch" else 5] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ehr, name, wrapped)


@pytest.mark.parametrize("stop", [("pretrain_epoch", 2), ("finetune_epoch", 4)])
def test_resume_is_bit_identical(tmp_path, monkeypatch, stop):
    cfg = EHRConfig(**TINY_CONFIG, pretrain_epochs=2, finetune_epochs=2)
    args = {"pretrain": "gcl"}
    full = train_ehr(cfg, RunContext(tmp_path / "a", recipe="ehr", args=args, quiet=True, plot=False))
    with monkeypatch.context() as m:
        _interrupt_at(m, *stop)
        with pytest.raises(KeyboardInterrupt):
            train_ehr(cfg, RunContext(tmp_path / "b", recipe="ehr", args=args, quiet=True, plot=False))
    ctx = RunContext(tmp_path / "b", recipe="ehr", args=args, quiet=True, plot=False, resume=True)
    resumed = train_ehr(cfg, ctx)
    assert ctx.start_epoch == stop[1] - 1
    assert resumed == full
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


def _folder(tmp_path, bad_line=None):
    root = tmp_path / "icu"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        rows, labels = [], []
        for s in range(12):
            for k in range(6):
                rows.append(f"{split}{s},{k * 1.5},{'hr' if k % 2 else 'map'},{70 + s + k}\n")
            labels.append(f"{split}{s},{int(s % 3 == 0)}\n")
        if bad_line is not None and split == "train":
            rows.insert(bad_line - 2, "train0,0.5,hr,n/a\n")
        (root / split / "events.csv").write_text("stay_id,time,variable,value\n" + "".join(rows))
        (root / split / "labels.csv").write_text("stay_id,label\n" + "".join(labels))
    return root


def test_data_folder_bad_row_policy(tmp_path, capsys):
    root = _folder(tmp_path, bad_line=5)
    common = ["run", "ehr", "--data", str(root), "--dim", "8", "--heads", "2", "--ff-dim", "16", "--layers", "1",
              "--batch-size", "4", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--finetune-steps", "1",
              "--labels", "1.0", "--quiet", "--no-plot"]
    assert main([*common, "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'train' / 'events.csv'}:5: non-numeric value 'n/a'" in err and "--bad-rows skip" in err
    assert main([*common, "--bad-rows", "skip", "--out", str(tmp_path / "r2")]) == 0
    cfg = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert any("skipped: non-numeric value 1" in line for line in cfg["resolved"]["reader"])
    final = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert "external_auroc" not in final and 0 <= final["test_auroc"] <= 1  # no external/ folder


@pytest.mark.parametrize("flag, value", [("--labels", "0"), ("--labels", "1.5"), ("--pretrain", "simclr"),
                                         ("--gamma", "0"), ("--data", "/nonexistent/xrisk-icu"),
                                         ("--mask-fraction", "1"), ("--bad-rows", "ignore")])
def test_bad_flags_fail_at_parse_time(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["run", "ehr", flag, value, "--out", str(tmp_path / "x")])
    assert info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_validate_rules():
    import argparse

    with pytest.raises(ehr.UsageError, match="--dim 10 must be divisible by --heads 4"):
        ehr.validate(argparse.Namespace(dim=10, heads=4, data="generated"))


def test_select_labelled_is_stratified_and_seeded():
    labels = torch.tensor([0.0] * 90 + [1.0] * 10 + [float("nan")] * 5)
    idx = select_labelled(labels, 0.05, seed=3)
    assert int(labels[idx].sum()) == 1 and int((labels[idx] == 0).sum()) == 4  # round(0.05*90)=4 (banker's)
    assert torch.equal(idx, select_labelled(labels, 0.05, seed=3))
    assert select_labelled(labels, 1.0, seed=0).numel() == 100
    with pytest.raises(ehr.UsageError, match="class 1"):
        select_labelled(torch.zeros(5), 0.5, seed=0)


def test_guide_example_runs(capsys, tmp_path, monkeypatch):
    """The plain-loop example of docs/clinical.md runs as written."""
    from pathlib import Path

    from test_readme import readme_example

    guide = Path(__file__).resolve().parents[1] / "docs" / "clinical.md"
    code = readme_example(guide.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(guide), "exec"), {"__name__": "__guide__"})  # noqa: S102
    assert "imputation MSE" in capsys.readouterr().out
