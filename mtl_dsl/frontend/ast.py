"""The syntax tree of a spec file: what the parser builds and the lowering walks.

Every node carries its source location (file, line, column, length) so that any later error can
point at the text the user wrote.
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


Expr = Union[Const, Name, ListExpr, DictExpr, BinOp, UnaryOp, Compare, BoolOp, CallExpr, GetItem,
             GetAttr]


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


@dataclass
class For:
    var: str
    iterable: Expr
    condition: Expr | None
    body: list["Stmt"]
    loc: Loc


@dataclass
class If:
    condition: Expr
    body: list["Stmt"]
    orelse: list["Stmt"]
    loc: Loc


@dataclass
class Return:
    values: list[Expr]
    loc: Loc


@dataclass
class Preset:
    name: str
    values: list[Arg]
    loc: Loc


@dataclass
class TableEntry:
    target: str
    source: str
    value: Any
    loc: Loc  # of the value: where `search` gets replaced by the chosen context


@dataclass
class Table:
    name: str
    entries: list[TableEntry]
    loc: Loc


Stmt = Union[Assign, For, If, Return, Preset, Table]


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


@dataclass
class Import:
    path: str
    alias: str | None
    loc: Loc


@dataclass
class SpecFile:
    path: str
    source: str
    imports: list[Import] = field(default_factory=list)
    blocks: list[BlockDef] = field(default_factory=list)
    models: list[BlockDef] = field(default_factory=list)
