"""Spec files and imports: find a file, read and parse it once, resolve its imports, and collect
the blocks each file can call.

An import is resolved relative to the importing file, then in the built-in ``specs/`` folders;
it must name a ``.mtl`` file, and a link must lead to one (a ``x.mtl`` link to any other file is
refused; size and text are checked on what is read, the link's target). ``import "x.mtl"`` makes the blocks of ``x.mtl`` callable by name,
``import "x.mtl" as x`` as ``x.name``. A file imported twice is read once; a cycle of imports is
an error naming the chain.

``sources`` gives the text of files that differ from the disk (the unsaved documents of an
editor: ``mtl-dsl lsp``), by resolved path; they are read as the disk's files are. ``parsed``
keeps the syntax tree of each text read (by path, name and text) for the next compilation: an
editor checks the same files again at each keystroke, and parsing is most of that time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

from ..blocks import REGISTRY
from ..errors import Diagnostics, SpecError
from . import ast
from .parser import decode_source, parse_into, read_spec
from .values import FileScope, UserBlock

BUILTIN_SPECS = Path(__file__).resolve().parent.parent.parent / "specs"
PACKAGED_SPECS = Path(__file__).resolve().parent.parent / "specs"


def builtin_spec_dirs() -> list[Path]:
    """The folders of the built-in specs (the repository's, or the installed package's)."""
    return [p for p in (BUILTIN_SPECS, PACKAGED_SPECS) if p.is_dir()]


def iter_builtin_specs() -> Iterator[Path]:
    seen = set()
    for d in builtin_spec_dirs():
        for p in sorted(d.glob("*.mtl")):
            if p.name not in seen:
                seen.add(p.name)
                yield p


def display_path(path: Path) -> str:
    """How a file is named in messages: relative to the current folder when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Loader:
    """Reads the files of one compilation into ``FileScope``s, reporting into ``sink``."""

    def __init__(self, sink: Diagnostics, search_paths: list[Path] | None = None,
                 sources: Mapping[str, str] | None = None,
                 parsed: dict[tuple[str, str, str | bytes], ast.SpecFile] | None = None):
        self.sink = sink
        self.search_paths = search_paths if search_paths is not None else builtin_spec_dirs()
        self.sources = sources or {}  # resolved path -> text, in place of the file's
        self.parsed = parsed  # (resolved path, name, text or bytes) -> its syntax tree
        self.files: dict[str, FileScope] = {}  # resolved path -> its scope
        self.loading: list[str] = []

    def load(self, path: Path, display: str) -> FileScope | None:
        """The file's scope, or None when it cannot be read or parsed (the error is reported)."""
        key = str(path.resolve())
        if key in self.files:
            return self.files[key]
        spec = self._read(key, path, display)
        if spec is None:
            return None
        scope = FileScope(spec)
        self.loading.append(key)
        for imp in spec.imports:
            self._import(scope, imp, path.parent)
        self._declare_blocks(scope)
        self._check_models(spec)
        self.loading.pop()
        self.files[key] = scope
        return scope

    def _read(self, key: str, path: Path, display: str) -> ast.SpecFile | None:
        if key not in self.sources and self.parsed is None:
            return read_spec(self.sink, path, display)
        raw: str | bytes
        if key in self.sources:
            raw = self.sources[key]
        else:
            try:
                raw = path.read_bytes()
            except OSError:
                return read_spec(self.sink, path, display)  # reports why it cannot be read
        cached = self.parsed.get((key, display, raw)) if self.parsed is not None else None
        if cached is not None:  # read before: its checks passed then
            self.sink.add_source(display, cached.source)
            return cached
        try:
            text = decode_source(raw.encode("utf-8") if isinstance(raw, str) else raw, display)
        except SpecError as e:
            self.sink.add(e.diagnostics)
            return None
        spec = parse_into(self.sink, text, display)
        if spec is not None and self.parsed is not None:
            self.parsed[(key, display, raw)] = spec
        return spec

    def imported_files(self, top: Path) -> list[str]:
        """Every file read besides ``top`` (resolved paths, sorted)."""
        return sorted(k for k in self.files if k != str(top.resolve()))

    def _declare_blocks(self, scope: FileScope) -> None:
        for b in scope.spec.blocks:
            if b.name in REGISTRY:
                self.sink.error(b.loc, f"block '{b.name}' is already a built-in block",
                                "choose another name for your block")
            elif b.name in scope.blocks and scope.blocks[b.name].definition is not b:
                prev = scope.blocks[b.name].definition.loc
                self.sink.error(b.loc, f"duplicate block name '{b.name}'",
                                notes=(f"first defined at {prev.file}:{prev.line}",))
            else:
                scope.blocks[b.name] = UserBlock(b, scope)

    def _check_models(self, spec: ast.SpecFile) -> None:
        seen_models: dict[str, ast.BlockDef] = {}
        for m in spec.models:
            if m.name in seen_models:
                self.sink.error(m.loc, f"duplicate model name '{m.name}'",
                                notes=(f"first defined at line {seen_models[m.name].loc.line}",))
            seen_models[m.name] = m

    def _find(self, imp: ast.Import, base: Path) -> Path | None:
        if not imp.path.endswith(".mtl"):
            self.sink.error(imp.loc, f"cannot import '{imp.path}': imports must name a .mtl spec "
                                     f"file")
            return None
        candidates = [base / imp.path] + [d / imp.path for d in self.search_paths]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            self.sink.error(imp.loc, f"import not found: '{imp.path}'",
                            f"looked in {base} and the built-in specs folder")
            return None
        key = str(found.resolve())
        if not key.endswith(".mtl"):  # a link: the file it leads to must be a spec file too
            self.sink.error(imp.loc, f"cannot import '{imp.path}': it is a link to {key}, which "
                                     f"is not a .mtl spec file")
            return None
        if key in self.loading:
            chain = " -> ".join(Path(k).name for k in self.loading[self.loading.index(key):])
            self.sink.error(imp.loc, f"circular import of '{imp.path}' ({chain} -> {found.name})")
            return None
        return found

    def _import(self, scope: FileScope, imp: ast.Import, base: Path) -> None:
        found = self._find(imp, base)
        if found is None:
            return
        display = str(found) if not found.is_absolute() else display_path(found)
        imported = self.load(found, display)
        if imported is None:
            return
        if imp.alias:
            if imp.alias in scope.aliases:
                self.sink.error(imp.loc, f"duplicate import alias '{imp.alias}'")
            scope.aliases[imp.alias] = imported
            return
        for name, ub in imported.exports().items():
            existing = scope.blocks.get(name)
            if existing is not None and existing.definition is not ub.definition:
                self.sink.error(imp.loc, f"block '{name}' imported from '{imp.path}' conflicts "
                                         f"with another block of that name",
                                notes=(f"the other is defined at {existing.definition.loc.file}:"
                                       f"{existing.definition.loc.line}",),
                                hint=f"import it with an alias: import \"{imp.path}\" as name")
                continue
            scope.blocks[name] = ub
