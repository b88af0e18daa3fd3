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
        assert [r["epoch"] for r in rows] == [1, 2] and "train_imputation_loss" in rows[0]
        assert final["imputation_mse_mean"] > 0 and final["imputation_mse_locf"] > 0
        assert ("train_objective" in rows[0]) == (method == "gcl")
        assert ("train_surrogate" in rows[0]) == (method == "gcl") != ("train_loss" in rows[0])
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
    assert cfg["resolved"]["loss_class"] == {"gcl": "GlobalContrastiveLoss", "infonce": "nt_xent_loss",
                                             "none": "none"}[method]


class _Crash(Exception):
    """Stands for a process killed in the middle of a step."""


RESUME_CONFIG = EHRConfig(**TINY_CONFIG, pretrain_epochs=2, finetune_epochs=2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run shared by the resume tests: (final metrics, run folder)."""
    out = tmp_path_factory.mktemp("ehr") / "a"
    ctx = RunContext(out, recipe="ehr", args={"pretrain": "gcl"}, quiet=True, plot=False, checkpoint_every=0)
    return train_ehr(RESUME_CONFIG, ctx), out


@pytest.mark.parametrize("crash_at, checkpoint", [
    (8, (1, 2)),   # pretraining epoch 2, step 3 (5 steps per epoch): resumes from its step-2 checkpoint
    (12, (2, 1)),  # first fine-tuning epoch, step 2: after the switch to fine-tuning, inside the epoch
    (13, (3, 0)),  # second fine-tuning epoch, step 1: from the end of epoch 3
])
def test_resume_is_bit_identical(tmp_path, monkeypatch, uninterrupted, crash_at, checkpoint):
    from xrisk.recipes.progress import ProgressBar

    cfg, (full, folder_a) = RESUME_CONFIG, uninterrupted

    def ctx(folder, **kw):
        return RunContext(tmp_path / folder, recipe="ehr", args={"pretrain": "gcl"}, quiet=True, plot=False, **kw)

    real, calls = ProgressBar.update, [0]

    def dies(self, n=1, **values):  # called once per training step, after the optimizer step
        calls[0] += 1
        if calls[0] == crash_at:
            raise _Crash
        return real(self, n, **values)

    monkeypatch.setattr(ProgressBar, "update", dies)
    with pytest.raises(_Crash), ctx("b", checkpoint_every=1) as c:
        train_ehr(cfg, c)
    monkeypatch.setattr(ProgressBar, "update", real)
    extra = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == checkpoint
    assert ("pretrained" in extra["user"]) == (checkpoint[0] >= 2)
    resumed = train_ehr(cfg, ctx("b", resume=True))
    assert resumed == full
    a = torch.load(folder_a / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["loss"].items():
        assert torch.equal(v, b["loss"][k]), k
    assert (folder_a / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


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
