"""The ``xrisk`` command.

::

    xrisk list                         # the recipes, one line each
    xrisk run RECIPE [options]         # e.g. xrisk run auc --data breast-cancer --loss aucm
    xrisk run RECIPE --help            # the recipe's options
    xrisk demo                         # cross-entropy vs AUC-M vs AP on imbalanced data (~3 min)
    xrisk trust COMMAND                # trustworthiness benchmark of vision-language models (AutoTrust)

Every ``run`` writes a run folder (``--out DIR``, default ``runs/<recipe>-<timestamp>``) with
``config.json``, ``metrics.jsonl``, ``metrics.json``, ``checkpoint.pt`` and PNG plots; see
:mod:`xrisk.recipes.runner`. ``--resume`` with the same ``--out`` continues a stopped run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from xrisk.checkpoint import CheckpointMismatchError
from xrisk.recipes.registry import Recipe, UsageError, load_builtin_recipes
from xrisk.recipes.runner import RunContext

__all__ = ["main", "build_parser", "add_common_arguments", "default_out_dir"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every run has: ``--out``, ``--resume``, ``--quiet``, ``--no-plot``."""
    g = parser.add_argument_group("run folder and output")
    g.add_argument("--out", type=Path, default=None,
                   help="run folder (default: runs/<recipe>-<timestamp>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--no-plot", action="store_true", help="do not write PNG plots")


def default_out_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (local time)."""
    return Path("runs") / f"{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def build_parser() -> argparse.ArgumentParser:
    """The full ``xrisk`` parser (imports the built-in recipe modules)."""
    from xrisk.recipes import demo

    parser = argparse.ArgumentParser(
        prog="xrisk",
        description="Train with X-risk objectives (AUROC, AP, partial AUC, global contrastive losses).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="list the recipes", description="List the recipes of `xrisk run`.")
    run = sub.add_parser("run", help="run a recipe (xrisk run RECIPE --help)",
                         description="Run a recipe; `xrisk run RECIPE --help` shows its options.")
    recipes = run.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for name, recipe in sorted(load_builtin_recipes().items()):
        rp = recipes.add_parser(name, help=recipe.help, description=recipe.help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        recipe.add_arguments(rp)
        add_common_arguments(rp)
    dp = sub.add_parser("demo", help=demo.HELP, description=demo.HELP,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_arguments(dp)
    add_common_arguments(dp)
    from xrisk.trust.cli import add_trust_parser  # `xrisk trust ...` (issue 16)

    add_trust_parser(sub)
    return parser


def _list(out: TextIO) -> None:
    recipes = load_builtin_recipes()
    width = max((len(n) for n in recipes), default=0)
    for name in sorted(recipes):
        out.write(f"{name:<{width}}  {recipes[name].help}\n")
    out.write(f"{'demo':<{width}}  (xrisk demo) cross-entropy vs AUC-M vs AP on an imbalanced data set\n")


def _run(recipe: Recipe, args: argparse.Namespace) -> dict[str, float]:
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out (the run folder to continue)")
    out = args.out if args.out is not None else default_out_dir(recipe.name)
    args.out = out
    ctx = RunContext(out, recipe=recipe.name, args=args, quiet=args.quiet, resume=args.resume,
                     plot=not args.no_plot)
    final = recipe.run(args, ctx)
    return final


def _print_final(name: str, out: Path, final: dict[str, float]) -> None:
    print(f"{name}: final metrics ({out}/metrics.json)")
    for k, v in final.items():
        print(f"  {k:<20} {v:.4f}" if isinstance(v, float) else f"  {k:<20} {v}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrisk`` command; returns the exit status.

    Errors a user can fix (missing data package, resuming with other arguments, an occupied
    run folder) print one ``xrisk: error: ...`` line and return 2 instead of a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from xrisk.data import DataNotInstalledError  # noqa: PLC0415
    except ImportError:  # the data package may not define it yet
        DataNotInstalledError = FileNotFoundError  # type: ignore[misc,assignment]  # noqa: N806
    try:
        if args.command == "list":
            _list(sys.stdout)
            return 0
        if args.command == "demo":
            from xrisk.recipes import demo

            demo.run_demo(args)
            return 0
        if args.command == "trust":
            from xrisk.trust.cli import run_trust_command

            return run_trust_command(args)
        recipe = load_builtin_recipes()[args.recipe]
        final = _run(recipe, args)
        _print_final(recipe.name, args.out, final)
        return 0
    except (CheckpointMismatchError, FileExistsError, DataNotInstalledError, UsageError) as e:
        print(f"xrisk: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f" (continue with --resume --out {out})" if out is not None else ""
        print(f"\nxrisk: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
