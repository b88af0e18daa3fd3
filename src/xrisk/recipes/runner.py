"""``RunContext``: the run folder, progress output and checkpoints of one ``xrisk run``.

A recipe receives a :class:`RunContext` and uses only these calls (a stable API)::

    start = ctx.resume(model=model, loss=loss, optimizer=opt, sampler=sampler)  # epochs done
    bar = ctx.progress(total_steps, "train")
    for epoch in range(start + 1, args.epochs + 1):
        ...                                     # train; bar.update(loss=...)
        ctx.log_epoch(epoch, {"train_loss": ..., "test_auroc": ...})
        ctx.save(model=model, loss=loss, optimizer=opt, sampler=sampler, epoch=epoch)
    bar.close()
    return ctx.finish({"test_auroc": ...})

The run folder ``ctx.out_dir`` holds

* ``config.json``: the recipe name, every command-line argument, values the recipe resolved
  (:meth:`RunContext.update_config`), library versions, the command line and start time;
* ``metrics.jsonl``: one JSON object per epoch (``{"epoch": 3, "train_loss": ..., ...}``);
* ``metrics.json``: the final metrics (written by :meth:`RunContext.finish`);
* ``checkpoint.pt``: model, loss and optimizer state plus epoch, RNG states, sampler state and
  the metrics history (:func:`xrisk.save_checkpoint`, atomic), rewritten every epoch;
* ``*.png``: metric curves (needs matplotlib, the ``plot`` extra).

Resuming (``--resume`` with the same ``--out``) restores all of it, so the run continues
bit-identically: a run of 2 epochs resumed to 4 gives the same numbers as a 4-epoch run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

import xrisk
from xrisk.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from xrisk.recipes.progress import ProgressBar

__all__ = ["RunContext", "RESUME_FREE_ARGS"]

#: Arguments that may change between a run and its resumption (they do not change the math).
RESUME_FREE_ARGS: frozenset[str] = frozenset({"epochs", "resume", "quiet", "out", "no_plot", "recipe", "command"})

CHECKPOINT_NAME = "checkpoint.pt"


def _jsonable(v: Any) -> Any:
    """Plain JSON form of an argument value (paths and other objects become strings)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _clean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[str(k)] = _jsonable(v)
    return out


def versions() -> dict[str, str]:
    """Versions of xrisk, torch, numpy and Python (recorded in ``config.json``)."""
    return {
        "xrisk": xrisk.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU, numpy, Python ``random``) as checkpointable data."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RunContext:
    """Run folder, progress bar and checkpoints of one recipe run.

    Args:
        out_dir: the run folder (created). Without ``resume`` it must not already hold a
            checkpoint (so a finished run is never overwritten by accident).
        recipe: recipe name (written to ``config.json``).
        args: the parsed command-line arguments; all of them go to ``config.json`` and the
            checkpoint, and on resume every argument outside :data:`RESUME_FREE_ARGS` must equal
            the stored one.
        quiet: silence the progress bar and notices.
        resume: continue from ``out_dir/checkpoint.pt`` (:meth:`resume` loads it).
        plot: write PNG plots of the metric curves in :meth:`finish` (needs matplotlib).
        stream: where progress and notices go (default ``sys.stderr``).

    Attributes:
        out_dir: :class:`pathlib.Path` of the run folder.
        history: the per-epoch metrics logged so far (restored on resume).
        config: the content of ``config.json``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        recipe: str,
        args: argparse.Namespace | Mapping[str, Any] | None = None,
        quiet: bool = False,
        resume: bool = False,
        plot: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.recipe = recipe
        raw = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.args: dict[str, Any] = {k: _jsonable(v) for k, v in raw.items() if not callable(v)}
        self.quiet = quiet
        self.resume_requested = resume
        self.plot = plot
        self.stream = stream if stream is not None else sys.stderr
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        if self.checkpoint_path.exists() and not resume:
            raise FileExistsError(
                f"{self.out_dir} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it "
                "or choose another --out"
            )
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.config: dict[str, Any] = {
            "recipe": recipe,
            "args": self.args,
            "resolved": {},
            "versions": versions(),
            "command": " ".join(sys.argv),
            "started": now,
        }
        if resume and self.checkpoint_path.exists():
            # Fail before touching the folder if the arguments differ from the checkpoint's.
            payload = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            self._check_args(payload.get("extra", {}) if isinstance(payload, dict) else {})
            old_config = self.out_dir / "config.json"
            if old_config.exists():
                previous = json.loads(old_config.read_text())
                self.config["started"] = previous.get("started", now)
                self.config["resumed"] = [*previous.get("resumed", []), now]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._bars: list[ProgressBar] = []

    # ------------------------------------------------------------------ output
    def notice(self, message: str) -> None:
        """One line to stderr (``xrisk: message``) unless quiet; goes above an open bar."""
        if self.quiet:
            return
        line = f"xrisk: {message}"
        open_bars = [b for b in self._bars if not b._closed]
        if open_bars:
            open_bars[-1].write(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def progress(self, total_steps: int, desc: str = "") -> ProgressBar:
        """A :class:`~xrisk.recipes.progress.ProgressBar` on stderr over ``total_steps`` steps.

        Silent under ``--quiet``. Epoch summaries from :meth:`log_epoch` are written above it.
        """
        bar = ProgressBar(total_steps, desc, stream=self.stream, enabled=not self.quiet)
        self._bars.append(bar)
        return bar

    def update_config(self, **values: Any) -> None:
        """Record values the recipe resolved (per-loss defaults, data sizes) in ``config.json``."""
        self.config["resolved"].update({k: _jsonable(v) for k, v in values.items()})
        self._write_config()

    def _write_config(self) -> None:
        tmp = self.out_dir / "config.json.tmp"
        tmp.write_text(json.dumps(self.config, indent=2, sort_keys=False) + "\n")
        tmp.replace(self.out_dir / "config.json")

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Append ``{"epoch": epoch, **metrics}`` to ``metrics.jsonl`` and the history.

        ``epoch`` counts completed epochs (1 after the first). Tensor and numpy values become
        Python numbers. The summary line is shown above the progress bar unless quiet.
        """
        row = {"epoch": int(epoch), **_clean_metrics(metrics)}
        self.history.append(row)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if not self.quiet:
            summary = " ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"
            )
            self.notice(f"epoch {epoch}: {summary}")

    def _rewrite_history(self) -> None:
        with open(self.out_dir / "metrics.jsonl", "w") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save(
        self,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        epoch: int,
        sampler: Any = None,
        **extra: Any,
    ) -> Path:
        """Write ``checkpoint.pt``: the objects' state, ``epoch`` (epochs completed), the global
        RNG states, the sampler's state, the metrics history, the arguments and ``extra``
        (plain data, returned by :meth:`resume_extra` after a resume).
        """
        payload: dict[str, Any] = {
            "epoch": int(epoch),
            "rng": _rng_state(),
            "history": self.history,
            "args": self.args,
            "recipe": self.recipe,
            "user": dict(extra),
        }
        if sampler is not None:
            payload["sampler"] = _sampler_state(sampler, epoch)
        return save_checkpoint(self.checkpoint_path, model=model, loss=loss, optimizer=optimizer, extra=payload)

    def resume(
        self,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        sampler: Any = None,
    ) -> int:
        """Restore the checkpoint into the given objects and return the number of epochs done.

        Returns 0 (and changes nothing) when the run was not started with ``resume=True``, or
        when ``--resume`` finds no checkpoint yet (a notice says so). Call it after building
        the model, loss, optimizer and sampler and before training.

        Raises:
            CheckpointMismatchError: the checkpoint was made by another recipe, with other
                arguments (data set, loss, sizes, seed ...; only :data:`RESUME_FREE_ARGS` may
                differ), or for another loss class, data-set size or model.
        """
        self._user_extra: dict[str, Any] = {}
        if not self.resume_requested:
            return 0
        if not self.checkpoint_path.exists():
            self.notice(f"no checkpoint in {self.out_dir}; starting from epoch 0")
            return 0
        extra = load_checkpoint(self.checkpoint_path, model=model, loss=loss, optimizer=optimizer)
        self._check_args(extra)  # checked at construction too; the file may have changed since
        self.history = list(extra.get("history", []))
        self._rewrite_history()
        epoch = int(extra["epoch"])
        if sampler is not None and "sampler" in extra:
            _load_sampler_state(sampler, extra["sampler"])
        _set_rng_state(extra["rng"])
        self._user_extra = dict(extra.get("user", {}))
        self.start_epoch = epoch
        self.config["resumed_from_epoch"] = epoch
        self._write_config()
        self.notice(f"resumed {self.out_dir} after epoch {epoch}")
        return epoch

    def resume_extra(self) -> dict[str, Any]:
        """The ``extra`` keyword values given to :meth:`save`, as restored by :meth:`resume` ({} if none)."""
        return dict(getattr(self, "_user_extra", {}))

    def _check_args(self, stored: Mapping[str, Any]) -> None:
        if stored.get("recipe") not in (None, self.recipe):
            raise CheckpointMismatchError(
                f"{self.checkpoint_path} was made by recipe {stored.get('recipe')!r}, not {self.recipe!r}"
            )
        old = stored.get("args", {})
        keys = (set(old) | set(self.args)) - RESUME_FREE_ARGS
        diff = sorted(k for k in keys if old.get(k) != self.args.get(k))
        if diff:
            changes = ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r} -> {self.args.get(k)!r}" for k in diff)
            raise CheckpointMismatchError(
                f"cannot resume {self.out_dir}: the checkpoint was made with other arguments ({changes}); "
                "only --epochs, --quiet and --no-plot may change on resume; use another --out for a new run"
            )

    # ------------------------------------------------------------------ end
    def finish(self, final_metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``metrics.json`` and the plots, close open bars; return the cleaned metrics."""
        for bar in self._bars:
            bar.close()
        final = _clean_metrics(final_metrics)
        tmp = self.out_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(final, indent=2) + "\n")
        tmp.replace(self.out_dir / "metrics.json")
        self.config["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._write_config()
        if self.plot and self.history:
            from xrisk.recipes.plots import PlotsUnavailable, plot_history

            try:
                plot_history(self.history, self.out_dir, title=self.recipe)
            except PlotsUnavailable as e:
                self.notice(str(e))
        return final


def _sampler_state(sampler: Any, epoch: int) -> dict[str, Any]:
    """A sampler's resumable state: its ``state_dict()`` if it has one, else the epoch."""
    if callable(getattr(sampler, "state_dict", None)):
        return {"state_dict": sampler.state_dict()}
    return {"epoch": int(epoch)}


def _load_sampler_state(sampler: Any, state: Mapping[str, Any]) -> None:
    if "state_dict" in state and callable(getattr(sampler, "load_state_dict", None)):
        sampler.load_state_dict(state["state_dict"])
    elif callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(int(state.get("epoch", 0)))
