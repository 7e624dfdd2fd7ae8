"""One document, checked as ``mtl-dsl check`` checks it, and what the editor features read.

``analyse`` runs ``api.check_document`` (``check_spec``'s parser, lowering and shape checker) on
the document with the
texts of every open document in place of their files, with the task profile and input size of
the workspace settings (unset: what the command uses without ``--tasks``/``--input``). It also
keeps the files as the loader reads them (their syntax trees and the blocks each one sees) for
hover, completion and go-to-definition, and the checked graph (every node's type) when the
spec is well-formed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lsprotocol import types as lsp

from ..api import check_document, resolve_profile
from ..checker import CheckedGraph
from ..cli.options import parse_input_size
from ..errors import Diagnostic, Diagnostics, SpecError
from ..frontend import ast
from ..frontend.loader import Loader
from ..frontend.parser import parse_source
from ..frontend.values import FileScope

SOURCE = "mtl-dsl"


@dataclass
class Settings:
    """The workspace settings (``initializationOptions`` or ``workspace/didChangeConfiguration``:
    ``{"mtl": {"tasks": "nyud", "input": "425x560"}}``, or the inner object alone)."""

    tasks: str | None = None
    input: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> "Settings":
        if not isinstance(data, dict):
            return cls()
        if isinstance(data.get("mtl"), dict):
            data = data["mtl"]
        tasks, size = data.get("tasks"), data.get("input")
        return cls(tasks if isinstance(tasks, str) and tasks else None,
                   size if isinstance(size, str) and size else None)


@dataclass
class Analysis:
    path: Path
    display: str                      # how messages name the document (as `mtl-dsl check PATH`)
    text: str
    diagnostics: list[Diagnostic]
    files: dict[str, FileScope] = field(default_factory=dict)  # resolved path -> scope
    graph: CheckedGraph | None = None
    tasks: list[str] = field(default_factory=list)
    recovered: bool = False  # the text did not parse: ``files`` has what ``recover`` kept

    @property
    def scope(self) -> FileScope | None:
        return self.files.get(str(self.path.resolve()))

    def file_of(self, display: str) -> Path | None:
        """The file a location's ``file`` names."""
        for key, scope in self.files.items():
            if scope.spec.path == display:
                return Path(key)
        return None


def analyse(path: Path, text: str, open_documents: Mapping[str, str], settings: Settings,
            parsed: dict | None = None) -> Analysis:
    """Check the document ``path`` whose text is ``text``; ``open_documents``: resolved path ->
    text of the other documents open in the editor; ``parsed``: syntax trees kept from one
    analysis to the next (``frontend.loader.Loader``)."""
    sources = dict(open_documents)
    key = str(path.resolve())
    sources[key] = text
    display = str(path)
    try:
        size = parse_input_size(settings.input)
    except SpecError as e:
        return Analysis(path, display, text, list(e.diagnostics))
    done = check_document(path, tasks=settings.tasks, input_size=size, sources=sources,
                          parsed=parsed)
    files = done.files
    recovered = key not in files
    if recovered:  # the text does not parse (a half-typed line): read what does
        loader = Loader(Diagnostics(), sources={**sources, key: recover(text)})
        loader.load(path, display)
        files = dict(loader.files)
    if done.graph is not None:  # the profile checked with (the setting, else the spec's own)
        tasks = [t.name for t in done.graph.ir.tasks]
    else:
        try:
            tasks = list(resolve_profile(settings.tasks).task_names)
        except SpecError:
            tasks = []
    return Analysis(path, display, text, done.diagnostics, files, done.graph, list(tasks),
                    recovered)


# -- a text that does not parse -------------------------------------------------------------------

_ITEM = re.compile(r"^(?:import|block|model)\b", re.M)


def recover(text: str) -> str:
    """``text`` with each top-level item that does not parse reduced to what does: a definition
    to its header and an empty body (``model m(a = 1) {}``), anything else to blank space. Every
    kept character stays at its offset (the rest becomes spaces, newlines stay), so locations
    in the result are locations in ``text``."""
    bounds = [m.start() for m in _ITEM.finditer(text)]
    bounds = ([0] if not bounds or bounds[0] else []) + bounds + [len(text)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        piece = text[a:b]
        out.append(piece if _parses(piece) else _header_only(piece))
    return "".join(out)


def _blank(text: str) -> str:
    return re.sub(r"[^\n]", " ", text)


def _parses(text: str) -> bool:
    try:
        parse_source(text)
    except SpecError:
        return False
    return True


def _header_only(piece: str) -> str:
    """``block name(params)`` kept and ``{}`` after it (in place of the body), when that parses."""
    close = _closing_paren(piece)
    if close is None:
        return _blank(piece)
    rest = list(_blank(piece[close + 1:]))
    free = [i for i, ch in enumerate(rest) if ch != "\n"][:2]
    if len(free) < 2:
        return _blank(piece)
    rest[free[0]], rest[free[1]] = "{", "}"
    candidate = piece[:close + 1] + "".join(rest)
    return candidate if _parses(candidate) else _blank(piece)


def _closing_paren(piece: str) -> int | None:
    depth, in_string, i = 0, False, 0
    while i < len(piece):
        ch = piece[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch in '"\n':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#":
            while i < len(piece) and piece[i] != "\n":
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        elif ch == "{" and depth == 0:
            return None
        i += 1
    return None


# -- positions ------------------------------------------------------------------------------------

def line_text(text: str, line: int) -> str:
    """Line ``line`` (1-based) of ``text``, '' past the end."""
    lines = text.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else ""


def position(text: str, offset: int) -> lsp.Position:
    """The protocol position (0-based line and character) of a character offset."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return lsp.Position(line=line, character=offset - start)


def loc_range(loc: ast.Loc | Any, text: str | None = None, whole: bool = False) -> lsp.Range:
    """A location's range: its offsets (``whole``: the construct's span) when known, else its
    line, column and length."""
    if whole and text is not None and getattr(loc, "start", -1) >= 0 and loc.end >= loc.start:
        return lsp.Range(start=position(text, loc.start), end=position(text, loc.end))
    line, column = max(0, loc.line - 1), max(0, loc.column - 1)
    return lsp.Range(start=lsp.Position(line=line, character=column),
                     end=lsp.Position(line=line, character=column + max(1, loc.length)))


# -- diagnostics ----------------------------------------------------------------------------------

def message_of(d: Diagnostic) -> str:
    """What the editor shows: the message, then its notes and hint as ``check`` prints them."""
    return "\n".join([d.message] + [f"note: {n}" for n in d.notes] +
                     ([f"hint: {d.hint}"] if d.hint else []))


# the command-line flags whose values the server takes from the workspace settings instead
SETTING_OF_FLAG = {"--tasks": "mtl.tasks", "--input": "mtl.input"}


def to_lsp(analysis: Analysis) -> list[lsp.Diagnostic]:
    """The analysis' diagnostics in the protocol's terms. One in another file (an imported
    spec) is shown on the import that brings that file in, naming where it is."""
    out = []
    for d in analysis.diagnostics:
        if d.file == analysis.display:
            out.append(lsp.Diagnostic(range=_range_in_line(analysis.text, d), message=message_of(d),
                                      severity=lsp.DiagnosticSeverity.Error, source=SOURCE))
            continue
        where = d.file if d.line <= 0 else f"{d.file}:{d.line}:{d.column}"
        if d.file in SETTING_OF_FLAG:  # the editor's setting, not a flag nobody typed
            where = f"setting {SETTING_OF_FLAG[d.file]}"
        related = None
        target = analysis.file_of(d.file)
        if target is not None and d.line > 0:
            related = [lsp.DiagnosticRelatedInformation(
                location=lsp.Location(uri=target.as_uri(), range=_range_in_line(None, d)),
                message=d.message)]
        out.append(lsp.Diagnostic(range=_import_range(analysis, d.file),
                                  message=f"{where}: {message_of(d)}",
                                  severity=lsp.DiagnosticSeverity.Error, source=SOURCE,
                                  related_information=related))
    return out


def _range_in_line(text: str | None, d: Diagnostic) -> lsp.Range:
    if d.line <= 0:  # no position: the first line
        return lsp.Range(start=lsp.Position(line=0, character=0),
                         end=lsp.Position(line=0, character=len(line_text(text or "", 1))))
    column = max(1, d.column)
    end = column - 1 + max(1, d.length)
    if text is not None:
        end = max(column, min(end, len(line_text(text, d.line))))
    return lsp.Range(start=lsp.Position(line=d.line - 1, character=column - 1),
                     end=lsp.Position(line=d.line - 1, character=end))


def _import_range(analysis: Analysis, file: str) -> lsp.Range:
    """The import of ``file`` (directly or through the files it imports), else the first line."""
    scope = analysis.scope
    if scope is not None and scope.spec.imports:
        target = analysis.file_of(file)
        for imp in scope.spec.imports:
            if target is not None and _reaches(analysis, imp, target):
                return loc_range(imp.span or imp.loc, analysis.text, whole=True)
        return loc_range(scope.spec.imports[0].span or scope.spec.imports[0].loc, analysis.text,
                         whole=True)
    return lsp.Range(start=lsp.Position(line=0, character=0),
                     end=lsp.Position(line=0, character=len(line_text(analysis.text, 1))))


def imported_file(analysis: Analysis, imp: ast.Import) -> Path | None:
    """The file an import names, found as the loader finds it."""
    from ..frontend.loader import builtin_spec_dirs

    for base in [analysis.path.parent] + builtin_spec_dirs():
        candidate = base / imp.path
        if candidate.is_file():
            return candidate.resolve()
    return None


def _reaches(analysis: Analysis, imp: ast.Import, target: Path, seen: set | None = None) -> bool:
    found = imported_file(analysis, imp)
    if found is None:
        return False
    if found == target.resolve():
        return True
    seen = seen if seen is not None else set()
    if found in seen:
        return False
    seen.add(found)
    scope = analysis.files.get(str(found))
    if scope is None:
        return False
    sub = Analysis(found, scope.spec.path, scope.spec.source, [], analysis.files)
    return any(_reaches(sub, i, target, seen) for i in scope.spec.imports)
