"""Generate the API pages of the docs site from the package's public names.

One page per loss and per optimizer (from ``xrisk.losses.__all__`` / ``xrisk.optim.__all__``;
the docstring carries the math), one page per area (metrics, data, state/distributed/checkpoint,
functional, models, CLI and recipes), the CLI help texts, and copies of README.md (the home page)
and bench/RESULTS.md (the benchmark tables; :func:`bench_images` lists the plots it shows). Everything
written here is git-ignored (``docs/api/``, ``docs/index.md``, ``docs/benchmarks.md``) and rewritten on every build:
``docs/hooks.py`` runs :func:`generate` when mkdocs loads its config (so ``mkdocs build`` and
``mkdocs serve`` alone are enough) and puts the returned pages in the navigation. Running this
file by hand writes the same pages.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"

#: Packages documented one page per public name (``__all__``).
PER_OBJECT = {"xrisk.losses": "Losses", "xrisk.optim": "Optimizers"}

#: Areas documented one page each: (nav title, slug, intro, modules rendered on the page).
AREAS: list[tuple[str, str, str, list[str]]] = [
    ("Metrics", "metrics",
     "Ranking metrics (AUROC, AP, partial AUROC; binary and multi-label), which torchmetrics class "
     "streams each of them (and the McClish conversion for one-way pAUC), the streaming two-way "
     "partial AUROC `TwoWayPartialAUROC` (a `torchmetrics.Metric`, `metrics` extra), and the "
     "retrieval metrics of the contrastive recipes.",
     ["xrisk.metrics.ranking", "xrisk.metrics.streaming", "xrisk.metrics.retrieval"]),
    ("Data", "data",
     "`IndexedDataset` (batches carry their dataset indices), the positive-oversampling "
     "`DualSampler` family, and the built-in offline loaders.",
     ["xrisk.data.indexed", "xrisk.data.samplers", "xrisk.data.stratified", "xrisk.data.builtin",
      "xrisk.data.fashion_mnist",
      "xrisk.data.captions", "xrisk.data.emoji", "xrisk.data.text", "xrisk.data.augment",
      "xrisk.data.errors", "xrisk.data.reference_cache", "xrisk.data.clinical.stays",
      "xrisk.data.clinical.reader", "xrisk.data.clinical.generator", "xrisk.data.clinical.views",
      "xrisk.data.fairness"]),
    ("Constrained learning", "constrained",
     "The problem / formulation split (`ProblemState`, `HingePenalty`, `SquaredHingePenalty`, `Lagrangian`) and "
     "the constraint builders (see the [guide](../constrained.md)).",
     ["xrisk.constrained.problem", "xrisk.constrained.formulation", "xrisk.constrained.hinge",
      "xrisk.constrained.squared_hinge", "xrisk.constrained.lagrangian", "xrisk.constrained.fairness",
      "xrisk.constrained.forgetting"]),
    ("State, distributed, checkpoints", "state",
     "Per-sample estimators, exact multi-process training, checkpoints and schedules "
     "(see also the [design notes](../design.md)).",
     ["xrisk.state", "xrisk.sharding", "xrisk.distributed", "xrisk.checkpoint", "xrisk.sharded_checkpoint",
      "xrisk.schedules"]),
    ("Functional", "functional", "Stateless functions behind the losses: pairwise surrogates, objectives and "
     "surrogates of AUC-M, AP, partial AUC and the contrastive losses, the masked-value imputation loss; the "
     "constrained formulations' estimators and weights; proximal maps and Moreau envelopes.",
     ["xrisk.functional.surrogates", "xrisk.functional.aucm", "xrisk.functional.ap", "xrisk.functional.pauc",
      "xrisk.functional.contrastive", "xrisk.functional.similarity", "xrisk.functional.drrho",
      "xrisk.functional.selection", "xrisk.functional.distillation", "xrisk.functional.imputation",
      "xrisk.functional.dft", "xrisk.functional.constrained", "xrisk.functional.prox"]),
    ("Models", "models", "Small models used by the recipes and tests.",
     ["xrisk.models.mlp", "xrisk.models.cnn", "xrisk.models.encoders", "xrisk.models.timeseries"]),
    ("Audio (Myna)", "audio",
     "The Myna pieces: mel front end, spectrogram ViT with masked tokens, audio reader and data sets, "
     "the music21 key corpus, key score and frozen-embedding probes (see the [Myna guide](../myna.md)).",
     ["xrisk.models.audio.mel", "xrisk.models.audio.vit", "xrisk.models.audio.masking", "xrisk.data.audio",
      "xrisk.data.music", "xrisk.data.key_corpus", "xrisk.metrics.key", "xrisk.metrics.probe"]),
    ("Trust", "trust",
     "The trustworthiness benchmark of vision-language models (`xrisk trust`, see the "
     "[guide](../trust.md)): records, prompts, parsers, metrics, adapters, attacks, the generated suite, "
     "the in-library model, runs and reports.",
     ["xrisk.trust.records", "xrisk.trust.prompts", "xrisk.trust.scoring", "xrisk.trust.metrics",
      "xrisk.trust.judge", "xrisk.trust.adapters", "xrisk.trust.rules", "xrisk.trust.hf", "xrisk.trust.vqa",
      "xrisk.trust.attacks", "xrisk.trust.scenes", "xrisk.trust.templates", "xrisk.trust.suite",
      "xrisk.trust.engine", "xrisk.trust.dimensions", "xrisk.trust.run", "xrisk.trust.report",
      "xrisk.trust.browser", "xrisk.trust.cli"]),
    ("Language models", "llm",
     "`xrisk.llm` (the `llm` extra): loading causal LMs (hub ids, folders, GGUF with a cache), batched "
     "generation, sequence log-probabilities, DFT's data format, negatives and trainers "
     "(see the [DFT guide](../dft.md)).",
     ["xrisk.llm.loading", "xrisk.llm.generation", "xrisk.llm.logprobs", "xrisk.llm.encoding", "xrisk.llm.data",
      "xrisk.llm.steps", "xrisk.llm.trainer", "xrisk.llm.tasks", "xrisk.llm.tiny"]),
    ("Machine-text detection", "textdetect",
     "Human-vs-machine text data (the bundled SmolLM2 file, its reader and splits, the generator command), the "
     "paper's analysis features, detection metrics per domain and generator, and the `xrisk run textdetect` "
     "recipe (see the [machine-text detection guide](../textdetect.md)).",
     ["xrisk.data.machine_text", "xrisk.data.gensim_corpora", "xrisk.data.text_features", "xrisk.llm.token_stats",
      "xrisk.metrics.detection", "xrisk.models.text_classifier", "xrisk.recipes.objectives",
      "xrisk.recipes.textdetect", "xrisk.recipes.textdetect_generate"]),
    ("Recipes", "recipes",
     "The training recipes behind `xrisk run` and `xrisk demo`, their registry and run folders.",
     ["xrisk.recipes.registry", "xrisk.recipes.flags", "xrisk.recipes.runner", "xrisk.recipes.lock", "xrisk.recipes.auc",
      "xrisk.recipes.contrastive", "xrisk.recipes.steer", "xrisk.recipes.dft", "xrisk.recipes.ehr",
      "xrisk.recipes.myna",
      "xrisk.recipes.fair", "xrisk.recipes.continual", "xrisk.recipes.demo", "xrisk.recipes.plots",
      "xrisk.recipes.progress"]),
]


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps ``mkdocs serve`` from looping)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _help(argv: list[str]) -> str:
    """The text ``xrisk ARGV --help`` prints (argparse exits after printing it)."""
    from xrisk.cli import build_parser

    buf = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same page from any shell
    try:
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            build_parser().parse_args([*argv, "--help"])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return buf.getvalue().rstrip()


def _cli_page() -> str:
    from xrisk.recipes.registry import load_builtin_recipes

    parts = [
        "# Command line: `xrisk`", "",
        "The `xrisk` command is installed with the package. Its help texts below are generated from "
        "the parser at build time.", "",
        "::: xrisk.cli", "    options:", "      show_root_heading: false", "      members: false", "",
        "## `xrisk --help`", "", "```text", _help([]), "```", "",
        "## `xrisk demo --help`", "",
        "See [`xrisk.recipes.demo`](recipes.md#xrisk.recipes.demo) for what the demo runs and writes.", "",
        "```text", _help(["demo"]), "```", "",
    ]
    for name in sorted(load_builtin_recipes()):
        parts += [f"## `xrisk run {name} --help`", "", "```text", _help(["run", name]), "```", ""]
    parts += ["## `xrisk textdetect generate --help`", "", "```text", _help(["textdetect", "generate"]), "```", ""]
    from xrisk.trust.cli import TRUST_COMMANDS

    parts += ["## `xrisk trust --help`", "", "See the [trust guide](../trust.md).", "", "```text", _help(["trust"]),
              "```", ""]
    for cmd in TRUST_COMMANDS:
        parts += [f"## `xrisk trust {cmd} --help`", "", "```text", _help(["trust", cmd]), "```", ""]
    return "\n".join(parts)


def generate() -> list[Any]:
    """Write the generated pages; return their navigation (mkdocs ``nav`` entries, paths
    relative to ``docs/``)."""
    nav: list[Any] = [{"Overview": "api/index.md"}]
    index = ["# API reference", "",
             "Generated from the docstrings; see [which loss for which metric](../guide.md) first.", ""]
    written: set[Path] = set()

    def write(rel: str, text: str) -> None:
        _write(API / rel, text)
        written.add(API / rel)

    for pkg, title in PER_OBJECT.items():
        mod = importlib.import_module(pkg)
        index += [f"## {title} (`{pkg}`)", ""]
        section: list[Any] = []
        for name in sorted(getattr(mod, "__all__", [])):
            obj = getattr(mod, name)
            slug = f"{pkg.split('.')[-1]}/{name}.md"
            write(slug, f"::: {pkg}.{name}\n    options:\n      heading_level: 1\n")
            index.append(f"- [`{name}`]({slug}): {_first_line(obj)}")
            section.append({name: f"api/{slug}"})
        index.append("")
        nav.append({title: section})

    index += ["## Other modules", ""]
    for title, slug, intro, modules in AREAS:
        present = []
        for modname in modules:
            try:
                importlib.import_module(modname)
            except ImportError:
                continue
            present.append(modname)
        if not present:
            continue
        body = [f"# {title}", "", intro, ""]
        for modname in present:
            body += [f"::: {modname}", "    options:", "      heading_level: 2", ""]
        write(f"{slug}.md", "\n".join(body))
        index.append(f"- [{title}]({slug}.md): " + ", ".join(f"`{m}`" for m in present))
        nav.append({title: f"api/{slug}.md"})
    write("cli.md", _cli_page())
    index.append("- [Command line](cli.md): `xrisk demo`, `xrisk run`, `xrisk list`, `xrisk trust`")
    nav.append({"Command line": "api/cli.md"})
    write("index.md", "\n".join(index) + "\n")

    for path in API.rglob("*.md"):  # names removed from __all__ leave no page behind
        if path not in written:
            path.unlink()

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme = readme.replace("(bench/RESULTS.md)", "(benchmarks.md)").replace("docs/", "")
    _write(DOCS / "index.md", readme)
    results = ROOT / "bench" / "RESULTS.md"
    if results.exists():
        _write(DOCS / "benchmarks.md", results.read_text(encoding="utf-8"))
    else:
        _write(DOCS / "benchmarks.md", "# Benchmark results\n\n`bench/RESULTS.md` has not been written yet "
                                       "(`make bench`).\n")
    return nav


def bench_images() -> list[tuple[str, Path]]:
    """The images ``bench/RESULTS.md`` shows by a relative link (``![...](name.png)`` or
    ``![...](plots/name.png)``, written under ``bench/`` by the benchmarks), as ``(site path, file)``:
    ``docs/benchmarks.md`` is a copy at the docs root, so the same link resolves when
    :func:`hooks.on_files` serves each file under its relative path."""
    results = ROOT / "bench" / "RESULTS.md"
    if not results.exists():
        return []
    out = []
    for rel in dict.fromkeys(re.findall(r"!\[[^\]]*\]\(([^)\s:]+)\)", results.read_text(encoding="utf-8"))):
        path = (results.parent / rel).resolve()
        if path.is_file() and path.is_relative_to(results.parent):
            out.append((rel, path))
    return out


def main() -> None:
    """Write the pages and print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    nav = generate()
    print(f"docs/gen_pages.py: {sum(1 for _ in API.rglob('*.md'))} API pages in {API.relative_to(ROOT)}, "
          f"{len(nav)} navigation entries")


if __name__ == "__main__":
    main()
