"""Code blocks between ``<!-- NAME -->`` and ``<!-- /NAME -->`` markers of a Markdown page.

The README's example, its install commands and the docs' integration examples are run by the
tests exactly as written on the page.
"""

from __future__ import annotations

import re

PYTHON = ("python", "py", "python3")


def marked_code(text: str, name: str, *, languages: tuple[str, ...] = PYTHON) -> str:
    """The code blocks (in one of ``languages``) between the ``name`` markers, joined in order.

    Missing markers, or markers without such a block, fail: the page promises runnable code.
    """
    marked = re.findall(rf"<!--\s*{re.escape(name)}\s*-->(.*?)<!--\s*/{re.escape(name)}\s*-->",
                        text.replace("\r\n", "\n"), re.S)
    assert marked, f"no <!-- {name} --> ... <!-- /{name} --> section"
    langs = "|".join(re.escape(x) for x in languages)
    block = re.compile(rf"^[ \t]*```[ \t]*(?:{langs})[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
    blocks = [b for section in marked for b in block.findall(section)]
    assert blocks, f"the <!-- {name} --> section holds no ```{languages[0]} block"
    return "\n".join(blocks)
