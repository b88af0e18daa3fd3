"""The README example (between ``<!-- example -->`` and ``<!-- /example -->``) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str | None:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- example -->(.*?)<!-- /example -->", text, re.S)
    if m is None:
        return None
    code = re.search(r"```python\n(.*?)```", m.group(1), re.S)
    return code.group(1) if code else None


def test_readme_example_runs(capsys):
    code = _example()
    if code is None:
        pytest.skip("README.md has no <!-- example --> ... <!-- /example --> python block yet")
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert capsys.readouterr().out.strip(), "the README example is expected to print its result"
