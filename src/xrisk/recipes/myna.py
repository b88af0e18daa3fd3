"""Myna recipes: ``xrisk run myna`` (contrastive pretraining on masked mel tokens) and ``xrisk run myna-probe``.

::

    xrisk run myna --data singularity --patch hybrid --mask 0.9 --epochs 20
    xrisk run myna --data ~/music --patch vertical --preset vit-s-32 --batch-size 256
    xrisk run myna-probe --ckpt runs/myna-20261201-101500 --task both

``myna`` reads the tracks once (``--data singularity``: Debian ``singularity-music``; or any folder of
FLAC/OGG/WAV/MP3 files), resamples them to 16 kHz, computes and caches one 128-band mel spectrogram per
track (:class:`~xrisk.models.audio.MelSpectrogram`), cuts tracks into ``--segment-seconds`` items, and
trains a :class:`~xrisk.models.audio.SpectrogramViT` with
:class:`~xrisk.losses.GlobalContrastiveLoss` (SogCLR, ``mode="unimodal"``, the reference's
``tau = 0.1``, ``gamma = 0.9``, ``eps = 1e-8``): each step draws two random ``--crop-frames`` crops of every
item of the batch (the positive pair, dataset index = item), keeps ``N - int(mask N)`` random tokens of
each view (the only augmentation) and runs the transformer on those. ``--patch hybrid`` computes the
loss once with each patch kind (the same loss module, so its estimators are updated twice per step, as in
the reference) and averages. ``--pitch-shift S`` instead (or in addition) shifts each view by a random
whole number of semitones in ``[-S, S]`` (:meth:`~xrisk.models.audio.MelSpectrogram.shift_pitch` on the
cached mel: the baseline of the Myna paper's pitch-preservation argument).

Per epoch: ``train_surrogate`` (the loss value, a surrogate: not the objective), ``train_objective`` (the
mean of the loss's estimate of the GCL objective), ``steps``, and
every ``--probe-every`` epochs and at the end the frozen-embedding probe scores of ``--probe``
(:func:`run_probe`): ``sonic_pi_test_acc`` (14 sample categories, Debian ``sonic-pi-samples``) and
``key_test_score`` (mir_eval weighted key score on music21 scores rendered to audio), each at the
best-validation probe setting and epoch, with ``*_valid`` next to them. Files that cannot be used are
skipped with a notice naming them and counted in ``config.json`` (``resolved.skipped_files``).

``myna-probe`` loads a ``myna`` run folder's checkpoint and runs the probes on its frozen encoder.

The loops are library functions (:func:`train_myna`, :func:`run_probe`) taking a config dataclass and an
optional :class:`~xrisk.recipes.runner.RunContext`, so the benchmark calls them in sweeps. Crops, masks
and pitch shifts come from a generator seeded by ``(seed, epoch)``: a resumed run repeats the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from xrisk.recipes._loop import NoProgress, config_from_args, epoch_generator, epoch_steps
from xrisk.recipes.flags import existing_path, number, text
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import train_loss_key

if TYPE_CHECKING:
    from xrisk.data.audio import AudioSet
    from xrisk.metrics.probe import ProbeResult
    from xrisk.recipes.runner import RunContext

__all__ = ["MynaConfig", "MynaResult", "ProbeTask", "build_model", "load_probe_task", "load_tracks", "run_probe", "train_myna",
           "PROBE_TASKS"]

PROBE_TASKS: tuple[str, ...] = ("sonic-pi", "keys")
_PROBE_CHOICES = ("none", "sonic-pi", "keys", "both")
_SAMPLE_RATE, _HOP = 16_000, 512


@dataclass
class MynaConfig:
    """Settings of :func:`train_myna` (the ``myna`` recipe; CLI flags of the same names).

    Attributes:
        data: ``"singularity"`` (Debian ``singularity-music``) or a folder of audio files.
        patch: ``"square"`` (16x16), ``"vertical"`` (128x2) or ``"hybrid"`` (both, losses averaged).
        preset: transformer size (:data:`xrisk.models.audio.PRESETS`).
        mask: fraction ``r`` of tokens dropped per view (``N - int(r N)`` kept); 0 keeps all.
        pitch_shift: shift each view by a random whole number of semitones in ``[-pitch_shift, pitch_shift]``
            (0: off).
        batch_size, epochs, lr, weight_decay: Adam at a constant learning rate (the reference's optimiser).
        tau, gamma: SogCLR temperature and moving-average weight on the new value.
        crop_frames: frames per crop (96 = 3.1 s; a multiple of 16 for square/hybrid, of 2 for vertical).
        segment_seconds: tracks are cut into items of this length (``None``: one item per track).
        max_frame_distance: the second crop starts within this many frames of the first (``None``: anywhere).
        out_dim: size of the contrastive embedding (the linear head).
        log_mel: feed ``log(1 + mel)`` instead of the power mel (the reference's ``--log_mel``).
        probe: ``"none"``, ``"sonic-pi"``, ``"keys"`` or ``"both"``; probe_every: probe every this many epochs
            (and after the last); probe_epochs: epochs of each probe of the grid.
        seed: seed of the initialisation, data order, crops, masks and shifts.
        max_steps: cap on steps per epoch (smoke runs); num_threads: ``torch.set_num_threads``.
        max_cpu_seconds: stop training once the training steps used this much process CPU time (benchmarks
            at equal training time; not a CLI flag: a run cut by time does not resume bit-identically).
    """

    data: str = "singularity"
    patch: Literal["square", "vertical", "hybrid"] = "hybrid"
    preset: str = "mini"
    mask: float = 0.9
    pitch_shift: int = 0
    batch_size: int = 32
    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 1e-5
    tau: float = 0.1
    gamma: float = 0.9
    crop_frames: int = 96
    segment_seconds: float | None = 20.0
    max_frame_distance: int | None = None
    out_dim: int = 128
    log_mel: bool = False
    probe: str = "sonic-pi"
    probe_every: int = 1
    probe_epochs: int = 30
    seed: int = 0
    max_steps: int | None = None
    num_threads: int | None = None
    max_cpu_seconds: float | None = None


# --------------------------------------------------------------------------------------------- data
def _front_end() -> nn.Module:
    from xrisk.models.audio import MelSpectrogram

    return MelSpectrogram(sample_rate=_SAMPLE_RATE, hop_length=_HOP)


def _prepare(mel: Tensor, log_mel: bool) -> Tensor:
    return torch.log1p(mel) if log_mel else mel


def load_tracks(config: MynaConfig, notice: Callable[[str], None] | None = None) -> AudioSet:
    """The training tracks of ``config.data`` with cached mel spectrograms (``log1p`` applied when
    ``config.log_mel``); every skipped file is passed to ``notice`` as one line naming it.

    Raises:
        UsageError: no file of the folder is usable (the message names the first reasons).
    """
    from xrisk.data.audio import AudioReadError, SkippedFile, load_audio_folder
    from xrisk.data.music import load_singularity_music

    def on_skip(s: SkippedFile) -> None:
        if notice is not None:
            notice(f"skipped {s.path}: {s.reason}")

    try:
        if config.data == "singularity":
            tracks = load_singularity_music(min_frames=config.crop_frames, on_skip=on_skip)
        else:
            tracks = load_audio_folder(config.data, min_frames=config.crop_frames, on_skip=on_skip,
                                       front_end=_front_end())
    except AudioReadError as e:
        raise UsageError(f"--data {config.data}: {e.reason}") from None
    tracks.mels = [_prepare(m, config.log_mel) for m in tracks.mels]
    return tracks


def build_model(config: MynaConfig) -> nn.Module:
    """The :class:`~xrisk.models.audio.SpectrogramViT` of ``config`` (seeded by the caller)."""
    from xrisk.models.audio import SpectrogramViT

    return SpectrogramViT.from_preset(config.preset, patch=config.patch, n_mels=128, n_frames=config.crop_frames,
                                      out_dim=config.out_dim)


def _check_config(config: MynaConfig) -> None:
    """Cross-flag rules (the recipe's ``validate`` hook, and again in :func:`train_myna`); raises UsageError
    naming the flag."""
    from xrisk.models.audio import PRESETS

    if config.patch not in ("square", "vertical", "hybrid"):
        raise UsageError(f"--patch must be square, vertical or hybrid, got {config.patch!r}")
    if config.preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {config.preset!r}")
    width = 2 if config.patch == "vertical" else 16
    if config.crop_frames % width or config.crop_frames < width:
        raise UsageError(f"--crop-frames {config.crop_frames} must be a positive multiple of {width} for "
                         f"--patch {config.patch}")
    if not 0.0 <= config.mask < 1.0:
        raise UsageError(f"--mask must lie in [0, 1), got {config.mask}")
    if config.data != "singularity" and not Path(config.data).is_dir():
        raise UsageError(f"--data must be 'singularity' or an existing folder, got {config.data!r}")
    if config.segment_seconds is not None and _segment_frames(config) < config.crop_frames:
        raise UsageError(f"--segment-seconds {config.segment_seconds} is shorter than a crop of "
                         f"{config.crop_frames} frames ({config.crop_frames * _HOP / _SAMPLE_RATE:.2f} s)")
    if config.probe not in _PROBE_CHOICES:
        raise UsageError(f"--probe must be one of {_PROBE_CHOICES}, got {config.probe!r}")


def _segment_frames(config: MynaConfig) -> int | None:
    if config.segment_seconds is None:
        return None
    return int(round(config.segment_seconds * _SAMPLE_RATE / _HOP))


# --------------------------------------------------------------------------------------------- probes
@dataclass
class ProbeTask:
    """A labelled probe data set: spectrograms, labels and a fixed train/valid/test split of the clips.

    Attributes:
        name: ``"sonic-pi"`` or ``"keys"``; metric: ``"acc"`` or ``"score"`` (the metric's name suffix).
        mels: ``[128, T_i]`` per clip (``log1p`` applied if the encoder was trained on it).
        labels: ``[N]`` class per clip; num_classes: ``K``.
        split: ``[N]`` 0 train, 1 valid, 2 test.
        score: ``score(labels, predictions) -> float``.
        skipped: files that could not be read.
    """

    name: str
    metric: str
    mels: list[Tensor]
    labels: Tensor
    num_classes: int
    split: Tensor
    score: Callable[[Tensor, Tensor], float]
    skipped: int = 0


def _stratified_split(labels: Tensor, seed: int) -> Tensor:
    """0/1/2 (train/valid/test) per item: per class 20 % valid and 20 % test (at least one each when the
    class has 3 or more items), the rest train."""
    g = torch.Generator().manual_seed(seed)
    split = torch.zeros_like(labels)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n = idx.numel()
        k = max(1, round(0.2 * n)) if n >= 3 else 0
        split[idx[:k]] = 2
        split[idx[k : 2 * k]] = 1
    return split


def load_probe_task(name: str, *, log_mel: bool = False, notice: Callable[[str], None] | None = None) -> ProbeTask:
    """``"sonic-pi"``: the 165 Sonic Pi samples, 14 categories, stratified 60/20/20 split, accuracy.
    ``"keys"``: :func:`~xrisk.data.key_corpus.render_key_corpus` (music21 scores, synthetic timbres, exact
    keys), 60/20/20 split **by piece** (a piece's transpositions stay in one part), weighted key score."""
    front_end = _front_end()
    if name == "sonic-pi":
        from xrisk.data.music import load_sonic_pi_samples
        from xrisk.metrics.probe import accuracy

        clips = load_sonic_pi_samples(front_end=front_end,
                                      on_skip=(lambda s: notice(f"skipped {s.path}: {s.reason}")) if notice else None)
        labels = torch.tensor(clips.labels)
        return ProbeTask("sonic-pi", "acc", [_prepare(m, log_mel) for m in clips.mels], labels,
                         len(clips.label_names or ()), _stratified_split(labels, 0), accuracy, len(clips.skipped))
    if name == "keys":
        from xrisk.data.key_corpus import render_key_corpus
        from xrisk.metrics.key import key_weighted_score

        keys = render_key_corpus()
        with torch.no_grad():
            mels = [_prepare(front_end(w), log_mel) for w in keys.waves]
        pieces = torch.tensor(keys.pieces)
        piece_split = _stratified_split(torch.zeros(len(keys.piece_names), dtype=torch.long), 0)
        return ProbeTask("keys", "score", mels, torch.tensor(keys.keys), 24, piece_split[pieces],
                         key_weighted_score)
    raise ValueError(f"probe task must be one of {PROBE_TASKS}, got {name!r}")


def run_probe(model: nn.Module, task: ProbeTask, *, frames: int, epochs: int = 30, seed: int = 0) -> ProbeResult:
    """Frozen-embedding probe of ``model.features`` on ``task`` (:func:`xrisk.metrics.probe.fit_probe`,
    default grid, chunks of ``frames`` frames). The model is put in ``eval()`` and left there."""
    from xrisk.metrics.probe import chunk_features, fit_probe

    model.eval()
    parts = []
    for s in (0, 1, 2):
        idx = (task.split == s).nonzero().flatten().tolist()
        parts.append(chunk_features(model.features, [task.mels[i] for i in idx], task.labels[idx], frames=frames))
    return fit_probe(*parts, num_classes=task.num_classes, score=task.score, epochs=epochs, seed=seed)


def _metric_prefix(task: ProbeTask) -> str:
    return "key" if task.name == "keys" else task.name.replace("-", "_")


def _probe_metrics(model: nn.Module, tasks: Sequence[ProbeTask], config: MynaConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    for task in tasks:
        r = run_probe(model, task, frames=config.crop_frames, epochs=config.probe_epochs, seed=config.seed)
        prefix = _metric_prefix(task)
        out[f"{prefix}_valid_{task.metric}"] = r.valid_score
        out[f"{prefix}_test_{task.metric}"] = r.test_score
    return out


def _tasks_of(probe: str) -> tuple[str, ...]:
    return {"none": (), "both": PROBE_TASKS}.get(probe, (probe,))


# --------------------------------------------------------------------------------------------- training
@dataclass
class MynaResult:
    """What :func:`train_myna` returns: the last epoch's ``metrics`` plus ``epochs``, ``skipped_files``, and
    ``cpu_seconds`` / ``total_steps`` of the training steps this call ran; the trained ``model`` (in ``eval()``
    after a probe) and the ``loss``."""

    metrics: dict[str, float]
    model: nn.Module
    loss: nn.Module


def _views(pairs: Any, index: Tensor, g: torch.Generator, config: MynaConfig,
           front_end: Any) -> tuple[Tensor, Tensor]:
    """The two crops of the items ``index`` (slices of the cached mel), each pitch-shifted by a random whole
    number of semitones in ``[-pitch_shift, pitch_shift]`` when ``front_end`` is given."""
    a, b, _ = pairs.batch(index, g)
    if front_end is None:
        return a, b
    s = config.pitch_shift
    return tuple(front_end.shift_pitch(v, torch.randint(-s, s + 1, (len(index),), generator=g)) for v in (a, b))


def train_myna(
    config: MynaConfig,
    ctx: RunContext | None = None,
    *,
    tracks: AudioSet | None = None,
    probe_tasks: Sequence[ProbeTask] | None = None,
) -> MynaResult:
    """Contrastive pretraining of Myna (see the module docstring).

    ``tracks`` / ``probe_tasks``: already loaded data (benchmarks reuse them across runs); by default
    they are loaded from ``config``. With ``ctx`` the run is logged and checkpointed (every epoch, every
    ``--checkpoint-every`` steps and on Ctrl-C) and resumes bit-identically, also from inside an epoch.
    """
    from xrisk.data.audio import CropPairs
    from xrisk.losses import GlobalContrastiveLoss

    _check_config(config)
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    notice = ctx.notice if ctx is not None else None
    if tracks is None:
        tracks = load_tracks(config, notice)
    if probe_tasks is None:
        probe_tasks = [load_probe_task(t, log_mel=config.log_mel, notice=notice) for t in _tasks_of(config.probe)]
    pairs = CropPairs(tracks.mels, config.crop_frames, segment_frames=_segment_frames(config),
                      max_frame_distance=config.max_frame_distance)
    n = pairs.num_samples
    if config.batch_size > n:
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {n} training items "
                         f"({len(tracks)} tracks cut into --segment-seconds {config.segment_seconds} items)")
    torch.manual_seed(config.seed)
    model = build_model(config)
    loss_fn = GlobalContrastiveLoss(n, mode="unimodal", temperature="fixed", tau=config.tau, gamma=config.gamma,
                                    eps=1e-8)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n // config.batch_size
    if config.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, int(config.max_steps))
    front_end = _front_end() if config.pitch_shift > 0 else None
    start = 0
    if ctx is not None:
        ctx.update_config(
            num_tracks=len(tracks), num_items=n, steps_per_epoch=steps_per_epoch,
            skipped_files=len(tracks.skipped), skipped=[{"path": s.path, "reason": s.reason} for s in tracks.skipped],
            tokens_per_view=[model.num_tokens(k) for k in model.kinds], parameters=sum(p.numel() for p in model.parameters()),
            probe_skipped_files=sum(t.skipped for t in probe_tasks), loss_class=type(loss_fn).__name__,
        )
        start = ctx.resume(model=model, loss=loss_fn, optimizer=opt)
    bar = (ctx.progress(steps_per_epoch * max(0, config.epochs - start) - ctx.start_step, f"myna/{config.patch}")
           if ctx is not None else NoProgress())
    loss_key = train_loss_key(loss_fn)  # "train_surrogate": the GCL value is not the objective
    metrics: dict[str, float] = {}
    cpu_used, total_steps = 0.0, 0
    for epoch in range(start + 1, config.epochs + 1):
        loss_fn.set_epoch(epoch - 1)
        model.train()
        g = epoch_generator(config.seed, epoch, salt=17)
        perm = torch.randperm(n, generator=g)
        acc = {"total": 0.0, "objective": 0.0, "steps": 0}
        t0 = time.perf_counter()
        for step in epoch_steps(ctx, epoch, range(steps_per_epoch), acc, g):
            if config.max_cpu_seconds is not None and cpu_used >= config.max_cpu_seconds:
                break
            c0 = time.process_time()
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            a, b = _views(pairs, idx, g, config, front_end)
            losses = []
            for kind in model.kinds:  # hybrid: one loss per patch kind (the loss's state is updated by each)
                za = model(a, kind, mask_ratio=config.mask, generator=g)
                zb = model(b, kind, mask_ratio=config.mask, generator=g)
                losses.append(loss_fn(za, zb, idx))
            loss = torch.stack(losses).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            cpu_used += time.process_time() - c0
            total_steps += 1
            acc["total"] += float(loss.detach())
            acc["objective"] += float(loss_fn.objective())
            acc["steps"] += 1
            bar.update(surrogate=float(loss.detach()))
        steps = max(1, int(acc["steps"]))
        metrics = {loss_key: acc["total"] / steps, "train_objective": acc["objective"] / steps,
                   "steps": float(acc["steps"]), "epoch_seconds": time.perf_counter() - t0}
        last = epoch == config.epochs or (config.max_cpu_seconds is not None and cpu_used >= config.max_cpu_seconds)
        if probe_tasks and (epoch % config.probe_every == 0 or last):
            metrics.update(_probe_metrics(model, probe_tasks, config))
        if ctx is not None:
            ctx.log_epoch(epoch, metrics)
            ctx.save(epoch=epoch)
        if last:
            break
    bar.close()
    if not metrics and ctx is not None and ctx.history:
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    final = {**metrics, "epochs": float(config.epochs), "skipped_files": float(len(tracks.skipped)),
             "cpu_seconds": cpu_used, "total_steps": float(total_steps)}
    return MynaResult(final, model, loss_fn)


# --------------------------------------------------------------------------------------------- CLI
def _data_value(v: str) -> bool:
    return v == "singularity" or Path(v).expanduser().is_dir()


def _myna_arguments(p: argparse.ArgumentParser) -> None:
    from xrisk.models.audio import PRESETS

    p.add_argument("--data", type=text(pattern_help="'singularity' or an existing folder of audio files",
                                       check=_data_value), default="singularity",
                   help="singularity (Debian singularity-music) or a folder of FLAC/OGG/WAV/MP3 files")
    p.add_argument("--patch", default="hybrid", choices=("square", "vertical", "hybrid"))
    p.add_argument("--preset", default="mini", choices=tuple(PRESETS), help="transformer size")
    p.add_argument("--mask", type=number(float, ge=0, lt=1), default=0.9, help="fraction of tokens dropped per view")
    p.add_argument("--pitch-shift", type=number(int, ge=0), default=0,
                   help="shift each view by a random number of semitones in [-S, S] (0: off)")
    p.add_argument("--batch-size", type=number(int, ge=2), default=32, help="items per step")
    p.add_argument("--epochs", type=number(int, ge=1), default=10)
    p.add_argument("--lr", type=number(float, gt=0), default=3e-4, help="Adam learning rate (constant)")
    p.add_argument("--weight-decay", type=number(float, ge=0), default=1e-5)
    p.add_argument("--tau", type=number(float, gt=0), default=0.1, help="SogCLR temperature")
    p.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9,
                   help="moving-average weight on the new value")
    p.add_argument("--crop-frames", type=number(int, ge=2), default=96, help="frames per crop (96 = 3.1 s)")
    p.add_argument("--segment-seconds", type=number(float, gt=0, allow_none=True), default=20.0,
                   help="cut tracks into items of this length, 'none': one item per track (default: 20.0)")
    p.add_argument("--max-frame-distance", type=number(int, ge=0), default=None,
                   help="second crop within this many frames of the first (default: anywhere in the item)")
    p.add_argument("--out-dim", type=number(int, ge=1), default=128, help="contrastive embedding size")
    p.add_argument("--log-mel", action="store_true", help="feed log(1 + mel) instead of the power mel")
    p.add_argument("--probe", default="sonic-pi", choices=_PROBE_CHOICES, help="frozen-embedding probes")
    p.add_argument("--probe-every", type=number(int, ge=1), default=1, help="probe every this many epochs")
    p.add_argument("--probe-epochs", type=number(int, ge=1), default=30, help="epochs of each probe")
    p.add_argument("--seed", type=number(int, ge=0), default=0)
    p.add_argument("--max-steps", type=number(int, ge=1), default=None,
                   help="cap on steps per epoch, for smoke runs (default: full epochs)")
    p.add_argument("--num-threads", type=number(int, ge=1), default=None,
                   help="torch threads (default: torch's choice)")


def _validate_myna(args: argparse.Namespace) -> None:
    _check_config(config_from_args(MynaConfig, args))


def _run_myna(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    return ctx.finish(train_myna(config_from_args(MynaConfig, args), ctx).metrics)


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=existing_path(kind="folder"), required=True,
                   help="a `xrisk run myna` run folder (its checkpoint.pt and config.json; required, default: none)")
    p.add_argument("--task", default="both", choices=("sonic-pi", "keys", "both"))
    p.add_argument("--probe-epochs", type=number(int, ge=1), default=30, help="epochs of each probe")
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of the probes")
    p.add_argument("--num-threads", type=number(int, ge=1), default=None, help="torch threads (default: torch's choice)")


def _trained_config(folder: Path) -> MynaConfig:
    config_path, ckpt = folder / "config.json", folder / "checkpoint.pt"
    if not config_path.is_file() or not ckpt.is_file():
        raise UsageError(f"--ckpt {folder} holds no myna run (config.json and checkpoint.pt are needed)")
    stored = json.loads(config_path.read_text())
    if stored.get("recipe") != "myna":
        raise UsageError(f"--ckpt {folder} is a {stored.get('recipe')!r} run, not a myna run")
    known = {f.name for f in fields(MynaConfig)}
    return MynaConfig(**{k: v for k, v in stored.get("args", {}).items() if k in known})


def _validate_probe(args: argparse.Namespace) -> None:
    _trained_config(Path(args.ckpt))


def _run_probe(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    from xrisk.checkpoint import load_checkpoint

    folder = Path(args.ckpt)
    config = _trained_config(folder)
    config.probe_epochs = args.probe_epochs
    config.seed = args.seed
    if args.num_threads is not None:
        torch.set_num_threads(int(args.num_threads))
    model = build_model(config)
    extra = load_checkpoint(folder / "checkpoint.pt", model=model)
    tasks = [load_probe_task(t, log_mel=config.log_mel, notice=ctx.notice) for t in _tasks_of(args.task)]
    ctx.update_config(trained_epochs=int(extra.get("epoch", 0)), patch=config.patch, preset=config.preset,
                      probe_skipped_files=sum(t.skipped for t in tasks))
    metrics = _probe_metrics(model, tasks, config)
    ctx.log_epoch(1, metrics)
    return ctx.finish({**metrics, "trained_epochs": float(extra.get("epoch", 0))})


register(Recipe("myna", "Myna: contrastive music representations from masked mel tokens (square/vertical/hybrid ViT)",
                _myna_arguments, _run_myna, validate=_validate_myna))
register(Recipe("myna-probe", "frozen-embedding probes (sample categories, musical key) of a myna run",
                _probe_arguments, _run_probe, validate=_validate_probe))
