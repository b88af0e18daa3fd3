"""The optional dependencies of :mod:`xrisk.llm` (the ``llm`` extra), imported on first use."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

_EXTRA = "pip install 'xrisk[llm]'  (transformers==5.24.0, gguf==0.19.0, accelerate==1.15.0, safetensors)"


def require(module: str, *, what: str = "xrisk.llm") -> ModuleType:
    """Import ``module`` or raise :class:`ImportError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: show that error
        raise ImportError(f"{what} needs the '{module}' package: {_EXTRA}") from e
