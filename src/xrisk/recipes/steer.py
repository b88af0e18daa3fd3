"""``xrisk run steer``: model steering with a reference model (DRRho risk minimisation) on real offline data.

Multi-class classification on Fashion-MNIST (10 classes, pixels) or BBC News (5 topics, MiniLM embeddings).
The training split is divided once (stratified, ``--split-seed``) into a **reference pool** (``--ref-split``
of it) and a **target pool** (the rest); a run trains on ``--train-fraction`` of its ``--pool`` (a stratified
subset drawn with ``--seed``), which gives the data-efficiency curve::

    xrisk run steer --data fashion-mnist --method erm --pool reference --arch linear --out ref/  # a reference
    xrisk run steer --data fashion-mnist --method drrho-kl --ref ref/ --train-fraction 0.25 --out run/
    xrisk run steer --data bbc --method drrho-cvar --train-fraction 0.1      # trains its own reference first

The reference differs from the target the way it does in practice: without ``--ref`` the recipe first
trains a ``--ref-arch`` model (default ``linear``: smaller) on the reference pool (other data than the
target's), saved as ``reference.pt`` in the run folder (a resumed run reloads it); ``--ref DIR`` takes the
model of an earlier ``steer`` run on the same data and split instead. ``config.json`` records what the
reference is (``reference``: architecture, parameters, the data it was trained on, whether that is the
target's data, and its test accuracy).

Methods (all in the same loop, the same batches and the same number of steps):

* ``erm``: mean cross-entropy (no reference);
* ``drrho-kl`` / ``drrho-cvar``: :class:`~xrisk.losses.DRRhoLoss` on the per-sample cross-entropies of the
  target and the reference (``--tau``, ``--gamma`` / ``--alpha``, ``--eta``);
* ``rho-select``: RHO-LOSS selection: each step scores the batch plus ``B (1/select-ratio - 1)`` more random
  samples of the training subset with the current model (no gradient) and trains on the ``B`` with the
  largest excess loss (:func:`xrisk.functional.selection.rho_select`);
* ``distill``: ``(1 - w) CE + w T^2 KL(reference || target)`` at temperature ``T`` (``--distill-weight``,
  ``--distill-temp``; :func:`xrisk.functional.distillation.distillation_losses`).

Reference outputs (logits of every sample of the pool) come from a :class:`~xrisk.data.ReferenceCache`
(``--ref-outputs cached``, the default: filled once with a progress bar, resumable, in
``<out>/reference_cache`` or ``--ref-cache DIR``) or from a forward pass per step (``on-the-fly``).
Metrics per epoch: ``train_loss`` (cross-entropy methods) or ``train_surrogate`` + ``train_objective``
(DRRho), ``test_acc``; final ``test_acc`` and ``ref_test_acc``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk.recipes._loop import config_from_args, epoch_generator
from xrisk.recipes.flags import existing_path, number, out_dir
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import train_loss_key

if TYPE_CHECKING:
    from xrisk.recipes.runner import RunContext

__all__ = ["METHODS", "SteerConfig", "SteerData", "load_steer_data", "build_classifier", "reference_run_args",
           "train_steer"]

METHODS: tuple[str, ...] = ("erm", "drrho-kl", "drrho-cvar", "rho-select", "distill")
DATA: tuple[str, ...] = ("fashion-mnist", "bbc")
ARCHS: tuple[str, ...] = ("linear", "mlp", "cnn")


@dataclass
class SteerConfig:
    """Settings of :func:`train_steer` (the ``steer`` recipe; CLI flags of the same names).

    Attributes:
        data: ``"fashion-mnist"`` or ``"bbc"``; method: one of :data:`METHODS`.
        train_fraction: share of the pool this run trains on, in ``(0, 1]`` (stratified, drawn with ``seed``).
        pool: ``"target"`` or ``"reference"``: the part of the training split this run trains on.
        arch: the model trained here (``linear``, ``mlp``: one hidden layer of ``hidden`` units, ``cnn``:
            :class:`~xrisk.models.SmallCNN`, Fashion-MNIST only).
        ref: run folder of an earlier ``steer`` run whose model is the reference (None: train one here).
        ref_arch, ref_epochs: the reference trained here (on the reference pool, all of it).
        ref_split: share of the training split held out as the reference pool; split_seed: its draw.
        max_train: subsample the training split to this many samples first (stratified; None: all).
        ref_outputs: ``"cached"`` (a :class:`~xrisk.data.ReferenceCache`) or ``"on-the-fly"``.
        ref_cache: the cache folder (None: ``<run folder>/reference_cache``).
        epochs, batch_size, lr, weight_decay, hidden, seed: Adam training at a constant learning rate.
        tau, gamma: DRRho-KL; alpha, eta: DRRho-CVaR; select_ratio: RHO selection keeps ``B`` of
        ``B / select_ratio`` candidates; distill_weight, distill_temp: distillation.
        max_steps: cap on steps per epoch (smoke runs); num_threads: ``torch.set_num_threads``.
        eval_every: test accuracy every this many epochs and after the last one.
    """

    data: Literal["fashion-mnist", "bbc"] = "fashion-mnist"
    method: str = "erm"
    train_fraction: float = 1.0
    pool: Literal["target", "reference"] = "target"
    arch: Literal["linear", "mlp", "cnn"] = "mlp"
    ref: Path | None = None
    ref_arch: Literal["linear", "mlp", "cnn"] = "linear"
    ref_epochs: int = 10
    ref_split: float = 0.2
    split_seed: int = 0
    max_train: int | None = None
    ref_outputs: Literal["cached", "on-the-fly"] = "cached"
    ref_cache: Path | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 256
    seed: int = 0
    tau: float = 1.0
    gamma: float = 0.9
    alpha: float = 0.5
    eta: float = 0.05
    select_ratio: float = 0.5
    distill_weight: float = 0.5
    distill_temp: float = 2.0
    max_steps: int | None = None
    num_threads: int | None = None
    eval_every: int = 1


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SteerData:
    """The pools of one steer setup. ``x``/``y``: the whole (subsampled) training split; ``pools``: positions of
    the ``"target"`` and ``"reference"`` pools in it; ``x_test``/``y_test``; ``num_classes``; ``description``."""

    x: Tensor
    y: Tensor
    pools: dict[str, Tensor]
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    description: str


def _stratified_part(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(rest, part)``: positions of a stratified random ``fraction`` of every class (``part``) and the others."""
    from xrisk.data.builtin import _stratified_split

    return _stratified_split(y, fraction, seed)


def load_steer_data(data: str, *, ref_split: float, split_seed: int, max_train: int | None) -> SteerData:
    """Load ``data`` (:func:`xrisk.data.load_multiclass`; BBC split with ``split_seed``), subsample the training
    split to ``max_train`` (stratified) and divide it into the target and reference pools (``ref_split``)."""
    from xrisk.data import load_multiclass

    d = load_multiclass(data, seed=split_seed)
    x, y = d.x_train, d.y_train
    if max_train is not None and max_train < y.numel():
        _, keep = _stratified_part(y, max_train / y.numel(), split_seed + 17)
        x, y = x[keep], y[keep]
    target, reference = _stratified_part(y, ref_split, split_seed + 31)
    desc = (f"{d.description}; training split {y.numel()} samples = target pool {target.numel()} + reference pool "
            f"{reference.numel()} (ref_split={ref_split:g}, split_seed={split_seed})")
    return SteerData(x, y, {"target": target, "reference": reference}, d.x_test, d.y_test, d.num_classes, desc)


def build_classifier(arch: str, input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 256) -> nn.Module:
    """``linear`` (logistic regression), ``mlp`` (one hidden layer of ``hidden``) or ``cnn`` (:class:`SmallCNN`)."""
    from xrisk.models import MLP, SmallCNN

    if arch == "cnn":
        if len(input_shape) != 3:
            raise UsageError(f"argument --arch: cnn needs images, the data has inputs of shape {input_shape}")
        return SmallCNN(in_channels=input_shape[0], num_outputs=num_classes)
    if arch not in ("linear", "mlp"):
        raise UsageError(f"argument --arch: expected one of {ARCHS}, got {arch!r}")
    return MLP(int(math.prod(input_shape)), hidden=() if arch == "linear" else (hidden,), out_features=num_classes)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(xb) for xb in x.split(batch_size)]) if x.shape[0] else x.new_zeros(0, 0)
    model.train(was)
    return out


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((_logits(model, x).argmax(1) == y).float().mean())


# --------------------------------------------------------------------------------------------- reference
_SAME_SPLIT = ("data", "ref_split", "split_seed", "max_train")  # a --ref run must share these (the pools)

@dataclass
class _Reference:
    model: nn.Module
    info: dict[str, Any]


def reference_run_args(folder: Path, recipe: str, same: dict[str, Any]) -> dict[str, Any]:
    """The arguments of the finished ``recipe`` run in ``folder`` (its ``config.json``), which must equal ``same``
    (e.g. the data set and split): raises :class:`UsageError` naming ``--ref`` and the first difference."""
    try:
        stored = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UsageError(f"argument --ref: {folder} is not an xrisk run folder ({e})") from None
    if stored.get("recipe") != recipe:
        raise UsageError(f"argument --ref: {folder} is a {stored.get('recipe')!r} run, not a {recipe} run")
    if not (folder / "checkpoint.pt").is_file():
        raise UsageError(f"argument --ref: {folder} holds no checkpoint.pt (not a finished {recipe} run)")
    args = stored.get("args", {})
    for key, value in same.items():
        if args.get(key) != value:
            raise UsageError(
                f"argument --ref: {folder} was trained with --{key.replace('_', '-')} {args.get(key)!r}, this run uses "
                f"{value!r}; the reference must come from the same data"
            )
    return args


def _load_reference_run(config: SteerConfig, data: SteerData) -> _Reference:
    """The model of the ``steer`` run folder ``config.ref`` (same data, split and pools required)."""
    from xrisk.checkpoint import load_checkpoint

    folder = Path(config.ref)  # type: ignore[arg-type]
    args = reference_run_args(folder, "steer", {k: getattr(config, k) for k in _SAME_SPLIT})
    model = build_classifier(args.get("arch", "mlp"), tuple(data.x.shape[1:]), data.num_classes,
                             hidden=int(args.get("hidden", 256)))
    load_checkpoint(folder / "checkpoint.pt", model=model)
    model.eval()
    same = args.get("pool") == config.pool
    info = {
        "source": str(folder), "arch": args.get("arch"), "params": _num_params(model),
        "trained_on": f"{args.get('pool')} pool, train_fraction={args.get('train_fraction')}, seed={args.get('seed')}",
        "other_data": not same,
    }
    return _Reference(model, info)


def _train_own_reference(config: SteerConfig, data: SteerData, ctx: RunContext | None) -> _Reference:
    """Train a ``ref_arch`` model on the whole reference pool (or load ``<out>/reference.pt`` of a resumed run)."""
    torch.manual_seed(config.seed + 7)
    model = build_classifier(config.ref_arch, tuple(data.x.shape[1:]), data.num_classes, hidden=config.hidden)
    path = None if ctx is None else ctx.out_dir / "reference.pt"
    pool = data.pools["reference"]
    info = {"source": "trained in this run", "arch": config.ref_arch, "params": _num_params(model),
            "trained_on": f"reference pool ({pool.numel()} samples), {config.ref_epochs} epochs", "other_data": True}
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        return _Reference(model, info)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + 99)
    bar = ctx.progress(config.ref_epochs * math.ceil(pool.numel() / config.batch_size), "reference") if ctx else None
    for _ in range(config.ref_epochs):
        for idx in pool[torch.randperm(pool.numel(), generator=g)].split(config.batch_size):
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None:
                bar.update(loss=float(loss.detach()))
    if bar is not None:
        bar.close()
    model.eval()
    if path is not None:  # atomic: a resumed run either finds the whole reference or trains it again
        tmp = path.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return _Reference(model, info)


def _reference_logits(
    config: SteerConfig, data: SteerData, ref: _Reference, ctx: RunContext | None
) -> Callable[[Tensor], Tensor]:
    """``positions -> reference logits [b, C]`` (positions in ``data.x``): from a filled cache, or on the fly."""
    if config.ref_outputs == "on-the-fly":
        def forward(pos: Tensor) -> Tensor:
            with torch.no_grad():
                return ref.model(data.x[pos])
        return forward
    from xrisk.data.reference_cache import ReferenceCache, fingerprint, module_fingerprint

    folder = config.ref_cache if config.ref_cache is not None else (None if ctx is None else ctx.out_dir / "reference_cache")
    if folder is None:
        raise ValueError("ref_outputs='cached' needs ref_cache (or a run folder)")
    cache = ReferenceCache(folder, num_samples=int(data.y.numel()), shape=(data.num_classes,),
                           data_fingerprint=fingerprint(data.x, data.y), model_fingerprint=module_fingerprint(ref.model))
    todo = int(cache.missing().numel())
    if todo:
        bar = ctx.progress(todo, "reference cache") if ctx is not None else None
        cache.fill(lambda pos: ref.model(data.x[pos]), batch_size=1024, progress=bar)
        if bar is not None:
            bar.close()
    return cache.read


# --------------------------------------------------------------------------------------------- training
def _per_sample_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def train_steer(config: SteerConfig, ctx: RunContext | None = None) -> dict[str, float]:
    """Train one target with ``config.method`` and return the final metrics (see the module docstring).

    Per epoch (``ctx.log_epoch``): ``train_loss`` or ``train_surrogate`` (+ ``train_objective`` for DRRho) and
    ``test_acc``. Returns the last epoch's metrics plus ``ref_test_acc`` (when there is a reference),
    ``num_train`` and ``epochs``.
    """
    from xrisk.functional.distillation import distillation_losses
    from xrisk.functional.selection import rho_select
    from xrisk.losses import DRRhoLoss

    if config.method not in METHODS:
        raise UsageError(f"argument --method: expected one of {METHODS}, got {config.method!r}")
    _check_pool(config.method, config.pool)
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    data = load_steer_data(config.data, ref_split=config.ref_split, split_seed=config.split_seed,
                           max_train=config.max_train)
    pool = data.pools[config.pool]
    if config.train_fraction < 1.0:
        pool = pool[_stratified_part(data.y[pool], config.train_fraction, config.seed + 53)[1]]
    n = int(pool.numel())
    if n < config.batch_size:
        raise UsageError(f"argument --batch-size: {config.batch_size} exceeds the {n} training samples of this run")
    torch.manual_seed(config.seed)
    model = build_classifier(config.arch, tuple(data.x.shape[1:]), data.num_classes, hidden=config.hidden)
    needs_ref = config.method != "erm"
    ref: _Reference | None = None
    if config.ref is not None:
        ref = _load_reference_run(config, data)
    elif needs_ref:
        ref = _train_own_reference(config, data, ctx)
    if ref is not None:
        ref.info["test_acc"] = _accuracy(ref.model, data.x_test, data.y_test)
        ref.info["smaller_than_target"] = ref.info["params"] < _num_params(model)
    ref_logits = _reference_logits(config, data, ref, ctx) if needs_ref and ref is not None else None
    ref_losses: Callable[[Tensor], Tensor] | None = None
    if ref_logits is not None and config.method != "distill":
        if config.ref_outputs == "cached":  # the training samples' reference losses, read from the cache once
            table = torch.full((int(data.y.numel()),), float("nan"))
            table[pool] = _per_sample_ce(ref_logits(pool), data.y[pool])
            ref_losses = table.__getitem__
        else:
            ref_losses = lambda p: _per_sample_ce(ref_logits(p), data.y[p])  # type: ignore[misc]  # noqa: E731
    loss_fn: nn.Module | None = None
    if config.method in ("drrho-kl", "drrho-cvar"):
        loss_fn = DRRhoLoss(divergence=config.method.split("-")[1], tau=config.tau, gamma=config.gamma,  # type: ignore[arg-type]
                            alpha=config.alpha, eta=config.eta)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n // config.batch_size
    if config.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, int(config.max_steps))
    start = 0
    if ctx is not None:
        ctx.update_config(data_description=data.description, num_train=n, num_test=int(data.y_test.numel()),
                          steps_per_epoch=steps_per_epoch, target_arch=config.arch, target_params=_num_params(model),
                          reference=None if ref is None else ref.info,
                          loss_class=type(loss_fn).__name__ if loss_fn is not None else "cross_entropy")
        start = ctx.resume(model=model, loss=loss_fn, optimizer=opt)
    bar = (ctx.progress(steps_per_epoch * (config.epochs - start) - ctx.start_step, f"steer/{config.method}")
           if ctx is not None else None)
    loss_key = train_loss_key(loss_fn)
    metrics: dict[str, float] = {}
    extra = max(0, math.ceil(config.batch_size / config.select_ratio) - config.batch_size)
    for epoch in range(start + 1, config.epochs + 1):
        model.train()
        g = epoch_generator(config.seed, epoch)
        perm = pool[torch.randperm(n, generator=g)]
        acc = {"total": 0.0, "objective": 0.0}
        steps = range(steps_per_epoch)
        for step in (steps if ctx is None else ctx.steps(epoch, steps, state=acc, generators=[g])):
            pos = perm[step * config.batch_size : (step + 1) * config.batch_size]
            if config.method == "rho-select":  # score B / ratio candidates, train on the B most learnable
                cand = torch.cat([pos, pool[torch.randint(0, n, (extra,), generator=g)]])
                with torch.no_grad():
                    scores = _per_sample_ce(_logits(model, data.x[cand]), data.y[cand])
                    ref_l = ref_losses(cand)  # type: ignore[misc]
                pos = cand[rho_select(scores, ref_l, config.batch_size)]
            out = model(data.x[pos])
            y = data.y[pos]
            if loss_fn is not None:
                ref_l = ref_losses(pos)  # type: ignore[misc]
                loss = loss_fn(_per_sample_ce(out, y), ref_l, pos)
            elif config.method == "distill":
                kd = distillation_losses(out, ref_logits(pos), temperature=config.distill_temp)  # type: ignore[misc]
                loss = ((1.0 - config.distill_weight) * _per_sample_ce(out, y) + config.distill_weight * kd).mean()
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc["total"] += float(loss.detach())
            if loss_fn is not None:
                acc["objective"] += float(loss_fn.objective())
            if bar is not None:
                bar.update(**{loss_key.removeprefix("train_"): float(loss.detach())})
        metrics = {loss_key: acc["total"] / max(1, steps_per_epoch)}
        if loss_fn is not None:
            metrics["train_objective"] = acc["objective"] / max(1, steps_per_epoch)
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            metrics["test_acc"] = _accuracy(model, data.x_test, data.y_test)
        if ctx is not None:
            ctx.log_epoch(epoch, metrics)
            ctx.save(epoch=epoch)
    if bar is not None:
        bar.close()
    if not metrics and ctx is not None and ctx.history:
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    out = {**metrics, "num_train": float(n), "epochs": float(config.epochs)}
    if ref is not None:
        out["ref_test_acc"] = float(ref.info["test_acc"])
    return out


# --------------------------------------------------------------------------------------------- CLI
def _add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and reference")
    g.add_argument("--data", choices=DATA, default="fashion-mnist", help="built-in multi-class data set")
    g.add_argument("--method", choices=METHODS, default="erm", help="training method (see xrisk.recipes.steer)")
    g.add_argument("--train-fraction", type=number(float, gt=0, le=1), default=1.0,
                   help="share of the pool this run trains on (the data-efficiency axis)")
    g.add_argument("--pool", choices=("target", "reference"), default="target",
                   help="part of the training split this run trains on (reference: to train a reference)")
    g.add_argument("--arch", choices=ARCHS, default="mlp", help="model trained by this run")
    g.add_argument("--ref", type=existing_path(kind="folder"), default=None,
                   help="steer run folder whose model is the reference (default: train one here)")
    g.add_argument("--ref-arch", choices=ARCHS, default="linear", help="reference trained here (without --ref)")
    g.add_argument("--ref-epochs", type=number(int, ge=1), default=10, help="epochs of the reference trained here")
    g.add_argument("--ref-split", type=number(float, gt=0, lt=1), default=0.2,
                   help="share of the training split held out as the reference pool")
    g.add_argument("--split-seed", type=number(int, ge=0), default=0, help="seed of the pools and the BBC split")
    g.add_argument("--max-train", type=number(int, ge=10), default=None,
                   help="subsample the training split to this many samples first (default: all)")
    g.add_argument("--ref-outputs", choices=("cached", "on-the-fly"), default="cached",
                   help="reference logits from a ReferenceCache filled once, or a forward pass per step")
    g.add_argument("--ref-cache", type=out_dir, default=None,
                   help="reference cache folder (default: <out>/reference_cache)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=number(int, ge=1), default=10, help="number of epochs (may grow on --resume)")
    g.add_argument("--batch-size", type=number(int, ge=2), default=64, help="samples per step")
    g.add_argument("--lr", type=number(float, gt=0), default=1e-3, help="Adam learning rate (constant)")
    g.add_argument("--weight-decay", type=number(float, ge=0), default=0.0, help="Adam weight decay")
    g.add_argument("--hidden", type=number(int, ge=1), default=256, help="hidden units of the mlp")
    g.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of the subset, initialisation and batches")
    g.add_argument("--max-steps", type=number(int, ge=1), default=None, help="cap on steps per epoch, for smoke runs (default: full epochs)")
    g.add_argument("--num-threads", type=number(int, ge=1), default=None, help="torch threads (default: torch's)")
    g.add_argument("--eval-every", type=number(int, ge=1), default=1, help="test every this many epochs and at the end")
    g = p.add_argument_group("methods")
    g.add_argument("--tau", type=number(float, gt=0), default=1.0, help="DRRho-KL temperature")
    g.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9,
                   help="DRRho-KL moving-average weight on the new value")
    g.add_argument("--alpha", type=number(float, gt=0, le=1), default=0.5, help="DRRho-CVaR level")
    g.add_argument("--eta", type=number(float, gt=0), default=0.05, help="DRRho-CVaR threshold step size")
    g.add_argument("--select-ratio", type=number(float, gt=0, le=1), default=0.5,
                   help="rho-select: train on B of B / ratio scored candidates")
    g.add_argument("--distill-weight", type=number(float, ge=0, le=1), default=0.5, help="distill: weight of the KL term")
    g.add_argument("--distill-temp", type=number(float, gt=0), default=2.0, help="distill: temperature")


def _check_pool(method: str, pool: str) -> None:
    """Only a plain (``erm``) run may train on the reference pool: a steered target trains on other data than the
    reference it is steered by (the reference trained in the run always uses the reference pool)."""
    if pool == "reference" and method != "erm":
        raise UsageError(f"argument --pool: a steered run ({method}) trains on the target pool")


def _validate(args: argparse.Namespace) -> None:
    if args.data == "bbc":
        for flag, arch in (("--arch", args.arch), ("--ref-arch", args.ref_arch if args.ref is None else "linear")):
            if arch == "cnn":
                raise UsageError(
                    f"argument {flag}: cnn needs images; bbc has MiniLM embedding vectors (use linear or mlp)")
    _check_pool(args.method, args.pool)
    if args.ref is not None:
        reference_run_args(Path(args.ref), "steer", {k: getattr(args, k) for k in _SAME_SPLIT})


def _run(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    config = config_from_args(SteerConfig, args)
    ctx.update_config(steer=_jsonable_config(config))
    return ctx.finish(train_steer(config, ctx))


def _jsonable_config(config: SteerConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


register(Recipe("steer", "model steering with a reference model: DRRho (KL/CVaR), RHO selection, distillation, ERM "
                "on fashion-mnist or bbc", _add_arguments, _run, validate=_validate))
