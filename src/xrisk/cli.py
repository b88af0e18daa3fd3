"""The ``xrisk`` command.

::

    xrisk list                         # the recipes, one line each
    xrisk run RECIPE [options]         # e.g. xrisk run auc --data breast-cancer --loss aucm
    xrisk run RECIPE --help            # the recipe's options
    xrisk demo                         # cross-entropy vs AUC-M vs AP on imbalanced data (~3 min)
    xrisk textdetect generate [options]  # human-vs-machine text data (xrisk.recipes.textdetect_generate)
    xrisk --version
    xrisk trust COMMAND                # trustworthiness benchmark of vision-language models (AutoTrust)

Every ``run`` writes a run folder (``--out DIR``, default ``runs/<recipe>-<timestamp>``) with
``config.json``, ``metrics.jsonl``, ``metrics.json``, ``checkpoint.pt`` and PNG plots; see
:mod:`xrisk.recipes.runner`. ``--resume`` with the same ``--out`` continues a stopped run, also
one stopped inside an epoch (checkpoints every ``--checkpoint-every`` steps and on Ctrl-C).

Errors a user can fix print one line, ``xrisk: error: ...``, and exit with status 2, before any
work: a flag value outside what the flag accepts (every flag declares it, see
:mod:`xrisk.recipes.flags`), a rule of the recipe's ``validate`` hook, a run folder in use by
another run, a damaged or foreign checkpoint, a missing data package.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from xrisk.checkpoint import CheckpointError
from xrisk.recipes.flags import number, out_dir
from xrisk.recipes.lock import RunFolderLocked
from xrisk.recipes.registry import Recipe, UsageError, load_builtin_recipes
from xrisk.recipes.runner import DEFAULT_CHECKPOINT_EVERY, RunContext

__all__ = ["main", "build_parser", "add_common_arguments", "default_out_dir", "Parser", "HelpFormatter"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``xrisk: error: ...`` (exit status 2, no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"xrisk: error: {' '.join(message.split())}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: ``(default: X)`` unless the help text already says
    ``default:``, ``(default: off)`` for on/off switches, nothing for ``--help``/``--version`` and
    for required options (they have no default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default:" in text or action.default is argparse.SUPPRESS or not action.option_strings
                or action.required):
            return text
        if action.nargs == 0:  # a switch: store_true / store_false
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every run has: ``--out``, ``--resume``, ``--checkpoint-every``, ``--quiet``, ``--no-plot``."""
    g = parser.add_argument_group("run folder and output")
    g.add_argument("--out", type=out_dir, default=None,
                   help="run folder (default: runs/<recipe>-<timestamp>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    g.add_argument("--checkpoint-every", type=number(int, ge=0), default=DEFAULT_CHECKPOINT_EVERY, metavar="STEPS",
                   help="also write the checkpoint every this many steps inside an epoch (0: at epoch ends and "
                        "on Ctrl-C only)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--no-plot", action="store_true", help="do not write PNG plots")


def default_out_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (local time)."""
    return Path("runs") / f"{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def build_parser() -> argparse.ArgumentParser:
    """The full ``xrisk`` parser (imports the built-in recipe modules)."""
    import xrisk
    from xrisk.recipes import demo

    parser = Parser(
        prog="xrisk",
        description="Train with X-risk objectives (AUROC, AP, partial AUC, global contrastive losses).",
    )
    parser.add_argument("--version", action="version", version=f"xrisk {xrisk.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="list the recipes", description="List the recipes of `xrisk run`.")
    run = sub.add_parser("run", help="run a recipe (xrisk run RECIPE --help)",
                         description="Run a recipe; `xrisk run RECIPE --help` shows its options.")
    recipes = run.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for name, recipe in sorted(load_builtin_recipes().items()):
        rp = recipes.add_parser(name, help=recipe.help, description=recipe.help, formatter_class=HelpFormatter)
        recipe.add_arguments(rp)
        add_common_arguments(rp)
    dp = sub.add_parser("demo", help=demo.HELP, description=demo.HELP, formatter_class=HelpFormatter)
    demo.add_arguments(dp)
    add_common_arguments(dp)
    from xrisk.recipes.textdetect_generate import add_textdetect_parser  # `xrisk textdetect ...` (issue 17)

    add_textdetect_parser(sub, HelpFormatter)
    from xrisk.trust.cli import add_trust_parser  # `xrisk trust ...` (issue 16)

    add_trust_parser(sub)
    return parser


def _list(out: TextIO) -> None:
    recipes = load_builtin_recipes()
    width = max((len(n) for n in recipes), default=0)
    for name in sorted(recipes):
        out.write(f"{name:<{width}}  {recipes[name].help}\n")
    out.write(f"{'demo':<{width}}  (xrisk demo) cross-entropy vs AUC-M vs AP on an imbalanced data set\n")


def _check_resume(args: argparse.Namespace) -> None:
    if args.resume and args.out is None:
        raise UsageError("argument --resume: needs --out (the run folder to continue)")


def _run(recipe: Recipe, args: argparse.Namespace) -> dict[str, float]:
    _check_resume(args)
    if recipe.validate is not None:
        recipe.validate(args)  # before the run folder exists
    args.out = args.out if args.out is not None else default_out_dir(recipe.name)
    ctx = RunContext(args.out, recipe=recipe.name, args=args, quiet=args.quiet, resume=args.resume,
                     plot=not args.no_plot, checkpoint_every=args.checkpoint_every)
    try:
        return recipe.run(args, ctx)
    finally:
        ctx.close()


def _print_final(name: str, out: Path, final: dict[str, float]) -> None:
    print(f"{name}: final metrics ({out}/metrics.json)")
    for k, v in final.items():
        print(f"  {k:<20} {v:.4f}" if isinstance(v, float) else f"  {k:<20} {v}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, UsageError) else f"{type(e).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrisk`` command; returns the exit status.

    Errors a user can fix (a bad flag value, a missing data package, resuming with other
    arguments, a damaged checkpoint, an occupied or locked run folder) print one
    ``xrisk: error: ...`` line and return 2 instead of a traceback; Ctrl-C returns 130 after the
    checkpoint (``continue with --resume``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from xrisk.data import DataNotInstalledError  # noqa: PLC0415

    try:
        if args.command == "list":
            _list(sys.stdout)
            return 0
        if args.command == "textdetect":
            from xrisk.recipes.textdetect_generate import run_textdetect_command

            return run_textdetect_command(args)
        if args.command == "demo":
            from xrisk.recipes import demo

            _check_resume(args)
            demo.validate(args)  # before the run folder exists
            demo.run_demo(args)
            return 0
        if args.command == "trust":
            from xrisk.trust.cli import run_trust_command

            return run_trust_command(args)
        recipe = load_builtin_recipes()[args.recipe]
        final = _run(recipe, args)
        _print_final(recipe.name, args.out, final)
        return 0
    except (CheckpointError, FileExistsError, RunFolderLocked, DataNotInstalledError, UsageError) as e:
        print(f"xrisk: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f" (continue with --resume --out {out})" if out is not None else ""
        print(f"\nxrisk: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
