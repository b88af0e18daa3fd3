"""Griffe extension used by the docs build: the reST bits of xrisk's docstrings in Markdown.

The docstrings are Google style (parsed by mkdocstrings) but use a few reST constructs that
Markdown does not know. Before mkdocstrings parses a docstring this extension rewrites

- ``.. math::`` blocks into ``$$ ... $$`` blocks and ``:math:`x``` into ``$x$`` (rendered
  by ``pymdownx.arithmatex`` + MathJax);
- ``:class:`X```, ``:func:`X```, ``:mod:`title <X>```, ... into *optional* cross-references:
  a link when ``X`` is a documented object, plain code otherwise (never a build warning);
- a paragraph ending in ``::`` (a reST literal block follows) into one ending in ``:``;
- ``a, b: description`` in an ``Args:`` section into one entry per name;
- an ``Example:`` section into ``Examples:`` (its ``>>>`` lines become code blocks).

Only the documentation build loads this file (``mkdocs.yml``: ``extensions``); the package
does not depend on it.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|exc|obj|const|math):`(?P<body>[^`]+)`")
_TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _math_blocks(text: str) -> str:
    """``.. math::`` directives -> ``$$`` blocks at the directive's indentation."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body: list[str] = [m["rest"]] if m["rest"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        depth = min((_indent(b) for b in body if b.strip()), default=0)
        if out and out[-1].strip():
            out.append("")
        out.append(f"{indent}$$")
        out += [f"{indent}{b[depth:]}" if b.strip() else "" for b in body]
        out.append(f"{indent}$$")
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _canonical(obj: Any, target: str) -> str | None:
    """The canonical path of ``target`` as seen from ``obj``'s docstring (``None``: not found).

    Absolute paths (``xrisk.models.ContrastiveEncoder``) are looked up from the package root;
    relative ones (``objective``, ``DualSampler.set_epoch``) in the object, its class, its module,
    and outward, like Sphinx's Python domain does.
    """
    scope = obj if obj.is_class or obj.is_module else obj.parent
    first = target.split(".", 1)[0]
    candidates = []
    root = obj
    while root.parent is not None:
        root = root.parent
    if first == root.name:
        candidates.append((root, target.split(".", 1)[1] if "." in target else ""))
    while scope is not None:
        candidates.append((scope, target))
        scope = scope.parent
    for base, rel in candidates:
        try:
            found = base[rel] if rel else base
            if getattr(found, "inherited", False):  # rendered on the subclass's page (inherited_members)
                return f"{base.path}.{rel}"
            return found.final_target.path if found.is_alias else found.path
        except Exception:  # KeyError, alias resolution errors: try the next scope  # noqa: BLE001, S112
            continue
    return None


def _role(match: re.Match[str], obj: Any = None) -> str:
    role, body = match["role"], match["body"]
    if role == "math":
        return f"${body}$"
    titled = _TITLED.match(body)
    if titled:
        title, target = titled["title"], titled["target"]
    else:
        target = body.lstrip("~")
        title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
    if role in ("func", "meth") and not title.endswith(")") and not titled:
        title += "()"
    target = target.rstrip("()")
    if obj is not None:
        target = _canonical(obj, target) or target
    return (f'<autoref identifier="{html.escape(target)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>")


def _literal_markers(text: str) -> str:
    """``text::`` before a reST literal block -> ``text:``; a lone ``::`` line disappears."""
    text = re.sub(r"(?m)^[ \t]*::[ \t]*$", "", text)
    text = re.sub(r"(?m)(\S)[ \t]+::[ \t]*$", r"\1", text)
    return re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text)


_PARAM_SECTION = re.compile(
    r"^(?P<indent>\s*)(?:Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_GROUPED_PARAM = re.compile(
    r"^(?P<indent>\s+)(?P<names>\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)+)"
    r"(?P<annotation>\s*\([^()]*\))?:(?P<rest>\s.*|)$")


def _split_grouped_params(text: str) -> str:
    """``a, b: description`` in an ``Args:`` section -> one entry per name with the same description
    (Google style has one name per entry; griffe would warn about a parameter named ``a, b``)."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        sec = _PARAM_SECTION.match(line)
        if sec:
            section_indent = len(sec["indent"])
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None
        m = _GROUPED_PARAM.match(line) if section_indent is not None else None
        if not m or _indent(line) <= section_indent:  # type: ignore[operator]
            out.append(line)
            i += 1
            continue
        depth = len(m["indent"])
        cont = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > depth):
            if not lines[i].strip() and (i + 1 >= len(lines) or _indent(lines[i + 1]) <= depth):
                break
            cont.append(lines[i])
            i += 1
        for name in (n.strip() for n in m["names"].split(",")):
            out.append(f"{m['indent']}{name}{m['annotation'] or ''}:{m['rest']}")
            out += cont
    return "\n".join(out)


def _example_sections(text: str) -> str:
    """``Example:`` (an admonition for griffe) -> ``Examples:`` (doctest code blocks)."""
    return re.sub(r"(?m)^(?P<indent>[ \t]*)Example:[ \t]*$", r"\g<indent>Examples:", text)


def rst_to_markdown(text: str, obj: Any = None) -> str:
    """The rewrite applied to every docstring (see the module docstring); ``obj`` (a griffe
    object) resolves relative cross-references."""
    text = _split_grouped_params(text)
    text = _example_sections(text)
    text = _math_blocks(text)
    text = _ROLE.sub(lambda m: _role(m, obj), text)
    return _literal_markers(text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a package once it is loaded (cross-references need the whole
    tree), before mkdocstrings parses the docstrings' sections."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()

    def _visit(self, obj: Any) -> None:
        if obj.is_alias or id(obj) in self._done:
            return
        self._done.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value, obj)
        for member in list(obj.members.values()):
            self._visit(member)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # noqa: ARG002
        self._visit(pkg)
