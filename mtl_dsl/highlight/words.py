"""The words and token patterns of the grammar (``mtl_dsl/grammar/mtl.lark``), by what a
highlighter colours them as.

Keywords are the grammar's terminals written as a lower-case word; constants are those of them
an ``atom`` alternative is made of alone (``true``, ``false``, ``none``); operators and
punctuation are its other literal terminals; names, numbers, strings and comments are its
pattern terminals. The soft keywords (``weights``, ``unused``: names the grammar reads as
``NAME`` and the lowering checks) are named here, where the grammar's own comment names them.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

SOFT_KEYWORDS = ("weights", "unused")
PUNCTUATION = set("()[]{},:.")


@dataclass(frozen=True)
class Words:
    keywords: tuple[str, ...]      # statement and operator words (constants excluded)
    constants: tuple[str, ...]     # true, false, none
    operators: tuple[str, ...]     # longest first
    punctuation: tuple[str, ...]   # longest first
    name: str                      # the regular expressions of the pattern terminals
    number: str
    string: str
    comment: str


@functools.lru_cache(maxsize=1)
def grammar_words() -> Words:
    from lark import Lark
    from lark.grammar import Terminal

    from ..frontend.parser import GRAMMAR

    lark = Lark(GRAMMAR.read_text(), parser="lalr")
    terminals = {t.name: t.pattern for t in lark.terminals}
    literal = {n: p.value for n, p in terminals.items() if p.type == "str"}
    words = {n: v for n, v in literal.items() if re.fullmatch(r"[a-z]+", v)}
    constants = {literal[r.expansion[0].name] for r in lark.rules
                 if r.origin.name == "atom" and len(r.expansion) == 1
                 and isinstance(r.expansion[0], Terminal) and r.expansion[0].name in words}
    symbols = sorted((v for n, v in literal.items() if n not in words), key=lambda s: (-len(s), s))
    return Words(
        keywords=tuple(sorted(set(words.values()) - constants)),
        constants=tuple(sorted(constants)),
        operators=tuple(s for s in symbols if s not in PUNCTUATION),
        punctuation=tuple(s for s in symbols if s in PUNCTUATION),
        name=terminals["NAME"].value, number=terminals["NUMBER"].value,
        string=terminals["STRING"].value, comment=terminals["COMMENT"].value)


def alternatives(texts: tuple[str, ...]) -> str:
    """A regular expression matching any of ``texts`` (longest first)."""
    return "|".join(re.escape(t) for t in sorted(texts, key=lambda s: (-len(s), s)))
