"""mkdocs hooks (``mkdocs.yml``: ``hooks``): generate the API pages, put them in the navigation,
and add the bundled MathJax to the site.

:func:`gen_pages.generate` writes the git-ignored generated pages (API, CLI help, home page from
README.md, benchmarks from bench/RESULTS.md) before mkdocs collects the files, so a plain
``mkdocs build`` or ``mkdocs serve`` never shows stale copies. :func:`on_files` adds MathJax 3
(from the ``django-static-mathjax`` wheel of the ``docs`` extra) under ``javascripts/mathjax/``,
so the formulas render with no network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_pages  # noqa: E402
import mathjax_bundle  # noqa: E402


def on_config(config: Any, **kwargs: Any) -> Any:
    """Generate the pages and insert their navigation where ``nav`` has ``API reference: api/index.md``."""
    api_nav = gen_pages.generate()
    nav = list(config["nav"] or [])
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and list(entry.values()) == ["api/index.md"]:
            nav[i] = {next(iter(entry)): api_nav}
            break
    else:
        nav.append({"API reference": api_nav})
    config["nav"] = nav
    return config


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    """Add the MathJax files the pages load (``mkdocs.yml``: ``extra_javascript``) and the benchmark plots
    ``benchmarks.md`` shows (:func:`gen_pages.bench_images`, served from ``bench/``) to the site."""
    from mkdocs.structure.files import File

    for rel, path in mathjax_bundle.files():
        files.append(File.generated(config, f"{mathjax_bundle.SITE_DIR}/{rel}", abs_src_path=str(path)))
    for rel, path in gen_pages.bench_images():
        files.append(File.generated(config, rel, abs_src_path=str(path)))
    return files
