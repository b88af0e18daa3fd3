"""The MathJax files the docs site serves itself (no CDN): where they come from, which are needed.

Source: the ``django-static-mathjax`` wheel (``docs`` extra, pinned), a plain copy of MathJax 3.2.2's
``es5`` build (its Python package only holds the static files; it needs no Django). Only what the
pages use is copied into the site (about 2 MB): the combined TeX/MathML input + CommonHTML output
component ``tex-mml-chtml.js`` that ``mkdocs.yml`` loads, its web fonts, the TeX extensions its
``autoload`` fetches on demand (e.g. ``\\boldsymbol``, ``\\cancel``), and MathJax's licence.
MathJax finds the fonts and extensions relative to the script's own URL.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Folder of the copy inside the site (``extra_javascript`` loads ``SITE_DIR/tex-mml-chtml.js``).
SITE_DIR = "javascripts/mathjax"

_PATTERNS = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2/*.woff", "input/tex/extensions/*.js")


def es5_root() -> Path:
    """MathJax's ``es5`` folder inside the installed ``django-static-mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    roots = [Path(p) / "static" / "mathjax" for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        if (root / "es5" / "tex-mml-chtml.js").is_file():
            return root / "es5"
    raise FileNotFoundError(
        "MathJax for the docs is missing: pip install 'django-static-mathjax==3.2.2.1' "
        "(part of the docs extra: pip install -e '.[docs]')"
    )


def files() -> list[tuple[str, Path]]:
    """``(path inside SITE_DIR, source file)`` of every file the site needs, sorted."""
    root = es5_root()
    found = [(str(p.relative_to(root)), p) for pattern in _PATTERNS for p in root.glob(pattern)]
    found.append(("LICENSE", root.parent / "LICENSE"))
    return sorted(found)
