"""``xrisk demo``: cross-entropy vs AUC-M vs AP on one imbalanced built-in data set.

Runs the :mod:`auc recipe <xrisk.recipes.auc>` three times (``--loss ce``, ``aucm``, ``ap``)
on Fashion-MNIST made binary (one class vs the rest, 2 % positives in the training set,
subsampled to :data:`DEFAULT_MAX_TRAIN` images and trained for :data:`DEFAULT_EPOCHS` epochs so the
whole demo takes about three minutes on two CPU cores), prints a table of test AUROC / AP / pAUC
and writes a run folder::

    runs/demo-<timestamp>/
        ce/  aucm/  ap/          one full run folder per method (config, metrics, checkpoint, plots)
        summary.json             final metrics per method
        comparison.png           test AUROC and AP per epoch, one curve per method

Without the Debian package ``dataset-fashion-mnist`` it says so in one line and uses the
scikit-learn breast-cancer data instead (by default with 10 % positives and 30 epochs, as
it has only 569 samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from xrisk.recipes.flags import number, text
from xrisk.recipes.lock import RunLock
from xrisk.recipes.runner import RunContext

__all__ = ["HELP", "METHODS", "DEFAULT_MAX_TRAIN", "DEFAULT_EPOCHS", "SMALL_EPOCHS", "add_arguments", "validate",
           "run_demo"]

HELP = "cross-entropy vs AUC-M vs AP on imbalanced Fashion-MNIST (about 3 minutes on 2 cores)"

#: (name shown in the table, ``--loss`` of the auc recipe)
METHODS: tuple[tuple[str, str], ...] = (("cross-entropy", "ce"), ("AUC-M (PESG)", "aucm"), ("AP (SOAP)", "ap"))

DEFAULT_MAX_TRAIN = 12_000
"""Fashion-MNIST training images kept (stratified; 240 positives at 2 %).

With :data:`DEFAULT_EPOCHS` the demo takes about 2.5 minutes on 2 otherwise idle CPU cores
(cross-entropy ~35 s, AUC-M ~45 s, AP ~55 s; measured 2:51 with other jobs on the machine), and
each AUC-type loss wins the metric it optimises (AUC-M the AUROC, AP the AP). With 6,000 images
(120 positives) and 6 epochs the AUC-M and AP runs over-fit their few positives and the table
was mostly noise."""

DEFAULT_EPOCHS = 4
"""Epochs per method on Fashion-MNIST."""

SMALL_EPOCHS = 30
"""Epochs per method on the 569-sample breast-cancer fallback (each takes well under a second)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk demo`` (the common ``--out/--resume/--quiet/--no-plot`` are added by the CLI)."""
    from xrisk.recipes.auc import DATASETS

    p.add_argument("--data", default="fashion-mnist", choices=DATASETS,
                   help="data set (falls back to breast-cancer when fashion-mnist is not installed)")
    p.add_argument("--positive-class", type=text(pattern_help="a class name or number"), default=None,
                   help="positive class, a name or number (default: the data set's usual one)")
    p.add_argument("--pos-ratio", type=number(float, gt=0, lt=1), default=None,
                   help="fraction of positives in the training set (default: 0.02, 0.1 on breast-cancer)")
    p.add_argument("--max-train", type=number(int, ge=10), default=DEFAULT_MAX_TRAIN,
                   help="training samples kept (stratified)")
    p.add_argument("--epochs", type=number(int, ge=1), default=None,
                   help=f"epochs per method (default: {DEFAULT_EPOCHS}, {SMALL_EPOCHS} on the small breast-cancer "
                        "set)")
    p.add_argument("--batch-size", type=number(int, ge=2), default=64, help="mini-batch size")
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed")


def validate(args: argparse.Namespace) -> None:
    """``--positive-class`` must name a class of ``--data`` (checked before the run folder exists)."""
    from xrisk.recipes import auc

    auc.validate(args)


def _auc_args(args: argparse.Namespace, data: str, loss: str, out: Path) -> argparse.Namespace:
    from xrisk.recipes import auc

    parser = argparse.ArgumentParser()
    auc.add_arguments(parser)
    ns = parser.parse_args([])
    ns.data, ns.loss, ns.positive_class = data, loss, args.positive_class
    ns.pos_ratio, ns.max_train, ns.epochs = args.pos_ratio, args.max_train, args.epochs
    ns.batch_size, ns.seed = args.batch_size, args.seed
    ns.out, ns.resume, ns.quiet, ns.no_plot = out, args.resume, args.quiet, args.no_plot
    ns.checkpoint_every = args.checkpoint_every
    return ns


def _fill_defaults(args: argparse.Namespace, data: str) -> None:
    """Defaults that depend on the data set: breast-cancer has only 569 samples, so it keeps
    more positives (10 %) and trains for more (fast) epochs (:data:`SMALL_EPOCHS`)."""
    small = data == "breast-cancer"
    if args.pos_ratio is None:
        args.pos_ratio = 0.1 if small else 0.02
    if args.epochs is None:
        args.epochs = SMALL_EPOCHS if small else DEFAULT_EPOCHS


def run_demo(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run the three methods, print the table, write ``summary.json`` and ``comparison.png``.

    The demo folder is locked while it runs (:class:`~xrisk.recipes.lock.RunLock`), and each
    method's run folder is a :class:`~xrisk.recipes.runner.RunContext` of its own, so ``--resume``
    continues an interrupted demo.

    Returns:
        Final metrics per method name.
    """
    from xrisk.cli import default_out_dir

    out = Path(args.out) if args.out is not None else default_out_dir("demo")
    args.out = out
    with RunLock(out):
        return _run_methods(args, out)


def _run_methods(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    from xrisk.data import DataNotInstalledError
    from xrisk.recipes import auc
    from xrisk.recipes.plots import PlotsUnavailable, plot_comparison

    data = args.data
    user_pos_ratio, user_epochs = args.pos_ratio, args.epochs
    _fill_defaults(args, data)
    results: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    t_all = time.monotonic()
    for label, loss in METHODS:
        while True:
            ns = _auc_args(args, data, loss, out / loss)
            with RunContext(out / loss, recipe="auc", args=ns, quiet=args.quiet, resume=args.resume,
                            plot=not args.no_plot, checkpoint_every=args.checkpoint_every) as ctx:
                ctx.notice(f"demo: {label} on {data}")
                t0 = time.monotonic()
                try:
                    final = auc.run(ns, ctx)
                    break
                except DataNotInstalledError as e:
                    if data == "breast-cancer":
                        raise
                    missing = str(e)
            data, args.positive_class = "breast-cancer", None
            args.pos_ratio, args.epochs = user_pos_ratio, user_epochs
            _fill_defaults(args, data)
            print(f"xrisk: {missing}; the demo uses breast-cancer instead ({args.pos_ratio:.0%} positives, "
                  f"{args.epochs} epochs)", file=sys.stderr, flush=True)
        results[label] = {**final, "seconds": round(time.monotonic() - t0, 1), "run_folder": str(out / loss)}
        histories[label] = ctx.history
    summary = {"data": data, "pos_ratio": args.pos_ratio, "max_train": args.max_train,
               "epochs": args.epochs, "methods": results,
               "seconds": round(time.monotonic() - t_all, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nxrisk demo: {data}, {args.pos_ratio:.0%} positives in training, {args.epochs} epochs "
          f"(test metrics; pAUC = FPR <= 0.3)")
    print(f"{'method':<16}{'AUROC':>8}{'AP':>8}{'pAUC':>8}{'time':>8}")
    for label, r in results.items():
        print(f"{label:<16}{r['test_auroc']:>8.4f}{r['test_ap']:>8.4f}{r['test_pauc']:>8.4f}{r['seconds']:>7.0f}s")
    if not args.no_plot:
        try:
            plot_comparison(histories, ["test_auroc", "test_ap"], out / "comparison.png",
                            title=f"{data}, {args.pos_ratio:.0%} positives")
        except PlotsUnavailable as e:
            print(f"xrisk: {e}")
    print(f"run folder: {out}")
    return results
