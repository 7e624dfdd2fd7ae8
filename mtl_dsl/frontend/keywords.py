"""Which ``if`` starts a statement: the one decision the grammar leaves to the lexer.

Statements are not separated by a token, so after ``x = a`` an ``if`` could continue the value as
a conditional expression (``x = a if c else b``) or start the next statement (``if c { ... }``),
and an LALR(1) parser cannot see the ``else`` or ``{`` that decides. The lexer decides instead:
an ``if`` at bracket depth 0 that is the first word on its line, or follows ``{``, ``}`` or
``else`` on it, is the token ``STMT_IF`` (an if statement); every other ``if`` is ``IF`` (a
conditional expression, or the filter of a ``for`` loop or a generator). So a conditional
expression is written on the line of its value (or inside brackets), as one reads it anyway.

``StatementIf`` is the parser's post-lexer: it sees every token (``IF`` is lexed in every parser
state, ``always_accept``) and renames the ``if`` that starts a statement; ``reset`` gives it the
text being parsed.
"""
from __future__ import annotations

import re
from typing import Iterator

from lark import Token

_BEFORE_STATEMENT = re.compile(r"(^|[{}]|\belse)\s*$")


class StatementIf:
    always_accept = ("IF",)

    def __init__(self) -> None:
        self.reset("")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        for token in stream:
            if token.type == "IF" and token.start_pos is not None \
                    and self.starts_statement(token.start_pos):
                token = Token.new_borrow_pos("STMT_IF", token.value, token)
            yield token

    def reset(self, source: str) -> None:
        self.source = source
        self._restarts = [0]  # offsets where the bracket depth is 0 (see restart_at)
        self._restart(0)

    def restart_at(self, offset: int) -> None:
        """Error recovery resumes the parse with a statement at ``offset``: brackets left open
        before it (the broken statement's) are not counted after it."""
        if offset not in self._restarts:
            self._restarts = sorted([*self._restarts, offset])
        self._restart(offset)

    def _restart(self, offset: int) -> None:
        self._pos = offset  # how far the bracket depth has been followed
        self._depth = 0
        self._quote = False
        self._comment = False

    def _depth_at(self, offset: int) -> int:
        """Depth of ( and [ at ``offset`` (strings and comments skipped); offsets only grow."""
        if offset < self._pos:  # text lexed again (error recovery): from the restart before it
            self._restart(max(r for r in self._restarts if r <= offset))
        text = self.source
        for i in range(self._pos, offset):
            ch = text[i]
            if self._comment:
                self._comment = ch != "\n"
            elif self._quote:
                if ch == "\\":
                    continue
                self._quote = ch != '"' or text[i - 1] == "\\"
            elif ch == "#":
                self._comment = True
            elif ch == '"':
                self._quote = True
            elif ch in "([":
                self._depth += 1
            elif ch in ")]":
                self._depth = max(0, self._depth - 1)
        self._pos = offset
        return self._depth

    def starts_statement(self, offset: int) -> bool:
        line_start = self.source.rfind("\n", 0, offset) + 1
        before = self.source[line_start:offset]
        return bool(_BEFORE_STATEMENT.search(before)) and self._depth_at(offset) == 0
