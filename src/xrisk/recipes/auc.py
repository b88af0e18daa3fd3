"""``xrisk run auc``: imbalanced binary classification with AUROC / AP / partial-AUC losses.

Trains a :class:`~xrisk.models.SmallCNN` (image data) or an :class:`~xrisk.models.MLP`
(feature vectors) on a built-in data set made imbalanced with ``--pos-ratio``, and reports the
test AUROC, AP, one-way pAUC (FPR <= ``--max-fpr``) and two-way pAUC (TPR >= ``--min-tpr``,
FPR <= ``--max-fpr``) every epoch and at the end.

Per-loss defaults (each can be overridden; the resolved values go to ``config.json``):

=========== ===================================== ========== ========== =======
``--loss``   objective                            optimizer  lr         sampler
=========== ===================================== ========== ========== =======
aucm         AUROC, AUC-margin min-max (sigmoid)  PESG       0.1        dual
ap           AP, SOAP (sigmoid)                   Adam       1e-3       dual
pauc-cvar    one-way pAUC, CVaR (sigmoid)         Adam       1e-3       dual
pauc-kl      one-way pAUC, KL-DRO (sigmoid)       Adam       1e-3       dual
tpauc        two-way pAUC, KL-DRO (sigmoid)       Adam       1e-3       dual
ce           binary cross-entropy (logits)        Adam       1e-3       shuffle
focal        focal loss (logits)                  Adam       1e-3       shuffle
=========== ===================================== ========== ========== =======

Metrics are computed on the raw model outputs (logits): they are rank-based, and logits do
not saturate into ties the way float32 sigmoids do.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xrisk.recipes.flags import int_list, number, text
from xrisk.recipes.objectives import (LOSSES, SCORE_LOSSES, build_objective, build_sampler, count_batches,
                                      default_lr, index_batches, loss_value)
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import RunContext, train_loss_key

__all__ = ["LOSSES", "DATASETS", "add_arguments", "validate", "run", "evaluate", "ShuffleBatches"]

DATASETS: tuple[str, ...] = ("fashion-mnist", "breast-cancer", "digits", "bbc")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk run auc``."""
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, default="breast-cancer", help="built-in data set")
    g.add_argument("--pos-ratio", type=number(float, gt=0, lt=1), default=0.05,
                   help="fraction of positives kept in the training set (positives are subsampled)")
    g.add_argument("--positive-class", type=text(pattern_help="a class name or number"), default=None,
                   help="class used as the positive, a name or number (default: the data set's usual one)")
    g.add_argument("--max-train", type=number(int, ge=10), default=None,
                   help="subsample the training set to at most this many samples, keeping the positive ratio "
                        "(default: all)")
    g = p.add_argument_group("training")
    g.add_argument("--loss", choices=LOSSES, default="aucm", help="training objective")
    g.add_argument("--epochs", type=number(int, ge=1), default=10, help="number of epochs (may grow on --resume)")
    g.add_argument("--batch-size", type=number(int, ge=2), default=64, help="mini-batch size")
    g.add_argument("--lr", type=number(float, gt=0), default=None,
                   help="learning rate (default: 0.1 for aucm, else 1e-3)")
    g.add_argument("--weight-decay", type=number(float, ge=0), default=1e-5, help="L2 weight decay")
    g.add_argument("--sampler", choices=("dual", "shuffle"), default=None,
                   help="batch sampler: dual over-samples positives, shuffle is plain random batches "
                        "(default: dual for the AUC/AP/pAUC losses, shuffle for ce/focal)")
    g.add_argument("--batch-pos-ratio", type=number(float, gt=0, lt=1), default=0.5,
                   help="fraction of positives per batch with --sampler dual")
    g.add_argument("--margin", type=number(float, ge=0), default=1.0, help="margin of the AUC/AP/pAUC surrogates")
    g.add_argument("--decay-epochs", type=int_list(ge=1), default=[],
                   help="epochs after which lr is divided by --decay-factor (PESG: update_regularizer), "
                        "e.g. '50 75' (default: none)")
    g.add_argument("--decay-factor", type=number(float, gt=0), default=10.0, help="lr divisor at --decay-epochs")
    g.add_argument("--seed", type=number(int, ge=0), default=0,
                   help="seed of data subsampling, model init and batches")
    g = p.add_argument_group("evaluation")
    g.add_argument("--max-fpr", type=number(float, gt=0, le=1), default=0.3,
                   help="FPR bound of the partial AUCs (and pAUC losses)")
    g.add_argument("--min-tpr", type=number(float, ge=0, lt=1), default=0.7, help="TPR bound of the two-way partial AUC")


def validate(args: argparse.Namespace) -> None:
    """Rules that need the data set's class names: ``--positive-class`` must name a class of ``--data``."""
    if args.positive_class is not None:
        from xrisk.data.builtin import resolve_positive_class

        try:
            resolve_positive_class(args.data, args.positive_class)
        except ValueError as e:
            raise UsageError(f"argument --positive-class: {e}") from None


class ShuffleBatches:
    """Random batches of dataset indices, a new permutation per epoch (seeded by ``seed`` and epoch).

    Because the order depends only on ``(seed, epoch)``, a resumed run draws the same batches.

    Args:
        num_samples: data-set size.
        batch_size: indices per batch (the last batch may be smaller).
        seed: base seed.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_samples, generator=g).split(self.batch_size)


_batches = index_batches  # the names this module used before xrisk.recipes.objectives held them
_num_batches = count_batches


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, max_fpr: float, min_tpr: float,
             batch_size: int = 1024) -> dict[str, float]:
    """Test AUROC, AP, one-way pAUC (FPR <= ``max_fpr``) and two-way pAUC of ``model`` on ``(x, y)``.

    Switches the model to eval mode and back to its previous mode.
    """
    from xrisk.metrics import auroc, average_precision, partial_auroc

    was_training = model.training
    model.eval()
    scores = torch.cat([model(xb).reshape(-1) for xb in x.split(batch_size)])
    model.train(was_training)
    return {
        "test_auroc": float(auroc(scores, y)),
        "test_ap": float(average_precision(scores, y)),
        "test_pauc": float(partial_auroc(scores, y, max_fpr=max_fpr)),
        "test_tpauc": float(partial_auroc(scores, y, max_fpr=max_fpr, min_tpr=min_tpr)),
    }


@dataclass
class _Setup:
    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: Any
    lr: float
    sampler_name: str


def _subsample(y: Tensor, max_n: int, seed: int) -> Tensor:
    """Indices of a stratified subsample of at most ``max_n`` samples (sorted)."""
    g = torch.Generator().manual_seed(seed + 7)
    pos = torch.nonzero(y > 0).flatten()
    neg = torch.nonzero(y <= 0).flatten()
    n_pos = max(1, round(max_n * len(pos) / len(y)))
    n_neg = max_n - n_pos
    keep = torch.cat([pos[torch.randperm(len(pos), generator=g)[:n_pos]],
                      neg[torch.randperm(len(neg), generator=g)[:n_neg]]])
    return keep.sort().values


def _build(args: argparse.Namespace, in_shape: Sequence[int], y_train: Tensor) -> _Setup:
    from xrisk.models import MLP, SmallCNN

    torch.manual_seed(args.seed)
    if len(in_shape) == 3:
        model: nn.Module = SmallCNN(in_channels=int(in_shape[0]), num_outputs=1)
    else:
        model = MLP(int(math.prod(in_shape)), hidden=(64,), out_features=1)
    lr = args.lr if args.lr is not None else default_lr(args.loss)
    loss, optimizer = build_objective(args.loss, model.parameters(), num_samples=len(y_train), lr=lr,
                                      weight_decay=args.weight_decay, margin=args.margin, max_fpr=args.max_fpr,
                                      min_tpr=args.min_tpr)
    sampler_name = args.sampler or ("dual" if args.loss in SCORE_LOSSES else "shuffle")
    sampler = build_sampler(sampler_name, y_train, args.batch_size, pos_ratio=args.batch_pos_ratio, seed=args.seed)
    return _Setup(model, loss, optimizer, sampler, lr, sampler_name)


def _load(args: argparse.Namespace) -> Any:
    from xrisk.data import load_binary

    kwargs: dict[str, Any] = {"pos_ratio": args.pos_ratio, "seed": args.seed}
    if args.positive_class is not None:
        pc = args.positive_class
        kwargs["positive_class"] = int(pc) if isinstance(pc, str) and pc.lstrip("-").isdigit() else pc
    return load_binary(args.data, **kwargs)


def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    """Train and evaluate; see the module docstring. Returns the final test metrics."""
    data = _load(args)
    x_train, y_train = torch.as_tensor(data.x_train).float(), torch.as_tensor(data.y_train).float()
    x_test, y_test = torch.as_tensor(data.x_test).float(), torch.as_tensor(data.y_test).float()
    if args.max_train is not None and len(y_train) > args.max_train:
        keep = _subsample(y_train, args.max_train, args.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    s = _build(args, tuple(data.input_shape), y_train)
    ctx.update_config(
        data_description=getattr(data, "description", args.data),
        num_train=len(y_train), num_train_pos=int(y_train.sum()),
        num_test=len(y_test), num_test_pos=int(y_test.sum()),
        model=type(s.model).__name__, loss_class=type(s.loss).__name__,
        optimizer=type(s.optimizer).__name__, lr=s.lr, sampler=s.sampler_name,
        objective_name=getattr(s.loss, "objective_name", None),
    )
    ctx.notice(f"{args.data}: {len(y_train)} train ({int(y_train.sum())} positive), "
               f"{len(y_test)} test ({int(y_test.sum())} positive); {type(s.model).__name__}, "
               f"{type(s.loss).__name__} + {type(s.optimizer).__name__} lr {s.lr:g}, {s.sampler_name} sampler")

    start = ctx.resume(model=s.model, loss=s.loss, optimizer=s.optimizer, sampler=s.sampler)
    is_score_loss = args.loss in SCORE_LOSSES
    loss_key = train_loss_key(s.loss)
    steps = _num_batches(s.sampler, args.batch_size)
    bar = ctx.progress(max(args.epochs - start, 0) * steps - ctx.start_step, "")
    last = ctx.history[-1] if ctx.history else {}
    for epoch in range(start + 1, args.epochs + 1):
        bar.set_description(f"epoch {epoch}/{args.epochs}")
        if callable(getattr(s.sampler, "set_epoch", None)):
            s.sampler.set_epoch(epoch)
        s.model.train()
        t0 = time.monotonic()
        acc: dict[str, Any] = {"total": 0.0, "count": 0, "objectives": []}
        for index in ctx.steps(epoch, _batches(s.sampler, args.batch_size), state=acc):
            value = loss_value(args.loss, s.loss, s.model(x_train[index]).reshape(-1), y_train[index], index)
            s.optimizer.zero_grad(set_to_none=True)
            value.backward()
            s.optimizer.step()
            v = float(value.detach())
            acc["total"] += v
            acc["count"] += 1
            if is_score_loss:
                obj = float(s.loss.objective())
                if math.isfinite(obj):
                    acc["objectives"].append(obj)
            postfix = {loss_key.removeprefix("train_"): v}
            if "test_auroc" in last:
                postfix["test_auroc"] = last["test_auroc"]
            bar.update(**postfix)
        if epoch in args.decay_epochs:
            if callable(getattr(s.optimizer, "update_regularizer", None)):
                s.optimizer.update_regularizer(args.decay_factor)
            else:
                for group in s.optimizer.param_groups:
                    group["lr"] /= args.decay_factor
        metrics: dict[str, float] = {loss_key: acc["total"] / max(acc["count"], 1)}
        if is_score_loss:
            objectives = acc["objectives"]
            metrics["train_objective"] = sum(objectives) / len(objectives) if objectives else float("nan")
        metrics.update(evaluate(s.model, x_test, y_test, max_fpr=args.max_fpr, min_tpr=args.min_tpr))
        metrics["lr"] = float(s.optimizer.param_groups[0]["lr"])
        metrics["epoch_seconds"] = time.monotonic() - t0
        last = metrics
        ctx.log_epoch(epoch, metrics)
        ctx.save(epoch=epoch)
    bar.close()
    final = evaluate(s.model, x_test, y_test, max_fpr=args.max_fpr, min_tpr=args.min_tpr)
    return ctx.finish({**final, "epochs": args.epochs})


register(Recipe(
    name="auc",
    help="imbalanced binary classification: AUROC/AP/pAUC losses vs cross-entropy on built-in data",
    add_arguments=add_arguments,
    run=run,
    validate=validate,
))
