"""``xrisk trust ...``: make a suite, train the in-library model, run, report, demo.

::

    xrisk trust make-suite --out SUITE                       # generated driving scenes + QA files
    xrisk trust train --suite SUITE --out vqa.pt              # the in-library VQA model (~minutes)
    xrisk trust run --adapter vqa --model vqa.pt --suite SUITE --dimensions all --out RUN
    xrisk trust run --adapter refuse --suite SUITE           # a rule-based reference point
    xrisk trust report RUN                                   # (re)write report.md / report.html
    xrisk trust demo                                         # all of the above, small (~minutes)

Every flag that takes a value is validated while the command line is parsed
(:mod:`xrisk.recipes.flags`). Rules across flags and the data (the suite's QA files, the model
file, the adapter's options) are checked by each command's ``_check_*`` function before any file
or folder is written, and fail with one :class:`~xrisk.recipes.registry.UsageError` line naming the
flag. Run folders are :class:`~xrisk.recipes.runner.RunContext` folders (locked while in use, closed
however the run ends); the suite folder of ``make-suite``, the demo folder and a run folder being
re-reported are locked the same way. ``xrisk trust run --resume --out RUN`` continues a stopped run.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path
from typing import Any

from xrisk.recipes.flags import FlagType, existing_path, number, out_dir, out_file, text
from xrisk.recipes.registry import UsageError

__all__ = ["add_trust_parser", "run_trust_command", "TRUST_COMMANDS"]

TRUST_COMMANDS: tuple[str, ...] = ("make-suite", "train", "run", "report", "demo")
_DIMENSIONS = ("trustfulness", "safety", "robustness", "privacy", "fairness")
_ATTACKS = ("pgd", "bim", "cw")
_LANGUAGES = ("Spanish", "Chinese", "Hindi", "Arabic")


def _word_list(name: str, choices: tuple[str, ...], *, allow_all: bool = False, allow_none: bool = False) -> FlagType:
    """Comma-separated words from ``choices`` (``all`` / ``none`` when allowed) -> tuple."""
    extra = (["'all'"] if allow_all else []) + (["'none'"] if allow_none else [])
    description = f"{' or '.join(extra) + ' or ' if extra else ''}{name} separated by commas ({', '.join(choices)})"

    def parse(value: str) -> tuple[str, ...]:
        v = value.strip()
        if allow_all and v.lower() == "all":
            return choices
        if allow_none and v.lower() == "none":
            return ()
        words = [w.strip() for w in v.split(",") if w.strip()]
        if not words or any(w not in choices for w in words) or len(set(words)) != len(words):
            raise ValueError("")
        return tuple(words)

    return FlagType(description, parse, ("", "nope", f"{choices[0]},nope", f"{choices[0]},{choices[0]}"))


def _float_list(*, ge: float = 0.0) -> FlagType:
    """Finite numbers >= ``ge`` separated by spaces or commas (``""`` = none) -> tuple."""

    def parse(value: str) -> tuple[float, ...]:
        out = []
        for tok in value.replace(",", " ").split():
            x = float(tok)
            if not (x == x and abs(x) != float("inf")) or x < ge:
                raise ValueError("")
            out.append(x)
        return tuple(out)

    return FlagType(f"numbers >= {ge:g} separated by spaces or commas", parse, ("abc", "nan", "-1", "1,inf"))


def _adapter_choices() -> list[str]:
    from xrisk.trust.adapters import adapter_names

    return adapter_names()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")


def _suite_flags(p: argparse.ArgumentParser, *, small: bool = False) -> None:
    g = p.add_argument_group("suite size")
    g.add_argument("--train-scenes", type=number(int, ge=0), default=500 if small else 600,
                   help="scenes of the training split")
    g.add_argument("--test-scenes", type=number(int, ge=0), default=120 if small else 150,
                   help="scenes of the test split")
    g.add_argument("--long-tail-scenes", type=number(int, ge=0), default=40 if small else 60,
                   help="long-tail scenes (visual robustness)")
    g.add_argument("--fairness-scenes", type=number(int, ge=0), default=80 if small else 120,
                   help="scenes of the fairness QA files")
    g.add_argument("--languages", type=_word_list("languages", _LANGUAGES, allow_all=True), default="all",
                   help="translated languages, or 'all'")


def _train_flags(p: argparse.ArgumentParser, *, epochs: int) -> None:
    g = p.add_argument_group("training of the in-library model")
    g.add_argument("--epochs", type=number(int, ge=1), default=epochs, help="passes over the training pictures")
    g.add_argument("--images-per-batch", type=number(int, ge=1), default=8, help="pictures per step")
    g.add_argument("--lr", type=number(float, gt=0), default=3e-3, help="Adam learning rate")
    g.add_argument("--dim", type=number(int, ge=8), default=96, help="model width")


def _eval_flags(p: argparse.ArgumentParser, *, attack_records: int, ego_records: int) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--dimensions", type=_word_list("dimensions", _DIMENSIONS, allow_all=True), default="all",
                   help="'all' or dimensions separated by commas")
    g.add_argument("--attacks", type=_word_list("attacks", _ATTACKS, allow_all=True, allow_none=True),
                   default="all", help="white-box attacks: 'all', 'none' or a list (pgd, bim, cw)")
    g.add_argument("--attack-records", type=number(int, ge=0), default=attack_records,
                   help="closed-ended safety records attacked (the first ones)")
    g.add_argument("--pgd-epsilons", type=_float_list(ge=0.0), default="1 2 4 8 16",
                   help="PGD budgets (x 1/255) of the accuracy-vs-epsilon curve; '' for none")
    g.add_argument("--noise-variances", type=_float_list(ge=0.0), default="6 100 900",
                   help="Gaussian-noise variances (0-255 scale) for robustness; '' for none")
    g.add_argument("--ego-records", type=number(int, ge=0), default=ego_records,
                   help="closed-ended records asked with each of the 24 ego prefixes")
    g.add_argument("--max-records", type=number(int, ge=1, allow_none=True), default=None,
                   help="at most this many records per QA role (default: none, every record)")


def add_trust_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``trust`` and its sub-commands to the ``xrisk`` sub-parsers ``sub``; returns the ``trust`` parser."""
    from xrisk.cli import HelpFormatter

    fmt = HelpFormatter
    trust = sub.add_parser("trust", help="trustworthiness benchmark of vision-language models (AutoTrust)",
                           description="AutoTrust's five dimensions on any vision-language adapter: trustfulness, "
                                       "safety, robustness, privacy, fairness.")
    cmds = trust.add_subparsers(dest="trust_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("make-suite", help="generate driving scenes and QA files", formatter_class=fmt,
                        description="Generate a driving-scene suite with exact ground truth for every dimension.")
    p.add_argument("--out", type=out_dir, required=True, help="suite folder (must not hold a suite)")
    _suite_flags(p)
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed")
    _common(p)

    p = cmds.add_parser("train", help="train the in-library VQA model on a suite", formatter_class=fmt,
                        description="Train the in-library VQA model on the training split of a suite.")
    p.add_argument("--suite", type=existing_path(kind="folder"), required=True, help="suite folder")
    p.add_argument("--out", type=out_file, required=True, help="model file to write")
    _train_flags(p, epochs=15)
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed")
    _common(p)

    p = cmds.add_parser("run", help="evaluate an adapter on a suite", formatter_class=fmt,
                        description="Evaluate an adapter on every dimension of a suite; writes a run folder "
                                    "with answers, results and the report.")
    p.add_argument("--adapter", choices=_adapter_choices(), required=True, help="adapter name")
    p.add_argument("--model", type=text(pattern_help="a model file, folder or hub id"), default=None,
                   help="what the adapter loads (vqa: a model file; hf: a folder or hub id) (default: none; the "
                        "rule-based adapters load nothing)")
    p.add_argument("--suite", type=existing_path(kind="folder"), required=True, help="suite folder")
    p.add_argument("--surrogate", choices=_adapter_choices(), default=None,
                   help="white-box adapter that makes the black-box transfer images (default: none, no black-box "
                        "transfer test)")
    p.add_argument("--surrogate-model", type=text(pattern_help="a model file, folder or hub id"), default=None,
                   help="what the surrogate loads (default: none)")
    _eval_flags(p, attack_records=100, ego_records=100)
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of the fallbacks, noise and 'random'")
    p.add_argument("--out", type=out_dir, default=None, help="run folder (default: runs/trust-<adapter>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-plot", action="store_true", help="no PNG plots in the report")
    _common(p)

    p = cmds.add_parser("report", help="(re)write the report of a run", formatter_class=fmt,
                        description="Write report.md, report.html and plots of a run folder.")
    p.add_argument("run_dir", type=existing_path(kind="folder"), help="run folder")
    p.add_argument("--no-plot", action="store_true", help="no PNG plots")
    _common(p)

    p = cmds.add_parser("demo", help="make a small suite, train the model, evaluate everything (~minutes)",
                        formatter_class=fmt,
                        description="Make a small suite, train the in-library model (and a surrogate), evaluate "
                                    "it and two rule-based adapters on every dimension, write the reports.")
    p.add_argument("--out", type=out_dir, default=None, help="demo folder (default: runs/trust-demo-<time>)")
    _suite_flags(p, small=True)
    _train_flags(p, epochs=12)
    p.add_argument("--surrogate-epochs", type=number(int, ge=0), default=4,
                   help="epochs of the surrogate model of the black-box test (0 = no black-box test)")
    _eval_flags(p, attack_records=60, ego_records=60)
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed")
    p.add_argument("--no-plot", action="store_true", help="no PNG plots")
    _common(p)
    return trust


def _default_out(name: str) -> Path:
    from xrisk.cli import default_out_dir

    return default_out_dir(name)


def _settings(args: argparse.Namespace, surrogate: Any = None) -> Any:
    from xrisk.trust.dimensions import TrustSettings

    return TrustSettings(attacks=tuple(args.attacks), attack_records=args.attack_records,
                         pgd_epsilons=tuple(args.pgd_epsilons), noise_variances=tuple(args.noise_variances),
                         ego_records=args.ego_records, max_records=args.max_records, seed=args.seed,
                         surrogate=surrogate)


# ----------------------------------------------------------------------------- checks (before any file is written)
def _suite_config(args: argparse.Namespace, *, for_demo: bool = False) -> Any:
    """The :class:`~xrisk.trust.suite.SuiteConfig` of the suite flags (a demo needs both splits)."""
    from xrisk.trust.suite import SuiteConfig

    if for_demo and args.train_scenes == 0:
        raise UsageError("argument --train-scenes: the demo trains a model, it needs >= 1 training scene")
    if for_demo and args.test_scenes == 0:
        raise UsageError("argument --test-scenes: the demo evaluates on test scenes, it needs >= 1")
    if args.train_scenes + args.test_scenes == 0:
        raise UsageError("argument --test-scenes: a suite needs --train-scenes or --test-scenes > 0")
    return SuiteConfig(train_scenes=args.train_scenes, test_scenes=args.test_scenes,
                       long_tail_scenes=args.long_tail_scenes, fairness_scenes=args.fairness_scenes, seed=args.seed,
                       languages=tuple(args.languages))


def _open_suite(path: Path, *, need: str | None = None) -> Any:
    """The suite at ``--suite path`` with every QA file read and validated (and role ``need`` non-empty)."""
    from xrisk.trust.suite import load_suite

    try:
        suite = load_suite(path)
        suite.check()
    except (FileNotFoundError, ValueError) as e:  # RecordError is a ValueError
        raise UsageError(f"argument --suite: {' '.join(str(e).split())}") from None
    if need is not None and not suite.records(need):
        raise UsageError(f"argument --suite: {path} has no {need} split ({need}.json); make one with "
                         "`xrisk trust make-suite --train-scenes N`")
    return suite


def _adapter_options(name: str, model: str | None, seed: int, *, flag: str, model_flag: str) -> dict[str, Any]:
    """The options of adapter ``name`` (flag ``flag``) from its model (flag ``model_flag``) and the seed, checked."""
    from xrisk.trust.adapters import ADAPTERS

    spec = ADAPTERS[name]
    model_param = inspect.signature(spec.factory).parameters.get("model")
    if model is None and model_param is not None and model_param.default is inspect.Parameter.empty:
        raise UsageError(f"argument {flag}: {name} needs {model_flag} (what it loads)")
    if model is not None and "model" not in spec.options:
        raise UsageError(f"argument {model_flag}: adapter {name!r} loads no model")
    options: dict[str, Any] = {"model": model}
    if "seed" in spec.options:
        options["seed"] = seed
    return options


def _build_adapter(name: str, options: dict[str, Any], *, model_flag: str) -> Any:
    from xrisk.trust.adapters import get_adapter

    try:
        return get_adapter(name, **options)
    except (ValueError, OSError, ImportError) as e:  # a foreign model file, a missing folder, a missing extra
        raise UsageError(f"argument {model_flag}: {type(e).__name__}: {' '.join(str(e).split())}") from None


def _check_run(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Every rule of ``xrisk trust run``, the flags' first; returns ``(suite, adapter, surrogate or None)``."""
    from xrisk.cli import _check_resume
    from xrisk.trust.adapters import supports_white_box

    _check_resume(args)
    if args.surrogate is None and args.surrogate_model is not None:
        raise UsageError("argument --surrogate-model: needs --surrogate (the adapter that loads it)")
    options = _adapter_options(args.adapter, args.model, args.seed, flag="--adapter", model_flag="--model")
    surrogate_options = None
    if args.surrogate is not None:
        surrogate_options = _adapter_options(args.surrogate, args.surrogate_model, args.seed, flag="--surrogate",
                                             model_flag="--surrogate-model")
    if args.out is not None and not args.resume and (Path(args.out) / "answers").exists():
        raise UsageError(f"argument --out: {args.out} already holds a trust run; pass --resume to continue it "
                         "or choose another --out")
    suite = _open_suite(args.suite)
    adapter = _build_adapter(args.adapter, options, model_flag="--model")
    surrogate = None
    if surrogate_options is not None:
        surrogate = _build_adapter(args.surrogate, surrogate_options, model_flag="--surrogate-model")
        if not supports_white_box(surrogate):
            raise UsageError(f"argument --surrogate: {args.surrogate} cannot be attacked (no choice_logits)")
    return suite, adapter, surrogate


def _check_out_suite(out: Path) -> None:
    if (out / "suite.json").exists():
        raise UsageError(f"argument --out: {out} already holds a suite (suite.json); choose another folder")


# ----------------------------------------------------------------------------- commands
def _make_suite(args: argparse.Namespace, out: Path, config: Any) -> Path:
    from xrisk.recipes.lock import RunLock
    from xrisk.recipes.progress import ProgressBar
    from xrisk.trust.suite import make_suite

    total = config.train_scenes + config.test_scenes + config.long_tail_scenes + config.fairness_scenes
    with RunLock(out), ProgressBar(total, "make-suite", enabled=not args.quiet) as bar:
        return make_suite(out, config, progress=bar.update)


def _train(args: argparse.Namespace, suite: Any, out: Path, *, epochs: int, seed: int, desc: str = "train") -> Any:
    import torch

    from xrisk.recipes.progress import ProgressBar
    from xrisk.trust.suite import read_scenes
    from xrisk.trust.vqa import train_vqa

    scenes = read_scenes(suite.root) if (suite.root / "scenes.jsonl").is_file() else None
    torch.manual_seed(seed)
    with ProgressBar(epochs, desc, enabled=not args.quiet) as bar:
        adapter = train_vqa(suite.records("train"), suite.image_root, epochs=epochs,
                            images_per_batch=args.images_per_batch, lr=args.lr, dim=args.dim, seed=seed,
                            scenes=scenes, progress=lambda e, m: bar.update(**m))
    adapter.save(out)
    return adapter


def _evaluate(args: argparse.Namespace, out: Path, *, suite: Any, adapter: Any, surrogate: Any = None,
              resume: bool) -> dict[str, Any]:
    """One ``xrisk trust run`` into the run folder ``out`` (a locked RunContext, closed however it ends)."""
    from xrisk.recipes.runner import RunContext
    from xrisk.trust.run import run_evaluation

    ctx = RunContext(out, recipe="trust", args=args, quiet=args.quiet, resume=resume, plot=False)
    try:
        return run_evaluation(ctx, suite=suite, adapter=adapter, dimensions=args.dimensions,
                              settings=_settings(args, surrogate), plot=not args.no_plot)
    finally:
        ctx.close()


def _demo(args: argparse.Namespace) -> None:
    """Suite -> model (+ surrogate) -> run of vqa, random and refuse -> reports and a comparison table."""
    from xrisk.recipes.lock import RunLock
    from xrisk.trust.adapters import get_adapter
    from xrisk.trust.report import load_results, markdown_table, summary_rows
    from xrisk.trust.suite import load_suite

    config = _suite_config(args, for_demo=True)  # before the demo folder exists
    root = args.out if args.out is not None else _default_out("trust-demo")
    t0 = time.perf_counter()
    with RunLock(root):
        suite_dir = root / "suite"
        if not (suite_dir / "suite.json").exists():
            _make_suite(args, suite_dir, config)
        suite = _open_suite(suite_dir)
        model_path = root / "vqa.pt"
        if not model_path.exists():
            _train(args, suite, model_path, epochs=args.epochs, seed=args.seed)
        surrogate = None
        if args.surrogate_epochs > 0:
            surrogate_path = root / "surrogate.pt"
            if not surrogate_path.exists():
                _train(args, suite, surrogate_path, epochs=args.surrogate_epochs, seed=args.seed + 1,
                       desc="surrogate")
            surrogate = get_adapter("vqa", model=str(surrogate_path), name="surrogate")
        rows: dict[str, list[dict[str, Any]]] = {}
        # the runs' arguments: the evaluation's, not the training's (RunContext reads --epochs as epochs to run)
        kept = {k: v for k, v in vars(args).items() if k not in ("epochs", "surrogate_epochs")}
        for name, options in (("vqa", {"model": str(model_path)}), ("random", {"seed": args.seed}), ("refuse", {})):
            run_dir = root / f"run-{name}"
            ns = argparse.Namespace(**{**kept, "adapter": name, "out": run_dir})
            _evaluate(ns, run_dir, suite=suite, adapter=get_adapter(name, **options),
                      surrogate=surrogate if name == "vqa" else None, resume=(run_dir / "checkpoint.pt").exists())
            rows[name] = summary_rows(load_results(run_dir))
    table = []
    for row in rows["vqa"]:
        entry = {"dimension": row["dimension"], "measure": row["measure"]}
        for name, rs in rows.items():
            match = [r["value"] for r in rs if r["dimension"] == row["dimension"] and r["measure"] == row["measure"]]
            entry[name] = match[0] if match else ""
        table.append(entry)
    text_table = markdown_table(table)
    (root / "comparison.md").write_text("# xrisk trust demo\n\n" + text_table, encoding="utf-8")
    print(text_table)
    print(f"xrisk trust demo: {time.perf_counter() - t0:.0f} s; reports in {root}/run-*/report.html, "
          f"comparison in {root}/comparison.md")


def run_trust_command(args: argparse.Namespace) -> int:
    """Run a parsed ``xrisk trust ...`` command; returns the exit status.

    Each command checks its flags against each other and against the data before it writes
    anything; a problem is a :class:`~xrisk.recipes.registry.UsageError` naming the flag (one
    ``xrisk: error:`` line, exit status 2). A missing optional dependency, or a QA or model file
    that goes missing during the run, becomes one too.
    """
    from xrisk.trust.records import RecordError

    try:
        return _dispatch(args)
    except (RecordError, FileNotFoundError, ImportError) as e:
        raise UsageError(f"{type(e).__name__}: {e}") from e


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.trust_command
    if cmd == "make-suite":
        config = _suite_config(args)
        _check_out_suite(args.out)
        manifest = _make_suite(args, args.out, config)
        print(f"xrisk trust make-suite: wrote {manifest}")
        return 0
    if cmd == "train":
        suite = _open_suite(args.suite, need="train")
        _train(args, suite, args.out, epochs=args.epochs, seed=args.seed)
        print(f"xrisk trust train: wrote {args.out}")
        return 0
    if cmd == "run":
        suite, adapter, surrogate = _check_run(args)  # before the run folder exists
        args.out = args.out if args.out is not None else _default_out(f"trust-{args.adapter}")
        final = _evaluate(args, args.out, suite=suite, adapter=adapter, surrogate=surrogate, resume=args.resume)
        print(f"xrisk trust run: {len(final)} metrics; report in {args.out}/report.html")
        return 0
    if cmd == "report":
        from xrisk.recipes.lock import RunLock
        from xrisk.trust.report import write_report

        with RunLock(args.run_dir):  # not while a run writes into the folder
            paths = write_report(args.run_dir, plot=not args.no_plot)
        print(f"xrisk trust report: wrote {paths['markdown']} and {paths['html']}")
        return 0
    if cmd == "demo":
        _demo(args)
        return 0
    raise UsageError(f"unknown trust command {cmd!r}")  # pragma: no cover - argparse refuses it first


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m xrisk.trust.cli`
    """``xrisk trust ...`` on its own (the ``xrisk`` command's parser, errors and exit codes)."""
    from xrisk.cli import main as xrisk_main

    return xrisk_main(["trust", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
