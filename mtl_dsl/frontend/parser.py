"""Source text -> syntax tree (``ast.SpecFile``), with located, human-worded syntax errors.

The grammar lives in ``mtl_dsl/grammar/mtl.lark`` and is parsed LALR(1) by Lark, built once per
process. Our transformer (``to_ast.ToAst``) is given to Lark itself, so it runs once, as the
parser reduces each rule: no intermediate parse tree is built. Input is checked before Lark sees
it (size, encoding, control characters, bracket nesting), so no input, however malformed, gets
further than a located error.

``parse_source`` / ``parse_file`` raise a ``SpecError``; ``read_spec`` reports into a compilation's
``Diagnostics`` sink instead (what the loader uses).
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from pathlib import Path

from lark import Lark
from lark.exceptions import UnexpectedInput

from ..errors import Diagnostic, Diagnostics, SpecError
from . import ast
from .keywords import StatementIf
from .recovery import Recovery
from .syntax_errors import TERMINAL_WORDS, syntax_diagnostic
from .to_ast import ToAst

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: far beyond any real spec, small enough to answer at once
MAX_NESTING = 64
MAX_ERRORS = 20
GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "mtl.lark"



class _Parser:
    """The Lark parser with our transformer inside it. The transformer knows the file it is
    locating for, so one parse runs at a time (the lock)."""

    def __init__(self) -> None:
        self.transformer = ToAst()
        self.keywords = StatementIf()  # `if` starting a statement -> STMT_IF (keywords.py)
        self.lark = Lark(GRAMMAR.read_text(), parser="lalr", maybe_placeholders=True,
                         transformer=self.transformer, postlex=self.keywords)
        self.lock = threading.Lock()
        words = dict(TERMINAL_WORDS)
        for term in self.lark.terminals:
            if term.name not in words and term.pattern.type == "str":
                words[term.name] = f"'{term.pattern.value}'"
        self.words = words


@functools.lru_cache(maxsize=1)
def _parser() -> _Parser:
    return _Parser()


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


def _check_nesting(source: str, path: str) -> Diagnostic | None:
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
                return _diag(path, _lines(source), line, col,
                             f"brackets nested more than {MAX_NESTING} deep")
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return None


def read_spec(sink: Diagnostics, path: Path, display: str | None = None) -> ast.SpecFile | None:
    """Read and parse a spec file; its errors go to ``sink`` (then the result is None)."""
    display = display or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        sink.add(Diagnostic(display, 1, 1, f"spec file not found: {display}"))
        return None
    except IsADirectoryError:
        sink.add(Diagnostic(display, 1, 1, f"{display} is a directory, not a spec file"))
        return None
    except OSError as e:
        sink.add(Diagnostic(display, 1, 1, f"cannot read {display}: {e.strerror}"))
        return None
    try:
        source = decode_source(data, display)
    except SpecError as e:
        sink.add(e.diagnostics)
        return None
    return parse_into(sink, source, display)


def parse_into(sink: Diagnostics, source: str, path: str = "<spec>") -> ast.SpecFile | None:
    """Parse spec text; every syntax error goes to ``sink`` (then the result is None)."""
    sink.add_source(path, source)
    nesting = _check_nesting(source, path)
    if nesting is not None:
        sink.add(nesting)
        return None
    lines = _lines(source)
    errors: list[Diagnostic] = []
    parser = _parser()
    recover = Recovery(source, parser.keywords.restart_at)

    def diagnostic(e: UnexpectedInput) -> Diagnostic:
        d = syntax_diagnostic(e, path, source, lines, parser.words)
        if recover.unbalanced > 0 and not d.hint:  # the usual cause: a '}' left out above
            d = dataclasses.replace(d, hint=f"the file opens {recover.unbalanced} more '{{' than "
                                            f"it closes: is a '}}' missing above this line?")
        return d

    consequence = []

    def on_error(e: UnexpectedInput) -> bool:
        if errors and recover.follows_from_braces(e):
            consequence.append(e)
            return False
        errors.append(diagnostic(e))
        return len(errors) < MAX_ERRORS and recover(e)

    with parser.lock:
        parser.transformer.path = path
        parser.keywords.reset(source)
        try:
            items = parser.lark.parse(source, on_error=on_error)
        except UnexpectedInput as e:  # no recovery: parsing ends here
            if not consequence and (not errors or errors[-1] != diagnostic(e)):
                errors.append(diagnostic(e))
            items = None
        except Exception:  # building the AST from a tree that error recovery left incomplete
            if not errors:
                raise
            items = None
    if errors:
        sink.add(_dedupe(errors))
        return None
    assert items is not None
    spec = ast.SpecFile(path=path, source=source)
    for item in items:
        if isinstance(item, ast.Import):
            spec.imports.append(item)
        elif isinstance(item, ast.BlockDef) and item.is_model:
            spec.models.append(item)
        else:
            spec.blocks.append(item)
    return spec


def parse_source(source: str, path: str = "<spec>") -> ast.SpecFile:
    """Parse spec text. Raises SpecError with every syntax error found."""
    sink = Diagnostics()
    spec = parse_into(sink, source, path)
    sink.raise_if_errors()
    assert spec is not None
    return spec


def parse_file(path: Path, display: str | None = None) -> ast.SpecFile:
    """Read and parse a spec file. Raises SpecError."""
    sink = Diagnostics()
    spec = read_spec(sink, path, display)
    sink.raise_if_errors()
    assert spec is not None
    return spec


def _dedupe(errors: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[int, int]] = set()
    out = []
    for d in errors:
        if (d.line, d.column) not in seen:
            seen.add((d.line, d.column))
            out.append(d)
    return out
