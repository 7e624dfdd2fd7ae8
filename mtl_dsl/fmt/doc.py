"""A small Wadler/Prettier-style document printer: the layout engine of ``mtl-dsl fmt``.

A document describes text with the places where it may break: ``Line`` (a space, or a newline
when its enclosing ``Fill`` decides to break there), ``Indent`` and ``Align`` (the indentation
of lines broken inside them), ``Fill`` (items placed greedily: a separator breaks only when the
next item does not fit on the line), ``Comment`` (a comment on a line of its own) and
``Trailing`` (a comment at the end of the current line). ``render`` lays a document out at a
width, following Prettier's printing algorithm (github.com/prettier/prettier,
src/document/printer.js: the command stack, ``fits`` with the rest of the document, ``fill``).

Written here rather than taken from a library: the Python pretty-printers (prettyprinter,
wadler_lindig) lay out Python values and have neither ``fill`` nor comments that must stay where
they were. Two rules of this printer keep every comment in place: nothing but a newline may
follow a trailing comment (``fits`` says no, and text after one starts a new line), and an
own-line comment never joins the line before it. Trailing comments have no width (a comment
never moves code), and runs of consecutive lines with trailing comments have them aligned one
column (as gofmt does), unless that would carry a comment past the width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Line:
    """A space (``soft``: nothing) when its fill keeps the line, else a newline and indentation."""
    soft: bool = False


@dataclass(frozen=True)
class HardLine:
    """Always a newline; ``blank`` adds an empty line before it (a paragraph break)."""
    blank: bool = False


@dataclass(frozen=True)
class Concat:
    parts: tuple["Doc", ...]


@dataclass(frozen=True)
class Indent:
    doc: "Doc"
    by: int = 2


@dataclass(frozen=True)
class Align:
    """Lines broken inside ``doc`` continue at the column where ``doc`` starts."""
    doc: "Doc"


@dataclass(frozen=True)
class Fill:
    """``items[0] sep items[1] sep ...``: each separator is a ``Line`` that breaks only when the
    item after it does not fit on the line."""
    items: tuple["Doc", ...]


@dataclass(frozen=True)
class Comment:
    """A comment on its own line (a newline first if the line has text); ``blank``: an empty
    line before it."""
    text: str
    blank: bool = False


@dataclass(frozen=True)
class Blank:
    """An empty line here (after own-line comments, before the text that follows them)."""


@dataclass(frozen=True)
class Trailing:
    """A comment at the end of the current line: printed before the next newline."""
    text: str


Doc = Union[Text, Line, HardLine, Concat, Indent, Align, Fill, Comment, Blank, Trailing, None]


def concat(*parts: Doc) -> Doc:
    flat: list[Doc] = []
    for p in parts:
        if p is None:
            continue
        if isinstance(p, Concat):
            flat.extend(p.parts)
        else:
            flat.append(p)
    return Concat(tuple(flat))


def join(sep: Doc, docs: list[Doc]) -> Doc:
    out: list[Doc] = []
    for i, d in enumerate(docs):
        if i:
            out.append(sep)
        out.append(d)
    return concat(*out)


_BREAK, _FLAT = 0, 1


class _Out:
    """The lines printed so far, each with its trailing comment."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []  # (code, comment)
        self.code = ""
        self.comment = ""
        self.pending = ""  # a trailing comment waiting for the end of its line
        self.closed = False  # the line holds an own-line comment: nothing more goes on it

    def at_line_start(self) -> bool:
        return not self.code.strip() and not self.closed

    def must_break(self) -> bool:
        return bool(self.pending) or self.closed

    def newline(self, indent: int) -> None:
        if self.pending:
            self.comment, self.pending = self.pending, ""
        self.lines.append((self.code.rstrip(), self.comment))
        self.code, self.comment, self.closed = " " * indent, "", False

    def blank_line(self) -> None:
        """An empty line before the current (empty) one, unless the line before is empty."""
        if self.lines and self.lines[-1] != ("", ""):
            indent = self.code
            self.lines.append(("", ""))
            self.code = indent

    def finish(self) -> list[tuple[str, str]]:
        if self.pending:
            self.comment, self.pending = self.pending, ""
        if self.code.strip() or self.comment:
            self.lines.append((self.code.rstrip(), self.comment))
        return self.lines


def _fits(cmds: list[tuple[int, int, Doc]], rest: list[tuple[int, int, Doc]], width: int,
          pending: bool) -> bool:
    """Whether ``cmds`` (then ``rest``, up to its first newline) fit in ``width`` columns."""
    stack = list(reversed(cmds))
    rest_index = len(rest)
    suffix = pending
    while width >= 0:
        if not stack:
            if rest_index == 0:
                return True
            rest_index -= 1
            stack.append(rest[rest_index])
            continue
        indent, mode, doc = stack.pop()
        if doc is None:
            continue
        if isinstance(doc, Text):
            if doc.text.strip() and suffix:
                return False  # code after a trailing comment: never on the same line
            width -= len(doc.text)
        elif isinstance(doc, Concat):
            stack.extend((indent, mode, p) for p in reversed(doc.parts))
        elif isinstance(doc, (Indent, Align)):
            stack.append((indent, mode, doc.doc))
        elif isinstance(doc, Fill):
            stack.extend((indent, mode, p) for p in reversed(_fill_parts(doc)))
        elif isinstance(doc, Line):
            if mode == _BREAK:
                return True
            width -= 0 if doc.soft else 1
        elif isinstance(doc, HardLine):
            return True
        elif isinstance(doc, Comment):
            return False  # an own-line comment needs a newline before it
        elif isinstance(doc, Trailing):
            suffix = True
    return False  # Blank: only ever after a Comment, which already said no


def _fill_parts(fill: Fill) -> list[Doc]:
    parts: list[Doc] = []
    for i, item in enumerate(fill.items):
        if i:
            parts.append(Line())
        parts.append(item)
    return parts


def render(doc: Doc, width: int = 100) -> str:
    """Lay ``doc`` out in ``width`` columns; the text ends with a newline."""
    out = _Out()
    cmds: list[tuple[int, int, Doc]] = [(0, _BREAK, doc)]
    while cmds:
        indent, mode, d = cmds.pop()
        if d is None:
            continue
        if isinstance(d, Text):
            if not d.text.strip():
                if not out.at_line_start() and not out.must_break():
                    out.code += d.text
                continue
            if out.must_break():  # text after a comment starts a new line
                out.newline(indent)
            out.code += d.text
        elif isinstance(d, Concat):
            cmds.extend((indent, mode, p) for p in reversed(d.parts))
        elif isinstance(d, Indent):
            cmds.append((indent + d.by, mode, d.doc))
        elif isinstance(d, Align):
            cmds.append((len(out.code), mode, d.doc))
        elif isinstance(d, Line):
            if mode == _FLAT and not out.must_break():
                if not d.soft:
                    out.code += " "
            else:
                out.newline(indent)
        elif isinstance(d, HardLine):
            if d.blank:
                out.newline(indent)
                out.blank_line()
            else:
                out.newline(indent)
        elif isinstance(d, Comment):
            if not out.at_line_start():
                out.newline(indent)
            if d.blank:
                out.blank_line()
            out.code += d.text
            out.closed = True
        elif isinstance(d, Blank):
            if not out.at_line_start():
                out.newline(indent)
            out.blank_line()
        elif isinstance(d, Trailing):
            out.pending = d.text
        elif isinstance(d, Fill):
            _fill(d, indent, mode, cmds, out, width)
    lines = _align_comments(out.finish(), width)
    return "\n".join(lines).rstrip("\n") + "\n"


def _fill(d: Fill, indent: int, mode: int, cmds: list, out: _Out, width: int) -> None:
    """Prettier's fill: print the first item, and break the separator after it only when the
    second item does not fit after it."""
    items = d.items
    if not items:
        return
    rem = width - len(out.code)
    # what follows the fill counts for its last item (a closing bracket, a trailing comment)
    first = items[0]
    first_fits = mode == _FLAT or _fits([(indent, _FLAT, first)],
                                        cmds if len(items) == 1 else [], rem, out.must_break())
    if len(items) == 1:
        cmds.append((indent, _FLAT if first_fits else _BREAK, first))
        return
    pair = Concat((first, Line(), items[1]))
    pair_fits = mode == _FLAT or _fits([(indent, _FLAT, pair)],
                                       cmds if len(items) == 2 else [], rem, out.must_break())
    cmds.append((indent, mode, Fill(items[1:])))
    cmds.append((indent, _FLAT if pair_fits else _BREAK, Line()))
    cmds.append((indent, _FLAT if first_fits else _BREAK, first))


def _align_comments(lines: list[tuple[str, str]], width: int) -> list[str]:
    """Trailing comments of consecutive lines start in one column, two spaces after the
    longest code among them; a line whose comment would cross ``width`` at that column (and
    not at two spaces after its own code) starts a new run instead."""
    out: list[str] = []
    run: list[tuple[str, str]] = []

    def flush() -> None:
        if run:
            column = max(len(c) for c, _ in run) + 2
            out.extend(c.ljust(column) + m for c, m in run)
            run.clear()

    def fits(lines_: list[tuple[str, str]]) -> bool:
        column = max(len(c) for c, _ in lines_) + 2
        return all(column + len(m) <= width or len(c) + 2 == column for c, m in lines_)

    for code, comment in lines:
        if not comment or not code.strip():
            flush()
            out.append(code if not comment else comment)
            continue
        if run and not fits(run + [(code, comment)]):
            flush()
        run.append((code, comment))
    flush()
    return out
