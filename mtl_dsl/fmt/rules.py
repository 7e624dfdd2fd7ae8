"""The canonical layout of a spec: one method per rule of the grammar (``grammar/mtl.lark``), named
as the parse tree names it (the rule, or its ``-> alias``), each turning its tree into a
``doc.Doc``. A grammar rule without a method here fails ``tests/test_fmt.py``.

The layout (docs/editor.md): two-space indentation; one statement per line; one blank line
between top-level items (imports keep theirs), at most one between statements; spaces around
``=`` (keyword arguments too), binary operators and ``<-``/``->``, none inside brackets; inside
a shape assertion ``*``, ``/``, ``//`` and ``%`` are written tight (``H/4``); a bracketed list
(arguments, parameters, list and dict literals, table entries) that does not fit on its line
continues under its first item, filling each line; long ``and``/``or``/``+``/``-`` chains break
before an operator, aligned under the chain's first operand; a table row is one line (a row of
the context table as the paper draws it), the rows aligned on ``<-``.
Only whitespace ever changes: the tokens and comments of the output are those of the input, in
the same order, and each comment stays on its line or on a line of its own, as it was.
"""
from __future__ import annotations

from lark import Token, Tree

from .doc import (Align, Blank, Comment, Doc, Fill, HardLine, Indent, Text, Trailing, concat,
                  join)
from .syntax import Note, SyntaxTree, leaves

SP = Text(" ")
_TIGHT_IN_SHAPE = {"*", "/", "//", "%"}
_CHAIN_OPS = {"+", "-"}  # binary operators a long expression breaks before


def _first(tree: Tree | Token) -> Token:
    return next(leaves(tree))


def _last(tree: Tree | Token) -> Token:
    return list(leaves(tree))[-1]


class Layout:
    """Builds the document of one parse tree (``SyntaxTree``) with its comments."""

    def __init__(self, syntax: SyntaxTree):
        self.syntax = syntax
        self.in_shape = 0
        self.key_width = 0  # the width of the widest row key of the table being laid out

    # tokens and dispatch --------------------------------------------------------------------
    def tok(self, token: Token, leading: bool = True) -> Doc:
        """A token with its comments (``leading=False``: the caller has laid out its own-line
        comments)."""
        info = self.syntax.of(token)
        parts: list[Doc] = []
        if leading:
            for note in info.leading:
                parts.append(Comment(note.text, note.blank))
            if info.blank and info.leading:
                parts.append(Blank())
        parts.append(Text(str(token)))
        if info.trailing:
            parts.append(Trailing(info.trailing))
        return concat(*parts)

    def notes(self, token: Token) -> Doc:
        """A token's own-line comments alone (laid out where the caller wants them)."""
        info = self.syntax.of(token)
        return concat(*(Comment(n.text, n.blank and i > 0) for i, n in enumerate(info.leading)))

    def doc(self, node: Tree | Token | None) -> Doc:
        if node is None:
            return None
        if isinstance(node, Token):
            return self.tok(node)
        method = getattr(self, str(node.data), None)
        if method is None:  # a rule without a layout: tests/test_fmt.py catches it
            raise NotImplementedError(f"mtl-dsl fmt has no layout for grammar rule '{node.data}'")
        return method(node)

    def docs(self, node: Tree) -> list[Doc]:
        return [self.doc(c) for c in node.children]

    def blank_above(self, node: Tree | Token) -> bool:
        return self.syntax.of(_first(node)).blank_above

    def head(self, node: Tree | Token) -> Doc:
        """A statement or item: laid out with its first comment's blank line left to the caller."""
        first = _first(node)
        info = self.syntax.of(first)
        saved = info.leading, info.blank
        if info.leading:
            info.leading = [Note(info.leading[0].text, False)] + info.leading[1:]
        else:
            info.blank = False
        try:
            return self.doc(node)
        finally:
            info.leading, info.blank = saved

    def spaced(self, node: Tree) -> Doc:
        """The node's parts separated by single spaces."""
        return join(SP, [d for d in self.docs(node) if d is not None])

    def tight(self, node: Tree) -> Doc:
        """The node's parts with nothing between them."""
        return concat(*self.docs(node))

    def listing(self, children: list) -> Doc:
        """Comma-separated items, filling lines, continuing under the first item."""
        items: list[list[Doc]] = []
        for c in children:
            if c is None:
                continue
            if isinstance(c, Token) and c.type == "COMMA" and items:
                items[-1].append(self.tok(c))
            else:
                items.append([self.doc(c)])
        return Align(Fill(tuple(concat(*i) for i in items)))

    def bracketed(self, node: Tree) -> Doc:
        """``open items close`` (a list, a dict, parameters, arguments)."""
        children = [c for c in node.children if c is not None]
        inner = children[1:-1]
        if len(inner) == 1 and isinstance(inner[0], Tree) and inner[0].data in ("arg_list",
                                                                                "param_list"):
            inner = inner[0].children
        return concat(self.tok(children[0]), self.listing(inner), self.tok(children[-1]))

    # file and definitions -------------------------------------------------------------------
    def start(self, node: Tree) -> Doc:
        parts: list[Doc] = []
        previous = None
        for item in node.children:
            if previous is not None:
                both_imports = previous.data == item.data == "import_stmt"
                parts.append(HardLine(blank=self.blank_above(item) or not both_imports))
            parts.append(self.head(item))
            previous = item
        for i, note in enumerate(self.syntax.end):
            parts.append(Comment(note.text, note.blank and bool(parts)))
        return concat(*parts)

    def import_stmt(self, node: Tree) -> Doc:
        return self.spaced(node)

    def block_def(self, node: Tree) -> Doc:
        keyword, name, lpar, params, rpar, body = node.children
        return concat(self.tok(keyword), SP, self.tok(name), self.tok(lpar),
                      self.listing(params.children) if params is not None else None,
                      self.tok(rpar), SP, self.doc(body))

    model_def = block_def

    def param_list(self, node: Tree) -> Doc:  # laid out by its definition (block_def)
        return self.listing(node.children)

    def param(self, node: Tree) -> Doc:
        name, colon, type_name, equal, default = node.children
        return concat(self.tok(name), self.tok(colon) if colon is not None else None,
                      concat(SP, self.tok(type_name)) if type_name is not None else None,
                      concat(SP, self.tok(equal), SP, self.doc(default)) if equal is not None
                      else None)

    def body(self, node: Tree) -> Doc:
        lbrace, *stmts, rbrace = node.children
        return self._block(lbrace, stmts, rbrace)

    def _block(self, lbrace: Token, stmts: list, rbrace: Token) -> Doc:
        inner: list[Doc] = []
        for i, stmt in enumerate(stmts):
            inner.append(HardLine(blank=i > 0 and self.blank_above(stmt)))
            inner.append(self.head(stmt))
        closing = self.syntax.of(rbrace)
        if closing.leading:
            inner.append(HardLine(blank=bool(stmts) and closing.leading[0].blank))
            inner.append(self.notes(rbrace))
        if not inner:
            return concat(self.tok(lbrace), self.tok(rbrace))
        return concat(self.tok(lbrace), Indent(concat(*inner)), HardLine(),
                      self.tok(rbrace, leading=False))

    # statements -----------------------------------------------------------------------------
    def assign(self, node: Tree) -> Doc:
        parts: list[Doc] = []
        for c in node.children:
            if c is None:
                continue
            if isinstance(c, Token) and c.type == "COMMA":
                parts.append(self.tok(c))
            elif isinstance(c, Token) and c.type in ("EQUAL", "DOUBLECOLON"):
                parts += [SP, self.tok(c), SP]
            else:
                if parts and not isinstance(parts[-1], Text):
                    parts.append(SP)  # after a target's comma
                parts.append(self.doc(c))
        return concat(*parts)

    def target(self, node: Tree) -> Doc:
        return self.tight(node)

    def index(self, node: Tree) -> Doc:
        return self.tight(node)

    def shape(self, node: Tree) -> Doc:
        self.in_shape += 1
        try:
            return self.bracketed(node)
        finally:
            self.in_shape -= 1

    def for_stmt(self, node: Tree) -> Doc:
        return self.spaced(node)

    def if_stmt(self, node: Tree) -> Doc:
        return self.spaced(node)

    def return_stmt(self, node: Tree) -> Doc:
        keyword, *values = node.children
        return concat(self.tok(keyword), SP, self.listing(values))

    def preset_stmt(self, node: Tree) -> Doc:
        keyword, name, lpar, *rest = [c for c in node.children if c is not None]
        return concat(self.tok(keyword), SP, self.tok(name), self.tok(lpar),
                      self.listing(rest[:-1]), self.tok(rest[-1]))

    def profile_stmt(self, node: Tree) -> Doc:
        """``profile nyud`` or ``profile "semseg:13,depth"(input = [480, 640])``."""
        keyword, name, *rest = [c for c in node.children if c is not None]
        options = concat(self.tok(rest[0]), self.listing(rest[1:-1]), self.tok(rest[-1])) \
            if rest else None
        return concat(self.tok(keyword), SP, self.tok(name), options)

    def kwarg(self, node: Tree) -> Doc:
        return self.spaced(node)

    def table_stmt(self, node: Tree) -> Doc:
        keyword, name, lbrace, *rows, rbrace = node.children
        saved = self.key_width
        self.key_width = max((len(str(_first(r))) for r in rows), default=0)
        try:
            return concat(self.tok(keyword), SP, self.tok(name), SP,
                          self._block(lbrace, rows, rbrace))
        finally:
            self.key_width = saved

    def table_row(self, node: Tree) -> Doc:
        key, arrow, *entries = node.children
        pad = Text(" " * (self.key_width - len(str(_first(key))) + 1))
        entries = [e for e in entries if e is not None]
        cells = [concat(self.doc(e), self.tok(c) if c is not None else None)
                 for e, c in zip(entries[::2], entries[1::2] + [None])]
        return concat(self.doc(key), pad, self.tok(arrow), SP, join(SP, cells))

    def table_entry(self, node: Tree) -> Doc:
        key, colon, value = node.children
        return concat(self.doc(key), self.tok(colon), SP, self.doc(value))

    def table_key(self, node: Tree) -> Doc:
        return self.tight(node)

    table_value = table_key

    def weights_stmt(self, node: Tree) -> Doc:
        return self.spaced(node)

    def weights_body(self, node: Tree) -> Doc:
        lbrace, *items, rbrace = node.children
        return self._block(lbrace, items, rbrace)

    def weights_entry(self, node: Tree) -> Doc:
        return self.spaced(node)

    def weights_unused(self, node: Tree) -> Doc:
        word, prefix, colon, reason = node.children
        return concat(self.tok(word), SP, self.tok(prefix), self.tok(colon), SP, self.tok(reason))

    weights_for = for_stmt
    weights_if = if_stmt

    # expressions ----------------------------------------------------------------------------
    def _chain(self, node: Tree, ops: set[str] | None) -> Doc:
        """``a op b op c``: breaks before an operator when it is long, under ``a``."""
        operands: list = []
        operators: list = []

        def flatten(n: Tree | Token) -> None:
            if isinstance(n, Tree) and n.data == node.data and (
                    ops is None or str(n.children[1]) in ops):
                flatten(n.children[0])
                operators.append(n.children[1])
                operands.append(n.children[2])
            else:
                operands.append(n)

        flatten(node.children[0])
        operators.append(node.children[1])
        operands.append(node.children[2])
        items = [self.doc(operands[0])] + [concat(self.tok(op), SP, self.doc(x))
                                           for op, x in zip(operators, operands[1:])]
        return Align(Fill(tuple(items)))

    def or_op(self, node: Tree) -> Doc:
        return self._chain(node, None)

    and_op = or_op
    # Token by token with single spaces; `a if c else b` stays on one line (an `if` that began a
    # line would start a statement).
    not_op = compare = comp_op = comp_for = ifexp = spaced
    neg = getitem = tight

    def binop(self, node: Tree) -> Doc:
        left, op, right = node.children
        if self.in_shape and str(op) in _TIGHT_IN_SHAPE:
            return self.tight(node)
        if str(op) in _CHAIN_OPS and not self.in_shape:
            return self._chain(node, _CHAIN_OPS)
        return self.spaced(node)

    def call(self, node: Tree) -> Doc:
        return concat(self.doc(node.children[0]), self.bracketed(Tree("args", node.children[1:])))

    def call_gen(self, node: Tree) -> Doc:
        """``f(x for s in xs if c)``: the generator may continue under its expression."""
        callee, lpar, value, comp, rpar = node.children
        return concat(self.doc(callee), self.tok(lpar),
                      Align(Fill((self.doc(value), self.doc(comp)))), self.tok(rpar))

    def getattr(self, node: Tree) -> Doc:
        value, dot, name = node.children
        gap = SP if _last(value).type == "NUMBER" else None  # `1 .x`: `1.x` would read `1.` `x`
        return concat(self.doc(value), gap, self.tok(dot), self.tok(name))

    def arg_list(self, node: Tree) -> Doc:  # laid out by its call
        return self.listing(node.children)

    def number(self, node: Tree) -> Doc:
        return self.tight(node)

    string = true = false = none = name = number

    def list(self, node: Tree) -> Doc:
        return self.bracketed(node)

    dict = list

    def paren(self, node: Tree) -> Doc:
        return self.tight(node)

    def dict_item(self, node: Tree) -> Doc:
        key, colon, value = node.children
        return concat(self.tok(key), self.tok(colon), SP, self.doc(value))
