"""What a syntax error says: the token found, the terminals expected in plain words, and, when the
text is a construct of another language that ``.mtl`` does not have (a list comprehension, a
``while`` loop, ``x += 1``, ``&&``), that construct by name and how to write it here.
"""
from __future__ import annotations

import re

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import Diagnostic

# What a person reads for each terminal in "expected one of ...".
TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "STMT_IF": "'if'",  # the `if` that starts a statement (keywords.py)
    "$END": "end of file",
}

# Characters other languages use, and what .mtl writes instead.
_CHARACTERS = {
    "'": ("", 'strings are written with double quotes: "..."'),
    '"': ("", "this string is not closed on its line"),
    "&": ("'&&' is not part of the language", "write 'and'"),
    "|": ("'||' is not part of the language", "write 'or'"),
    "!": ("'!' is not part of the language", "write 'not' (and '!=' for not equal)"),
    ";": ("';' is not part of the language", "a statement ends at the end of its line"),
    "?": ("a conditional expression 'c ? a : b' is not part of the language",
          "write: a if c else b"),
    "@": ("'@' (decorators, matrix products) is not part of the language", ""),
}

# A word before the offending token that starts a construct of another language.
_WORDS = {
    "while": ("a 'while' loop is not part of the language",
              "loops run over a list: for i in range(n) { ... }"),
    "def": ("'def' is not part of the language", "define a block: block name(x, k: int = 1) { ... }"),
    "function": ("'function' is not part of the language",
                 "define a block: block name(x, k: int = 1) { ... }"),
    "elif": ("'elif' is not part of the language", "write: } else if condition {"),
    "lambda": ("'lambda' is not part of the language", "define a block: block name(x) { ... }"),
    "class": ("'class' is not part of the language", "define a block: block name(x) { ... }"),
    "from": ("'from ... import' is not part of the language", 'write: import "file.mtl"'),
    "with": ("'with' is not part of the language", ""),
    "try": ("'try' is not part of the language", ""),
    "let": ("'let' is not part of the language", "assign with: name = value"),
    "var": ("'var' is not part of the language", "assign with: name = value"),
}


def describe_terminals(names: set[str] | frozenset[str], words: dict[str, str]) -> str:
    shown = sorted({words.get(n, n.lower()) for n in names})
    if len(shown) > 12:
        shown = shown[:12] + ["..."]
    return ", ".join(shown)


def _diag(path: str, lines: list[str], line: int, column: int, message: str, hint: str = "",
          length: int = 1) -> Diagnostic:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return Diagnostic(file=path, line=line, column=column, message=message, hint=hint,
                      source_line=text, length=length)


def _open_bracket(source: str, offset: int) -> str:
    """The innermost bracket open at ``offset`` on its statement ('' if none)."""
    depth = 0
    for ch in reversed(source[:offset]):
        if ch in ")]}":
            depth += 1
        elif ch in "([{":
            if depth == 0:
                return ch
            depth -= 1
    return ""


def _word_before(source: str, offset: int) -> str:
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", source[:offset].split("\n")[-1])
    return m.group(1) if m else ""


def _foreign_keyword(e: UnexpectedToken):
    """The token of a word of another language (``while``, ``def``, ``let``) that starts the
    statement being parsed as ``NAME NAME``: the shape of a ``weights NAME { ... }`` map, whose
    keyword is soft (a name checked when lowering), so ``while x {`` gets that far."""
    ip = getattr(e, "interactive_parser", None)
    stack = ip.parser_state.value_stack if ip is not None else []
    for first, second in zip(stack, stack[1:]):
        if (isinstance(first, Token) and isinstance(second, Token) and first.type == "NAME"
                and second.type == "NAME" and first.value in _WORDS):
            return first
    return None


def lacking_construct(e: UnexpectedToken, source: str) -> tuple[str, str] | None:
    """(message, hint) when the offending text is a construct the language does not have."""
    tok = e.token
    at = tok.start_pos if tok.start_pos is not None else len(source)
    nxt = source[tok.end_pos:tok.end_pos + 1] if tok.end_pos is not None else ""
    if tok.value == "for" and "FOR" not in e.expected:
        bracket = _open_bracket(source, at)
        if bracket == "(":
            return ("a generator expression is only allowed as the sole argument of a call",
                    "write: sum(x[s] for s in tasks), or stack(...) to keep the values")
        kind = {"[": "a list comprehension", "{": "a dict comprehension"}.get(bracket)
        if kind:
            return (f"{kind} is not part of the language",
                    "use a generator, sum(x[s] for s in tasks), or a for statement: "
                    "for v in values { x[v] = ... }")
    if tok.type in ("PLUS", "MINUS", "STAR", "SLASH", "DOUBLESLASH", "PERCENT") and nxt == "=":
        return (f"'{tok.value}=' is not part of the language", f"write x = x {tok.value} ...")
    if tok.type == "STAR" and source[at - 1:at] == "*":
        return ("'**' (power) is not part of the language", "multiply: x * x")
    word = _word_before(source, at)
    if word in _WORDS and tok.type != "EQUAL":
        return _WORDS[word]
    if tok.type == "NAME" and "STRING" in e.expected and _word_before(source, at) == "import":
        return ("an import names a file in double quotes", f'write: import "{tok.value}.mtl"')
    return None


def syntax_diagnostic(e: UnexpectedInput, path: str, source: str, lines: list[str],
                      words: dict[str, str]) -> Diagnostic:
    line, column = max(1, e.line or 1), max(1, e.column or 1)
    if isinstance(e, UnexpectedCharacters):
        bad = lines[line - 1][column - 1:column] if line <= len(lines) else "?"
        message, hint = _CHARACTERS.get(bad, ("", ""))
        return _diag(path, lines, line, column, message or f"unexpected character '{bad}'", hint)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        last = len(lines)
        return _diag(path, lines, last, max(1, len(lines[-1]) + 1),
                     "unexpected end of file; expected " + describe_terminals(e.expected, words),
                     "is a closing '}' or ')' missing?")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        foreign = _foreign_keyword(e)
        if foreign is not None:
            message, hint = _WORDS[foreign.value]
            return _diag(path, lines, foreign.line, foreign.column, message, hint,
                         length=len(foreign.value))
        lacking = lacking_construct(e, source)
        if lacking is not None:
            return _diag(path, lines, line, column, lacking[0], lacking[1],
                         length=len(str(tok.value)))
        what = f"'{tok.value}'" if tok.type != "NAME" else f"name '{tok.value}'"
        hint = ""
        first_on_line = not lines[line - 1][:column - 1].strip() if line <= len(lines) else False
        closers = [c for t, c in (("RPAR", ")"), ("RSQB", "]"), ("LBRACE", "{"))
                   if t in e.expected]
        if tok.type == "EQUAL" and "EQEQ" in e.expected:
            hint = "comparison is written '=='"
        elif first_on_line and closers and line > 1:
            hint = f"is a '{closers[0]}' missing at the end of line {line - 1}?"
        elif tok.type == "NAME" and "COMMA" in e.expected:
            hint = "is a ',' missing before it?"
        return _diag(path, lines, line, column,
                     f"unexpected {what}; expected one of: "
                     f"{describe_terminals(e.expected, words)}", hint,
                     length=len(str(tok.value)))
    return _diag(path, lines, line, column, str(e).split("\n")[0])
