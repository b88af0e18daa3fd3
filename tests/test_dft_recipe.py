"""`xrisk run dft` end to end on a tiny model: generated data (base model, negatives, exact match), resume
equal to an uninterrupted run, a JSONL file, SFT, usage errors naming the flag or the file line."""

from __future__ import annotations

import json

import pytest
import torch

from _llm import records, tiny
from xrisk.cli import main

pytest.importorskip("transformers", reason="the `llm` extra")

TINY = ["run", "dft", "--model", "tiny", "--num-train", "32", "--num-test", "16", "--pretrain-steps", "20",
        "--batch-size", "8", "--quiet", "--no-plot"]


def _metrics(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("epoch_seconds")
    return rows


def test_generated_run_and_resume_equal_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    full = _metrics(tmp_path / "full")
    assert [r["epoch"] for r in full] == [1, 2]
    assert all({"train_surrogate", "train_objective", "test_exact_match"} <= set(r) for r in full)
    lines = [json.loads(x) for x in (tmp_path / "full" / "negatives.jsonl").read_text().splitlines()]
    assert len(lines) == 32 and all(len(x["negatives"]) == 4 and len(x["ref_logp"]) == 4 for x in lines)
    config = json.loads((tmp_path / "full" / "config.json").read_text())["resolved"]
    assert config["negative_columns"] == 4 and config["truncated_prompts"] == 0 and "base_exact_match" in config

    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path / "part")]) == 0
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path / "part"), "--resume"]) == 0
    assert _metrics(tmp_path / "part") == full
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    for part in ("model", "loss"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_jsonl_data_dft2_and_sft(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(16, k=2, ref=False)))
    base = ["run", "dft", "--model", "tiny", "--data", str(path), "--batch-size", "8", "--epochs", "1", "--quiet",
            "--no-plot"]
    assert main(base + ["--variant", "dft2", "--out", str(tmp_path / "dft2")]) == 0
    assert "train_objective" in _metrics(tmp_path / "dft2")[0]
    assert main(base + ["--variant", "sft", "--out", str(tmp_path / "sft")]) == 0
    assert "train_loss" in _metrics(tmp_path / "sft")[0]
    model, tok = tiny(seed=1)  # --model PATH: a saved model folder
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    folder = ["--model", str(tmp_path / "model"), *base[4:]]
    assert main(["run", "dft", *folder, "--variant", "dft2", "--out", str(tmp_path / "path")]) == 0


def test_usage_errors_name_the_flag_or_the_line_before_the_run_folder_exists(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(records(1, k=2)[0]) + "\n" + json.dumps({"prompt": "1+1=", "answer": ""}) + "\n")
    good, no_ref = tmp_path / "good.jsonl", tmp_path / "noref.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in records(4, k=2)))
    no_ref.write_text("".join(json.dumps(r) + "\n" for r in records(4, k=2, ref=False)))
    cases = [
        (["--data", str(path)], "bad.jsonl:2: the answer is empty"),
        (["--data", str(no_ref)], "noref.jsonl:1: field 'ref_logp' is missing"),  # --variant dft needs them
        (["--data", str(good), "--negatives-per-prompt", "3"], "--negatives-per-prompt 3"),
        (["--data", str(tmp_path / "none.jsonl")], "--data"),
        (["--model", "nonexistent-folder"], "--model"),
        (["--max-length", "10", "--max-prompt-length", "10"], "--max-length"),
        (["--num-negatives", "1"], "--num-negatives"),
        (["--variant", "sft", "--tau", "0.5"], "--tau"),
        (["--unhelpful-system-prompt"], "--unhelpful-system-prompt"),
        (["--gguf-file", "x.gguf"], "--gguf-file"),
        (["--model", "smollm2", "--pretrain-steps", "5"], "--pretrain-steps"),
        (["--u-init", "1e7"], "--u-init"),  # beyond float32-safe start values
        (["--model", str(tmp_path), "--data", str(good), "--variant", "sft"], "no config.json"),  # not a model
    ]
    # the settings of generated data are refused with a file, not ignored
    cases += [(["--data", str(good), flag, value], flag) for flag, value in (
        ("--num-train", "8"), ("--num-test", "8"), ("--pretrain-steps", "0"), ("--num-negatives", "2"),
        ("--temperature", "0.5"), ("--max-new-tokens", "3"), ("--unhelpful-system-prompt", None))]
    for extra, message in cases:
        out = tmp_path / "run"
        argv = ["run", "dft", "--quiet", "--out", str(out), *(x for x in extra if x is not None)]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: a bad value of one flag
            code = e.code
        assert code == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists(), extra
