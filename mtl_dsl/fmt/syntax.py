"""Spec text -> the Lark parse tree of the language's grammar, with every comment attached to a
token: what ``mtl-dsl fmt`` lays out.

The front-end's parser builds the syntax tree (``frontend.ast``) while Lark parses and keeps no
tokens; the formatter needs them all, in order, with the comments the grammar ignores. So this
module builds a second Lark parser from the same grammar file (``grammar/mtl.lark``), which
keeps the parse tree, and collects comments with a lexer callback (Lark calls it for ignored
terminals too). Every token gets its ``Trivia``: the comments on lines of their own before it,
whether a blank line comes before it, and the comment at the end of its line.

A text that does not parse is reported by the front-end's parser, with its human-worded errors.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Iterator

from lark import Lark, Token, Tree

from ..errors import Diagnostic, SpecError
from ..frontend.keywords import StatementIf
from ..frontend.parser import GRAMMAR, parse_source

COMMENT = "COMMENT"  # the grammar's comment terminal (ignored by the parser)


@dataclass(frozen=True)
class Note:
    """A comment on a line of its own; ``blank``: an empty line before it."""
    text: str
    blank: bool = False


@dataclass
class Trivia:
    leading: list[Note] = field(default_factory=list)
    blank: bool = False  # an empty line right before the token (after its leading comments)
    trailing: str = ""   # the comment at the end of the token's line, if the token ends it

    @property
    def blank_above(self) -> bool:
        """An empty line before the token's first leading comment (or the token)."""
        return self.leading[0].blank if self.leading else self.blank


@dataclass
class SyntaxTree:
    tree: Tree
    tokens: list[Token]
    trivia: dict[int, Trivia]   # id(token) -> its trivia
    end: list[Note]             # comments after the last token

    def of(self, token: Token) -> Trivia:
        return self.trivia[id(token)]


class _TreeParser:
    def __init__(self) -> None:
        self.comments: list[Token] = []
        self.keywords = StatementIf()  # the front-end's post-lexer: `if` starting a statement
        self.lark = Lark(GRAMMAR.read_text(), parser="lalr", maybe_placeholders=True,
                         lexer_callbacks={COMMENT: self.comments.append}, postlex=self.keywords)
        self.lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def tree_parser() -> _TreeParser:
    return _TreeParser()


def leaves(tree: Tree | Token | None) -> Iterator[Token]:
    """The tokens under ``tree``, in source order (placeholders skipped)."""
    if tree is None:
        return
    if isinstance(tree, Token):
        yield tree
        return
    for child in tree.children:
        yield from leaves(child)


def parse(source: str, path: str = "<spec>") -> SyntaxTree:
    """The parse tree of ``source`` with its comments; a SpecError if it does not parse."""
    parser = tree_parser()
    with parser.lock:
        parser.comments.clear()
        parser.keywords.reset(source)
        try:
            tree = parser.lark.parse(source)
        except Exception:
            tree = None
        comments = list(parser.comments)
    if tree is None:
        parse_source(source, path)  # raises the front-end's located syntax errors
        raise SpecError(Diagnostic(path, 1, 1, "the text does not parse"))  # both read one grammar
    tokens = list(leaves(tree))
    return SyntaxTree(tree, tokens, *_attach(tokens, comments))


def token_sequence(syntax: SyntaxTree) -> list[tuple[str, str]]:
    """Every token (type, text) and comment of the text in order, each comment marked as on a
    line of its own (``"#"``) or ending a line of code (``"#>"``), then the rules of the parse
    tree in order: what formatting keeps. (An ``if`` is ``IF`` here whether or not it starts a
    statement, ``STMT_IF``: where the grammar takes either, as a ``for`` loop's filter, the
    layout may move it; the parse tree says it means the same.)"""
    out: list[tuple[str, str]] = []
    for token in syntax.tokens:
        info = syntax.of(token)
        out += [("#", n.text) for n in info.leading]
        out.append(("IF" if token.type == "STMT_IF" else token.type, str(token)))
        if info.trailing:
            out.append(("#>", info.trailing))
    out += [("#", n.text) for n in syntax.end]
    return out + [("rule", str(t.data)) for t in syntax.tree.iter_subtrees_topdown()]


def _attach(tokens: list[Token], comments: list[Token]) -> tuple[dict[int, Trivia], list[Note]]:
    """Give each comment to a token: the token before it when it ends that token's line, else
    the token after it (or the end of the file)."""
    trivia = {id(t): Trivia() for t in tokens}
    items = sorted([(t.start_pos, 0, t) for t in tokens] + [(c.start_pos, 1, c) for c in comments],
                   key=lambda x: x[0])
    previous: Token | None = None  # the last token or comment seen
    last_token: Token | None = None
    waiting: list[Note] = []
    for _, is_comment, item in items:
        gap = item.line - _end_line(previous) if previous is not None else 0
        if is_comment:
            text = item.value.rstrip()
            if last_token is not None and previous is last_token \
                    and last_token.end_line == item.line:
                trivia[id(last_token)].trailing = text
            else:
                waiting.append(Note(text, gap > 1))
        else:
            info = trivia[id(item)]
            info.leading, waiting = waiting, []
            info.blank = gap > 1
            last_token = item
        previous = item
    return trivia, waiting


def _end_line(token: Token) -> int:
    return token.end_line if token.end_line is not None else token.line
