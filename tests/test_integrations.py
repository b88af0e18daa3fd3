"""The Lightning and Hugging Face ``Trainer`` examples of docs/integrations.md run as written, and
a run resumed from their checkpoints ends bit-identical to an uninterrupted one (weights, the
loss's state and parameters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _examples import marked_code

PAGE = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"


def _run_page_example(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    code = marked_code(PAGE.read_text(encoding="utf-8"), name)
    monkeypatch.chdir(tmp_path)  # the example writes runs/... here
    namespace: dict = {"__name__": f"__{name}__"}
    exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102
    return namespace


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning: few workers, small batches, ...
def test_lightning_example_resumes_the_loss_state_and_pesg_exactly(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning", reason="the `integrations` extra")
    pytest.importorskip("torchmetrics", reason="the `metrics` extra")
    ns = _run_page_example("lightning", tmp_path, monkeypatch)
    assert "aucm: epoch 2" in capsys.readouterr().out
    resumed = ns["resumed"]
    assert float(resumed.loss_fn.alpha.abs().sum()) > 0  # PESG moved alpha: the loss's parameters were optimised
    full = ns["fit"]("aucm", max_epochs=2, root=str(tmp_path / "full"))
    _assert_same_state(resumed.state_dict(), full.state_dict())
    # APLoss: per-sample estimators (SampleState) saved and restored with the module
    ns["fit"]("ap", max_epochs=1, root=str(tmp_path / "ap"))
    ckpt = tmp_path / "ap" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert bool(saved["loss_fn.u_pos.seen"].any()) and bool(saved["loss_fn.u_all.value"].abs().sum() > 0)
    ap_resumed = ns["fit"]("ap", max_epochs=2, root=str(tmp_path / "ap"), ckpt_path=str(ckpt))
    ap_full = ns["fit"]("ap", max_epochs=2, root=str(tmp_path / "ap-full"))
    _assert_same_state(ap_resumed.state_dict(), ap_full.state_dict())
    assert not torch.equal(ap_full.loss_fn.u_all.value, saved["loss_fn.u_all.value"])  # epoch 2 moved it


def test_hf_trainer_example_keeps_the_index_column_and_resumes_the_loss_state(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers", reason="the `integrations` extra")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    ns = _run_page_example("hf-trainer", tmp_path, monkeypatch)
    assert capsys.readouterr().out.count("train AP") == 2
    first, resumed = ns["first"], ns["resumed"]
    # the loss state at the epoch-1 checkpoint is what the resumed run started from
    saved = torch.load(tmp_path / "runs/hf/checkpoint-8/xrisk_loss.pt", weights_only=True)
    assert saved["loss"] and any(bool(v.any()) for k, v in saved["loss"].items() if v.dtype == torch.bool)
    # the uninterrupted and the resumed run end identical: weights and loss state
    _assert_same_state(first.xrisk_loss.state_dict(), resumed.xrisk_loss.state_dict())
    _assert_same_state(first.model.state_dict(), resumed.model.state_dict())
    assert not torch.equal(first.xrisk_loss.state_dict()[next(k for k in saved["loss"] if "value" in k)],
                           saved["loss"][next(k for k in saved["loss"] if "value" in k)])


def test_hf_trainer_without_the_override_would_drop_the_index_column(tmp_path, monkeypatch):
    """The reason for the override: the Trainer keeps only the columns the model's forward takes."""
    transformers = pytest.importorskip("transformers", reason="the `integrations` extra")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    code = marked_code(PAGE.read_text(encoding="utf-8"), "hf-trainer")
    definitions = code[: code.index("\nfirst = train(")]  # the classes and train(), without running them
    scope: dict = {"__name__": "__hf_definitions__"}
    exec(compile(definitions, str(PAGE), "exec"), scope)  # noqa: S102
    monkeypatch.chdir(tmp_path)
    args = transformers.TrainingArguments(output_dir="out", use_cpu=True, report_to=[])
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=1)
    model = transformers.BertForSequenceClassification(config)
    data = scope["TokenData"](8, seed=0)
    plain = transformers.Trainer(model=model, args=args, train_dataset=data)
    assert "index" not in next(iter(plain.get_train_dataloader()))
    ours = scope["ScoreTrainer"](model=model, args=args, train_dataset=data,
                                 xrisk_loss=scope["APLoss"](num_samples=len(data)))
    batch = next(iter(ours.get_train_dataloader()))
    assert "index" in batch and batch["index"].dtype == torch.long
