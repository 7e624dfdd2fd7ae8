"""A language-server session for the tests: ``mtl-dsl lsp`` started as its own process and
driven over stdio by pygls's client (the protocol an editor speaks).

The server runs under ``python -X importtime`` with its standard error in a file, so a test can
read every module it imported.
"""
from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

TIMEOUT = 60.0  # seconds for one answer (a loaded 2-core machine), far above what one takes


class Session:
    def __init__(self, log: Path, options: Any = None):
        self.log = log
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.client = LanguageClient("mtl-dsl-tests", "1")
        self.published: dict[str, list[list[lsp.Diagnostic]]] = {}
        self.versions: dict[str, int] = {}

        @self.client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def _publish(params: lsp.PublishDiagnosticsParams) -> None:
            self.published.setdefault(params.uri, []).append(list(params.diagnostics))

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))

    def start(self) -> lsp.InitializeResult:
        command = (f"exec {shlex.quote(sys.executable)} -X importtime -m mtl_dsl.cli lsp "
                   f"2> {shlex.quote(str(self.log))}")
        self.run(self.client.start_io("sh", "-c", command))
        result = self.run(self.client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(), initialization_options=self.options)))
        self.client.initialized(lsp.InitializedParams())
        return result

    def stop(self) -> None:
        self.run(self.client.shutdown_async(None))
        self.client.exit(None)
        self.run(self.client.stop())
        self.loop.close()

    # -- documents -----------------------------------------------------------------------------
    async def _next_diagnostics(self, uri: str, seen: int) -> list[lsp.Diagnostic]:
        while len(self.published.get(uri, [])) <= seen:
            await asyncio.sleep(0.005)
        return self.published[uri][seen]

    def open(self, path: Path, text: str | None = None) -> list[lsp.Diagnostic]:
        """Open a document; its published diagnostics."""
        uri = path.resolve().as_uri()
        seen = len(self.published.get(uri, []))
        self.versions[uri] = 1
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="mtl", version=1,
                                               text=path.read_text() if text is None else text)))
        return self.run(self._next_diagnostics(uri, seen))

    def change(self, path: Path, text: str) -> list[lsp.Diagnostic]:
        """Replace a document's text; its published diagnostics."""
        uri = path.resolve().as_uri()
        seen = len(self.published.get(uri, []))
        self.versions[uri] += 1
        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri,
                                                              version=self.versions[uri]),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
        return self.run(self._next_diagnostics(uri, seen))

    def configure(self, settings: Any, uri_to_wait: str) -> list[lsp.Diagnostic]:
        seen = len(self.published.get(uri_to_wait, []))
        self.client.workspace_did_change_configuration(
            lsp.DidChangeConfigurationParams(settings=settings))
        return self.run(self._next_diagnostics(uri_to_wait, seen))

    def close(self, path: Path) -> None:
        self.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
            text_document=lsp.TextDocumentIdentifier(uri=path.resolve().as_uri())))

    # -- requests ------------------------------------------------------------------------------
    def _doc(self, path: Path) -> lsp.TextDocumentIdentifier:
        return lsp.TextDocumentIdentifier(uri=path.resolve().as_uri())

    def hover(self, path: Path, line: int, character: int) -> lsp.Hover | None:
        return self.run(self.client.text_document_hover_async(lsp.HoverParams(
            text_document=self._doc(path), position=lsp.Position(line=line, character=character))))

    def completion(self, path: Path, line: int, character: int) -> list[lsp.CompletionItem]:
        result = self.run(self.client.text_document_completion_async(lsp.CompletionParams(
            text_document=self._doc(path), position=lsp.Position(line=line, character=character))))
        return result.items if isinstance(result, lsp.CompletionList) else list(result or [])

    def definition(self, path: Path, line: int, character: int):
        return self.run(self.client.text_document_definition_async(lsp.DefinitionParams(
            text_document=self._doc(path), position=lsp.Position(line=line, character=character))))

    def symbols(self, path: Path):
        return self.run(self.client.text_document_document_symbol_async(
            lsp.DocumentSymbolParams(text_document=self._doc(path))))

    def formatting(self, path: Path) -> list[lsp.TextEdit]:
        return self.run(self.client.text_document_formatting_async(lsp.DocumentFormattingParams(
            text_document=self._doc(path),
            options=lsp.FormattingOptions(tab_size=2, insert_spaces=True)))) or []
