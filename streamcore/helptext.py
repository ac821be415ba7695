"""Command help from docstrings: reStructuredText markup (roles, literals, emphasis) turned into plain text."""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any

_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)(?:\s*<[^>]+>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")


def plain(doc: str | None) -> str:
    """``doc`` dedented, without RST roles (``:mod:`x``` → ``x``), literal markers or emphasis, and with
    ``::`` at a line end read as ``:``."""
    text = inspect.cleandoc(doc or "")
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    return re.sub(r"::$", ":", text, flags=re.MULTILINE)


def parser_options(prog: str, doc: str | None) -> dict[str, Any]:
    """Keyword arguments of :class:`argparse.ArgumentParser` for a ``stylestream`` command run through to
    argparse: its full name as the usage line says it, and its docstring as plain text, paragraphs kept."""
    return {"prog": prog, "description": plain(doc), "formatter_class": argparse.RawDescriptionHelpFormatter}
