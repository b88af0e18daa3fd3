"""The plain-PyTorch DFTLoss loop and the DFTTrainer example of docs/dft.md run as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _examples import marked_code

PAGE = Path(__file__).resolve().parents[1] / "docs" / "dft.md"


def test_dft_page_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers", reason="the `llm` extra")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    text = PAGE.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the examples write negatives.jsonl and runs/dft here
    torch.set_num_threads(1)
    scope: dict = {"__name__": "__dft_docs__"}
    exec(compile(marked_code(text, "dft-loop"), str(PAGE), "exec"), scope)  # noqa: S102
    out = capsys.readouterr().out
    assert out.count("objective estimate") == 2
    assert scope["loss_fn"].log_u.seen.all()  # every prompt's estimator was written
    exec(compile(marked_code(text, "dft-trainer"), str(PAGE), "exec"), scope)  # noqa: S102
    assert (tmp_path / "runs" / "dft" / "checkpoint-4" / "xrisk_loss.pt").is_file()
