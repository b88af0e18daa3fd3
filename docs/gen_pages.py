"""Generate the API pages of the docs site from the package's public names.

One page per loss and per optimizer (its docstring carries the math), one page per
other public module, plus copies of README and bench/RESULTS.md. Run by `make docs`.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"

PER_OBJECT = ["xrisk.losses", "xrisk.optim"]
PER_MODULE = [
    "xrisk.state",
    "xrisk.distributed",
    "xrisk.checkpoint",
    "xrisk.functional",
    "xrisk.metrics",
    "xrisk.data",
    "xrisk.models",
    "xrisk.recipes.registry",
    "xrisk.recipes.runner",
]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    if API.exists():
        shutil.rmtree(API)
    index = ["# API reference", ""]
    for pkg in PER_OBJECT:
        mod = importlib.import_module(pkg)
        index += [f"## `{pkg}`", ""]
        for name in sorted(getattr(mod, "__all__", [])):
            obj = getattr(mod, name)
            target = f"{obj.__module__}.{obj.__qualname__}"
            slug = f"{pkg.split('.')[-1]}/{name}.md"
            _write(API / slug, f"# `{pkg}.{name}`\n\n::: {target}\n")
            first = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
            index.append(f"- [`{name}`]({slug}): {first}")
        index.append("")
    index += ["## Modules", ""]
    for modname in PER_MODULE:
        try:
            importlib.import_module(modname)
        except ImportError:
            continue
        slug = f"modules/{modname}.md"
        _write(API / slug, f"# `{modname}`\n\n::: {modname}\n")
        index.append(f"- [`{modname}`]({slug})")
    _write(API / "index.md", "\n".join(index) + "\n")
    readme = (ROOT / "README.md").read_text().replace("docs/", "")
    _write(DOCS / "index.md", readme)
    results = ROOT / "bench" / "RESULTS.md"
    if results.exists():
        _write(DOCS / "benchmarks.md", results.read_text())


if __name__ == "__main__":
    main()
