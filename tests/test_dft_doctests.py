"""The runnable examples in the docstrings of DFTLoss and xrisk.llm (loading and sampling examples need a
real model and are marked +SKIP)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["xrisk.losses.dft", "xrisk.llm.logprobs", "xrisk.llm.tiny", "xrisk.llm.loading", "xrisk.llm.generation"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    pytest.importorskip("transformers", reason="the `llm` extra")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert name in ("xrisk.llm.loading", "xrisk.llm.generation") or result.attempted > 0
