"""Hypothesis strategies for spec texts: random sentences of the grammar itself (every rule of
``grammar/mtl.lark`` reachable, so a rule added to the grammar is generated without a change
here), and the shipped specs laid out anew at random (their meaning unchanged).

Tokens are separated by random whitespace and comments, trailing or on lines of their own.
"""
from __future__ import annotations

import functools
import re
from collections import defaultdict

from hypothesis import strategies as st
from lark import Token
from lark.grammar import NonTerminal, Terminal

from mtl_dsl.fmt.syntax import leaves, tree_parser

NAMES = ["x", "t", "feats", "weights", "unused", "conv_bn_act", "a_b1", "B", "H", "_"]
NUMBERS = ["0", "1", "2.5", "1e-6", ".5", "3.", "128"]
STRINGS = ['""', '"a.mtl"', '"x y"', '"q\\"t"', '"head.{t}"']
COMMENTS = ["# c", "#", "# a comment, longer than the others (x = 1)", "#### x"]
GAPS = [" ", "  ", "\n", "\n    ", "\t", "\n\n", " # note\n", "\n# own line\n", "\n\n  # para\n"]
SAMPLES = {"NAME": NAMES, "NUMBER": NUMBERS, "STRING": STRINGS}
# Terminals the parser's post-lexer makes from another one (frontend/keywords.py):
# (text, must start a line).
DECLARED = {"STMT_IF": ("if", True)}


@functools.lru_cache(maxsize=1)
def _grammar():
    lark = tree_parser().lark
    rules = defaultdict(list)
    for r in lark.rules:
        rules[r.origin.name].append(tuple(r.expansion))
    terminals = {t.name: t for t in lark.terminals}
    keywords = {t.pattern.value for t in lark.terminals
                if t.pattern.type == "str" and re.fullmatch(r"[a-z]+", t.pattern.value)}
    # the least height of a derivation of each rule (to end the recursion)
    height: dict[str, float] = {n: float("inf") for n in rules}
    changed = True
    while changed:
        changed = False
        for name, alternatives in rules.items():
            best = min(1 + max([height.get(s.name, 0) if isinstance(s, NonTerminal) else 0
                                for s in alt] or [0]) for alt in alternatives)
            if best < height[name]:
                height[name], changed = best, True
    return rules, terminals, keywords, height


def _alt_height(alt, height) -> float:
    return max([height[s.name] if isinstance(s, NonTerminal) else 0 for s in alt] or [0])


def _terminal_text(draw, name: str, terminals, keywords) -> tuple[str, bool]:
    if name in DECLARED:
        return DECLARED[name]
    term = terminals[name]
    if term.pattern.type == "str":
        return term.pattern.value, False
    samples = SAMPLES.get(name)
    if samples is None:
        raise AssertionError(f"tests/grammar_sentences.py: no sample text for terminal {name}")
    text = draw(st.sampled_from(samples))
    assert text not in keywords
    return text, False


@st.composite
def grammar_tokens(draw, max_depth: int = 9) -> list[tuple[str, str, bool]]:
    """A random derivation of the grammar's start rule: (terminal, text, starts a line)."""
    rules, terminals, keywords, height = _grammar()
    out: list[tuple[str, str, bool]] = []

    def expand(symbol, depth: int) -> None:
        if isinstance(symbol, Terminal):
            text, line_start = _terminal_text(draw, symbol.name, terminals, keywords)
            out.append((symbol.name, text, line_start))
            return
        alternatives = rules[symbol.name]
        if depth >= max_depth:
            least = min(_alt_height(a, height) for a in alternatives)
            alternatives = [a for a in alternatives if _alt_height(a, height) == least]
        for s in draw(st.sampled_from(alternatives)):
            expand(s, depth + 1)

    expand(NonTerminal("start"), 0)
    return out


def _joined(draw, tokens: list[tuple[str, str, bool]]) -> str:
    """The tokens with random whitespace and comments between them."""
    text = draw(st.sampled_from(["", "# header\n", "\n"]))
    for i, (name, value, line_start) in enumerate(tokens):
        if line_start:
            gap = draw(st.sampled_from(["\n", "\n  ", "\n\n", " # c\n", "\n# own\n"]))
        elif name == "IF" or i == 0:
            gap = " " if i else ""  # an `if` that starts a line starts a statement
        else:
            gap = draw(st.sampled_from(GAPS))
        text += gap + value
    return text + draw(st.sampled_from(["", "\n", "  # end\n", "\n\n# last\n"]))


@st.composite
def grammar_sentences(draw) -> str:
    """A sentence of the grammar that parses: the post-lexer reads an ``if`` after ``{``, ``}``
    or ``else`` as starting a statement, which a derivation (``{k: 1} if c else d``) may not
    want; such sentences are drawn again."""
    from hypothesis import assume

    from mtl_dsl.errors import SpecError
    from mtl_dsl.fmt.syntax import parse

    text = _joined(draw, draw(grammar_tokens()))
    try:
        parse(text)
    except SpecError:
        assume(False)
    return text


@st.composite
def relaid(draw, source: str) -> str:
    """``source`` with its tokens laid out at random: its comments kept (trailing ones trailing,
    own-line ones on their own lines) and its blank lines kept (the layout keeps those), random
    whitespace without blank lines between the other tokens."""
    from mtl_dsl.fmt.syntax import parse

    syntax = parse(source)
    text = ""

    def own_lines(notes) -> str:
        out = "" if not text or text.endswith("\n") else "\n"
        for note in notes:
            out += ("\n" if note.blank else "") + note.text + "\n"
        return out

    for i, token in enumerate(syntax.tokens):
        info = syntax.of(token)
        text += own_lines(info.leading)
        if info.blank and (i or info.leading):
            text += "\n" if text.endswith("\n") else "\n\n"
        if text.endswith("\n") or i == 0:
            gap = draw(st.sampled_from(["", "  ", "\t"]))
        elif token.type == "IF":
            gap = " "  # an `if` that starts a line starts a statement
        elif token.type == "STMT_IF":
            gap = "\n"
        else:
            gap = draw(st.sampled_from([" ", "   ", "\n", "\n      ", " \t"]))
        text += gap + str(token)
        if info.trailing:
            text += draw(st.sampled_from([" ", "      "])) + info.trailing + "\n"
    text += own_lines(syntax.end)
    return text if text.endswith("\n") else text + "\n"


def source_tokens(text: str) -> list[Token]:
    from mtl_dsl.fmt.syntax import parse

    return list(leaves(parse(text).tree))
