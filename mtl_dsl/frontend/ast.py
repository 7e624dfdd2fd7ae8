"""The syntax tree of a spec file: what the parser builds and the lowering walks.

Every node carries its source location so that any later error can point at the text the user
wrote: file, line, column and length (on the first line) for messages, and the character offsets
``start``/``end`` of the whole construct in the source text, so that tools (a formatter, a language
server, the search's rewrite of table entries) can edit the text by position. Statements and
definitions also carry their ``span``: from their first token to their last (a closing brace).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    column: int
    length: int = 1
    start: int = -1  # character offsets in the source text, end exclusive; -1: not from a file
    end: int = -1


# -- expressions ----------------------------------------------------------------------------------

@dataclass
class Const:
    value: Any
    loc: Loc


@dataclass
class Name:
    name: str
    loc: Loc


@dataclass
class ListExpr:
    items: list["Expr"]
    loc: Loc


@dataclass
class DictExpr:
    items: list[tuple[str, "Expr"]]
    loc: Loc


@dataclass
class BinOp:
    op: str
    left: "Expr"
    right: "Expr"
    loc: Loc
    op_loc: Loc | None = None  # the operator itself: where a shape mismatch is reported


@dataclass
class UnaryOp:
    op: str  # "-" or "not"
    operand: "Expr"
    loc: Loc


@dataclass
class Compare:
    op: str
    left: "Expr"
    right: "Expr"
    loc: Loc


@dataclass
class BoolOp:
    op: str  # "and" / "or"
    left: "Expr"
    right: "Expr"
    loc: Loc


@dataclass
class Arg:
    name: str | None  # None for a positional argument
    value: "Expr"
    loc: Loc


@dataclass
class CallExpr:
    callee: "Expr"  # Name, or GetAttr for an aliased import (ns.block)
    args: list[Arg]
    loc: Loc


@dataclass
class GetItem:
    obj: "Expr"
    index: "Expr"
    loc: Loc


@dataclass
class GetAttr:
    obj: "Expr"
    attr: str
    loc: Loc


@dataclass
class IfExp:
    """``body if condition else orelse``: the condition is a constant; only the chosen side is
    evaluated."""

    condition: "Expr"
    body: "Expr"
    orelse: "Expr"
    loc: Loc


@dataclass
class Generator:
    """``element for var in iterable [if condition]``: only as the sole argument of a call
    (``sum(m[s] for s in tasks if s != t)``)."""

    element: "Expr"
    var: str
    iterable: "Expr"
    condition: "Expr | None"
    loc: Loc
    var_loc: Loc | None = None


Expr = Union[Const, Name, ListExpr, DictExpr, BinOp, UnaryOp, Compare, BoolOp, CallExpr, GetItem,
             GetAttr, IfExp, Generator]


# -- statements -----------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    indices: list[Expr]
    attr: str | None  # out[t].aux
    loc: Loc


@dataclass
class Assign:
    targets: list[Target]
    value: Expr
    shape: list[Expr] | None
    loc: Loc
    shape_loc: Loc | None = None
    span: Loc | None = None  # the whole statement or definition


@dataclass
class For:
    var: str
    iterable: Expr
    condition: Expr | None
    body: list["Stmt"]
    loc: Loc
    span: Loc | None = None  # the whole statement or definition


@dataclass
class If:
    condition: Expr
    body: list["Stmt"]
    orelse: list["Stmt"]
    loc: Loc
    span: Loc | None = None  # the whole statement or definition


@dataclass
class Return:
    values: list[Expr]
    loc: Loc
    span: Loc | None = None  # the whole statement or definition


@dataclass
class Preset:
    name: str
    values: list[Arg]
    loc: Loc
    span: Loc | None = None  # the whole statement or definition


@dataclass
class Profile:
    """``profile nyud(input = [425, 560])``: the task profile (a name or a task list) and input
    size a model is made for."""

    name: str
    values: list[Arg]
    loc: Loc  # of the profile's name
    span: Loc | None = None  # the whole statement or definition


@dataclass
class TableEntry:
    target: str
    source: str
    value: Any
    loc: Loc  # of the value: where `search` gets replaced by the chosen context
    target_loc: Loc | None = None  # the row's key (left of '<-')
    source_loc: Loc | None = None  # the entry's key (left of ':')


@dataclass
class Table:
    name: str
    entries: list[TableEntry]
    loc: Loc
    span: Loc | None = None  # the whole statement or definition


@dataclass
class WeightsEntry:
    """``"official.prefix" -> "node.path"``, or ``unused "official.prefix": "reason"``."""

    official: str
    target: str | None  # None: the official tensors under ``official`` are not used
    reason: str
    loc: Loc  # the official pattern
    target_loc: Loc | None = None  # the target pattern, or the reason
    keyword: str = ""  # "unused" (a soft keyword: parsed as a name, checked when lowering)
    span: Loc | None = None  # the whole entry (from its keyword, if any)


@dataclass
class WeightsFor:
    var: str
    iterable: Expr
    condition: Expr | None
    body: list["WeightsItem"]
    loc: Loc


@dataclass
class WeightsIf:
    condition: Expr
    body: list["WeightsItem"]
    orelse: list["WeightsItem"]
    loc: Loc


WeightsItem = Union[WeightsEntry, WeightsFor, WeightsIf]


@dataclass
class Weights:
    """``weights NAME { ... }``: how checkpoints of an official implementation name this block's
    (or model's) tensors."""

    name: str
    items: list[WeightsItem]
    loc: Loc  # the map's name
    span: Loc | None = None  # the whole statement or definition (from its keyword)
    keyword: str = "weights"  # a soft keyword: parsed as a name, checked when lowering


Stmt = Union[Assign, For, If, Return, Preset, Profile, Table, Weights]


def keyword_loc(node: "Weights | WeightsEntry") -> Loc:
    """Where a soft keyword (``weights``, ``unused``) was written: the start of the span."""
    span = node.span or node.loc
    if not node.keyword:
        return span
    return Loc(span.file, span.line, span.column, len(node.keyword), span.start,
               span.start + len(node.keyword) if span.start >= 0 else -1)


# -- definitions ----------------------------------------------------------------------------------

@dataclass
class ParamDef:
    name: str
    type: str | None
    default: Expr | None
    loc: Loc


@dataclass
class BlockDef:
    name: str
    params: list[ParamDef]
    body: list[Stmt]
    loc: Loc
    is_model: bool = False
    span: Loc | None = None  # the whole statement or definition


@dataclass
class Import:
    path: str
    alias: str | None
    loc: Loc
    span: Loc | None = None  # the whole statement or definition


@dataclass
class SpecFile:
    path: str
    source: str
    imports: list[Import] = field(default_factory=list)
    blocks: list[BlockDef] = field(default_factory=list)
    models: list[BlockDef] = field(default_factory=list)
