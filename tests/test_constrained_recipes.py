"""`xrisk run fair` and `xrisk run continual` end to end on small data: run folder, plots, resume bit-identical."""

from __future__ import annotations

import json

import pytest
import torch

from _fairness_data import write_fake_fairness_files
from xrisk.cli import main

pytest.importorskip("sklearn", reason="the continual runs use scikit-learn's digits")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_fake_fairness_files(tmp_path_factory.mktemp("fair"), n=300)


def _read(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), lines


def _fair(root, *extra):
    return ["run", "fair", "--data", "compas", "--data-root", str(root), "--batch-size", "32", "--seed", "2",
            "--quiet", *extra]


@pytest.mark.parametrize("formulation", ["hinge", "squared", "lagrangian", "none"])
def test_fair_run_writes_metrics_and_plot(tmp_path, fake_root, formulation: str) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert main([*_fair(fake_root, "--formulation", formulation, "--epochs", "2", "--out", str(out))]) == 0
    final, lines = _read(out)
    assert {"config.json", "checkpoint.pt", "constraints.png", "loss.png"} <= {p.name for p in out.iterdir()}
    assert 0.0 <= final["test_accuracy"] <= 1.0 and 0.0 <= final["test_auroc"] <= 1.0
    assert final["test_violation"] == pytest.approx(max(final["test_max_gap"] - 0.05, 0.0))
    assert ("train_max_violation" in lines[-1]) == (formulation != "none")
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["num_constraints"] == 12


def test_fair_hinge_penalty_reduces_the_gap_on_a_biased_table(tmp_path) -> None:
    """A table whose label leaks through a feature correlated with the group: the unconstrained model has a large
    TPR/FPR gap, the hinge penalty closes most of it."""
    root = write_fake_fairness_files(tmp_path / "data", n=600, seed=5)
    import csv

    path = root / "compas" / "compas-scores-two-years.csv"
    rows = list(csv.reader(open(path)))
    for r in rows[1:]:  # priors drive the label and are much higher for group 1
        if r[5] == "African-American":
            r[10] = r[15] = str(int(r[10]) + 6)
        r[16] = str(int(int(r[10]) > 5))
    csv.writer(open(path, "w", newline="")).writerows(rows)
    gaps = {}
    for formulation in ("none", "hinge"):
        out = tmp_path / formulation
        assert main([*_fair(root, "--formulation", formulation, "--epochs", "30", "--beta", "20", "--no-plot",
                            "--out", str(out))]) == 0
        gaps[formulation] = _read(out)[0]["test_max_gap"]
    assert gaps["none"] > 0.15 and gaps["hinge"] < 0.5 * gaps["none"], gaps


@pytest.mark.parametrize("formulation", ["hinge", "lagrangian"])
def test_fair_resume_is_bit_identical(tmp_path, fake_root, formulation: str) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    common = _fair(fake_root, "--formulation", formulation, "--no-plot")
    assert main([*common, "--epochs", "3", "--out", str(full)]) == 0
    assert main([*common, "--epochs", "1", "--out", str(part)]) == 0
    assert main([*common, "--epochs", "3", "--out", str(part), "--resume"]) == 0
    assert _read(part) == _read(full)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for name in ("model", "loss"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])


@pytest.mark.parametrize("extra", [(), ("--estimator", "msvr", "--gamma", "0.3", "--lr-schedule", "cosine"),
                                   ("--estimator", "msvr", "--gamma", "0.3", "--constraint-sampler", "stratified",
                                    "--constraint-batch-size", "12")],
                         ids=["ma-constant", "msvr-cosine", "msvr-stratified"])
def test_fair_mid_epoch_interrupt_then_resume_is_bit_identical(tmp_path, fake_root, monkeypatch, extra) -> None:
    """Also with MSVR (the previous iterate is in the checkpoint), the cosine schedule (its step count resumes) and
    the stratified constraint batches (a function of the step)."""
    import math

    from xrisk.data import load_fairness

    full, part = tmp_path / "full", tmp_path / "part"
    common = [*_fair(fake_root, "--formulation", "hinge", "--no-plot", "--epochs", "2", "--checkpoint-every", "2"),
              "--batch-size", "8", *extra]
    steps_per_epoch = math.ceil(len(load_fairness("compas", seed=2, root=fake_root).y_train) / 8)
    assert steps_per_epoch >= 4
    assert main([*common, "--out", str(full)]) == 0
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:  # step 3 of epoch 2: the checkpoint after its step 2 survives
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    assert main([*common, "--out", str(part)]) == 130
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    extra = torch.load(part / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (1, 2)
    assert main([*common, "--out", str(part), "--resume"]) == 0
    assert _read(part) == _read(full)


def test_fair_msvr_keeps_the_previous_iterate_and_the_schedule_decays(tmp_path, fake_root) -> None:
    """MSVR: the checkpoint holds the model and the iterate one step behind it (not equal to it); the cosine schedule
    follows its closed form and ends near 0; --estimator msvr with --gamma 1 is refused before any work."""
    import math

    from xrisk.data import load_fairness
    from xrisk.recipes.fair import scheduled_lr

    out = tmp_path / "run"
    assert main([*_fair(fake_root, "--formulation", "squared", "--estimator", "msvr", "--gamma", "0.2",
                        "--lr-schedule", "cosine", "--epochs", "2", "--no-plot", "--out", str(out))]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    now = {k[len("model."):]: v for k, v in ck["model"].items() if k.startswith("model.")}
    before = {k[len("previous."):]: v for k, v in ck["model"].items() if k.startswith("previous.")}
    assert set(now) == set(before) == {"weight", "bias"}
    assert not torch.equal(now["weight"], before["weight"])
    total = 2 * math.ceil(len(load_fairness("compas", seed=2, root=fake_root).y_train) / 32)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (total - 1)
                                                                                              / total)))
    assert scheduled_lr(0.2, "cosine", 0, 10) == 0.2 and scheduled_lr(0.2, "cosine", 5, 10) == pytest.approx(0.1)
    assert scheduled_lr(0.2, "cosine", 10, 10) == pytest.approx(0.0) and scheduled_lr(0.2, "constant", 7, 10) == 0.2
    assert main([*_fair(fake_root, "--estimator", "msvr", "--gamma", "1", "--out", str(tmp_path / "bad"))]) == 2
    assert not (tmp_path / "bad").exists()


def test_fair_stratified_constraint_batch_has_every_cell_and_keeps_the_objective_batches(tmp_path, fake_root,
                                                                                         monkeypatch, capsys) -> None:
    """--constraint-sampler stratified: every step's constraint values come from a batch with
    --constraint-batch-size / 4 rows of each (group, label) cell (distinct rows, different per step); the
    objective's batches are the same as with the default, so the unconstrained run does not change; the rules
    between flags are checked before any work (bad values of each flag: tests/test_cli.py)."""
    import xrisk.constrained as constrained

    seen = []
    real = constrained.roc_fairness_constraints

    def spy(scores, targets, groups, *args, **kwargs):
        seen.append((targets + 2 * groups).tolist())
        return real(scores, targets, groups, *args, **kwargs)

    monkeypatch.setattr(constrained, "roc_fairness_constraints", spy)
    out = tmp_path / "strat"
    assert main([*_fair(fake_root, "--formulation", "lagrangian", "--epochs", "1", "--no-plot",
                        "--constraint-sampler", "stratified", "--constraint-batch-size", "16", "--out", str(out))]) == 0
    assert len(seen) >= 3 and all(sorted(cells) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 for cells in seen)
    monkeypatch.setattr(constrained, "roc_fairness_constraints", real)
    runs = {}
    for sampler in ("batch", "stratified"):
        runs[sampler] = tmp_path / f"none-{sampler}"
        assert main([*_fair(fake_root, "--formulation", "none", "--epochs", "2", "--no-plot", "--constraint-sampler",
                            sampler, "--out", str(runs[sampler]))]) == 0
    assert _read(runs["batch"]) == _read(runs["stratified"])
    capsys.readouterr()
    for bad, message in ((("--constraint-batch-size", "16"), "needs --constraint-sampler stratified"),
                         (("--constraint-sampler", "stratified", "--constraint-batch-size", "18"), "multiple of 4"),
                         (("--constraint-sampler", "stratified", "--batch-size", "30"), "argument --batch-size")):
        assert main([*_fair(fake_root, *bad, "--out", str(tmp_path / "bad"))]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _continual(*extra):
    return ["run", "continual", "--data", "digits", "--tasks", "3", "--epochs-per-task", "2", "--batch-size", "32",
            "--memory", "20", "--memory-batch", "16", "--hidden", "32", "--quiet", "--no-plot", *extra]


@pytest.mark.parametrize("method", ["constrained", "finetune", "rehearsal"])
def test_continual_run_reports_accuracy_and_forgetting(tmp_path, method: str) -> None:
    out = tmp_path / "run"
    assert main([*_continual("--method", method, "--out", str(out))]) == 0
    final, lines = _read(out)
    assert [r["epoch"] for r in lines] == list(range(1, 7)) and [r["task"] for r in lines] == [1, 1, 2, 2, 3, 3]
    accs = [final[f"test_accuracy_task{j}"] for j in (1, 2, 3)]
    assert final["average_accuracy"] == pytest.approx(sum(accs) / 3, abs=1e-6)
    assert -1.0 <= final["forgetting"] <= 1.0 and final["average_accuracy"] > 0.6
    assert ("train_max_violation" in lines[-1]) == (method == "constrained")


def test_continual_resume_is_bit_identical(tmp_path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    common = _continual("--method", "constrained", "--formulation", "lagrangian")
    assert main([*common, "--out", str(full)]) == 0
    assert main([*common[:common.index("--epochs-per-task")], "--epochs-per-task", "2",
                 *common[common.index("--epochs-per-task") + 2:], "--out", str(part)]) == 0
    # a run interrupted at the end of task 2's first epoch, then resumed
    part2 = tmp_path / "part2"
    import xrisk.recipes.runner as runner

    real_save = runner.RunContext.save

    def stop_after(self, *args, **kwargs):
        path = real_save(self, *args, **kwargs)
        if kwargs.get("epoch") == 3:
            raise KeyboardInterrupt
        return path

    runner.RunContext.save = stop_after
    try:
        assert main([*common, "--out", str(part2)]) == 130
    finally:
        runner.RunContext.save = real_save
    assert main([*common, "--out", str(part2), "--resume"]) == 0
    assert _read(part2) == _read(full)
    assert _read(part) == _read(full)


def test_continual_tasks_must_fit_the_classes(tmp_path, capsys) -> None:
    assert main(["run", "continual", "--data", "digits", "--tasks", "6", "--out", str(tmp_path / "r")]) == 2
    assert "--tasks" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_fair_folds_write_out_of_fold_predictions(tmp_path, fake_root, capsys) -> None:
    from xrisk.data.fairness import load_fairness

    pooled = []
    for k in range(3):
        out = tmp_path / f"fold{k}"
        assert main([*_fair(fake_root, "--formulation", "hinge", "--epochs", "1", "--no-plot", "--fold", str(k),
                            "--folds", "3", "--split-seed", "0", "--out", str(out))]) == 0
        pred = torch.load(out / "test_predictions.pt")
        final, _ = _read(out)
        assert len(pred["prob"]) == len(pred["target"]) == len(pred["group"])
        assert final["test_accuracy"] == pytest.approx(float(((pred["prob"] >= 0.5).long() == pred["target"])
                                                             .double().mean()))
        pooled.append(len(pred["prob"]))
    d = load_fairness("compas", root=fake_root, seed=0)
    assert sum(pooled) == len(d.y_train) + len(d.y_test)
    capsys.readouterr()
    assert main([*_fair(fake_root, "--fold", "3", "--folds", "3", "--out", str(tmp_path / "bad"))]) == 2
    assert "must be smaller than --folds 3" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["run", "fair", "--data", "adult", "--fold", "0", "--out", str(tmp_path / "bad2")]) == 2
    assert "adult has an official train/test split" in capsys.readouterr().err


def test_fair_validation_fold_evaluates_on_held_out_training_rows(tmp_path, fake_root, capsys) -> None:
    from xrisk.data.fairness import load_fairness, validation_split

    out = tmp_path / "val"
    assert main([*_fair(fake_root, "--formulation", "hinge", "--epochs", "1", "--no-plot", "--fold", "1", "--folds",
                        "3", "--split-seed", "0", "--validation-fold", "2", "--validation-folds", "3",
                        "--out", str(out))]) == 0
    pred = torch.load(out / "test_predictions.pt")
    held = validation_split(load_fairness("compas", root=fake_root, seed=0, fold=1, folds=3), 2, 3, seed=0)
    assert torch.equal(pred["target"], held.y_test) and torch.equal(pred["group"], held.group_test)
    assert "validation fold 2 of 3" in json.loads((out / "config.json").read_text())["resolved"]["data_description"]
    capsys.readouterr()
    assert main([*_fair(fake_root, "--validation-fold", "3", "--validation-folds", "3",
                        "--out", str(tmp_path / "bad"))]) == 2
    assert "must be smaller than --validation-folds 3" in capsys.readouterr().err and not (tmp_path / "bad").exists()
