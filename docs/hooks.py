"""mkdocs hooks (``mkdocs.yml``: ``hooks``): generate the API pages and put them in the navigation.

:func:`gen_pages.generate` writes the git-ignored generated pages (API, CLI help, home page from
README.md, benchmarks from bench/RESULTS.md) before mkdocs collects the files, so a plain
``mkdocs build`` or ``mkdocs serve`` never shows stale copies.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_pages  # noqa: E402


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
