"""The language server's latency: from ``textDocument/didChange`` to ``publishDiagnostics``, per
shipped spec.

``mtl-dsl lsp`` is started as its own process and driven over stdio by pygls's client, as an
editor drives it. Each spec is opened, then changed ``--edits`` times (a comment line added at
its end, so each text differs and is checked in full: parser, lowering, shape checker); the
time from sending the change to receiving its diagnostics is measured on the client. Target:
under 100 ms for every reference spec on the development machine (2 CPU cores). Run:
``.venv/bin/python benchmarks/lsp_latency.py [--tasks nyud] [--edits 10]``.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

from mtl_dsl.frontend import iter_builtin_specs

TARGET_MS = 100.0


async def measure(tasks: str, edits: int) -> list[tuple[str, int, float, float, float]]:
    client = LanguageClient("lsp-latency", "1")
    arrived: dict[str, asyncio.Queue] = {}

    @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def _publish(params: lsp.PublishDiagnosticsParams) -> None:
        arrived.setdefault(params.uri, asyncio.Queue()).put_nowait(
            (time.perf_counter(), len(params.diagnostics)))

    await client.start_io(sys.executable, "-m", "mtl_dsl.cli", "lsp")
    await client.initialize_async(lsp.InitializeParams(
        capabilities=lsp.ClientCapabilities(), initialization_options={"mtl": {"tasks": tasks}}))
    client.initialized(lsp.InitializedParams())
    rows = []
    for path in iter_builtin_specs():
        uri = path.resolve().as_uri()
        queue = arrived.setdefault(uri, asyncio.Queue())
        text = path.read_text()
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="mtl", version=0, text=text)))
        await queue.get()
        times, errors = [], 0
        for i in range(1, edits + 1):
            text += f"# edit {i}\n"
            sent = time.perf_counter()
            client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=i),
                content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
            received, errors = await queue.get()
            times.append((received - sent) * 1000)
        # close it, so later specs are not re-checked as its dependents
        client.text_document_did_close(lsp.DidCloseTextDocumentParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri)))
        await queue.get()
        rows.append((path.name, errors, statistics.median(times), max(times), min(times)))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="nyud", help="the task profile specs are checked with")
    parser.add_argument("--edits", type=int, default=10, help="changes per spec")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.tasks, args.edits))
    print(f"didChange -> publishDiagnostics, tasks {args.tasks}, {args.edits} edits per spec (ms)")
    print(f"{'spec':<26} {'errors':>6} {'median':>8} {'max':>8} {'min':>8}")
    for name, errors, median, worst, best in rows:
        flag = "" if median < TARGET_MS else f"  (over {TARGET_MS:.0f} ms)"
        print(f"{name:<26} {errors:>6} {median:>8.1f} {worst:>8.1f} {best:>8.1f}{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
