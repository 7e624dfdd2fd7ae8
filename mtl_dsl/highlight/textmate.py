"""The TextMate grammar of ``.mtl`` specs (VS Code, Sublime Text, GitHub's linguist, ...), made
from the grammar's words (``words.grammar_words``) as the Pygments lexer is.

    python -m mtl_dsl.highlight.textmate > editors/vscode/syntaxes/mtl.tmLanguage.json

The patterns use the part of Oniguruma's syntax that Python's ``re`` shares (tests read specs
with them).
"""
from __future__ import annotations

import json
import re
import sys

from .words import SOFT_KEYWORDS, alternatives, grammar_words

SCOPE = "source.mtl"


def _plain(pattern: str) -> str:
    """A pattern with its groups made non-capturing (captures are named per rule)."""
    return re.sub(r"\((?!\?)", "(?:", pattern)


def grammar() -> dict:
    w = grammar_words()
    name = _plain(w.name)
    words = "|".join(sorted(w.keywords))
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "mtl",
        "scopeName": SCOPE,
        "fileTypes": ["mtl"],
        "comment": "Generated from mtl_dsl/grammar/mtl.lark by mtl_dsl/highlight/textmate.py: "
                   "do not edit by hand.",
        "patterns": [
            {"name": "comment.line.number-sign.mtl", "match": _plain(w.comment)},
            {"name": "string.quoted.double.mtl", "match": _plain(w.string)},
            {"name": "constant.numeric.mtl", "match": _plain(w.number)},
            {"match": rf"\b(block|model)\s+({name})",
             "captures": {"1": {"name": "storage.type.mtl"},
                          "2": {"name": "entity.name.function.mtl"}}},
            {"match": rf"\b({SOFT_KEYWORDS[0]})\s+({name})(?=\s*\{{)",
             "captures": {"1": {"name": "keyword.other.mtl"},
                          "2": {"name": "entity.name.tag.mtl"}}},
            {"match": rf'\b({SOFT_KEYWORDS[1]})(?=\s*")',
             "captures": {"1": {"name": "keyword.other.mtl"}}},
            {"name": "constant.language.mtl",
             "match": rf"\b(?:{'|'.join(sorted(w.constants))})\b"},
            {"name": "keyword.control.mtl", "match": rf"\b(?:{words})\b"},
            {"name": "entity.name.function.call.mtl", "match": rf"{name}(?=\s*\()"},
            {"name": "variable.other.mtl", "match": name},
            {"name": "keyword.operator.mtl", "match": alternatives(w.operators)},
            {"name": "punctuation.mtl", "match": alternatives(w.punctuation)},
        ],
    }


def render() -> str:
    return json.dumps(grammar(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
