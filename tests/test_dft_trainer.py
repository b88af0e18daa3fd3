"""DFTTrainer (transformers.Trainer): the estimator is saved with every checkpoint and a resumed run ends
bit-identical to an uninterrupted one; fresh negative columns every epoch; SFT through the same trainer;
evaluation leaves the state alone; DFT raises the answer's score above the negatives' on a toy problem."""

from __future__ import annotations

import pytest
import torch

from _llm import records, tiny, transformers
from xrisk.llm import DFTDataset, DFTTrainer, sequence_logprobs, select_negatives
from xrisk.llm import DFTCollator
from xrisk.llm import trainer as trainer_module
from xrisk.losses import DFTLoss

pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")


def _train(out, *, variant="dft", epochs=3, resume=None, loss=True, eval_dataset=None, seed=0, lr=3e-3, **kwargs):
    model, tok = tiny(seed=seed)
    ds = DFTDataset(records(24, k=4, ref=variant == "dft"), tok, max_prompt_length=12, max_length=20)
    args = transformers.TrainingArguments(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=lr,
        lr_scheduler_type="constant", save_strategy="epoch", logging_strategy="no", report_to=[], use_cpu=True,
        seed=seed, disable_tqdm=True, **kwargs)
    loss_fn = DFTLoss(len(ds), variant) if loss else None
    trainer = DFTTrainer(model, args, ds, loss=loss_fn, negatives_per_prompt=2, processing_class=tok,
                         eval_dataset=eval_dataset)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("variant", ["dft", "dft2"])
def test_resume_is_bit_identical_with_fresh_negative_columns_every_epoch(tmp_path, variant, monkeypatch):
    used = []
    original = trainer_module.dft_batch_loss

    def spy(model, batch, loss_fn, columns, **kwargs):
        used.append(tuple(columns))
        return original(model, batch, loss_fn, columns, **kwargs)

    monkeypatch.setattr(trainer_module, "dft_batch_loss", spy)
    full = _train(tmp_path / "full", variant=variant)
    assert used == [(0, 1)] * 3 + [(2, 3)] * 3 + [(0, 1)] * 3  # 3 steps per epoch, K = 4 columns, m = 2
    saved = torch.load(tmp_path / "full" / "checkpoint-3" / trainer_module.LOSS_STATE_FILE, weights_only=True)
    assert saved["loss"]["log_u.seen"].all()  # every prompt seen in epoch 1: the estimator is in the checkpoint
    used.clear()
    resumed = _train(tmp_path / "resumed", variant=variant, resume=str(tmp_path / "full" / "checkpoint-3"))
    assert used == [(2, 3)] * 3 + [(0, 1)] * 3
    _same(full.xrisk_loss.state_dict(), resumed.xrisk_loss.state_dict())
    _same(full.model.state_dict(), resumed.model.state_dict())
    assert not torch.equal(full.xrisk_loss.log_u.value, saved["loss"]["log_u.value"])  # epochs 2-3 moved it


def test_a_checkpoint_without_the_loss_state_is_refused(tmp_path):
    _train(tmp_path / "sft", loss=False, epochs=1)
    with pytest.raises(FileNotFoundError, match="xrisk_loss.pt"):
        _train(tmp_path / "dft", resume=str(tmp_path / "sft" / "checkpoint-3"))


def test_sft_runs_through_the_same_trainer(tmp_path):
    sft = _train(tmp_path / "sft", loss=False, epochs=2, lr=1e-2)
    assert sft.xrisk_loss is None
    assert not (tmp_path / "sft" / "checkpoint-3" / trainer_module.LOSS_STATE_FILE).exists()
    history = [h["train_loss"] for h in sft.state.log_history if "train_loss" in h]
    assert history and history[-1] < 4.0  # the character LM learned something (log 90 = 4.5 at the start)


def test_evaluation_leaves_the_estimator_alone(tmp_path):
    _, tok = tiny()
    eval_ds = DFTDataset(records(24, k=4, seed=1), tok, max_prompt_length=12, max_length=20)
    trainer = _train(tmp_path / "run", epochs=1, eval_dataset=eval_ds)
    before = {k: v.clone() for k, v in trainer.xrisk_loss.state_dict().items()}
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    _same(before, trainer.xrisk_loss.state_dict())
    assert trainer.xrisk_loss.training == trainer.model.training  # the loss follows the model's mode


def test_dft_raises_the_answer_above_its_negatives(tmp_path):
    """The toy check of the reference notes: the margin logp(answer) - mean logp(negatives) grows."""
    model, tok = tiny(seed=0)
    ds = DFTDataset(records(24, k=4), tok, max_prompt_length=12, max_length=20)
    batch = DFTCollator(tok.pad_token_id)([ds[i] for i in range(len(ds))])

    def margin(m):
        with torch.no_grad():
            logp, _ = sequence_logprobs(m, select_negatives(batch, [0, 1, 2, 3]))
        return float((logp[:, 0] - logp[:, 1:].mean(1)).mean())

    before = margin(model)
    trained = _train(tmp_path / "run", epochs=3, lr=1e-2)
    after = margin(trained.model)
    assert after > before + 0.5, (before, after)


def test_constructor_checks(tmp_path):
    model, tok = tiny()
    ds = DFTDataset(records(8, k=2, ref=False), tok, max_prompt_length=12, max_length=20)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="ref_logp"):
        DFTTrainer(model, args, ds, loss=DFTLoss(8))
    with pytest.raises(ValueError, match="negatives_per_prompt=3"):
        DFTTrainer(model, args, ds, loss=DFTLoss(8, "dft2"), negatives_per_prompt=3)
    with pytest.raises(ValueError, match="9 prompts"):
        DFTTrainer(model, args, ds, loss=DFTLoss(9, "dft2"))
