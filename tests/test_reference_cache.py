"""ReferenceCache: fill/read, resumable filling, fingerprint and layout mismatches, missing rows, damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xrisk.data import ReferenceCache, ReferenceCacheError, ReferenceCacheMismatchError
from xrisk.data.reference_cache import fingerprint, module_fingerprint

N, D = 50, 3


def _setup(tmp_path, **kw):
    torch.manual_seed(0)
    x = torch.randn(N, 4)
    model = torch.nn.Linear(4, D)
    args = dict(num_samples=N, shape=(D,), data_fingerprint=fingerprint(x), model_fingerprint=module_fingerprint(model))
    args.update(kw)
    return x, model, ReferenceCache(tmp_path / "cache", **args), args


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1, **values) -> None:
        self.n += n


def test_fill_then_read_returns_the_reference_outputs_by_dataset_index(tmp_path):
    x, model, cache, _ = _setup(tmp_path)
    bar = _Count()
    assert cache.fill(lambda idx: model(x[idx]), batch_size=16, progress=bar) == N
    assert bar.n == N and cache.complete and cache.missing().numel() == 0
    idx = torch.tensor([49, 0, 7, 7, 31])
    with torch.no_grad():
        torch.testing.assert_close(cache.read(idx), model(x[idx]))
    assert cache.fill(lambda idx: model(x[idx])) == 0  # nothing left to do
    assert not list(tmp_path.glob(".cache.tmp-*"))  # the temporary folder of the atomic creation is gone


def test_an_interrupted_fill_resumes_and_equals_an_uninterrupted_one(tmp_path):
    x, model, cache, args = _setup(tmp_path)
    calls = []

    def flaky(idx):
        calls.append(idx.clone())
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the fill during the third chunk
        return model(x[idx])

    with pytest.raises(KeyboardInterrupt):
        cache.fill(flaky, batch_size=8)
    assert cache.missing().tolist() == list(range(16, N))  # two chunks done, the third never written
    reopened = ReferenceCache(tmp_path / "cache", **args)
    assert reopened.fill(lambda idx: model(x[idx]), batch_size=8) == N - 16
    straight = ReferenceCache(tmp_path / "other", **args)
    straight.fill(lambda idx: model(x[idx]), batch_size=50)
    assert torch.equal(reopened.read(torch.arange(N)), straight.read(torch.arange(N)))


def test_a_missing_row_raises_naming_it_never_zeros(tmp_path):
    x, model, cache, _ = _setup(tmp_path)
    cache.write(torch.tensor([0, 1, 2]), torch.ones(3, D))
    assert torch.equal(cache.read(torch.tensor([2, 0])), torch.ones(2, D))
    with pytest.raises(ReferenceCacheError, match=r"no row for dataset index 3, 9: it was not filled"):
        cache.read(torch.tensor([0, 9, 3]))
    with pytest.raises(ReferenceCacheError, match=r"and 2 more"):
        cache.read(torch.arange(10))
    with pytest.raises(IndexError, match=f"dataset index {N} is out of range"):
        cache.read(torch.tensor([N]))
    with pytest.raises(ValueError, match=r"rows must have shape \(2, 3\)"):
        cache.write(torch.tensor([4, 5]), torch.ones(2, 4))
    with pytest.raises(ValueError, match="NaN/inf"):
        cache.write(torch.tensor([4]), torch.full((1, D), float("nan")))


def test_a_complete_cache_reads_copies_and_names_a_bad_index(tmp_path):
    """Once every row is filled a read is one gather from the map: still a copy, in any integer index dtype, and an
    index out of range (negative included) raises naming it; an incomplete cache checks its rows until filled."""
    x, model, cache, _ = _setup(tmp_path)
    cache.write(torch.arange(N - 1), torch.ones(N - 1, D))
    with pytest.raises(ReferenceCacheError, match=f"no row for dataset index {N - 1}"):
        cache.read(torch.tensor([0, N - 1]))
    cache.write(torch.tensor([N - 1]), torch.full((1, D), 2.0))
    rows = cache.read(torch.tensor([N - 1, 0], dtype=torch.int32))
    assert torch.equal(rows, torch.tensor([[2.0] * D, [1.0] * D]))
    rows.fill_(7.0)  # a copy: the cache is unchanged
    assert torch.equal(cache.read([N - 1]), torch.full((1, D), 2.0))
    for bad in (N, -1):
        with pytest.raises(IndexError, match=f"dataset index {bad} is out of range"):
            cache.read(torch.tensor([0, bad]))
    with pytest.raises(TypeError, match="integer"):
        cache.read(torch.tensor([0.0]))


@pytest.mark.parametrize("change,match", [
    ("data", r"another data set \(data set: '[0-9a-f]+' in the cache, '[0-9a-f]+' now\)"),
    ("model", r"another reference model \(reference model: '[0-9a-f]+' in the cache"),
    ("num_samples", r"another num_samples \(num_samples: 50 in the cache, 51 now\)"),
    ("shape", r"another row shape \(row shape: \[3\] in the cache, \[4\] now\)"),
    ("dtype", r"another dtype \(dtype: 'float32' in the cache, 'float16' now\)"),
])
def test_a_cache_for_other_data_or_another_model_raises_naming_the_mismatch(tmp_path, change, match):
    x, model, cache, args = _setup(tmp_path)
    cache.fill(lambda idx: model(x[idx]))
    if change == "data":
        args["data_fingerprint"] = fingerprint(x + 1e-3)
    elif change == "model":
        other = torch.nn.Linear(4, D)
        args["model_fingerprint"] = module_fingerprint(other)
    elif change == "num_samples":
        args["num_samples"] = N + 1
    elif change == "shape":
        args["shape"] = (4,)
    else:
        args["dtype"] = torch.float16
    with pytest.raises(ReferenceCacheMismatchError, match=match):
        ReferenceCache(tmp_path / "cache", **args)


def test_fingerprints_follow_the_data_and_the_weights():
    x = torch.randn(5, 2)
    assert fingerprint(x) == fingerprint(x.clone()) != fingerprint(x.double())
    assert fingerprint(x, ["a", "b"]) != fingerprint(x, ["a", "c"])
    m = torch.nn.Linear(2, 2)
    before = module_fingerprint(m)
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert module_fingerprint(m) != before
    with pytest.raises(TypeError, match="cannot fingerprint"):
        fingerprint(object())


def test_truncated_damaged_and_foreign_files_raise_naming_the_file(tmp_path):
    x, model, cache, args = _setup(tmp_path)
    cache.fill(lambda idx: model(x[idx]))
    values = tmp_path / "cache" / "values.npy"
    data = values.read_bytes()
    values.write_bytes(data[:-7])
    with pytest.raises(ReferenceCacheError, match=r"values.npy is truncated: \d+ bytes, expected \d+"):
        ReferenceCache(tmp_path / "cache", **args)
    np.save(values, np.zeros((N, D + 1), dtype=np.float32))
    with pytest.raises(ReferenceCacheError, match=r"values.npy holds float32 \(50, 4\), meta.json says float32 \(50, 3\)"):
        ReferenceCache(tmp_path / "cache", **args)
    (tmp_path / "cache" / "meta.json").write_text("{not json")
    with pytest.raises(ReferenceCacheError, match="meta.json is damaged"):
        ReferenceCache(tmp_path / "cache", **args)
    (tmp_path / "cache" / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ReferenceCacheError, match="not an xrisk reference cache"):
        ReferenceCache(tmp_path / "cache", **args)
    with pytest.raises(ReferenceCacheError, match="no reference cache"):
        ReferenceCache(tmp_path / "nowhere", create=False, **args)
