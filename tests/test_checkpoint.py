"""save_checkpoint / load_checkpoint: all-or-nothing loads, safe `extra`, one error type for bad files,
loss settings in the metadata, file mode from the umask."""

from __future__ import annotations

import datetime
import enum
import os
import pathlib
import pickle
import zipfile
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pytest
import torch
from torch import nn

import xrisk
from xrisk.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_settings,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from xrisk.losses import APLoss, GlobalContrastiveLoss


def _snapshot(*objs):
    out = []
    for obj in objs:
        sd = obj.state_dict()
        if isinstance(obj, torch.optim.Optimizer):
            out.append(repr(sd["param_groups"]) + repr({k: {n: v.clone() if torch.is_tensor(v) else v
                                                             for n, v in s.items()} for k, s in sd["state"].items()}))
        else:
            out.append({k: v.clone() for k, v in sd.items()})
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a == b


def _trained(seed, width=4, num_samples=20):
    """A model, an APLoss with written state and an Adam with state, all differing with ``seed``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 1))
    loss = APLoss(num_samples)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(8, 3)
    y = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0])
    value = loss(torch.sigmoid(model(x).squeeze(1)), y, torch.arange(8) + seed % 5)
    value.backward()
    opt.step()
    return model, loss, opt


def test_error_types_are_exported_and_related():
    assert xrisk.CheckpointError is CheckpointError and xrisk.CheckpointMismatchError is CheckpointMismatchError
    assert issubclass(CheckpointMismatchError, CheckpointError) and issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("bad", ["model", "loss", "optimizer"])
def test_load_is_all_or_nothing(tmp_path, bad):
    """Whichever part does not fit, no object is changed (main loaded the loss before checking the model)."""
    path = save_checkpoint(tmp_path / "c.pt", **dict(zip(("model", "loss", "optimizer"), _trained(0))))
    model, loss, opt = _trained(1)
    if bad == "model":
        model, _, opt = _trained(1, width=5)  # other layer width
    elif bad == "loss":
        loss = APLoss(21)  # other data-set size
    else:
        opt = torch.optim.Adam([{"params": list(model.parameters())[:2]}, {"params": list(model.parameters())[2:]}])
    before = _snapshot(model, loss, opt)
    with pytest.raises(CheckpointMismatchError, match=bad if bad != "loss" else "20 samples") as e:
        load_checkpoint(path, model=model, loss=loss, optimizer=opt)
    assert str(path) in str(e.value)
    assert all(_same(a, b) for a, b in zip(before, _snapshot(model, loss, opt)))


def test_a_failing_load_hook_undoes_the_parts_loaded_before_it(tmp_path):
    class Fussy(nn.Linear):
        def _load_from_state_dict(self, *args, **kwargs):
            raise RuntimeError("refuses any state")

    model0, loss0, opt0 = _trained(0)
    path = save_checkpoint(tmp_path / "c.pt", model=Fussy(2, 2), loss=loss0, optimizer=opt0)
    _, loss, opt = _trained(1)
    opt = torch.optim.Adam(model0.parameters(), lr=0.5)
    opt.load_state_dict(opt0.state_dict())
    opt.param_groups[0]["lr"] = 0.5
    before = _snapshot(loss, opt)
    with pytest.raises(CheckpointMismatchError, match="refuses any state"):
        load_checkpoint(path, model=Fussy(2, 2), loss=loss, optimizer=opt)
    assert all(_same(a, b) for a, b in zip(before, _snapshot(loss, opt)))


def test_loss_settings_are_stored_and_must_match(tmp_path):
    """A unimodal GCL checkpoint loaded into a bimodal loss (same state shapes) used to load silently."""
    uni = GlobalContrastiveLoss(10, mode="unimodal")
    path = save_checkpoint(tmp_path / "c.pt", loss=uni)
    settings = read_checkpoint(path)["loss_meta"]["settings"]
    assert settings["mode"] == "unimodal" and settings["temperature"] == "fixed"
    with pytest.raises(CheckpointMismatchError, match="mode='unimodal' in the checkpoint, 'bimodal' here"):
        load_checkpoint(path, loss=GlobalContrastiveLoss(10, mode="bimodal"))
    with pytest.raises(CheckpointMismatchError, match="temperature"):
        load_checkpoint(path, loss=GlobalContrastiveLoss(10, mode="unimodal", temperature="individual"))
    load_checkpoint(path, loss=GlobalContrastiveLoss(10, mode="unimodal"))
    two = save_checkpoint(tmp_path / "t.pt", loss=APLoss(10, num_tasks=2))
    with pytest.raises(CheckpointMismatchError, match="num_tasks=2 in the checkpoint, 1 here"):
        load_checkpoint(two, loss=APLoss(10))


def test_a_loss_extends_the_settings_hook(tmp_path):
    from xrisk.checkpoint import default_checkpoint_settings

    class Custom(APLoss):
        def __init__(self, n, k):
            super().__init__(n)
            self.k = k

        def checkpoint_settings(self):
            return {**default_checkpoint_settings(self), "k": self.k}

    assert checkpoint_settings(Custom(5, 3)) == {**checkpoint_settings(APLoss(5)), "k": 3}
    path = save_checkpoint(tmp_path / "c.pt", loss=Custom(5, 3))
    with pytest.raises(CheckpointMismatchError, match="k=3 in the checkpoint, 4 here"):
        load_checkpoint(path, loss=Custom(5, 4))


class _Color(enum.Enum):
    RED = 1


@dataclass
class _Point:
    x: int


# (value, what load_checkpoint returns) -- or TypeError: refused at save time
EXTRA_VALUES = [
    (np.float32(1.5), 1.5),
    (np.float64(2.25), 2.25),
    (np.int64(7), 7),
    (np.bool_(True), True),
    (np.array([1.0, 2.0]), torch.tensor([1.0, 2.0], dtype=torch.float64)),
    (np.array([[1, 2], [3, 4]], dtype=np.int32), torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)),
    (np.array(3.0), torch.tensor(3.0, dtype=torch.float64)),
    (np.arange(6)[::2], torch.tensor([0, 2, 4])),
    (pathlib.Path("runs/a"), "runs/a"),
    (pathlib.PurePosixPath("/x/y"), "/x/y"),
    (datetime.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
    (datetime.date(2026, 1, 2), "2026-01-02"),
    ({"a": [np.int64(1), (pathlib.Path("p"), np.float32(0.5))]}, {"a": [1, ("p", 0.5)]}),
    ({np.int64(3): "k"}, {3: "k"}),
    ({1, 2}, {1, 2}),
    (None, None),
    (float("nan"), "nan"),
    (b"raw", b"raw"),
    (torch.tensor([1.0], requires_grad=True), torch.tensor([1.0])),
    (torch.float16, torch.float16),
    (np.array(["a", "b"]), TypeError),
    (np.array([object()], dtype=object), TypeError),
    (_Color.RED, TypeError),
    (_Point(1), TypeError),
    (Decimal("1.5"), TypeError),
    (enum.IntEnum("E", "A").A, TypeError),
    (np.str_("s"), "s"),
    (frozenset({1}), TypeError),
    (object(), TypeError),
    (lambda: 1, TypeError),
    ([1, {"deep": object()}], TypeError),
]


@pytest.mark.parametrize("value, expected", EXTRA_VALUES, ids=[f"{type(v).__name__}-{i}" for i, (v, _) in
                                                               enumerate(EXTRA_VALUES)])
def test_extra_values_are_converted_or_refused_at_save_time(tmp_path, value, expected):
    path = tmp_path / "c.pt"
    if expected is TypeError:
        with pytest.raises(TypeError, match=r"extra\['v'\]"):
            save_checkpoint(path, extra={"v": value})
        assert not path.exists() and not list(tmp_path.iterdir())  # nothing written, no temporary left
        return
    save_checkpoint(path, extra={"v": value})
    got = torch.load(path, weights_only=True)["extra"]["v"]  # the safe load always works
    assert load_checkpoint(path)["v"] is not None or expected is None
    if expected == "nan":
        assert got != got
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected) and got.dtype == expected.dtype and not got.requires_grad
    else:
        assert got == expected and type(got) is type(expected)


def _damaged_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", model=nn.Linear(30, 30), extra={"epoch": 1})
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "truncated-tail": data[:-5],
        "text": b"hello, this is not a checkpoint\n",
        "zeros": bytes(100),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["other-zip"] = tmp_path / "other.zip"
    with zipfile.ZipFile(paths["other-zip"], "w") as z:
        z.writestr("a.txt", "hi")
    paths["tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), paths["tensor"])
    paths["state-dict"] = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), paths["state-dict"])
    paths["pickle"] = tmp_path / "pickle.pt"
    paths["pickle"].write_bytes(pickle.dumps(_Point(1)))
    paths["module"] = tmp_path / "module.pt"
    torch.save({"format": 1, "extra": {}, "model": nn.Linear(2, 2)}, paths["module"])
    paths["future"] = tmp_path / "future.pt"
    torch.save({"format": 99, "extra": {}}, paths["future"])
    paths["no-extra"] = tmp_path / "noextra.pt"
    torch.save({"format": 1}, paths["no-extra"])
    return paths


DAMAGE = ["empty", "truncated", "truncated-tail", "text", "zeros", "other-zip", "tensor", "state-dict", "pickle",
          "module", "future", "no-extra"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_or_foreign_files_raise_one_error_naming_the_file(tmp_path, kind):
    path = _damaged_files(tmp_path)[kind]
    model = nn.Linear(30, 30)
    before = _snapshot(model)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, model=model)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert _same(before[0], _snapshot(model)[0])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_files_say_what_they_hold(tmp_path):
    paths = _damaged_files(tmp_path)
    for kind, words in [("empty", "empty"), ("truncated", "truncated or damaged"), ("text", "not a torch"),
                        ("tensor", "Tensor saved with torch.save"), ("state-dict", "plain state_dict"),
                        ("module", "safe load"), ("future", "format 99")]:
        with pytest.raises(CheckpointError, match=words):
            read_checkpoint(paths[kind])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(2, 2))
        other = tmp_path / "other.txt"
        other.write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask == other.stat().st_mode & 0o777
