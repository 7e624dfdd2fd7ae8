"""``mtl-dsl lsp``: the language server of ``.mtl`` specs (pygls, over stdio).

``analysis`` checks a document with the same function as ``mtl-dsl check`` (``api.check_spec``,
the editor's unsaved texts read in place of their files) and turns its diagnostics into the
protocol's; ``navigation`` answers hover, completion, go-to-definition and document symbols
from the files as the loader reads them; ``server`` is the pygls server. Nothing here imports
torch (the front-end, the block declarations and the checker never do; tests/test_lsp.py
checks the running server).
"""
