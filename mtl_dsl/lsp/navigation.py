"""Hover, completion, go-to-definition and document symbols of a spec document.

Each reads an ``analysis.Analysis`` (the files as the loader reads them, the checked graph when
the spec is well-formed) and the text around the cursor. The text may be half-typed: the context
of the cursor (``alias.``, the call whose parentheses it is in) is read from the text itself, the
names from the last analysis whose document parsed.
"""
from __future__ import annotations

import re
from pathlib import Path

from lsprotocol import types as lsp

from ..blocks import REGISTRY
from ..cli.spec import block_help
from ..frontend import ast
from ..frontend.values import FileScope, UserBlock
from ..highlight.words import SOFT_KEYWORDS, grammar_words
from ..types import describe
from .analysis import Analysis, imported_file, line_text, loc_range

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
MAX_SHAPES = 12


def keywords() -> list[str]:
    """The grammar's keywords and constants (``highlight.words``) and its soft keywords."""
    words = grammar_words()
    return sorted(set(words.keywords) | set(words.constants) | set(SOFT_KEYWORDS))


def word_at(text: str, line: int, character: int) -> tuple[str, int, int] | None:
    """The name under (or just before) a 0-based position: (name, start, end) on that line."""
    row = line_text(text, line + 1)
    for m in _WORD.finditer(row):
        if m.start() <= character <= m.end():
            return m.group(), m.start(), m.end()
    return None


def string_at(text: str, line: int, character: int) -> str | None:
    row = line_text(text, line + 1)
    for m in _STRING.finditer(row):
        if m.start() <= character < m.end():
            return m.group()[1:-1]
    return None


def _alias_before(row: str, start: int) -> str | None:
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*$", row[:start])
    return m.group(1) if m else None


def _calls(row: str, end: int) -> bool:
    return bool(re.match(r"\s*\(", row[end:]))


# -- blocks -------------------------------------------------------------------------------------

def user_block(analysis: Analysis, name: str, alias: str | None) -> UserBlock | None:
    scope = analysis.scope
    if scope is None:
        return None
    if alias is not None:
        imported = scope.aliases.get(alias)
        return imported.blocks.get(name) if imported is not None else None
    return scope.blocks.get(name)


def block_signature(b: ast.BlockDef, source: str) -> str:
    params = [source[p.loc.start:p.loc.end] if p.loc.start >= 0 else p.name for p in b.params]
    return f"{'model' if b.is_model else 'block'} {b.name}({', '.join(params)})"


def block_docs(b: ast.BlockDef, source: str) -> str:
    """The comment lines right above a definition."""
    lines = source.split("\n")[:max(0, b.loc.line - 1)]
    docs: list[str] = []
    for row in reversed(lines):
        stripped = row.strip()
        if not stripped.startswith("#"):
            break
        docs.append(stripped[1:].strip())
    return "\n".join(reversed(docs))


def _fenced(text: str) -> str:
    return f"```\n{text}\n```"


# -- hover ----------------------------------------------------------------------------------------

def hover(analysis: Analysis, text: str, pos: lsp.Position) -> lsp.Hover | None:
    found = word_at(text, pos.line, pos.character)
    if found is None:
        return None
    name, start, end = found
    row = line_text(text, pos.line + 1)
    alias = _alias_before(row, start)
    value = None
    if _calls(row, end) or alias is not None:
        value = _block_hover(analysis, name, alias)
    if value is None:
        value = _shape_hover(analysis, name, pos.line + 1)
    if value is None:
        value = _param_hover(analysis, name)
    if value is None and alias is None:
        value = _block_hover(analysis, name, None)
    if value is None:
        return None
    rng = lsp.Range(start=lsp.Position(line=pos.line, character=start),
                    end=lsp.Position(line=pos.line, character=end))
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=value),
                     range=rng)


def _block_hover(analysis: Analysis, name: str, alias: str | None) -> str | None:
    ub = user_block(analysis, name, alias)
    if ub is not None:
        d = ub.definition
        docs = block_docs(d, ub.module.spec.source)
        where = f"{Path(ub.module.spec.path).name}:{d.loc.line}"
        return _fenced(block_signature(d, ub.module.spec.source)) + \
            (f"\n\n{docs}" if docs else "") + f"\n\n(defined at {where})"
    if alias is None and name in REGISTRY:
        return _fenced(block_help(REGISTRY[name]))
    return None


def _shape_hover(analysis: Analysis, name: str, line: int) -> str | None:
    """The inferred types of the nodes a name stands for: those made on this line that carry
    the name, else the model-level value of that name."""
    graph = analysis.graph
    if graph is None:
        return None
    here = [n for n in graph.ir.nodes if n.loc.file == analysis.display and n.loc.line == line
            and name in n.name.split(".")]
    if not here:
        here = [n for n in graph.ir.nodes if n.name == name or n.name.startswith(name + ".")]
    if not here:
        return None
    rows = []
    for n in here[:MAX_SHAPES]:
        types = graph.types.get(n.name, ())
        shown = ", ".join(describe(t) for t in types)
        rows.append(f"{n.name}: {shown}   ({n.block})")
    if len(here) > MAX_SHAPES:
        rows.append(f"... and {len(here) - MAX_SHAPES} more")
    return _fenced("\n".join(rows))


def _param_hover(analysis: Analysis, name: str) -> str | None:
    graph = analysis.graph
    if graph is None or name not in graph.ir.params:
        return None
    value = graph.ir.params[name]
    shown = getattr(value, "value", value)
    return _fenced(f"model parameter {name} = {shown!r}")


# -- definition -----------------------------------------------------------------------------------

def definition(analysis: Analysis, text: str, pos: lsp.Position) -> lsp.Location | None:
    row = line_text(text, pos.line + 1)
    imported = string_at(text, pos.line, pos.character)
    if imported is not None and re.match(r"\s*import\b", row):
        found = imported_file(analysis, ast.Import(imported, None, ast.Loc("", 0, 0)))
        return _file_location(found) if found is not None else None
    found_word = word_at(text, pos.line, pos.character)
    if found_word is None:
        return None
    name, start, _ = found_word
    scope = analysis.scope
    if scope is not None and name in scope.aliases and _alias_before(row, start) is None:
        return _file_location(Path(_path_of(analysis, scope.aliases[name])))
    ub = user_block(analysis, name, _alias_before(row, start))
    if ub is None:
        return None
    path = _path_of(analysis, ub.module)
    return lsp.Location(uri=Path(path).as_uri(), range=loc_range(ub.definition.loc))


def _path_of(analysis: Analysis, scope: FileScope) -> str:
    for key, s in analysis.files.items():
        if s is scope:
            return key
    return str(Path(scope.spec.path).resolve())


def _file_location(path: Path) -> lsp.Location:
    start = lsp.Position(line=0, character=0)
    return lsp.Location(uri=path.as_uri(), range=lsp.Range(start=start, end=start))


# -- completion -----------------------------------------------------------------------------------

def completion(analysis: Analysis, text: str, pos: lsp.Position) -> list[lsp.CompletionItem]:
    row = line_text(text, pos.line + 1)[:pos.character]
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*[A-Za-z0-9_]*$", row)
    scope = analysis.scope
    if m and scope is not None and m.group(1) in scope.aliases:
        return [_block_item(n, ub) for n, ub in sorted(scope.aliases[m.group(1)].blocks.items())]
    items: list[lsp.CompletionItem] = []
    callee = _open_call(text, _offset(text, pos))
    if callee is not None:
        items += _argument_items(analysis, *callee)
    items += [lsp.CompletionItem(label=name, kind=lsp.CompletionItemKind.Function,
                                 detail=REGISTRY[name].signature())
              for name in sorted(REGISTRY)]
    if scope is not None:
        items += [_block_item(n, ub) for n, ub in sorted(scope.blocks.items())]
        items += [lsp.CompletionItem(label=a, kind=lsp.CompletionItemKind.Module,
                                     detail=f"import \"{Path(s.spec.path).name}\" as {a}")
                  for a, s in sorted(scope.aliases.items())]
        model = _enclosing(scope.spec, _offset(text, pos))
        if model is not None:
            items += [lsp.CompletionItem(label=p.name, kind=lsp.CompletionItemKind.Variable,
                                         detail=f"parameter of {model.name}")
                      for p in model.params]
    items += [lsp.CompletionItem(label=t, kind=lsp.CompletionItemKind.EnumMember,
                                 detail="task") for t in analysis.tasks]
    items += [lsp.CompletionItem(label=k, kind=lsp.CompletionItemKind.Keyword)
              for k in keywords()]
    return items


def _block_item(name: str, ub: UserBlock) -> lsp.CompletionItem:
    return lsp.CompletionItem(label=name, kind=lsp.CompletionItemKind.Function,
                              detail=block_signature(ub.definition, ub.module.spec.source))


def _argument_items(analysis: Analysis, name: str, alias: str | None) -> list[lsp.CompletionItem]:
    ub = user_block(analysis, name, alias)
    if ub is not None:
        names = [(p.name, p.type or "") for p in ub.definition.params]
    elif alias is None and name in REGISTRY:
        names = [(a, spec.type_name()) for a, spec in REGISTRY[name].args.items()]
    else:
        return []
    return [lsp.CompletionItem(label=a, kind=lsp.CompletionItemKind.Property,
                               detail=f"{name}: {a}{': ' + t if t else ''}",
                               insert_text=f"{a} = ", sort_text=f"0{a}") for a, t in names]


def _offset(text: str, pos: lsp.Position) -> int:
    """The text offset of ``pos``; a character past its line's end is the line's end and a line
    past the document's end is its end, as the protocol says (an editor may ask about a position
    of a newer text than the server has)."""
    lines = text.split("\n")
    if pos.line >= len(lines):
        return len(text)
    return sum(len(x) + 1 for x in lines[:pos.line]) + min(pos.character, len(lines[pos.line]))


def _open_call(text: str, offset: int) -> tuple[str, str | None] | None:
    """The block whose call's parentheses hold ``offset`` (name, alias), if any."""
    depth = 0
    i = offset - 1
    while i >= 0 and offset - i < 4000:
        ch = text[i]
        if ch in ")]}":
            depth += 1
        elif ch in "([{":
            if depth == 0:
                if ch != "(":
                    return None
                m = re.search(r"(?:([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*$",
                              text[max(0, i - 200):i])
                return (m.group(2), m.group(1)) if m else None
            depth -= 1
        elif ch == "{" or (ch == "\n" and depth < 0):
            return None
        i -= 1
    return None


def _enclosing(spec: ast.SpecFile, offset: int) -> ast.BlockDef | None:
    """The definition the offset is in (or after: a half-typed body was cut off)."""
    before = [d for d in spec.models + spec.blocks if d.span is not None and
              0 <= d.span.start <= offset]
    return max(before, key=lambda d: d.span.start) if before else None


# -- document symbols -----------------------------------------------------------------------------

def symbols(analysis: Analysis) -> list[lsp.DocumentSymbol]:
    scope = analysis.scope
    if scope is None:
        return []
    spec, text = scope.spec, scope.spec.source
    out = []
    for d in sorted(spec.models + spec.blocks, key=lambda d: d.loc.line):
        children = [_symbol(s.name, "preset", lsp.SymbolKind.Constant, s, text)
                    for s in _statements(d.body) if isinstance(s, ast.Preset)]
        children += [_symbol(s.name, "table", lsp.SymbolKind.Struct, s, text)
                     for s in _statements(d.body) if isinstance(s, ast.Table)]
        children.sort(key=lambda c: (c.range.start.line, c.range.start.character))
        kind = lsp.SymbolKind.Class if d.is_model else lsp.SymbolKind.Function
        out.append(_symbol(d.name, block_signature(d, text), kind, d, text, children))
    return out


def _statements(body: list) -> list:
    out = []
    for s in body:
        out.append(s)
        for attr in ("body", "orelse"):
            inner = getattr(s, attr, None)
            if isinstance(inner, list):
                out += _statements(inner)
    return out


def _symbol(name: str, detail: str, kind: lsp.SymbolKind, node, text: str,
            children: list | None = None) -> lsp.DocumentSymbol:
    selection = loc_range(node.loc)
    whole = loc_range(node.span, text, whole=True) if node.span is not None else selection
    return lsp.DocumentSymbol(name=name, detail=detail, kind=kind, range=whole,
                              selection_range=selection, children=children or None)
