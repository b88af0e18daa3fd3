"""The README example (between ``<!-- example -->`` and ``<!-- /example -->``) runs as written.

Whatever python code blocks stand between the markers are run, in order, in one namespace, from
a temporary working directory. Missing markers, or markers without a python block, fail the test:
the README promises a runnable example.
"""

from __future__ import annotations

from pathlib import Path

from _examples import marked_code

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(text: str) -> str:
    """The python code between the example markers of ``text`` (blocks joined in order)."""
    return marked_code(text, "example")


def test_extraction_takes_every_python_block_between_the_markers():
    text = ("intro\n```python\nnot_this = 1\n```\n<!-- example -->\nsome prose\n```python\na = 1\n```\n"
            "more prose\n```bash\nxrisk list\n```\n```py\nb = a + 1\n```\n<!-- /example -->\n"
            "```python\nnor_this = 1\n```\n")
    assert readme_example(text) == "a = 1\n\nb = a + 1\n"


def test_readme_example_runs(capsys, tmp_path, monkeypatch):
    code = readme_example(README.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # anything the example writes lands here
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert capsys.readouterr().out.strip(), "the README example is expected to print its result"
