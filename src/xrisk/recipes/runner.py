"""``RunContext``: the run folder, lock, progress output and checkpoints of one ``xrisk run``.

A recipe receives a :class:`RunContext` and uses only these calls (a stable API)::

    start = ctx.resume(model=model, loss=loss, optimizer=opt, sampler=sampler)  # epochs done
    bar = ctx.progress((args.epochs - start) * steps_per_epoch - ctx.start_step, "train")
    for epoch in range(start + 1, args.epochs + 1):
        sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed * 1000 + epoch)   # per-epoch randomness, if any
        acc = {"total": 0.0, "count": 0}                         # the epoch's running sums
        for batch in ctx.steps(epoch, batches_of(sampler), state=acc, generators=[g]):
            ...                                 # one optimisation step; bar.update(loss=...)
            acc["total"] += value; acc["count"] += 1
        ctx.log_epoch(epoch, {train_loss_key(loss): acc["total"] / acc["count"], "test_auroc": ...})
        ctx.save(epoch=epoch)                   # the objects given to resume()
    bar.close()
    return ctx.finish({"test_auroc": ...})

**Checkpoints inside an epoch.** :meth:`RunContext.steps` wraps the epoch's batches. Every
``checkpoint_every`` steps (the ``--checkpoint-every`` flag; 0: only at epoch ends) and when the
user presses Ctrl-C it writes ``checkpoint.pt`` after the step in progress: model, loss,
optimizer, sampler, the global RNG states, the states of the ``generators`` it was given, the
``state`` dict of running sums and the step count. Ctrl-C then raises ``KeyboardInterrupt`` (a
second Ctrl-C stops at once; outside ``steps``, e.g. during an evaluation, Ctrl-C stops at once
and the last checkpoint stays valid). On ``--resume``, ``steps`` of that epoch skips the batches already
done, restores the RNG/generator states and ``state``, and continues: an interrupted and resumed
run equals an uninterrupted one bit for bit. The rules for a recipe: iterate the epoch's batches
through ``ctx.steps``, keep every running sum the epoch's metrics need in ``state`` (plain data),
draw per-step randomness from the global RNG or from ``generators``, and build the epoch's
iterator from ``(seed, epoch)`` only (the batches of an epoch must not depend on what ran before).

The run folder ``ctx.out_dir`` holds

* ``config.json``: the recipe name, every command-line argument, values the recipe resolved
  (:meth:`RunContext.update_config`), library versions, the command line and start time;
* ``metrics.jsonl``: one JSON object per epoch (``{"epoch": 3, "train_surrogate": ..., ...}``);
* ``metrics.json``: the final metrics (written by :meth:`RunContext.finish`);
* ``checkpoint.pt``: model, loss and optimizer state plus epoch, step, RNG states, sampler state
  and the metrics history (:func:`xrisk.save_checkpoint`, atomic), rewritten every epoch, every
  ``checkpoint_every`` steps and on Ctrl-C;
* ``run.lock`` while the run is alive (:class:`~xrisk.recipes.lock.RunLock`: a second run into the
  same folder is refused; the lock of a dead run is taken over);
* ``*.png``: metric curves (needs matplotlib, the ``plot`` extra).

Metric names are the same in every recipe: ``train_loss`` is the mean value of a loss that is
itself the objective (cross-entropy, focal, NT-Xent, InfoNCE); ``train_surrogate`` the mean value
of an X-risk loss's surrogate (its gradient is the method's, its value is not the objective and
can be negative); ``train_objective`` the mean of that loss's ``objective()`` estimate
(:func:`train_loss_key` picks the first two names).

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
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

import numpy as np
import torch
from torch import nn

import xrisk
from xrisk.checkpoint import CheckpointError, CheckpointMismatchError, _restore, read_checkpoint, save_checkpoint
from xrisk.recipes.lock import RunLock
from xrisk.recipes.progress import ProgressBar

__all__ = ["RunContext", "RESUME_FREE_ARGS", "DEFAULT_CHECKPOINT_EVERY", "train_loss_key"]

#: Arguments that may change between a run and its resumption (they do not change the math).
RESUME_FREE_ARGS: frozenset[str] = frozenset(
    {"epochs", "resume", "quiet", "out", "no_plot", "recipe", "command", "checkpoint_every"}
)

#: Steps between two checkpoints inside an epoch (``--checkpoint-every``; 0: epoch ends and Ctrl-C only).
DEFAULT_CHECKPOINT_EVERY = 500

T = TypeVar("T")

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




def train_loss_key(loss: Any) -> str:
    """``"train_surrogate"`` for a loss whose value is a surrogate (it has ``objective()``, the estimate
    of what it optimises: every X-risk loss), else ``"train_loss"`` (cross-entropy, focal, NT-Xent,
    InfoNCE, ...: the value is the objective)."""
    return "train_surrogate" if callable(getattr(loss, "objective", None)) else "train_loss"


class RunContext:
    """Run folder, lock, progress bar and checkpoints of one recipe run.

    Args:
        out_dir: the run folder (created). Without ``resume`` it must not already hold a
            checkpoint (so a finished run is never overwritten by accident). The folder is locked
            (:class:`~xrisk.recipes.lock.RunLock`) until :meth:`finish` or :meth:`close`.
        recipe: recipe name (written to ``config.json``).
        args: the parsed command-line arguments; all of them go to ``config.json`` and the
            checkpoint, and on resume every argument outside :data:`RESUME_FREE_ARGS` must equal
            the stored one.
        quiet: silence the progress bar and notices.
        resume: continue from ``out_dir/checkpoint.pt``: the file is read once, here, and checked against
            ``args``; :meth:`resume` validates the parts and restores them from that read.
        plot: write PNG plots of the metric curves in :meth:`finish` (needs matplotlib).
        stream: where progress and notices go (default ``sys.stderr``).
        checkpoint_every: write a checkpoint every this many steps of :meth:`steps` (0: only at
            epoch ends and on Ctrl-C).

    Attributes:
        out_dir: :class:`pathlib.Path` of the run folder.
        history: the per-epoch metrics logged so far (restored on resume).
        config: the content of ``config.json``.
        start_epoch: epochs completed before this process started (set by :meth:`resume`).
        start_step: steps of epoch ``start_epoch + 1`` completed before this process started.
        last_checkpoint: ``(epoch, step)`` of the last checkpoint written or loaded (``None``: none).

    Raises:
        RunFolderLocked: another live run holds the folder.
        FileExistsError: the folder holds a checkpoint and ``resume`` is False.
        CheckpointError: on resume, the checkpoint or ``config.json`` is damaged or foreign, or
            (:class:`~xrisk.checkpoint.CheckpointMismatchError`) was made with other arguments.
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
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
        self.out_dir = Path(out_dir)
        self.recipe = recipe
        raw = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.args: dict[str, Any] = {k: _jsonable(v) for k, v in raw.items() if not callable(v)}
        self.quiet = quiet
        self.resume_requested = resume
        self.plot = plot
        self.stream = stream if stream is not None else sys.stderr
        self.checkpoint_every = checkpoint_every
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.start_step = 0
        self.last_checkpoint: tuple[int, int] | None = None
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self._bars: list[ProgressBar] = []
        self._objects: dict[str, Any] | None = None
        self._user_extra: dict[str, Any] = {}
        self._pending: dict[str, Any] | None = None  # a mid-epoch checkpoint waiting for steps()
        self._checkpoint: dict[str, Any] | None = None  # the file read (once) on --resume, until resume() loads it
        self._interrupted = False
        self._old_handler: Any = None
        self._handler_installed = False
        created = not self.out_dir.exists()
        self._lock = RunLock(self.out_dir).acquire()
        try:
            self._open(resume)
        except BaseException:
            self._lock.release()
            if created:
                shutil.rmtree(self.out_dir, ignore_errors=True)
            raise
        if self._lock.stale is not None:
            from xrisk.recipes.lock import describe

            self.notice(f"took over the lock of a run that is gone ({describe(self._lock.stale)})")

    def _open(self, resume: bool) -> None:
        if self.checkpoint_path.exists() and not resume:
            raise FileExistsError(
                f"{self.out_dir} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it "
                "or choose another --out"
            )
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.config: dict[str, Any] = {
            "recipe": self.recipe,
            "args": self.args,
            "resolved": {},
            "versions": versions(),
            "command": " ".join(sys.argv),
            "started": now,
        }
        if resume and self.checkpoint_path.exists():
            self._read_run_checkpoint()  # fails before touching the folder if the arguments differ
            old_config = self.out_dir / "config.json"
            if old_config.exists():
                try:
                    previous = json.loads(old_config.read_text(encoding="utf-8"))
                    if not isinstance(previous, dict):
                        raise ValueError(f"it holds a {type(previous).__name__}, not an object")
                except (ValueError, UnicodeDecodeError) as e:
                    raise CheckpointError(f"cannot resume: {old_config} is damaged ({e}); "
                                          "restore it or delete it to resume without it") from None
                self.config["started"] = previous.get("started", now)
                self.config["resumed"] = [*previous.get("resumed", []), now]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()

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
        bar = ProgressBar(max(int(total_steps), 0), desc, stream=self.stream, enabled=not self.quiet)
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
        """Write ``checkpoint.pt`` at the end of epoch ``epoch`` (epochs completed): the objects'
        state, the global RNG states, the sampler's state, the metrics history, the arguments and
        ``extra`` (plain data, returned by :meth:`resume_extra` after a resume).

        Objects not given default to those given to :meth:`resume`.
        """
        objects = self._with_defaults(model=model, loss=loss, optimizer=optimizer, sampler=sampler)
        self._user_extra = dict(extra)
        return self._write(objects, epoch=int(epoch), step=0, user=extra)

    def _with_defaults(self, **given: Any) -> dict[str, Any]:
        known = self._objects or {}
        return {k: v if v is not None else known.get(k) for k, v in given.items()}

    def _write(self, objects: Mapping[str, Any], *, epoch: int, step: int, user: Mapping[str, Any],
               progress: Mapping[str, Any] | None = None) -> Path:
        payload: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "rng": _rng_state(),
            "history": self.history,
            "args": self.args,
            "recipe": self.recipe,
            "user": dict(user),
        }
        if progress is not None:
            payload["in_epoch"] = dict(progress)
        if objects.get("sampler") is not None:
            payload["sampler"] = _sampler_state(objects["sampler"], epoch)
        path = save_checkpoint(self.checkpoint_path, model=objects.get("model"), loss=objects.get("loss"),
                               optimizer=objects.get("optimizer"), extra=payload)
        self.last_checkpoint = (epoch, step)
        return path

    def resume(
        self,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        sampler: Any = None,
    ) -> int:
        """Register the run's objects and, when resuming, restore the checkpoint into them; return the
        number of epochs completed.

        The objects are the ones :meth:`steps` checkpoints and :meth:`save` saves by default, so call
        it once, after building model, loss, optimizer and sampler and before training. Returns 0
        (and restores nothing) when the run was not started with ``resume=True``, or when
        ``--resume`` finds no checkpoint yet (a notice says so). After a checkpoint taken inside
        epoch ``e``, it returns ``e - 1`` and sets :attr:`start_step`; :meth:`steps` of epoch ``e``
        then continues from there.

        Raises:
            CheckpointError: the checkpoint is damaged or not an xrisk checkpoint.
            CheckpointMismatchError: the checkpoint was made by another recipe, with other
                arguments (data set, loss, sizes, seed ...; only :data:`RESUME_FREE_ARGS` may
                differ), for another loss class, data-set size, loss settings or model, or it is
                past the requested ``--epochs``. Nothing is restored then.
        """
        self._objects = {"model": model, "loss": loss, "optimizer": optimizer, "sampler": sampler}
        self._user_extra = {}
        if not self.resume_requested:
            return 0
        if not self.checkpoint_path.exists():
            self.notice(f"no checkpoint in {self.out_dir}; starting from epoch 0")
            return 0
        payload = self._read_run_checkpoint()  # the file read at construction: validated, restored, never re-read
        extra = payload["extra"]
        epoch, step = int(extra.get("epoch", 0)), int(extra.get("step", 0))
        wanted = self.args.get("epochs")
        if isinstance(wanted, int) and (epoch > wanted or step and epoch + 1 > wanted):
            where = f"inside epoch {epoch + 1} (step {step})" if step else f"after epoch {epoch}"
            raise CheckpointMismatchError(
                f"cannot resume {self.out_dir} with --epochs {wanted}: its checkpoint is {where}; "
                f"pass --epochs {epoch + (1 if step else 0)} or more"
            )
        previous_sampler = None
        if sampler is not None and "sampler" in extra:  # checked first: undone if the rest does not fit
            previous_sampler = _sampler_state(sampler, 0)
            try:
                _load_sampler_state(sampler, extra["sampler"])
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointMismatchError(f"sampler state in {self.checkpoint_path} does not fit: {e}") from e
        try:
            extra = _restore(self.checkpoint_path, payload, model=model, loss=loss, optimizer=optimizer)
        except BaseException:
            if previous_sampler is not None:
                _load_sampler_state(sampler, previous_sampler)
            raise
        self._checkpoint = None  # loaded: free the memory
        self.history = list(extra.get("history", []))
        self._rewrite_history()
        _set_rng_state(extra["rng"])
        self._user_extra = dict(extra.get("user", {}))
        self.start_epoch, self.start_step = epoch, step
        self.last_checkpoint = (epoch, step)
        if step:
            self._pending = {"epoch": epoch + 1, "step": step, "rng": extra["rng"],
                             **dict(extra.get("in_epoch", {}))}
        self.config["resumed_from_epoch"] = epoch
        if step:
            self.config["resumed_from_step"] = step
        self._write_config()
        where = f"at step {step} of epoch {epoch + 1}" if step else f"after epoch {epoch}"
        self.notice(f"resumed {self.out_dir} {where}")
        return epoch

    def resume_extra(self) -> dict[str, Any]:
        """The ``extra`` keyword values given to :meth:`save`, as restored by :meth:`resume` ({} if none)."""
        return dict(self._user_extra)

    def _read_run_checkpoint(self) -> dict[str, Any]:
        """The run's checkpoint, read from disk once (kept until :meth:`resume` has loaded it), checked to be
        an xrisk run's with this run's arguments."""
        if self._checkpoint is None:
            payload = read_checkpoint(self.checkpoint_path)
            extra = payload["extra"]
            if not isinstance(extra.get("epoch"), int) or not isinstance(extra.get("rng"), dict):
                raise CheckpointError(f"{self.checkpoint_path} is a checkpoint but not of an xrisk run (no epoch or "
                                      "RNG state)")
            self._check_args(extra)
            self._checkpoint = payload
        return self._checkpoint

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
                "only --epochs, --checkpoint-every, --quiet and --no-plot may change on resume; "
                "use another --out for a new run"
            )

    # ------------------------------------------------------------------ steps
    def steps(
        self,
        epoch: int,
        batches: Iterable[T],
        *,
        state: dict[str, Any] | None = None,
        generators: Sequence[torch.Generator] = (),
    ) -> Iterator[T]:
        """Yield the batches of ``epoch`` (1-based), checkpointing inside the epoch.

        Args:
            epoch: the epoch being trained (``start_epoch + 1`` first).
            batches: the epoch's batches (rebuilt from ``(seed, epoch)`` on resume; see the module
                docstring).
            state: the epoch's running sums (plain data: numbers, lists, tensors), updated in place
                by the loop body; saved with every step checkpoint and restored on resume.
            generators: ``torch.Generator`` objects the loop body draws from (augmentations, ...);
                their states are saved and restored like the global RNG.

        After every ``checkpoint_every``-th step (not the epoch's last: :meth:`save` follows) and after
        the step during which the user pressed Ctrl-C, writes ``checkpoint.pt``; after Ctrl-C it
        then raises ``KeyboardInterrupt``. On the epoch a mid-epoch checkpoint was taken in, the
        batches done before it are skipped (drawn from ``batches`` and dropped) and the states are
        restored before the next one is yielded.

        Raises:
            RuntimeError: :meth:`resume` was not called first, or ``epoch`` is not the epoch the
                resumed checkpoint is in.
            CheckpointMismatchError: the checkpoint does not fit the epoch (fewer batches than
                steps done, another number of generators).
        """
        if self._objects is None:
            raise RuntimeError("call ctx.resume(model=..., loss=..., optimizer=...) before ctx.steps()")
        pending, self._pending = self._pending, None
        if pending is not None and pending["epoch"] != epoch:
            raise RuntimeError(f"the run resumed inside epoch {pending['epoch']}, but steps() was called for epoch {epoch}")
        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        generators = list(generators)
        it = iter(batches)
        step = 0
        if pending is not None:
            for step in range(1, pending["step"] + 1):
                if next(it, _END) is _END:
                    raise CheckpointMismatchError(
                        f"{self.checkpoint_path} is at step {pending['step']} of epoch {epoch}, "
                        f"but this epoch has only {step - 1} batches"
                    )
            saved = list(pending.get("generators", []))
            if len(saved) != len(generators):
                raise CheckpointMismatchError(
                    f"{self.checkpoint_path} holds {len(saved)} generator state(s), steps() was given {len(generators)}"
                )
            _set_rng_state(pending["rng"])
            for g, s in zip(generators, saved):
                g.set_state(s)
            if state is not None:
                state.update(pending.get("state", {}))
        self._install_sigint_handler()
        try:
            for batch in it:
                yield batch
                step += 1
                due = self.checkpoint_every and step % self.checkpoint_every == 0 and step != total
                if self._interrupted or due:
                    progress = {"state": dict(state or {}), "generators": [g.get_state() for g in generators]}
                    self._write(self._objects, epoch=epoch - 1, step=step, user=self._user_extra, progress=progress)
                    if self._interrupted:
                        where = f"step {step} of epoch {epoch}"
                        self.notice(f"interrupted: checkpoint written after {where}")
                        raise KeyboardInterrupt
        finally:
            self._restore_sigint_handler()

    def _install_sigint_handler(self) -> None:
        if self._handler_installed or threading.current_thread() is not threading.main_thread():
            return
        try:
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # pragma: no cover - not the main interpreter
            return
        self._handler_installed = True

    def _restore_sigint_handler(self) -> None:
        if self._handler_installed:
            signal.signal(signal.SIGINT, self._old_handler)
            self._handler_installed = False

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._interrupted:  # the second Ctrl-C: stop now
            self._restore_sigint_handler()
            raise KeyboardInterrupt
        self._interrupted = True  # only a flag: writing here could re-enter a stream being written

    # ------------------------------------------------------------------ end
    def finish(self, final_metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``metrics.json`` and the plots, close open bars, release the folder; return the cleaned metrics."""
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
        self.close()
        return final

    def close(self) -> None:
        """Restore the Ctrl-C handler and release the folder's lock (done by :meth:`finish`; idempotent)."""
        self._restore_sigint_handler()
        self._lock.release()
        self._checkpoint = None

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


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
