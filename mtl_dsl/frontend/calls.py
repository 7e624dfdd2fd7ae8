"""Block calls -> graph nodes.

A call of a registered block binds its arguments to the block's signature (graph inputs and
constant parameters, each checked against its declared type) and becomes one ``Node`` of the IR.
A call of a user block is inlined: its body is lowered in a fresh scope whose node names are
prefixed with the call's target (``h.semseg.``). ``g[t]`` on a block's per-task result is a
``select`` node, shared by repeated uses.
"""
from __future__ import annotations

from typing import Any, Callable

from ..blocks import REGISTRY
from ..blocks.registry import Block, Input, Param
from ..errors import Diagnostics, did_you_mean
from ..ir import IMAGES, Node, Ref, ShapeAssertion, SourceLoc
from ..types import TaskMap
from . import ast
from .consteval import BUILTIN_FUNCTIONS, Evaluator
from .naming import MAX_NODES, NodeNames
from .params import CONST_PARAM_TYPES, GRAPH_PARAM_TYPES, coerce
from .values import (ConstantEntry, Family, GraphValue, Poison, Scope, TableRow, TableValue,
                     UserBlock, is_graph, jsonable, short, sloc, task_hint, type_name)

MAX_CALL_DEPTH = 32

# Lowers a block's body in a scope; returns its evaluated `return` values (None: no return).
BodyLowering = Callable[[list[ast.Stmt], Scope, bool], "list | None"]


class Calls:
    """Makes the graph's nodes. ``lower_body`` lowers the body of an inlined user block;
    ``failures`` counts the statements that failed so far (a block whose body had one fails)."""

    def __init__(self, sink: Diagnostics, ev: Evaluator, names: NodeNames,
                 lower_body: BodyLowering, failures: Callable[[], int]):
        self.sink = sink
        self.ev = ev
        self.names = names
        self.lower_body = lower_body
        self.failures = failures
        self.tasks = ev.tasks
        self.nodes: list[Node] = []
        self.selects: dict[tuple[str, int, str], GraphValue] = {}
        self.call_stack: list[str] = []
        self.trace: list[SourceLoc] = []  # the calls of user blocks being inlined
        self.weight_maps: Any = None  # weightmaps.WeightMaps: the maps of inlined blocks

    def error(self, loc: Any, message: str, hint: str = "", notes: tuple[str, ...] = ()) -> Poison:
        return self.ev.error(loc, message, hint, notes)

    # the GraphBuilder protocol -----------------------------------------------------------------
    def call(self, expr: ast.CallExpr, scope: Scope, node_name: str | None,
             shape: ast.Assign | None) -> Any:
        callee = expr.callee
        user, block = self._resolve_callee(callee, scope)
        if node_name is None:
            node_name = self.names.anonymous(scope.prefix, _callee_name(callee))
        if user is not None:
            result = self._inline(user, expr, scope, node_name, _via(callee, user, scope))
            if shape is not None and shape.shape is not None and shape.value is expr:
                if not isinstance(result, GraphValue) or result.ref.index != 0:
                    raise self.error(shape.shape_loc or expr.loc,
                                     "a shape assertion needs a single value")
                self._attach_assertion(result.ref.node, self.ev.shape_assertion(shape, scope))
            return result
        assert block is not None
        return self._block_call(block, expr, scope, node_name, shape)

    def select(self, value: GraphValue, key: str, loc: ast.Loc) -> GraphValue:
        """``g[t]`` on a block's per-task result: a ``select`` node (shared by repeated uses)."""
        cache_key = (value.ref.node, value.ref.index, key)
        if cache_key in self.selects:
            return self.selects[cache_key]
        base = value.ref.node.replace(".", "_") + (f"_{value.ref.index}" if value.ref.index else "")
        name = self.names.unique(f"{base}_{key}", loc)
        node = Node(name=name, block="select", inputs={"x": value.ref}, params={"key": key},
                    loc=sloc(loc), trace=list(self.trace))
        self._add_node(node)
        self.selects[cache_key] = GraphValue(Ref(node=name))
        return self.selects[cache_key]

    # callees and arguments ---------------------------------------------------------------------
    def _resolve_callee(self, callee: ast.Expr, scope: Scope) -> tuple[UserBlock | None,
                                                                       Block | None]:
        fs = scope.file
        if isinstance(callee, ast.GetAttr) and isinstance(callee.obj, ast.Name):
            ns = fs.aliases.get(callee.obj.name) if fs else None
            if ns is None:
                raise self.error(callee.obj.loc, f"unknown import alias '{callee.obj.name}'",
                                 did_you_mean(callee.obj.name, fs.aliases if fs else []))
            ub = ns.exports().get(callee.attr)
            if ub is None:
                raise self.error(callee.loc, f"'{callee.obj.name}' has no block '{callee.attr}'",
                                 did_you_mean(callee.attr, ns.exports()))
            return ub, None
        if not isinstance(callee, ast.Name):
            raise self.error(callee.loc, "only blocks can be called")
        name = callee.name
        if fs is not None and name in fs.blocks:
            return fs.blocks[name], None
        if name in REGISTRY:
            return None, REGISTRY[name]
        options = set(REGISTRY) | set(fs.blocks if fs else ()) | set(BUILTIN_FUNCTIONS)
        from ..plugins import failures

        raise self.error(callee.loc, f"unknown block '{name}'",
                         did_you_mean(name, options) or "run 'mtl-dsl blocks' to list them; a "
                         "block written in Python is loaded with --plugin module.path or by "
                         "installing its package (docs/blocks.md)", notes=tuple(failures()))

    def _bind_args(self, expr: ast.CallExpr, names: list[str], what: str,
                   scope: Scope) -> dict[str, tuple[Any, ast.Loc]]:
        bound: dict[str, tuple[Any, ast.Loc]] = {}
        positional = [a for a in expr.args if a.name is None]
        keyword_args = [a for a in expr.args if a.name is not None]
        seen_kw = False
        for a in expr.args:
            if a.name is not None:
                seen_kw = True
            elif seen_kw:
                raise self.error(a.loc, "a positional argument follows a keyword argument")
        if len(positional) > len(names):
            raise self.error(positional[len(names)].loc,
                             f"{what} takes at most {len(names)} argument"
                             f"{'s' if len(names) != 1 else ''}, got {len(positional)}")
        for name, a in zip(names, positional):
            bound[name] = (self.ev.eval(a.value, scope), a.value.loc)
        for a in keyword_args:
            assert a.name is not None
            if a.name not in names:
                raise self.error(a.loc, f"{what} has no argument '{a.name}'",
                                 did_you_mean(a.name, names) or f"arguments: {', '.join(names)}")
            if a.name in bound:
                raise self.error(a.loc, f"argument '{a.name}' is given twice")
            bound[a.name] = (self.ev.eval(a.value, scope), a.value.loc)
        return bound

    def _bind_for(self, node_name: str, expr: ast.CallExpr, names: list[str], what: str,
                  scope: Scope) -> dict[str, tuple[Any, ast.Loc]]:
        """Bind arguments with nested calls named after ``node_name``."""
        saved = self.names.current_target
        self.names.current_target = node_name
        try:
            return self._bind_args(expr, names, what, scope)
        finally:
            self.names.current_target = saved

    def _input_value(self, block: Block, arg_name: str, spec: Input, value: Any,
                     loc: ast.Loc) -> Any:
        if isinstance(value, GraphValue):
            return value.ref
        if value is None:
            if spec.optional:
                return None  # `none` where the signature says `= none`
            raise self.error(loc, f"argument '{arg_name}' of '{block.name}' is a required "
                                  f"{spec.type_name()}: it cannot be none")
        if isinstance(value, Family):
            if TaskMap not in spec.kinds:
                raise self.error(loc, f"argument '{arg_name}' of '{block.name}' takes a "
                                      f"{spec.type_name()}, not a per-task collection",
                                 f"select one entry, e.g. {value.name}[t]")
            try:
                return value.to_collection()
            except ConstantEntry as e:
                raise self.error(loc, f"argument '{arg_name}' of '{block.name}' takes a "
                                      f"collection of graph values, but {e.describe()}",
                                 "a collection given to a block holds block results") from None
        if isinstance(value, tuple):
            raise self.error(loc, f"argument '{arg_name}' of '{block.name}' got several values",
                             "unpack them first: a, b = block(...)")
        raise self.error(loc, f"argument '{arg_name}' of '{block.name}' takes a graph value "
                              f"({spec.type_name()}), got the constant {short(value)}")

    def _param_value(self, block: Block, arg_name: str, spec: Param, value: Any,
                     loc: ast.Loc) -> Any:
        if is_graph(value):
            raise self.error(loc, f"argument '{arg_name}' of '{block.name}' is a constant "
                                  f"({spec.type_name()}), not a graph value")
        if isinstance(value, (TableValue, TableRow)):
            value = value.to_json()
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = spec.check(value)
        if problem:
            raise self.error(loc, f"argument '{arg_name}' of '{block.name}': {problem}",
                             spec.doc and f"{arg_name}: {spec.doc}")
        if spec.type == "task" and value not in self.tasks:
            raise self.error(loc, f"unknown task '{value}'", task_hint(str(value), self.tasks))
        return jsonable(value)

    # registered blocks -------------------------------------------------------------------------
    def _block_call(self, block: Block, expr: ast.CallExpr, scope: Scope, node_name: str,
                    shape: ast.Assign | None) -> Any:
        name = self.names.unique(node_name, expr.loc)
        bound = self._bind_for(name, expr, list(block.args), f"block '{block.name}'", scope)
        inputs: dict[str, Any] = {}
        params: dict[str, Any] = {}
        defaulted: list[str] = []
        missing = []
        for arg_name, spec in block.args.items():
            if isinstance(spec, Input):
                if arg_name not in bound:
                    if spec.default == "images":
                        inputs[arg_name] = Ref(node=IMAGES)
                    elif spec.optional:
                        inputs[arg_name] = None
                    else:
                        missing.append(arg_name)
                    continue
                value, loc = bound[arg_name]
                inputs[arg_name] = self._input_value(block, arg_name, spec, value, loc)
            else:
                if arg_name not in bound:
                    if spec.required:
                        missing.append(arg_name)
                    else:
                        params[arg_name] = spec.default
                        defaulted.append(arg_name)
                    continue
                value, loc = bound[arg_name]
                params[arg_name] = self._param_value(block, arg_name, spec, value, loc)
        if missing:
            raise self.error(expr.loc, f"block '{block.name}' is missing required argument"
                                       f"{'s' if len(missing) > 1 else ''} "
                                       f"{', '.join(repr(m) for m in missing)}",
                             f"signature: {block.signature()}")
        assertion = None
        if shape is not None and shape.shape is not None and shape.value is expr:
            assertion = self.ev.shape_assertion(shape, scope)
        if len(self.nodes) >= MAX_NODES:
            self.sink.error(expr.loc, f"the model has more than {MAX_NODES:,} nodes")
            raise self.sink.as_error()
        node = Node(name=name, block=block.name, inputs=inputs, params=params,
                    loc=sloc(expr.loc), trace=list(self.trace), num_outputs=len(block.outputs),
                    shape=assertion, defaulted=defaulted)
        self._add_node(node)
        if len(block.outputs) == 1:
            return GraphValue(Ref(node=name))
        return tuple(GraphValue(Ref(node=name, index=i)) for i in range(len(block.outputs)))

    def _add_node(self, node: Node) -> None:
        self.nodes.append(node)
        self.names.add(node.name)

    def _attach_assertion(self, node_name: str, assertion: ShapeAssertion) -> None:
        for i, n in enumerate(self.nodes):
            if n.name == node_name:
                self.nodes[i] = n.model_copy(update={"shape": assertion})
                return
        raise self.error(assertion.loc, "a shape assertion needs a block's result, not the input")

    # user blocks -------------------------------------------------------------------------------
    def _inline(self, user: UserBlock, expr: ast.CallExpr, scope: Scope, node_name: str,
                via: tuple[str, ...] = ()) -> Any:
        d = user.definition
        if d.name in self.call_stack or len(self.call_stack) >= MAX_CALL_DEPTH:
            chain = " -> ".join(self.call_stack[self.call_stack.index(d.name):] + [d.name]) \
                if d.name in self.call_stack else "too deep"
            raise self.error(expr.loc, f"block '{d.name}' calls itself ({chain})",
                             "blocks cannot be recursive: the graph would be a cycle")
        bound = self._bind_for(node_name, expr, [p.name for p in d.params], f"block '{d.name}'",
                               scope)
        defaults_scope = Scope(vars={}, parent=None, prefix="", file=user.module)
        local: dict[str, Any] = {}
        missing = []
        for p in d.params:
            if p.name in bound:
                value, loc = bound[p.name]
            elif p.default is not None:
                value, loc = self.ev.eval(p.default, defaults_scope), p.default.loc
            else:
                missing.append(p.name)
                continue
            if p.type is not None:
                value = self._check_user_param(d, p, value, loc)
            local[p.name] = value
        if missing:
            raise self.error(expr.loc, f"block '{d.name}' is missing required argument"
                                       f"{'s' if len(missing) > 1 else ''} "
                                       f"{', '.join(repr(m) for m in missing)}")
        inner = Scope(vars=local, parent=None, prefix=node_name + ".", file=user.module)
        self.call_stack.append(d.name)
        self.trace.append(sloc(expr.loc))
        maps = self.weight_maps
        if maps is not None:
            maps.enter(d.body)
        try:
            before = self.failures()
            result = self.lower_body(d.body, inner, False)
            if self.failures() > before:
                raise Poison()
            if maps is not None:
                maps.leave(d.body, inner, node_name, via)
                maps = None
        finally:
            if maps is not None:
                maps.discard()
            self.call_stack.pop()
            self.trace.pop()
        if result is None:
            raise self.error(d.loc, f"block '{d.name}' has no 'return'",
                             "end the block with: return value")
        return result[0] if len(result) == 1 else tuple(result)

    def _check_user_param(self, d: ast.BlockDef, p: ast.ParamDef, value: Any,
                          loc: ast.Loc) -> Any:
        t = p.type
        assert t is not None
        if t in CONST_PARAM_TYPES:
            if is_graph(value):
                raise self.error(loc, f"argument '{p.name}' of '{d.name}' is a constant ({t}), "
                                      f"not a graph value")
            return coerce(self.ev, value, t, loc, f"argument '{p.name}' of '{d.name}'")
        if t in GRAPH_PARAM_TYPES:
            if value is None and isinstance(p.default, ast.Const) and p.default.value is None:
                return value  # `x: map = none`: an optional graph value
            if t == "taskmap" and not isinstance(value, Family):
                raise self.error(loc, f"argument '{p.name}' of '{d.name}' takes a per-task "
                                      f"collection")
            if t != "taskmap" and t != "any" and not isinstance(value, GraphValue):
                raise self.error(loc, f"argument '{p.name}' of '{d.name}' takes a graph value "
                                      f"({t}), got {type_name(value)}")
            return value
        raise self.error(p.loc, f"unknown type '{t}'",
                         did_you_mean(t, set(CONST_PARAM_TYPES) | GRAPH_PARAM_TYPES))


def _via(callee: ast.Expr, user: UserBlock, scope: Scope) -> tuple[str, ...]:
    """The import a user block is called through (its alias, and its file's name when it is
    another file's): what ``train --init demt=FILE`` selects the block's weight entries by."""
    from pathlib import Path

    via = []
    if isinstance(callee, ast.GetAttr) and isinstance(callee.obj, ast.Name):
        via.append(callee.obj.name)
    if scope.file is not None and user.module is not scope.file:
        via.append(Path(user.module.spec.path).stem)
    return tuple(dict.fromkeys(via))


def _callee_name(callee: ast.Expr) -> str:
    if isinstance(callee, ast.Name):
        return callee.name
    if isinstance(callee, ast.GetAttr):
        return callee.attr
    return "call"
