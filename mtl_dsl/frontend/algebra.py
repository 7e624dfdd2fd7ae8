"""Graph values in expressions: operators, reductions and generators.

``consteval`` folds expressions on constants; when an operand of ``+ - * /`` (or of unary ``-``)
is a graph value, or a reduction (``sum mean max min``) gets graph values, it hands them here and
this module makes the node: one node of an algebra block (``blocks/algebra.py``) per operator or
reduction, named like a block call (the assigned name, or ``<target>_<block>`` when nested).

A generator ``expr for v in xs if cond`` is the only argument of a call. It runs like a ``for``
loop (the same iterable and filter rules, ``loops.iterations``) and gives the collection of its
values keyed by the loop value: a per-task collection when they are graph values (what ``concat``,
``tokens``, ``softmax(..., dim = "tasks")`` and the reductions take; ``stack(...)`` names it), a
list when they are constants. ``sum(w[s] * x[s] for s in ...)`` is one weighted-sum node (a fused
multiply-add per term), not a product node per term.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ..blocks import REGISTRY
from ..ir import Node, Ref
from . import ast
from .loops import iterations
from .naming import MAX_NODES
from .values import (ConstantEntry, Family, GraphValue, Poison, Scope, is_graph, is_number, short,
                     sloc, type_name)

if TYPE_CHECKING:  # pragma: no cover
    from .calls import Calls

OPERATOR_BLOCKS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
REDUCTIONS = ("sum", "mean", "max", "min")
COLLECTIONS = ("stack",)
GRAPH_FUNCTIONS = REDUCTIONS + COLLECTIONS  # built-in functions that also take graph values
VERBS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}


class Algebra:
    """Operators, reductions and generators of one compilation, making nodes through ``calls``."""

    def __init__(self, calls: "Calls"):
        self.calls = calls
        self.ev = calls.ev
        self.names = calls.names

    def error(self, loc: Any, message: str, hint: str = "") -> Poison:
        return self.ev.error(loc, message, hint)

    # naming ------------------------------------------------------------------------------------
    @contextmanager
    def naming(self, node_name: str | None) -> Iterator[None]:
        """Calls nested in an assigned expression are named after its target (``y_gate``)."""
        if node_name is None:
            yield
            return
        saved = self.names.current_target
        self.names.current_target = node_name
        try:
            yield
        finally:
            self.names.current_target = saved

    def node(self, block_name: str, inputs: dict[str, Any], params: dict[str, Any], loc: ast.Loc,
             scope: Scope, node_name: str | None, shape: ast.Assign | None,
             expr: ast.Expr) -> GraphValue:
        """A node of ``block_name`` (every declared input and parameter filled in)."""
        block = REGISTRY[block_name]
        name = self.names.unique(node_name or self.names.anonymous(scope.prefix, block_name), loc)
        full_inputs = {k: inputs.get(k) for k in block.inputs()}
        full_params = {}
        defaulted = []
        for k, spec in block.params().items():
            if k in params:
                full_params[k] = params[k]
            else:
                full_params[k] = spec.default
                defaulted.append(k)
        assertion = None
        if shape is not None and shape.shape is not None and shape.value is expr:
            assertion = self.ev.shape_assertion(shape, scope)
        if len(self.calls.nodes) >= MAX_NODES:
            self.ev.sink.error(loc, f"the model has more than {MAX_NODES:,} nodes")
            raise self.ev.sink.as_error()
        node = Node(name=name, block=block_name, inputs=full_inputs, params=full_params,
                    loc=sloc(loc), trace=list(self.calls.trace), shape=assertion,
                    defaulted=defaulted)
        self.calls.nodes.append(node)
        self.names.add(name)
        return GraphValue(Ref(node=name))

    # operators ---------------------------------------------------------------------------------
    def operator(self, expr: ast.BinOp, left: Any, right: Any, scope: Scope,
                 node_name: str | None, shape: ast.Assign | None) -> GraphValue:
        """``left op right`` where at least one side is a graph value."""
        loc = expr.op_loc or expr.loc
        op = expr.op
        if op not in OPERATOR_BLOCKS:
            raise self.error(loc, f"'{op}' works on constants only; graph values take + - * /")
        inputs: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for key, side, value in (("left", expr.left, left), ("right", expr.right, right)):
            if isinstance(value, GraphValue):
                inputs[key] = value.ref
            elif is_number(value):
                params["const"] = float(value)
            elif isinstance(value, Family):
                raise self.error(side.loc, f"'{op}' takes one graph value, not the per-task "
                                           f"collection '{value.name}'",
                                 f"index it ({value.name}[t]) or reduce it (sum({value.name}))")
            elif isinstance(value, tuple):
                raise self.error(side.loc, f"'{op}' takes one graph value, not several",
                                 "unpack them first: a, b = block(...)")
            else:
                raise self.error(side.loc, f"cannot {VERBS[op]} {type_name(value)} "
                                           f"{short(value)} and a graph value",
                                 "a graph value combines with a number or another graph value")
        if op == "/" and "right" not in inputs and params.get("const") == 0:
            raise self.error(expr.right.loc, "division by zero")
        return self.node(OPERATOR_BLOCKS[op], inputs, params, loc, scope, node_name, shape, expr)

    def negate(self, expr: ast.UnaryOp, value: Any, scope: Scope, node_name: str | None,
               shape: ast.Assign | None) -> GraphValue:
        """``-x`` on a graph value: ``x * -1``."""
        if not isinstance(value, GraphValue):
            raise self.error(expr.loc, f"cannot negate {type_name(value)}")
        return self.node("mul", {"left": value.ref}, {"const": -1.0}, expr.loc, scope, node_name,
                         shape, expr)

    # generators --------------------------------------------------------------------------------
    def generate(self, gen: ast.Generator, scope: Scope) -> Any:
        """The values of a generator: a collection of graph values, or a list of constants."""
        pairs = [(key, self.ev.eval(gen.element, inner)) for key, inner in self._each(gen, scope)]
        return self.collect(pairs, gen.loc)

    def _each(self, gen: ast.Generator, scope: Scope) -> Iterator[tuple[str, Scope]]:
        """(key, scope) of every value the generator's loop takes, nested calls named after it."""
        target = self.names.current_target
        for item, inner in iterations(self.ev, gen.var, gen.iterable, gen.condition, scope,
                                      gen.var_loc or gen.loc, "a generator"):
            key = str(item)
            saved = self.names.current_target
            self.names.current_target = f"{target}_{key}" if target else None
            try:
                yield key, inner
            finally:
                self.names.current_target = saved

    def collect(self, pairs: list[tuple[str, Any]], loc: ast.Loc,
                what: str = "a generator") -> Any:
        """Graph values keyed as given (a Family), or constants (a list); never a mix."""
        graph = [k for k, v in pairs if is_graph(v)]
        if not graph:
            return [v for _, v in pairs]
        if len(graph) != len(pairs):
            const = next(k for k, v in pairs if not is_graph(v))
            if what == "a generator":
                raise self.error(loc, f"a generator gives graph values and constants (for "
                                      f"'{graph[0]}' and '{const}')")
            raise self.error(loc, f"{what} takes graph values or numbers, not both",
                             "relu(x) is max(x, 0); a constant joins a graph value with an "
                             "operator: x + 1, 0.5 * x")
        family = Family("generator")
        for key, value in pairs:
            if isinstance(value, tuple):
                raise self.error(loc, f"the value for '{key}' is several values",
                                 "unpack them first: a, b = block(...)")
            if key in family.items:
                raise self.error(loc, f"the generator gives '{key}' twice: its loop values "
                                      f"name the entries of the collection")
            family.items[key] = value
        return family

    # reductions --------------------------------------------------------------------------------
    def call(self, name: str, expr: ast.CallExpr, scope: Scope, node_name: str | None,
             shape: ast.Assign | None) -> Any:
        """``sum mean max min stack`` on constants or graph values."""
        if any(a.name is not None for a in expr.args):
            raise self.error(expr.loc, f"'{name}' takes positional arguments only")
        if not expr.args:
            raise self.error(expr.loc, f"'{name}' takes a generator, a collection or values")
        with self.naming(node_name):
            terms = self._terms(name, expr, scope)
        if isinstance(terms, tuple):  # a fused weighted sum: (x, weights or coeffs)
            xs, ws = terms
            params = {"coeffs": ws} if isinstance(ws, list) else {}
            inputs = {"x": self._collection(name, xs, expr)}
            if isinstance(ws, Family):
                inputs["w"] = self._collection(name, ws, expr)
            return self.node(name, inputs, params, expr.loc, scope, node_name, shape, expr)
        if name == "stack":
            if not isinstance(terms, Family):
                raise self.error(expr.loc, "'stack' collects graph values (a generator's, or "
                                           "several given one by one)")
            return terms
        if isinstance(terms, list):
            return self._constant(name, terms, expr)
        if isinstance(terms, GraphValue):  # a block's per-task result: the checker checks it
            return self.node(name, {"x": terms.ref}, {}, expr.loc, scope, node_name, shape, expr)
        return self.node(name, {"x": self._collection(name, terms, expr)}, {}, expr.loc, scope,
                         node_name, shape, expr)

    def _collection(self, name: str, family: Family, expr: ast.CallExpr) -> Any:
        try:
            return family.to_collection()
        except ConstantEntry as e:
            raise self.error(expr.args[0].value.loc, f"'{name}' of a collection reduces graph "
                                                     f"values, but {e.describe()}",
                             f"{name}(...) of constants takes a list: {name}([a, b])") from None

    def _terms(self, name: str, expr: ast.CallExpr, scope: Scope) -> Any:
        """A Family, a GraphValue (one per-task value), a list of constants, or (x, w) for a
        weighted sum."""
        args = expr.args
        first = args[0].value
        if len(args) == 1 and isinstance(first, ast.Generator):
            if name in ("sum", "mean") and isinstance(first.element, ast.BinOp) \
                    and first.element.op == "*":
                return self._products(first, scope)
            return self.generate(first, scope)
        if len(args) == 1 and isinstance(first, ast.ListExpr):  # sum([a, b]) as sum(a, b)
            values = [(str(i), self.ev.eval(item, scope)) for i, item in enumerate(first.items)]
            return self.collect(values, first.loc, f"'{name}'")
        if len(args) == 1:
            value = self.ev.eval(first, scope)
            if isinstance(value, (Family, GraphValue)):
                return value
            if isinstance(value, list):
                return value
            if isinstance(value, tuple):
                raise self.error(first.loc, f"'{name}' got several values",
                                 "unpack them first: a, b = block(...)")
            raise self.error(first.loc, f"'{name}' takes a generator, a collection, a list or "
                                        f"several values, got {type_name(value)} {short(value)}")
        values = [(str(i), self.ev.eval(a.value, scope)) for i, a in enumerate(args)]
        return self.collect(values, expr.loc, f"'{name}'")

    def _products(self, gen: ast.Generator, scope: Scope) -> Any:
        """``sum(a * b for ...)``: one weighted sum when every term is graph * graph (weights)
        or number * graph (coefficients); otherwise a product node per term."""
        element = gen.element
        assert isinstance(element, ast.BinOp)
        terms = []
        for key, inner in self._each(gen, scope):
            terms.append((key, inner, self.ev.eval(element.left, inner),
                          self.ev.eval(element.right, inner)))
        graph_pairs = all(isinstance(a, GraphValue) and isinstance(b, GraphValue)
                          for _, _, a, b in terms)
        scaled = all(_scaled(a, b) for _, _, a, b in terms)
        if terms and (graph_pairs or scaled):
            xs, ws = Family("generator"), Family("weights")
            coeffs = []
            for key, _, a, b in terms:
                if key in xs.items:
                    raise self.error(gen.loc, f"the generator gives '{key}' twice: its loop "
                                              f"values name the entries of the collection")
                if graph_pairs:
                    ws.items[key], xs.items[key] = a, b
                else:
                    coeffs.append(float(a if is_number(a) else b))
                    xs.items[key] = b if is_number(a) else a
            return xs, (ws if graph_pairs else coeffs)
        pairs = []
        for key, inner, a, b in terms:
            if is_graph(a) or is_graph(b):
                pairs.append((key, self.operator(element, a, b, inner, None, None)))
            else:
                pairs.append((key, self.ev.apply_binop("*", a, b, element.loc)))
        return self.collect(pairs, gen.loc)

    def _constant(self, name: str, values: list, expr: ast.CallExpr) -> Any:
        """A reduction of constants; ``sum`` of nothing is 0, as in Python."""
        if not values and name != "sum":
            raise self._empty(name, expr)
        if name in ("max", "min"):
            return self.ev.apply_builtin(name, [values], expr)
        if not all(is_number(v) for v in values):
            bad = next(v for v in values if not is_number(v))
            raise self.error(expr.loc, f"'{name}' adds numbers, got {type_name(bad)} {short(bad)}")
        total = sum(values)
        return total / len(values) if name == "mean" else total

    def _empty(self, name: str, expr: ast.CallExpr) -> Poison:
        return self.error(expr.loc, f"'{name}' of no values: the generator's loop (after its "
                                    f"filter) gives none",
                          "with a single task, `for s in tasks if s != t` is empty; sum(...) of "
                          "nothing is 0, or guard it: if len(tasks) > 1 { ... }")


def _scaled(a: Any, b: Any) -> bool:
    """A number times a graph value, either way round."""
    return (is_number(a) and isinstance(b, GraphValue)) or (isinstance(a, GraphValue)
                                                            and is_number(b))
