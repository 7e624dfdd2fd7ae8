"""Syntax highlighting of ``.mtl`` specs, made from the language's grammar.

``words`` reads the keywords, constants, operators and token patterns out of
``mtl_dsl/grammar/mtl.lark``; ``lexer`` is the Pygments lexer (registered as the ``mtl`` lexer:
``pygmentize -l mtl``, Sphinx and MkDocs code blocks); ``textmate`` writes the TextMate grammar
of ``editors/vscode/`` (``python -m mtl_dsl.highlight.textmate``). A keyword or operator added
to the grammar is coloured by both without a change here, and tests/test_highlight.py fails when
the committed TextMate grammar is not the one the grammar gives.
"""
