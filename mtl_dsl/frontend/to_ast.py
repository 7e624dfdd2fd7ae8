"""Lark's reductions -> the syntax tree (``ast``), each node with its location.

Lark calls these methods while it parses (the transformer is built into the parser), so a rule's
children arrive already converted. Punctuation tokens are dropped by name.
"""
from __future__ import annotations

from lark import Token, Transformer

from . import ast


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(text: str) -> int | float:
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


class ToAst(Transformer):
    """Lark's reductions -> ast dataclasses, each with its location. Punctuation tokens are dropped
    by name. A location's line/column/length is what an error underlines (the first token, or the
    construct on one line); its start/end offsets are the whole construct."""

    _PUNCT = {"LPAR", "RPAR", "LSQB", "RSQB", "LBRACE", "RBRACE", "COMMA", "COLON", "DOUBLECOLON",
              "EQUAL", "DOT", "ARROW", "IMPORT", "AS", "BLOCK", "MODEL", "FOR", "IN", "IF", "STMT_IF",
              "ELSE", "RETURN", "PRESET", "PROFILE", "TABLE", "MAPSTO"}

    path = "<spec>"

    # locations
    def _loc(self, tok: Token) -> ast.Loc:
        return ast.Loc(self.path, tok.line or 1, tok.column or 1, len(str(tok)),
                       tok.start_pos if tok.start_pos is not None else -1,
                       tok.end_pos if tok.end_pos is not None else -1)

    def _keep(self, children: list) -> list:
        return [c for c in children
                if not (isinstance(c, Token) and c.type in self._PUNCT) and c is not None]

    def _loc_of(self, x: object) -> ast.Loc:
        if isinstance(x, Token):
            return self._loc(x)
        if isinstance(x, ast.Loc):
            return x
        return getattr(x, "loc")

    def _span(self, first: object, last: object) -> ast.Loc:
        """From the start of ``first`` to the end of ``last``; underlined on one line only."""
        a = self._loc_of(first)
        b = self._loc_of(last)
        length = max(1, b.column + b.length - a.column) if a.line == b.line else a.length
        return ast.Loc(a.file, a.line, a.column, length, a.start, b.end)

    def _extend(self, loc: ast.Loc, last: object) -> ast.Loc:
        """``loc`` as it is underlined, with its end offset moved to the end of ``last``."""
        return ast.Loc(loc.file, loc.line, loc.column, loc.length, loc.start,
                       self._loc_of(last).end)

    # definitions
    def start(self, children):
        return children

    def import_stmt(self, children):
        kw, path_tok, _as, alias = children
        return ast.Import(_unescape(str(path_tok)), str(alias) if alias is not None else None,
                          self._loc(path_tok), span=self._span(kw, alias or path_tok))

    def _definition(self, children, is_model: bool):
        kw, name, _lp, params, _rp, (body, rbrace) = children
        return ast.BlockDef(str(name), params or [], body, self._loc(name), is_model,
                            span=self._span(kw, rbrace))

    def block_def(self, children):
        return self._definition(children, False)

    def model_def(self, children):
        return self._definition(children, True)

    def param_list(self, children):
        return [c for c in children if isinstance(c, ast.ParamDef)]

    def param(self, children):
        name, _colon, type_name, _eq, default = children
        loc = self._loc(name)
        if default is not None:
            loc = self._extend(loc, default)
        elif type_name is not None:
            loc = self._extend(loc, type_name)
        return ast.ParamDef(str(name), str(type_name) if type_name is not None else None, default,
                            loc)

    def body(self, children):
        return self._keep(children), children[-1]

    # statements
    def assign(self, children):
        kept = [c for c in children if c is not None]
        targets = [c for c in kept if isinstance(c, ast.Target)]
        shape = None
        shape_loc = None
        if kept and isinstance(kept[-1], tuple) and kept[-1][0] == "shape":
            shape, shape_loc = kept[-1][1], kept[-1][2]
            kept = kept[:-1]
        value = [c for c in kept if not isinstance(c, (ast.Target, Token))][-1]
        span = self._span(targets[0], shape_loc if shape_loc is not None else value)
        return ast.Assign(targets, value, shape, targets[0].loc, shape_loc, span=span)

    def target(self, children):
        name, *rest = children
        indices = [c for c in rest if not isinstance(c, Token) and c is not None]
        attr_tokens = [c for c in rest if isinstance(c, Token) and c.type == "NAME"]
        attr = str(attr_tokens[0]) if attr_tokens else None
        last = attr_tokens[0] if attr_tokens else (indices[-1][1] if indices else name)
        return ast.Target(str(name), [i for i, _ in indices], attr,
                          self._extend(self._loc(name), last))

    def index(self, children):
        return self._keep(children)[0], children[-1]  # the expression, the closing ']'

    def shape(self, children):
        lsqb = children[0]
        dims = [c for c in self._keep(children)]
        return ("shape", dims, self._extend(self._loc(lsqb), children[-1]))

    def for_stmt(self, children):
        kw, var, _in, iterable, _if, cond, (body, rbrace) = children
        return ast.For(str(var), iterable, cond, body, self._loc(kw), span=self._span(kw, rbrace))

    def if_stmt(self, children):
        kw, cond, (body, rbrace), _else, orelse = children
        last: object = rbrace
        if orelse is None:
            orelse = []
        elif isinstance(orelse, ast.If):
            last = orelse.span or orelse.loc
            orelse = [orelse]
        else:
            orelse, last = orelse
        return ast.If(cond, body, orelse, self._loc(kw), span=self._span(kw, last))

    def return_stmt(self, children):
        kw = children[0]
        values = self._keep(children)
        return ast.Return(values, self._loc(kw), span=self._span(kw, values[-1]))

    def preset_stmt(self, children):
        kw, name, *rest = children
        values = [c for c in rest if isinstance(c, ast.Arg)]
        return ast.Preset(str(name), values, self._loc(name), span=self._span(kw, rest[-1]))

    def profile_stmt(self, children):
        kw, name, *rest = children
        values = [c for c in rest if isinstance(c, ast.Arg)]
        text = _unescape(str(name)) if name.type == "STRING" else str(name)
        last = next((c for c in reversed(rest) if c is not None), name)
        return ast.Profile(text, values, self._loc(name), span=self._span(kw, last))

    def kwarg(self, children):
        name, _eq, value = children
        return ast.Arg(str(name), value, self._extend(self._loc(name), value))

    def table_stmt(self, children):
        kw, name, *rest = children
        entries = []
        for row in rest:
            if isinstance(row, list):
                entries.extend(row)
        return ast.Table(str(name), entries, self._loc(name), span=self._span(kw, rest[-1]))

    def table_row(self, children):
        target, target_loc = children[0]
        out = []
        for entry in children[1:]:
            if isinstance(entry, tuple):
                (source, source_loc), value, loc = entry
                out.append(ast.TableEntry(target, source, value, loc, target_loc, source_loc))
        return out

    def table_entry(self, children):
        key, _colon, (value, loc) = children
        return (key, value, loc)

    def table_key(self, children):
        tok = children[0]
        return (_unescape(str(tok)) if tok.type == "STRING" else str(tok)), self._loc(tok)

    def table_value(self, children):
        tok = children[0]
        loc = self._loc(tok)
        if tok.type == "STRING":
            return (_unescape(str(tok)), loc)
        if tok.type == "NUMBER":
            return (_number(str(tok)), loc)
        if tok.type == "TRUE":
            return (True, loc)
        if tok.type == "FALSE":
            return (False, loc)
        return (str(tok), loc)

    def weights_stmt(self, children):
        kw, name, (items, rbrace) = children
        return ast.Weights(str(name), items, self._loc(name), span=self._span(kw, rbrace),
                           keyword=str(kw))

    def weights_body(self, children):
        return self._keep(children), children[-1]

    def weights_entry(self, children):
        official, _arrow, target = children
        return ast.WeightsEntry(_unescape(str(official)), _unescape(str(target)), "",
                                self._loc(official), self._loc(target),
                                span=self._span(official, target))

    def weights_unused(self, children):
        kw, official, _colon, reason = children
        return ast.WeightsEntry(_unescape(str(official)), None, _unescape(str(reason)),
                                self._loc(official), self._loc(reason), keyword=str(kw),
                                span=self._span(kw, reason))

    def weights_for(self, children):
        kw, var, _in, iterable, _if, cond, (body, _rbrace) = children
        return ast.WeightsFor(str(var), iterable, cond, body, self._loc(kw))

    def weights_if(self, children):
        kw, cond, (body, _rbrace), _else, orelse = children
        if orelse is None:
            orelse = []
        elif isinstance(orelse, ast.WeightsIf):
            orelse = [orelse]
        else:
            orelse = orelse[0]
        return ast.WeightsIf(cond, body, orelse, self._loc(kw))

    # expressions
    def number(self, children):
        tok = children[0]
        return ast.Const(_number(str(tok)), self._loc(tok))

    def string(self, children):
        tok = children[0]
        return ast.Const(_unescape(str(tok)), self._loc(tok))

    def true(self, children):
        return ast.Const(True, self._loc(children[0]))

    def false(self, children):
        return ast.Const(False, self._loc(children[0]))

    def none(self, children):
        return ast.Const(None, self._loc(children[0]))

    def paren(self, children):
        """``(expr)`` is ``expr``, located with its parentheses."""
        lpar, inner, rpar = children
        inner.loc = self._span(lpar, rpar)
        return inner

    def name(self, children):
        tok = children[0]
        return ast.Name(str(tok), self._loc(tok))

    def list(self, children):
        lsqb = children[0]
        return ast.ListExpr(self._keep(children), self._extend(self._loc(lsqb), children[-1]))

    def dict(self, children):
        lbrace = children[0]
        return ast.DictExpr([c for c in self._keep(children)],
                            self._extend(self._loc(lbrace), children[-1]))

    def dict_item(self, children):
        key, _colon, value = children
        k = _unescape(str(key)) if key.type == "STRING" else str(key)
        return (k, value)

    def or_op(self, children):
        left, _op, right = children
        return ast.BoolOp("or", left, right, self._span(left, right))

    def and_op(self, children):
        left, _op, right = children
        return ast.BoolOp("and", left, right, self._span(left, right))

    def not_op(self, children):
        kw, operand = children
        return ast.UnaryOp("not", operand, self._span(kw, operand))

    def compare(self, children):
        left, op, right = children
        return ast.Compare(op, left, right, self._span(left, right))

    def comp_op(self, children):
        return " ".join(str(c) for c in children)

    def binop(self, children):
        left, op, right = children
        return ast.BinOp(str(op), left, right, self._span(left, right), self._loc(op))

    def neg(self, children):
        minus, operand = children
        return ast.UnaryOp("-", operand, self._span(minus, operand))

    def call(self, children):
        callee, _lp, args, rp = children
        return ast.CallExpr(callee, args or [], self._span(callee, rp))

    def call_gen(self, children):
        """``f(element for v in xs if c)``: a call whose one argument is a generator."""
        callee, _lp, element, comp, rp = children
        kw, var, iterable, cond = comp
        gen = ast.Generator(element, str(var), iterable, cond, self._span(element, cond or iterable),
                            self._loc(var))
        return ast.CallExpr(callee, [ast.Arg(None, gen, gen.loc)], self._span(callee, rp))

    def comp_for(self, children):
        kw, var, _in, iterable, _if, cond = children
        return kw, var, iterable, cond

    def ifexp(self, children):
        body, _if, cond, _else, orelse = children
        return ast.IfExp(cond, body, orelse, self._span(body, orelse))

    def arg_list(self, children):
        out = []
        for c in self._keep(children):
            out.append(c if isinstance(c, ast.Arg) else ast.Arg(None, c, c.loc))
        return out

    def getitem(self, children):
        obj, _l, index, rb = children
        return ast.GetItem(obj, index, self._span(obj, rb))

    def getattr(self, children):
        obj, _dot, name = children
        return ast.GetAttr(obj, str(name), self._span(obj, name))
