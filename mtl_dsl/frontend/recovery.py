"""Syntax-error recovery at statement boundaries, so that one mistake gives one error.

Lark's default recovery drops the offending token and carries on in the middle of the broken
statement, so one missing comma is reported again on every line after it. We recover the way
compilers do ("panic mode"), on Lark's interactive parser:

1. pop the LALR stack back to the nearest state where a statement (or, at the top of a file, a
   definition) may begin: the broken statement is dropped, its enclosing body is kept;
2. move the lexer forward to the first later line that starts at the same brace depth as that
   body, indented no deeper than the broken statement (a closing brace: less deep), and whose
   first line parses from there (a trial on a copy of the parser); or to the end of the file;
3. resume. No such line: parsing stops with the errors found so far.

When the file's braces do not balance, a later error about the file's structure (an unexpected end
of file, a statement outside any definition) is what the earlier mistake left behind, and is not
reported (``follows_from_braces``).

The brace depth and the indentation each catch what the other misses: a body's lines that lost
their opening brace are indented deeper than its header; continuation lines of a broken call
(``act = "none")`` after a missing comma) are too, and fail the trial besides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lark import Token
from lark.exceptions import UnexpectedInput, UnexpectedToken
from lark.parsers.lalr_analysis import Shift


@dataclass(frozen=True)
class _LineStart:
    offset: int  # of the line's first character that is not blank
    line: int  # 1-based
    line_offset: int  # of the line itself
    depth: int  # braces open before it


def _line_starts(source: str) -> tuple[list[_LineStart], int]:
    """Where each non-blank, non-comment line begins, with the braces open there; and the braces
    open at the end (0 when they balance)."""
    starts: list[_LineStart] = []
    depth = 0
    line, line_offset = 1, 0
    at_start = True
    in_string = in_comment = False
    for i, ch in enumerate(source):
        if ch == "\n":
            line, line_offset = line + 1, i + 1
            at_start, in_string, in_comment = True, False, False
            continue
        if in_comment:
            continue
        if in_string:
            if ch == "\\":
                continue
            if ch == '"' and source[i - 1] != "\\":
                in_string = False
            continue
        if at_start and ch not in " \t\r":
            at_start = False
            if ch != "#":
                starts.append(_LineStart(i, line, line_offset, depth))
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
    return starts, depth


def _start_of(value: object, default: int) -> int:
    """Where a value of the parser's stack begins in the source (a token, a syntax-tree node, or
    a list or tuple of them)."""
    if isinstance(value, Token):
        return value.start_pos if value.start_pos is not None else default
    span = getattr(value, "span", None) or getattr(value, "loc", None)
    if span is not None and getattr(span, "start", -1) >= 0:
        return span.start
    if isinstance(value, (list, tuple)):
        return min((_start_of(v, default) for v in value), default=default)
    return default


def _may_begin_statement(actions: dict) -> bool:
    """A state between statements of a body, or between definitions at the top of a file."""
    return any(actions.get(t, (None,))[0] is Shift for t in ("FOR", "MODEL"))


class Recovery:
    """Recovers a parse of ``source`` after each syntax error (``on_error`` of ``Lark.parse``)."""

    def __init__(self, source: str, restart: Callable[[int], None] = lambda offset: None):
        """``restart(offset)``: the parse resumes (or is tried) at ``offset``; the post-lexer
        (``keywords.StatementIf``) counts brackets afresh from there."""
        self.source = source
        self.restart = restart
        self.starts, self.unbalanced = _line_starts(source)
        self.resumed_at = -1  # offsets only move forward: no loop

    def __call__(self, e: UnexpectedInput) -> bool:
        ip = getattr(e, "interactive_parser", None)
        if ip is None:
            return False
        state = ip.parser_state
        table = state.parse_conf.states
        after = self._error_offset(e)
        begin = after
        while len(state.state_stack) > 1 and not _may_begin_statement(table[state.position]):
            state.state_stack.pop()
            begin = min(begin, _start_of(state.value_stack.pop(), begin))
        if not _may_begin_statement(table[state.position]):
            return False
        depth = sum(1 for v in state.value_stack if isinstance(v, Token) and v.type == "LBRACE")
        indent = self._indent(begin)
        for start in self.starts:
            if start.offset < after or start.offset <= self.resumed_at or start.depth != depth:
                continue
            closing = self.source.startswith("}", start.offset)
            here = start.offset - start.line_offset
            if here > indent or closing and here == indent:
                continue
            self.restart(start.offset)
            if self._resumes(ip, start):
                self.restart(start.offset)
                self._move(ip, start.offset, start.line, start.line_offset)
                self.resumed_at = start.offset
                return True
        end = len(self.source)
        if depth == 0 and end > self.resumed_at and self._resumes_at_end(ip):
            line_offset = self.source.rfind("\n") + 1
            self._move(ip, end, self.source.count("\n") + 1, line_offset)
            self.resumed_at = end
            return True
        return False

    def follows_from_braces(self, e: UnexpectedInput) -> bool:
        """Whether ``e``, coming after an earlier error, is only its consequence: the file's braces
        do not balance (a brace was lost or added with the earlier mistake) and ``e`` is about the
        file's structure: the end of the file, a definition where a statement was expected, or a
        statement outside any definition."""
        if not self.unbalanced or not isinstance(e, UnexpectedToken):
            return False
        top_level = {"MODEL", "BLOCK", "IMPORT", "$END"}
        if e.token.type in top_level or bool(e.expected) and set(e.expected) <= top_level:
            return True
        # a definition's header read inside a body left open (`model m(...) {` after a lost
        # `}`: in a weights map `model` is no keyword): an unindented line starting one
        pos = e.token.start_pos if e.token.start_pos is not None else len(self.source)
        line = self.source[self.source.rfind("\n", 0, pos) + 1:]
        return line.split(" ", 1)[0] in ("model", "block", "import")

    def _indent(self, offset: int) -> int:
        """Indentation of the line holding ``offset``."""
        line_offset = self.source.rfind("\n", 0, offset) + 1
        text = self.source[line_offset:offset]
        return len(text) - len(text.lstrip(" \t\r"))

    def _error_offset(self, e: UnexpectedInput) -> int:
        """Where the next statement may start: at the offending token (a statement that lost its
        end is followed by a good one), or after an offending character."""
        if isinstance(e, UnexpectedToken):
            if e.token.type == "$END":
                return len(self.source) + 1
            return e.token.start_pos if e.token.start_pos is not None else len(self.source) + 1
        pos = getattr(e, "pos_in_stream", None)
        return (pos if pos is not None else len(self.source)) + 1

    @staticmethod
    def _move(ip, offset: int, line: int, line_offset: int) -> None:
        counter = ip.lexer_thread.state.line_ctr
        counter.char_pos = offset
        counter.line = line
        counter.line_start_pos = line_offset
        counter.column = offset - line_offset + 1

    def _resumes(self, ip, start: _LineStart) -> bool:
        """Whether the parse, resumed at ``start``, gets through that line."""
        trial = ip.copy(deepcopy_values=False)
        self._move(trial, start.offset, start.line, start.line_offset)
        try:
            for tok in trial.lexer_thread.lex(trial.parser_state):
                if tok.line > start.line:
                    return True
                trial.parser_state.feed_token(tok)
            trial.feed_eof()
        except UnexpectedInput:
            return False
        return True

    def _resumes_at_end(self, ip) -> bool:
        trial = ip.copy(deepcopy_values=False)
        try:
            trial.feed_eof()
        except UnexpectedInput:
            return False
        return True
