"""The pygls language server of ``.mtl`` specs (``mtl-dsl lsp``: JSON-RPC over stdio).

Every open or changed document is checked at once (``analysis.analyse``) and its diagnostics
published; the documents that import it are checked again too, since their meaning follows it.
Hover, completion, definition and symbols read the document's last analysis whose text parsed (a
half-typed line keeps the names of the last good one); formatting is ``mtl-dsl fmt``.
Settings: ``initializationOptions`` or ``workspace/didChangeConfiguration`` with
``{"mtl": {"tasks": "nyud", "input": "425x560"}}`` (docs/editor.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from .. import __version__
from ..errors import SpecError
from . import navigation
from .analysis import Analysis, Settings, analyse, to_lsp


MAX_TREES = 256  # syntax trees kept (each text of each file read since the last clearing)


class MtlServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("mtl-dsl", __version__,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.settings = Settings()
        self.analyses: dict[str, Analysis] = {}   # uri -> the last analysis
        self.parsed: dict[str, Analysis] = {}     # uri -> the last analysis whose text parsed
        self.trees: dict = {}                     # syntax trees kept between checks (Loader)

    # -- documents ---------------------------------------------------------------------------
    def open_texts(self) -> dict[str, str]:
        out = {}
        for uri, doc in self.workspace.text_documents.items():
            path = _path(uri)
            if path is not None:
                out[str(path.resolve())] = doc.source
        return out

    def check(self, uri: str) -> None:
        path = _path(uri)
        if path is None:
            return
        text = self.workspace.get_text_document(uri).source
        if len(self.trees) > MAX_TREES:
            self.trees.clear()
        result = analyse(path, text, self.open_texts(), self.settings, self.trees)
        self.analyses[uri] = result
        if not result.recovered:
            self.parsed[uri] = result
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=to_lsp(result)))

    def check_with_dependents(self, uri: str) -> None:
        self.check(uri)
        path = _path(uri)
        changed = str(path.resolve()) if path is not None else None
        for other, result in list(self.analyses.items()):
            if other != uri and other in self.workspace.text_documents and changed in result.files:
                self.check(other)

    def analysis(self, uri: str) -> Analysis | None:
        """What navigation reads: the last analysis whose text parsed, else the one of what
        parses of the text (``analysis.recover``)."""
        return self.parsed.get(uri) or self.analyses.get(uri)

    def at(self, uri: str, position: lsp.Position, ask):
        """``ask(analysis, text, position)`` for a request at ``position``; None before any
        analysis of the document."""
        found = self.analysis(uri)
        if found is None:
            return None
        return ask(found, self.workspace.get_text_document(uri).source, position)


def _path(uri: str) -> Path | None:
    fs = to_fs_path(uri)
    return Path(fs) if fs else None


server = MtlServer()


@server.feature(lsp.INITIALIZE)
def _initialize(ls: MtlServer, params: lsp.InitializeParams) -> None:
    ls.settings = Settings.from_json(params.initialization_options)


@server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
def _configuration(ls: MtlServer, params: lsp.DidChangeConfigurationParams) -> None:
    ls.settings = Settings.from_json(params.settings)
    for uri in list(ls.analyses):
        if uri in ls.workspace.text_documents:
            ls.check(uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def _did_open(ls: MtlServer, params: lsp.DidOpenTextDocumentParams) -> None:
    ls.check_with_dependents(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def _did_change(ls: MtlServer, params: lsp.DidChangeTextDocumentParams) -> None:
    ls.check_with_dependents(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def _did_save(ls: MtlServer, params: lsp.DidSaveTextDocumentParams) -> None:
    ls.check_with_dependents(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def _did_close(ls: MtlServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.analyses.pop(uri, None)
    ls.parsed.pop(uri, None)
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def _hover(ls: MtlServer, params: lsp.HoverParams) -> lsp.Hover | None:
    return ls.at(params.text_document.uri, params.position, navigation.hover)


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION,
                lsp.CompletionOptions(trigger_characters=[".", "(", ","]))
def _completion(ls: MtlServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    items = ls.at(params.text_document.uri, params.position, navigation.completion)
    return lsp.CompletionList(is_incomplete=False, items=items or [])


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def _definition(ls: MtlServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    return ls.at(params.text_document.uri, params.position, navigation.definition)


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def _symbols(ls: MtlServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
    found = ls.analysis(params.text_document.uri)
    return navigation.symbols(found) if found is not None else []


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def _formatting(ls: MtlServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit]:
    from ..fmt import format_source

    doc = ls.workspace.get_text_document(params.text_document.uri)
    try:
        formatted = format_source(doc.source, doc.path or "<spec>")
    except SpecError:
        return []  # the diagnostics already say why it does not parse
    if formatted == doc.source:
        return []
    lines = doc.source.split("\n")
    end = lsp.Position(line=len(lines) - 1, character=len(lines[-1]))
    return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end),
                         new_text=formatted)]


def main(argv: Any = None) -> int:
    server.start_io()
    return 0
