"""Expressions: constants are folded as the spec is evaluated; block calls and indexing of a
graph value are handed to the graph builder (``calls.Calls``), which makes nodes.

Arithmetic, comparisons and the built-in functions work on constants only, with limits on the
size of what they build (integers, lists, strings), so no spec can make the compiler run away.
``H`` and ``W`` are symbolic only inside a shape assertion (``:: [B, 64, H/4, W/4]``), which is
evaluated to a structured ``ShapeAssertion`` of the IR.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from ..blocks import REGISTRY
from ..errors import Diagnostics, Located, did_you_mean
from ..ir import IMAGES, Ref, ShapeAssertion, ShapeDim
from ..tasks import TaskProfile
from ..types import Dim
from . import ast
from .algebra import GRAPH_FUNCTIONS
from .values import (Family, GraphValue, MissingTableEntry, Poison, Scope, TableRow, TableValue,
                     is_graph, is_number, sloc, task_hint, type_name)

MAX_INT = 2 ** 53
MAX_LIST = 10_000
MAX_STRING = 10_000

BUILTIN_FUNCTIONS: dict[str, tuple[int, int]] = {
    "len": (1, 1), "range": (1, 3), "min": (1, 8), "max": (1, 8), "int": (1, 1), "float": (1, 1),
    "str": (1, 1), "keys": (1, 1), "values": (1, 1), "column": (2, 2), "channels": (1, 1),
    "aux_channels": (1, 1),
}


class GraphBuilder(Protocol):
    """What expressions need from the graph: calling a block, and ``g[t]`` on a per-task value."""

    def call(self, expr: ast.CallExpr, scope: Scope, node_name: str | None,
             shape: ast.Assign | None) -> Any: ...

    def select(self, value: GraphValue, key: str, loc: ast.Loc) -> GraphValue: ...


class Evaluator:
    def __init__(self, sink: Diagnostics, profile: TaskProfile):
        self.sink = sink
        self.profile = profile
        self.tasks = profile.task_names
        self.graph: GraphBuilder | None = None  # set by the lowering
        self.algebra: Any = None  # frontend.algebra.Algebra: graph-value operators, reductions
        self.incomplete_tables: set[int] = set()  # tables whose missing entry was reported

    def missing_entry(self, e: MissingTableEntry, loc: Located) -> Poison:
        """A table without an entry for a pair of this profile's tasks: reported once per table
        (every other lookup that fails has the same cause), naming what the table covers."""
        if id(e.table) not in self.incomplete_tables:
            self.incomplete_tables.add(id(e.table))
            covered = ", ".join(e.table.keys()) or "no task"
            self.sink.error(loc, str(e), "add the entry, or a default row/column '*'",
                            notes=(f"the table names {covered}; the tasks of this profile are "
                                   f"{', '.join(self.tasks)}",))
        return Poison()

    def _naming(self, node_name: str | None) -> AbstractContextManager:
        """Calls nested in an assigned expression are named after its target (``algebra``); an
        evaluator of constants alone (no graph) has nothing to name."""
        return self.algebra.naming(node_name) if self.algebra is not None else nullcontext()

    def error(self, loc: Located, message: str, hint: str = "",
              notes: tuple[str, ...] = ()) -> Poison:
        self.sink.error(loc, message, hint, notes)
        return Poison()

    # values ------------------------------------------------------------------------------------
    def const(self, expr: ast.Expr, scope: Scope, what: str) -> Any:
        value = self.eval(expr, scope)
        if is_graph(value):
            raise self.error(expr.loc, f"{what} needs a constant, not a graph value")
        return value

    def eval(self, expr: ast.Expr, scope: Scope, node_name: str | None = None,
             shape: ast.Assign | None = None) -> Any:
        if isinstance(expr, ast.Const):
            if isinstance(expr.value, int) and abs(expr.value) > MAX_INT:
                raise self.error(expr.loc, f"integer {expr.value} is too large")
            if isinstance(expr.value, float) and not math.isfinite(expr.value):
                raise self.error(expr.loc, "number is not finite")
            return expr.value
        if isinstance(expr, ast.Name):
            return self._name(expr, scope)
        if isinstance(expr, ast.ListExpr):
            if len(expr.items) > MAX_LIST:
                raise self.error(expr.loc, f"list longer than {MAX_LIST:,} items")
            return [self._plain(self.eval(i, scope), i.loc) for i in expr.items]
        if isinstance(expr, ast.DictExpr):
            out = {}
            for k, v in expr.items:
                if k in out:
                    raise self.error(v.loc, f"duplicate key '{k}'")
                out[k] = self._plain(self.eval(v, scope), v.loc)
            return out
        if isinstance(expr, ast.UnaryOp):
            return self._unary(expr, scope, node_name, shape)
        if isinstance(expr, ast.BoolOp):
            return self._boolop(expr, scope)
        if isinstance(expr, ast.Compare):
            return self._compare(expr, scope)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, scope, node_name, shape)
        if isinstance(expr, ast.IfExp):
            cond = self.const(expr.condition, scope, "a conditional expression")
            if not isinstance(cond, bool):
                raise self.error(expr.condition.loc, f"the condition of 'a if c else b' must be "
                                                     f"true or false, got {type_name(cond)}")
            return self.eval(expr.body if cond else expr.orelse, scope, node_name, shape)
        if isinstance(expr, ast.Generator):
            return self.algebra.generate(expr, scope)
        if isinstance(expr, ast.GetItem):
            return self._getitem(expr, scope)
        if isinstance(expr, ast.GetAttr):
            raise self.error(expr.loc, f"'.{expr.attr}' is only used to call a block of an "
                                       f"aliased import (alias.block(...))")
        if isinstance(expr, ast.CallExpr):
            callee = expr.callee
            if isinstance(callee, ast.Name) and callee.name in GRAPH_FUNCTIONS:
                found, _ = scope.lookup(callee.name)
                if not found and not (scope.file and callee.name in scope.file.blocks):
                    return self.algebra.call(callee.name, expr, scope, node_name, shape)
            if isinstance(callee, ast.Name) and callee.name in BUILTIN_FUNCTIONS:
                found, _ = scope.lookup(callee.name)
                if not found:
                    return self._builtin(callee.name, expr, scope)
            assert self.graph is not None
            return self.graph.call(expr, scope, node_name, shape)
        raise self.error(getattr(expr, "loc"), "unsupported expression")

    def _plain(self, value: Any, loc: ast.Loc) -> Any:
        if is_graph(value):
            raise self.error(loc, "lists and dicts hold constants, not graph values")
        if isinstance(value, (TableValue, TableRow)):
            return value.to_json()
        return value

    def _name(self, expr: ast.Name, scope: Scope) -> Any:
        found, value = scope.lookup(expr.name)
        if found:
            return value
        if expr.name == "tasks":
            return list(self.tasks)
        if expr.name == "images":
            return GraphValue(Ref(node=IMAGES))
        if expr.name in ("B", "H", "W", "_"):
            raise self.error(expr.loc, f"'{expr.name}' is only meaningful in a shape assertion "
                                       f"(:: [B, C, H/4, W/4])")
        options = scope.visible_names() | {"tasks", "images"}
        hint = did_you_mean(expr.name, options)
        if expr.name in REGISTRY or (scope.file and expr.name in scope.file.blocks):
            hint = f"'{expr.name}' is a block: call it, {expr.name}(...)"
        elif expr.name in ("True", "False", "None"):
            hint = f"write {expr.name.lower()}"
        raise self.error(expr.loc, f"unknown name '{expr.name}'", hint)

    # operators ---------------------------------------------------------------------------------
    def _unary(self, expr: ast.UnaryOp, scope: Scope, node_name: str | None = None,
               shape: ast.Assign | None = None) -> Any:
        if expr.op == "-":
            with self._naming(node_name):
                v = self.eval(expr.operand, scope)
            if is_graph(v):
                return self.algebra.negate(expr, v, scope, node_name, shape)
        else:
            v = self.const(expr.operand, scope, f"'{expr.op}'")
        if expr.op == "not":
            if not isinstance(v, bool):
                raise self.error(expr.loc, f"'not' needs true or false, got {type_name(v)}")
            return not v
        if not is_number(v):
            raise self.error(expr.loc, f"cannot negate {type_name(v)}")
        return -v

    def _boolop(self, expr: ast.BoolOp, scope: Scope) -> bool:
        left = self.const(expr.left, scope, f"'{expr.op}'")
        if not isinstance(left, bool):
            raise self.error(expr.left.loc, f"'{expr.op}' needs true or false, got "
                                            f"{type_name(left)}")
        if expr.op == "and" and not left:
            return False
        if expr.op == "or" and left:
            return True
        right = self.const(expr.right, scope, f"'{expr.op}'")
        if not isinstance(right, bool):
            raise self.error(expr.right.loc, f"'{expr.op}' needs true or false, got "
                                             f"{type_name(right)}")
        return right

    def _compare(self, expr: ast.Compare, scope: Scope) -> bool:
        left = self.eval(expr.left, scope)
        right = self.eval(expr.right, scope)
        if expr.op in ("==", "!=") and (left is None or right is None):
            # `like == none`: whether an optional input was given (graph values too)
            return (left is right) == (expr.op == "==")
        for side, value in ((expr.left, left), (expr.right, right)):
            if is_graph(value):
                raise self.error(side.loc, f"'{expr.op}' needs a constant, not a graph value")
        if isinstance(right, (TableRow, TableValue)):
            right = list(right.to_json().values()) if isinstance(right, TableRow) \
                else list(right.to_json())
        op = expr.op
        try:
            if op == "==":
                return left == right
            if op == "!=":
                return left != right
            if op in ("in", "not in"):
                if not isinstance(right, (list, str, dict)):
                    raise self.error(expr.right.loc, f"'{op}' needs a list, string or dict on the "
                                                     f"right, got {type_name(right)}")
                if isinstance(right, str) and not isinstance(left, str):
                    raise self.error(expr.left.loc, f"'{op}' a string needs a string on the left")
                result = left in right
                return result if op == "in" else not result
            if not (is_number(left) and is_number(right)) and not (
                    isinstance(left, str) and isinstance(right, str)):
                raise self.error(expr.loc, f"cannot compare {type_name(left)} and "
                                           f"{type_name(right)} with '{op}'")
            return {"<": left < right, "<=": left <= right, ">": left > right,
                    ">=": left >= right}[op]
        except TypeError:
            raise self.error(expr.loc, f"cannot compare {type_name(left)} and "
                                       f"{type_name(right)}") from None

    def _binop(self, expr: ast.BinOp, scope: Scope, node_name: str | None = None,
               shape: ast.Assign | None = None) -> Any:
        with self._naming(node_name):
            left = self.eval(expr.left, scope)
            right = self.eval(expr.right, scope)
        if is_graph(left) or is_graph(right):  # a node of the graph (frontend.algebra)
            return self.algebra.operator(expr, left, right, scope, node_name, shape)
        return self.apply_binop(expr.op, left, right, expr.op_loc or expr.loc)

    def apply_binop(self, op: str, left: Any, right: Any, loc: ast.Loc) -> Any:
        if is_number(left) and is_number(right):
            if op in ("/", "//", "%") and right == 0:
                raise self.error(loc, "division by zero")
            result = {"+": lambda: left + right, "-": lambda: left - right,
                      "*": lambda: left * right, "/": lambda: left / right,
                      "//": lambda: left // right, "%": lambda: left % right}[op]()
            if isinstance(result, int) and abs(result) > MAX_INT:
                raise self.error(loc, f"integer result {result:.3g} is too large")
            if isinstance(result, float) and not math.isfinite(result):
                raise self.error(loc, "result is not a finite number")
            return result
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_STRING:
                raise self.error(loc, "string too long")
            return left + right
        if op == "+" and isinstance(left, list) and isinstance(right, list):
            if len(left) + len(right) > MAX_LIST:
                raise self.error(loc, f"list longer than {MAX_LIST:,} items")
            return left + right
        if op == "*" and isinstance(left, list) and isinstance(right, int) \
                and not isinstance(right, bool):
            if len(left) * max(0, right) > MAX_LIST:
                raise self.error(loc, f"list longer than {MAX_LIST:,} items")
            return left * right
        raise self.error(loc, f"cannot apply '{op}' to {type_name(left)} and {type_name(right)}")

    def _getitem(self, expr: ast.GetItem, scope: Scope) -> Any:
        obj = self.eval(expr.obj, scope)
        key = self.const(expr.index, scope, "an index")
        if isinstance(obj, Family):
            k = str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else None
            if k is None or k not in obj.items:
                raise self.error(expr.index.loc, f"'{obj.name}' has no entry {key!r}",
                                 did_you_mean(str(key), obj.items) or
                                 f"entries: {', '.join(obj.items) or 'none'}")
            return obj.items[k]
        if isinstance(obj, TableValue):
            if not isinstance(key, str):
                raise self.error(expr.index.loc, "a table is indexed by task names")
            return obj.row(key)
        if isinstance(obj, TableRow):
            if not isinstance(key, str):
                raise self.error(expr.index.loc, "a table is indexed by task names")
            return obj.table.lookup(obj.target, key)
        if isinstance(obj, list):
            if not isinstance(key, int) or isinstance(key, bool):
                raise self.error(expr.index.loc, "a list is indexed by an integer")
            if not -len(obj) <= key < len(obj):
                raise self.error(expr.index.loc, f"index {key} is out of range for a list of "
                                                 f"{len(obj)}")
            return obj[key]
        if isinstance(obj, dict):
            if key not in obj:
                raise self.error(expr.index.loc, f"no key {key!r}", did_you_mean(str(key), obj))
            return obj[key]
        if isinstance(obj, GraphValue):
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise self.error(expr.index.loc, "a per-task value is indexed by a task name")
            assert self.graph is not None
            return self.graph.select(obj, str(key), expr.loc)
        raise self.error(expr.loc, f"cannot index {type_name(obj)}")

    # shape assertions --------------------------------------------------------------------------
    def shape_assertion(self, stmt: ast.Assign, scope: Scope) -> ShapeAssertion:
        dims = [self._shape_dim(d, scope) for d in stmt.shape or []]
        loc = stmt.shape_loc or stmt.loc
        return ShapeAssertion(dims=dims, loc=sloc(loc))

    def _shape_dim(self, expr: ast.Expr, scope: Scope) -> ShapeDim:
        if isinstance(expr, ast.Name) and expr.name in ("B", "_"):
            return expr.name  # type: ignore[return-value]
        value = self._symbolic(expr, scope)
        if isinstance(value, Dim):
            return value if value.ops or value.base in ("H", "W") else int(value.base)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self.error(expr.loc, "a shape dimension is B, _, an integer or a size like H/4")

    def _symbolic(self, expr: ast.Expr, scope: Scope) -> Any:
        if isinstance(expr, ast.Name) and expr.name in ("H", "W"):
            return Dim.of(expr.name)
        if isinstance(expr, ast.BinOp):
            left = self._symbolic(expr.left, scope)
            right = self._symbolic(expr.right, scope)
            if isinstance(left, Dim) or isinstance(right, Dim):
                if isinstance(left, Dim) and isinstance(right, int):
                    op = {"/": left.cdiv, "//": left.fdiv, "*": left.mul, "+": left.add,
                          "-": lambda k: left.add(-k)}.get(expr.op)
                    if op is not None and (expr.op not in ("/", "//") or right > 0):
                        return op(right)
                if isinstance(right, Dim) and isinstance(left, int) and expr.op == "*":
                    return right.mul(left)
                raise self.error(expr.loc, f"unsupported size expression with '{expr.op}'")
            return self._binop(ast.BinOp(expr.op, ast.Const(left, expr.left.loc),
                                         ast.Const(right, expr.right.loc), expr.loc), scope)
        return self.const(expr, scope, "a shape dimension")

    # built-in functions ------------------------------------------------------------------------
    def _builtin(self, name: str, expr: ast.CallExpr, scope: Scope) -> Any:
        if any(a.name is not None for a in expr.args):
            raise self.error(expr.loc, f"'{name}' takes positional arguments only")
        if name == "len":  # the one built-in that also takes a per-task collection
            args = [self.eval(a.value, scope) for a in expr.args]
            if args and isinstance(args[0], (GraphValue, tuple)):
                raise self.error(expr.loc, "'len' takes a list, a dict or a per-task collection")
        else:
            args = [self.const(a.value, scope, f"'{name}'") for a in expr.args]
        arity = BUILTIN_FUNCTIONS[name]
        if not (arity[0] <= len(args) <= arity[1]):
            raise self.error(expr.loc, f"'{name}' takes {arity[0]}"
                                       f"{'' if arity[0] == arity[1] else f' to {arity[1]}'} "
                                       f"argument{'s' if arity[1] != 1 else ''}, got {len(args)}")
        return self.apply_builtin(name, args, expr)

    def apply_builtin(self, name: str, args: list[Any], expr: ast.CallExpr) -> Any:
        """A built-in function on constants; its mistakes are errors at ``expr``."""
        try:
            return self._apply_builtin(name, args, expr.loc)
        except MissingTableEntry as e:
            raise self.missing_entry(e, expr.loc) from None
        except (TypeError, ValueError) as e:
            raise self.error(expr.loc, f"'{name}': {e}") from None

    def _apply_builtin(self, name: str, args: list[Any], loc: ast.Loc) -> Any:
        if name in ("len", "keys", "values", "column"):
            return self._collection_builtin(name, args)
        if name == "range":
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise TypeError("needs integers")
            r = range(*args)
            if len(r) > MAX_LIST:
                raise ValueError(f"more than {MAX_LIST:,} values")
            return list(r)
        if name in ("min", "max"):
            values = _as_list(args[0]) if len(args) == 1 else args
            if not values or not all(is_number(v) for v in values):
                raise TypeError("needs numbers")
            return min(values) if name == "min" else max(values)
        if name in ("int", "float"):
            if not is_number(args[0]):
                raise TypeError(f"needs a number, got {type_name(args[0])}")
            return int(args[0]) if name == "int" else float(args[0])
        if name == "str":
            if isinstance(args[0], (list, dict)):
                raise TypeError("needs a number, string or bool")
            return str(args[0]).lower() if isinstance(args[0], bool) else str(args[0])
        if name in ("channels", "aux_channels"):
            t = args[0]
            if t not in self.tasks:
                raise self.error(loc, f"'{name}': unknown task {t!r}",
                                 task_hint(str(t), self.tasks))
            spec = self.profile.task(t)
            return spec.channels if name == "channels" else spec.aux_channels
        raise TypeError("unknown function")

    def _collection_builtin(self, name: str, args: list[Any]) -> Any:
        """``len``, ``keys``, ``values`` and ``column``: a table (or a row of one) holds one
        value per task."""
        v = args[0]
        if name == "len":
            if isinstance(v, Family):
                return len(v.items)
            if isinstance(v, (TableRow, TableValue)):
                return len(self.tasks)
            if not isinstance(v, (list, str, dict)):
                raise TypeError(f"needs a list, string or dict, got {type_name(v)}")
            return len(v)
        if name == "keys":
            if isinstance(v, (TableRow, TableValue)):
                return list(self.tasks)
            if isinstance(v, dict):
                return list(v)
            raise TypeError(f"needs a dict or table, got {type_name(v)}")
        if name == "values":
            return _as_list(v)
        table, key = args
        if not isinstance(table, TableValue) or not isinstance(key, str):
            raise TypeError("column(table, source) needs a table and a task name")
        return [table.lookup(t, key) for t in self.tasks]


def _as_list(v: Any) -> list:
    """The values of a list, string, dict or table row, as a list."""
    if isinstance(v, TableRow):
        return list(v.to_json().values())
    if isinstance(v, dict):
        return list(v.values())
    if isinstance(v, (list, str)):
        return list(v)
    raise TypeError(f"needs a list, got {type_name(v)}")
