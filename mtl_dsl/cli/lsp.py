"""``mtl-dsl lsp``: the language server of .mtl specs over stdio (``mtl_dsl.lsp``)."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_lsp(args: argparse.Namespace) -> int:
    from ..lsp.server import main

    return main()


def register(sub: Any) -> None:
    p = sub.add_parser("lsp", help="the language server of .mtl specs (for editors; stdio)",
                       description="Serve the Language Server Protocol over standard input and "
                                   "output: diagnostics as you type, hover, completion, "
                                   "go-to-definition, document symbols and formatting. Settings "
                                   "(initializationOptions or workspace/didChangeConfiguration): "
                                   '{"mtl": {"tasks": "nyud", "input": "425x560"}}.')
    p.set_defaults(func=cmd_lsp)
