"""The Pygments lexer of ``.mtl`` specs (entry point ``mtl``: ``pygmentize -l mtl spec.mtl``),
its rules made from the grammar's words (``words.grammar_words``)."""
from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words as pygments_words
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String,
                            Whitespace)

from .words import alternatives, grammar_words

_W = grammar_words()
_NAME = _W.name


class MtlLexer(RegexLexer):
    name = "mtl"
    aliases = ["mtl", "mtl-dsl"]
    filenames = ["*.mtl"]
    mimetypes = ["text/x-mtl"]
    url = "https://github.com/mtl-dsl/mtl-dsl"

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (_W.comment, Comment.Single),
            (_W.string, String.Double),
            (_W.number, Number),
            (rf"(block|model)(\s+)({_NAME})", bygroups(Keyword.Declaration, Whitespace,
                                                       Name.Function)),
            (rf"(weights)(\s+)({_NAME})(\s*)(\{{)", bygroups(Keyword, Whitespace, Name.Label,
                                                            Whitespace, Punctuation)),
            (r'(unused)(\s+)(?=")', bygroups(Keyword, Whitespace)),
            (pygments_words(_W.constants, suffix=r"\b"), Keyword.Constant),
            (pygments_words(_W.keywords, suffix=r"\b"), Keyword),
            (rf"{_NAME}(?=\s*\()", Name.Function),
            (_NAME, Name),
            (alternatives(_W.operators), Operator),
            (alternatives(_W.punctuation), Punctuation),
        ],
    }
