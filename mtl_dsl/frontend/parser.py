"""Source text -> syntax tree (``ast.SpecFile``), with located, human-worded syntax errors.

The grammar lives in ``mtl_dsl/grammar/mtl.lark`` and is parsed LALR(1). Lark's tree is turned
into our dataclasses by a ``Transformer``. Input is checked before Lark sees it (size, encoding,
control characters, bracket nesting), so no input, however malformed, gets further than a
``SpecError``.
"""
from __future__ import annotations

import functools
from pathlib import Path

from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import Diagnostic, SpecError
from . import ast

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: far beyond any real spec, small enough to answer at once
MAX_NESTING = 64
MAX_ERRORS = 20
GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "mtl.lark"

# What a person reads for each terminal in "expected one of ...".
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "end of file",
}


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    """The grammar alone (for terminal names)."""
    return Lark(GRAMMAR.read_text(), parser="lalr", maybe_placeholders=True)


@functools.lru_cache(maxsize=1)
def _parser() -> tuple[Lark, "_ToAst"]:
    """The parser with the AST transformer inlined: no intermediate parse tree is built."""
    transformer = _ToAst("<spec>")
    return Lark(GRAMMAR.read_text(), parser="lalr", maybe_placeholders=True,
                transformer=transformer), transformer


@functools.lru_cache(maxsize=1)
def _terminal_text() -> dict[str, str]:
    words = dict(_TERMINAL_WORDS)
    for term in _lark().terminals:
        if term.name not in words and term.pattern.type == "str":
            words[term.name] = f"'{term.pattern.value}'"
    return words


def describe_terminals(names: set[str] | frozenset[str]) -> str:
    words = _terminal_text()
    shown = sorted({words.get(n, n.lower()) for n in names})
    if len(shown) > 12:
        shown = shown[:12] + ["..."]
    return ", ".join(shown)


def _lines(source: str) -> list[str]:
    return source.split("\n")


def _diag(path: str, source_lines: list[str], line: int, column: int, message: str, hint: str = "",
          length: int = 1) -> Diagnostic:
    text = source_lines[line - 1] if 0 < line <= len(source_lines) else ""
    return Diagnostic(file=path, line=line, column=column, message=message, hint=hint,
                      source_line=text, length=length)


def decode_source(data: bytes, path: str) -> str:
    """Bytes of a spec file -> text, or a SpecError naming where it stops being a spec."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(Diagnostic(path, 1, 1, f"spec file is too large ({len(data):,} bytes; the "
                                                f"limit is {MAX_SPEC_BYTES:,})"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[:e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError(Diagnostic(path, line, column,
                                   f"spec file is not UTF-8 text (byte 0x{data[e.start]:02x})",
                                   "is this a binary file?")) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _lines(text)
    for i, line_text in enumerate(lines, start=1):
        for j, ch in enumerate(line_text, start=1):
            if ord(ch) < 32 and ch not in "\t\r":
                raise SpecError(_diag(path, lines, i, j, f"control character U+{ord(ch):04X} in "
                                                          f"spec text", "is this a binary file?"))
    return text


def _check_nesting(source: str, path: str) -> None:
    depth = 0
    line, col = 1, 0
    in_string = in_comment = False
    for ch in source:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
            in_comment = False
            in_string = False
            continue
        if in_comment:
            continue
        if in_string:
            if ch == '"':
                in_string = False
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(_diag(path, _lines(source), line, col,
                                      f"brackets nested more than {MAX_NESTING} deep"))
        elif ch in ")]}":
            depth = max(0, depth - 1)


def parse_source(source: str, path: str = "<spec>") -> ast.SpecFile:
    """Parse spec text. Raises SpecError with every syntax error found."""
    _check_nesting(source, path)
    lines = _lines(source)
    errors: list[Diagnostic] = []

    def on_error(e: UnexpectedInput) -> bool:
        errors.append(_syntax_diagnostic(e, path, lines))
        return len(errors) < MAX_ERRORS

    parser, transformer = _parser()
    transformer.path = path
    try:
        tree = parser.parse(source, on_error=on_error)
    except UnexpectedInput as e:  # lexer errors and errors past the cap end parsing
        if not errors or errors[-1] != _syntax_diagnostic(e, path, lines):
            errors.append(_syntax_diagnostic(e, path, lines))
        tree = None
    except Exception:  # building the AST from a tree that error recovery left incomplete
        if not errors:
            raise
        tree = None
    if errors:
        raise SpecError(_dedupe(errors))
    assert tree is not None
    spec = ast.SpecFile(path=path, source=source)
    for item in _ToAst(path).transform(tree).children:
        if isinstance(item, ast.Import):
            spec.imports.append(item)
        elif isinstance(item, ast.BlockDef) and item.is_model:
            spec.models.append(item)
        else:
            spec.blocks.append(item)
    return spec


def _dedupe(errors: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[int, int]] = set()
    out = []
    for d in errors:
        if (d.line, d.column) not in seen:
            seen.add((d.line, d.column))
            out.append(d)
    return out


def _syntax_diagnostic(e: UnexpectedInput, path: str, lines: list[str]) -> Diagnostic:
    line, column = max(1, e.line or 1), max(1, e.column or 1)
    if isinstance(e, UnexpectedCharacters):
        bad = lines[line - 1][column - 1:column] if line <= len(lines) else "?"
        hint = ""
        if bad == "'":
            hint = 'strings are written with double quotes: "..."'
        elif bad == '"':
            hint = "this string is not closed on its line"
        return _diag(path, lines, line, column, f"unexpected character '{bad}'", hint)
    if isinstance(e, UnexpectedEOF):
        last = len(lines)
        return _diag(path, lines, last, len(lines[-1]) + 1, "unexpected end of file; expected "
                     + describe_terminals(e.expected), "is a closing '}' or ')' missing?")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            last = len(lines)
            return _diag(path, lines, last, max(1, len(lines[-1]) + 1),
                         "unexpected end of file; expected " + describe_terminals(e.expected),
                         "is a closing '}' or ')' missing?")
        what = f"'{tok.value}'" if tok.type != "NAME" else f"name '{tok.value}'"
        hint = ""
        if tok.type == "EQUAL" and "EQEQ" in e.expected:
            hint = "comparison is written '=='"
        elif tok.type == "NAME" and "COMMA" in e.expected:
            hint = "is a ',' missing before it?"
        return _diag(path, lines, line, column,
                     f"unexpected {what}; expected one of: {describe_terminals(e.expected)}", hint,
                     length=len(str(tok.value)))
    return _diag(path, lines, line, column, str(e).split("\n")[0])


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(text: str) -> int | float:
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


class _ToAst(Transformer):
    """Lark tree -> ast dataclasses. Punctuation tokens are dropped by name."""

    _PUNCT = {"LPAR", "RPAR", "LSQB", "RSQB", "LBRACE", "RBRACE", "COMMA", "COLON", "DOUBLECOLON",
              "EQUAL", "DOT", "ARROW", "IMPORT", "AS", "BLOCK", "MODEL", "FOR", "IN", "IF", "ELSE",
              "RETURN", "PRESET", "TABLE"}

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    # helpers
    def _loc(self, item: Tree | Token, length: int | None = None) -> ast.Loc:
        if isinstance(item, Token):
            return ast.Loc(self.path, item.line or 1, item.column or 1,
                           length if length is not None else len(str(item)))
        meta = item.meta
        line = getattr(meta, "line", 1)
        col = getattr(meta, "column", 1)
        end_line = getattr(meta, "end_line", line)
        end_col = getattr(meta, "end_column", col + 1)
        n = end_col - col if end_line == line else 1
        return ast.Loc(self.path, line, col, max(1, n))

    def _keep(self, children: list) -> list:
        return [c for c in children
                if not (isinstance(c, Token) and c.type in self._PUNCT) and c is not None]

    def _loc_of(self, x: object) -> ast.Loc:
        if isinstance(x, Token):
            return self._loc(x)
        return getattr(x, "loc")

    def _span(self, first: object, last: object) -> ast.Loc:
        a = self._loc_of(first)
        b = self._loc_of(last)
        if a.line == b.line:
            return ast.Loc(a.file, a.line, a.column, max(1, b.column + b.length - a.column))
        return a

    # definitions
    def start(self, children):
        return Tree("start", children)

    def import_stmt(self, children):
        kw, path_tok, _as, alias = children
        return ast.Import(_unescape(str(path_tok)), str(alias) if alias is not None else None,
                          self._loc(path_tok))

    def _definition(self, children, is_model: bool):
        kw, name, _lp, params, _rp, body = children
        return ast.BlockDef(str(name), params or [], body, self._loc(name), is_model)

    def block_def(self, children):
        return self._definition(children, False)

    def model_def(self, children):
        return self._definition(children, True)

    def param_list(self, children):
        return [c for c in children if isinstance(c, ast.ParamDef)]

    def param(self, children):
        name, _colon, type_name, _eq, default = children
        return ast.ParamDef(str(name), str(type_name) if type_name is not None else None, default,
                            self._loc(name))

    def body(self, children):
        return self._keep(children)

    # statements
    def assign(self, children):
        kept = [c for c in children if c is not None]
        targets = [c for c in kept if isinstance(c, ast.Target)]
        shape = None
        shape_loc = None
        if kept and isinstance(kept[-1], tuple) and kept[-1][0] == "shape":
            shape, shape_loc = kept[-1][1], kept[-1][2]
            kept = kept[:-1]
        value = [c for c in kept if not isinstance(c, (ast.Target, Token))][-1]
        return ast.Assign(targets, value, shape, targets[0].loc, shape_loc)

    def target(self, children):
        name, *rest = children
        indices = [c for c in rest if not isinstance(c, Token) and c is not None]
        attr_tokens = [c for c in rest if isinstance(c, Token) and c.type == "NAME"]
        attr = str(attr_tokens[0]) if attr_tokens else None
        return ast.Target(str(name), indices, attr, self._loc(name))

    def index(self, children):
        return self._keep(children)[0]

    def shape(self, children):
        lsqb = children[0]
        dims = [c for c in self._keep(children)]
        return ("shape", dims, self._loc(lsqb))

    def for_stmt(self, children):
        kw, var, _in, iterable, _if, cond, body = children
        return ast.For(str(var), iterable, cond, body, self._loc(kw))

    def if_stmt(self, children):
        kw, cond, body, _else, orelse = children
        if orelse is None:
            orelse = []
        elif isinstance(orelse, ast.If):
            orelse = [orelse]
        return ast.If(cond, body, orelse, self._loc(kw))

    def return_stmt(self, children):
        kw = children[0]
        return ast.Return(self._keep(children), self._loc(kw))

    def preset_stmt(self, children):
        kw, name, *rest = children
        values = [c for c in rest if isinstance(c, ast.Arg)]
        return ast.Preset(str(name), values, self._loc(name))

    def kwarg(self, children):
        name, _eq, value = children
        return ast.Arg(str(name), value, self._loc(name))

    def table_stmt(self, children):
        kw, name, *rest = children
        entries = []
        for row in rest:
            if isinstance(row, list):
                entries.extend(row)
        return ast.Table(str(name), entries, self._loc(name))

    def table_row(self, children):
        target = children[0]
        out = []
        for entry in children[1:]:
            if isinstance(entry, tuple):
                source, value, loc = entry
                out.append(ast.TableEntry(str(target), source, value, loc))
        return out

    def table_entry(self, children):
        key, _colon, (value, loc) = children
        return (key, value, loc)

    def table_key(self, children):
        tok = children[0]
        return _unescape(str(tok)) if tok.type == "STRING" else str(tok)

    def table_value(self, children):
        tok = children[0]
        loc = self._loc(tok)
        if tok.type == "STRING":
            return (_unescape(str(tok)), loc)
        if tok.type == "NUMBER":
            return (_number(str(tok)), loc)
        if tok.type == "TRUE":
            return (True, loc)
        if tok.type == "FALSE":
            return (False, loc)
        return (str(tok), loc)

    # expressions
    def number(self, children):
        tok = children[0]
        return ast.Const(_number(str(tok)), self._loc(tok))

    def string(self, children):
        tok = children[0]
        return ast.Const(_unescape(str(tok)), self._loc(tok))

    def true(self, children):
        return ast.Const(True, self._loc(children[0]))

    def false(self, children):
        return ast.Const(False, self._loc(children[0]))

    def none(self, children):
        return ast.Const(None, self._loc(children[0]))

    def paren(self, children):
        lpar, inner, rpar = children
        return inner

    def name(self, children):
        tok = children[0]
        return ast.Name(str(tok), self._loc(tok))

    def list(self, children):
        lsqb = children[0]
        return ast.ListExpr(self._keep(children), self._loc(lsqb))

    def dict(self, children):
        lbrace = children[0]
        return ast.DictExpr([c for c in self._keep(children)], self._loc(lbrace))

    def dict_item(self, children):
        key, _colon, value = children
        k = _unescape(str(key)) if key.type == "STRING" else str(key)
        return (k, value)

    def or_op(self, children):
        left, _op, right = children
        return ast.BoolOp("or", left, right, self._span(left, right))

    def and_op(self, children):
        left, _op, right = children
        return ast.BoolOp("and", left, right, self._span(left, right))

    def not_op(self, children):
        kw, operand = children
        return ast.UnaryOp("not", operand, self._span(kw, operand))

    def compare(self, children):
        left, op, right = children
        return ast.Compare(op, left, right, self._span(left, right))

    def comp_op(self, children):
        return " ".join(str(c) for c in children)

    def binop(self, children):
        left, op, right = children
        return ast.BinOp(str(op), left, right, self._span(left, right))

    def neg(self, children):
        minus, operand = children
        return ast.UnaryOp("-", operand, self._span(minus, operand))

    def call(self, children):
        callee, _lp, args, rp = children
        return ast.CallExpr(callee, args or [], self._span(callee, rp))

    def arg_list(self, children):
        out = []
        for c in self._keep(children):
            out.append(c if isinstance(c, ast.Arg) else ast.Arg(None, c, c.loc))
        return out

    def getitem(self, children):
        obj, _l, index, rb = children
        return ast.GetItem(obj, index, self._span(obj, rb))

    def getattr(self, children):
        obj, _dot, name = children
        return ast.GetAttr(obj, str(name), self._span(obj, name))


def parse_file(path: Path, display: str | None = None) -> ast.SpecFile:
    display = display or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(Diagnostic(display, 1, 1, f"spec file not found: {display}")) from None
    except IsADirectoryError:
        raise SpecError(Diagnostic(display, 1, 1, f"{display} is a directory, not a spec file")) \
            from None
    except OSError as e:
        raise SpecError(Diagnostic(display, 1, 1, f"cannot read {display}: {e.strerror}")) from None
    return parse_source(decode_source(data, display), display)
