"""Load a benchmark script of ``bench/`` as a module, for tests of its hand-written steps (floors)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (``bench/`` on ``sys.path`` while it loads, for its ``_common`` import)."""
    bench = pathlib.Path(__file__).resolve().parents[1] / "bench"
    module_name = f"_bench_{name}"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(module_name, bench / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = mod  # dataclasses look their module up while the class is built
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(bench))
        sys.modules.pop(module_name, None)
    return mod
