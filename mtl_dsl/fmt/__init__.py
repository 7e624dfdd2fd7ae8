"""``mtl-dsl fmt``: the canonical layout of a spec.

``format_source(text)`` parses the text with the language's grammar (``syntax``), builds a
document of its layout, one rule of ``rules.Layout`` per grammar rule, and prints it at a width
(``doc``). Formatting changes only whitespace: the output has the input's tokens and comments
in the same order, so it means what the input meant, and formatting it again changes nothing.
Each result is parsed again and compared token by token and comment by comment with its input
before it is returned (as black compares syntax trees), so a bug in a layout rule stops with an
error instead of changing a file.
"""
from __future__ import annotations

from .doc import render
from .rules import Layout
from .syntax import parse, token_sequence

WIDTH = 100  # the line width the layout aims at (the shipped specs' width)

__all__ = ["WIDTH", "format_source"]


def format_source(source: str, path: str = "<spec>", width: int = WIDTH) -> str:
    """The canonical layout of spec text; a ``SpecError`` (the parser's) if it does not parse."""
    syntax = parse(source, path)
    if not syntax.tokens and not syntax.end:
        return ""
    text = render(Layout(syntax).doc(syntax.tree), width)
    if token_sequence(parse(text, path)) != token_sequence(syntax):  # never write a changed spec
        raise RuntimeError(f"mtl-dsl fmt: the layout of {path} changed its tokens or comments "
                           f"(a bug in mtl_dsl/fmt; the file was left as it was)")
    return text
