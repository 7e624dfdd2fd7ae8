"""What names stand for while a spec is evaluated, and the scopes that hold them.

A name is bound to a constant (int, float, str, bool, none, list, dict), a ``GraphValue`` (one
output of a graph node), a ``Family`` (``d[t]``: an indexed family of graph values), a
``TableValue`` (a context table) or one of its rows, or a tuple (several results of one call).
``Poison`` aborts the statement being lowered once its error is recorded; the names it would have
bound are then poisoned, so their later uses stay quiet (one error per mistake).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import did_you_mean
from ..ir import CollectionRef, Ref, SourceLoc
from . import ast


class Poison(Exception):
    """Aborts the current statement after its error was recorded (or because it used a name
    whose own statement failed)."""


@dataclass(frozen=True)
class GraphValue:
    ref: Ref


@dataclass
class Family:
    """An indexed family ``d[k]`` of graph values (or nested families)."""

    name: str
    items: dict[str, Any] = field(default_factory=dict)

    def to_collection(self) -> CollectionRef:
        """The collection as a block input; ``ConstantEntry`` if an entry is a constant."""
        out: dict[str, Any] = {}
        for k, v in self.items.items():
            if isinstance(v, Family):
                out[k] = v.to_collection()
            elif isinstance(v, GraphValue):
                out[k] = v.ref
            else:
                raise ConstantEntry(f"{self.name}[{k}]", v)
        return CollectionRef(items=out)


class ConstantEntry(TypeError):
    """A per-task collection given where graph values are wanted holds a constant
    (``d[t] = 3``, then ``concat(d)``); the caller reports it at the argument."""

    def __init__(self, entry: str, value: Any):
        super().__init__(entry)
        self.entry = entry
        self.value = value

    def describe(self) -> str:
        return f"its entry {self.entry} is the constant {short(self.value)}"


class MissingTableEntry(ValueError):
    """A table lookup ``table[target][source]`` with neither an entry nor a ``*`` default."""

    def __init__(self, table: "TableValue", target: str, source: str):
        super().__init__(f"table '{table.name}' has no entry {target} <- {source}")
        self.table = table


class TableValue:
    """A two-level constant table with ``*`` defaults, indexed ``table[target][source]``."""

    def __init__(self, name: str, rows: dict[str, dict[str, Any]], tasks: list[str]):
        self.name = name
        self.rows = rows
        self.tasks = tasks

    def lookup(self, target: str, source: str) -> Any:
        for row_key in (target, "*"):
            row = self.rows.get(row_key, {})
            for col_key in (source, "*"):
                if col_key in row:
                    return row[col_key]
        raise MissingTableEntry(self, target, source)

    def row(self, target: str) -> "TableRow":
        return TableRow(self, target)

    def to_json(self) -> dict:
        return {t: {s: self.lookup(t, s) for s in self.tasks} for t in self.tasks}

    def keys(self) -> list[str]:
        """The task names the table writes (not '*')."""
        keys = [t for t in self.rows if t != "*"]
        for row in self.rows.values():
            keys += [s for s in row if s != "*" and s not in keys]
        return keys


@dataclass
class TableRow:
    table: TableValue
    target: str

    def to_json(self) -> dict:
        return {s: self.table.lookup(self.target, s) for s in self.table.tasks}


@dataclass
class UserBlock:
    definition: ast.BlockDef
    module: "FileScope"


@dataclass
class FileScope:
    """What names a spec file sees: its own blocks, flat imports, aliased imports."""

    spec: ast.SpecFile
    blocks: dict[str, UserBlock] = field(default_factory=dict)
    aliases: dict[str, "FileScope"] = field(default_factory=dict)

    def exports(self) -> dict[str, UserBlock]:
        return self.blocks


@dataclass
class Scope:
    vars: dict[str, Any]
    parent: "Scope | None"
    prefix: str  # node-name prefix ("" at model level, "h.semseg." inside an inlined block)
    suffix: tuple[str, ...] = ()  # loop values: names bound in a loop get ".<value>" appended
    is_function: bool = True
    file: FileScope | None = None
    loop_var: str | None = None
    poisoned: set[str] = field(default_factory=set)

    def lookup(self, name: str) -> tuple[bool, Any]:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.poisoned:
                raise Poison()
            if name in scope.vars:
                return True, scope.vars[name]
            scope = scope.parent
        return False, None

    def function_scope(self) -> "Scope":
        scope = self
        while not scope.is_function and scope.parent is not None:
            scope = scope.parent
        return scope

    def visible_names(self) -> set[str]:
        names: set[str] = set()
        scope: Scope | None = self
        while scope is not None:
            names |= set(scope.vars)
            scope = scope.parent
        return names


def sloc(loc: ast.Loc) -> SourceLoc:
    """A syntax-tree location as the IR keeps it."""
    return SourceLoc(file=loc.file, line=loc.line, column=loc.column, length=loc.length,
                     start=loc.start, end=loc.end)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_graph(v: Any) -> bool:
    """A graph value, a family of them, or several results: not a constant."""
    return isinstance(v, (GraphValue, Family, tuple))


def type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if v is None:
        return "none"
    if isinstance(v, GraphValue):
        return "graph value"
    if isinstance(v, Family):
        return "per-task collection"
    if isinstance(v, tuple):
        return "several values"
    if isinstance(v, TableValue):
        return "table"
    if isinstance(v, TableRow):
        return "table row"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(v),
                                                                               type(v).__name__)


def short(value: Any) -> str:
    """A value as a message quotes it: its repr in parentheses, cut after 40 characters; true,
    false and none spelt as in a spec."""
    text = {True: "true", False: "false"}.get(value, repr(value)) if isinstance(value, bool) \
        else "none" if value is None else repr(value)
    return f"({text[:40]}...)" if len(text) > 43 else f"({text})"


def task_hint(name: str, tasks: list[str] | tuple[str, ...], what: str = "this profile") -> str:
    """For an unknown task name: the close one, if any, and the tasks there are."""
    close = did_you_mean(name, tasks)
    listed = f"the tasks of {what}: {', '.join(tasks)}"
    return f"{close} ({listed})" if close else listed


def jsonable(value: Any) -> Any:
    if isinstance(value, (TableValue, TableRow)):
        return value.to_json()
    return value
