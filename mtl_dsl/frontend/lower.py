"""Statements -> ``ModelIR``: the walk over a model's body that unrolls loops, decides ``if``s,
binds names, and declares outputs and tables; expressions are evaluated by ``consteval``, block
calls become nodes in ``calls``, files come from ``loader``, parameters from ``params``.

Errors are collected in the compilation's ``Diagnostics``, not raised one by one: a failing
statement poisons the names it would have bound (so their later uses stay quiet) and lowering goes
on, so a spec with several independent mistakes reports all of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import Diagnostic, Diagnostics, SpecError, did_you_mean
from ..ir import ModelIR, Output, ParamValue, TableEntryIR
from ..tasks import KNOWN_TASKS, TaskProfile
from . import ast
from .algebra import Algebra
from .calls import Calls
from .consteval import BUILTIN_FUNCTIONS, Evaluator
from .loader import Loader
from .loops import RESERVED_NAMES, iterations
from .naming import NodeNames
from .params import bind_model_params
from .profile import choose as choose_profile
from .values import (Family, FileScope, GraphValue, MissingTableEntry, Poison, Scope,
                     TableValue, sloc, task_hint, type_name)
from .weightmaps import WeightMaps

MAX_STEPS = 200_000
INPUT_MULTIPLE = "input_multiple"  # `input_multiple = 32` in a model: the sides it accepts


class Lowerer:
    """One compilation of one model: ``lower`` returns its IR or raises the ``SpecError`` of
    everything ``sink`` collected."""

    def __init__(self, profile: TaskProfile | None = None,
                 input_size: tuple[int, int] | None = None,
                 search_paths: list[Path] | None = None, sink: Diagnostics | None = None,
                 sources: dict[str, str] | None = None, parsed: dict | None = None):
        """``profile``/``input_size``: what the user asked for (None: the model's own profile,
        else the default one; the profile's input size). ``sources``, ``parsed``: see Loader."""
        self.sink = sink if sink is not None else Diagnostics()
        self.requested = profile
        self.requested_input = tuple(input_size) if input_size is not None else None
        self.loader = Loader(self.sink, search_paths, sources, parsed)
        self.outputs: list[Output] = []
        self.tables: list[TableEntryIR] = []
        self.steps = 0
        self.failures = 0  # statements that failed (reported, or using what failed before)
        self.discarded: list[Any] = []  # the values bound to `_` (a, _ = block(...))

    def _begin(self, profile: TaskProfile, input_size: tuple[int, int]) -> None:
        """Set up the walk for one task profile and input size."""
        self.profile = profile
        self.tasks = profile.task_names
        self.input_size = input_size
        self.explicit_input = self.requested_input is not None
        self.input_multiple: int | None = None
        self.ev = Evaluator(self.sink, profile)
        self.names = NodeNames(self.sink)
        self.calls = Calls(self.sink, self.ev, self.names, self.lower_body, lambda: self.failures)
        self.ev.graph = self.calls
        self.weight_maps = WeightMaps(self.ev, self.names, self.tasks, lambda: self.failures)
        self.calls.weight_maps = self.weight_maps
        self.ev.algebra = Algebra(self.calls)

    def error(self, loc: Any, message: str, hint: str = "", notes: tuple[str, ...] = ()) -> Poison:
        return self.ev.error(loc, message, hint, notes)

    # entry point -------------------------------------------------------------------------------
    def lower(self, path: Path, display: str, model_name: str | None = None,
              overrides: dict[str, Any] | None = None, preset: str | None = None) -> ModelIR:
        top = self.loader.load(path, display)
        self.sink.raise_if_errors()
        assert top is not None
        model = self._choose_model(top, display, model_name)
        chosen = choose_profile(self.sink, model, self.requested, self.requested_input)
        self.sink.raise_if_errors()
        assert chosen is not None
        self._begin(*chosen)
        params = bind_model_params(self.ev, model, top, overrides or {}, preset)
        self.sink.raise_if_errors()
        scope = Scope(vars={k: v.value for k, v in params.items()}, parent=None, prefix="",
                      file=top)
        self.weight_maps.enter(model.body)
        self.lower_body(model.body, scope, True)
        self._drop_discarded()
        maps = self.weight_maps.finish(model.body, scope)
        self.sink.raise_if_errors()  # a missing output is often a consequence of an earlier error
        for t in self.tasks:
            if not any(o.task == t and o.name == "final" for o in self.outputs):
                self.error(model.loc, f"model '{model.name}' gives no output for task '{t}'",
                           "assign out[t] = ... inside 'for t in tasks'")
        self.sink.raise_if_errors()
        ir = self._ir(model, display, path, params, preset)
        ir.weight_maps = maps
        return ir

    def _choose_model(self, top: FileScope, display: str, model_name: str | None) -> ast.BlockDef:
        models = top.spec.models
        if not models:
            raise SpecError(Diagnostic(display, 1, 1, f"no model in {display}",
                                       "a spec needs a 'model name(...) { ... }' to compile"))
        if model_name is None:
            return models[0]
        match = [m for m in models if m.name == model_name]
        if not match:  # a mistake of the flag: shown there, with the models there are
            names = [m.name for m in models]
            raise SpecError(Diagnostic("--model", 1, 1, f"no model named '{model_name}' in "
                                                        f"{display}",
                                       did_you_mean(model_name, names) or
                                       f"its models: {', '.join(names)}",
                                       source_line=model_name, length=max(1, len(model_name))))
        return match[0]

    def _ir(self, model: ast.BlockDef, display: str, path: Path, params: dict[str, ParamValue],
            preset: str | None) -> ModelIR:
        presets = [s.name for s in model.body if isinstance(s, ast.Preset)]
        return ModelIR(name=model.name, file=display, tasks=list(self.profile.tasks),
                       profile=self.profile.name, input_size=self.input_size, params=params,
                       preset=preset, presets=presets, nodes=self.calls.nodes,
                       outputs=self.outputs, tables=self.tables,
                       imports=self.loader.imported_files(path))

    # statements --------------------------------------------------------------------------------
    def lower_body(self, body: list[ast.Stmt], scope: Scope, in_model: bool) -> list | None:
        """Lower statements; returns the evaluated return values if a Return is reached."""
        for stmt in body:
            self._tick(stmt.loc)
            try:
                result = self._statement(stmt, scope, in_model)
                if result is not None:
                    return result
            except (Poison, MissingTableEntry) as e:
                self.failures += 1
                if isinstance(e, MissingTableEntry):
                    self.ev.missing_entry(e, stmt.loc)
                self._poison_targets(stmt, scope)
                if isinstance(stmt, ast.Return) and not in_model:  # the block call fails
                    raise Poison() from None
        return None

    def _statement(self, stmt: ast.Stmt, scope: Scope, in_model: bool) -> list | None:
        if isinstance(stmt, ast.Assign):
            self._assign(stmt, scope, in_model)
        elif isinstance(stmt, ast.For):
            self._for(stmt, scope, in_model)
        elif isinstance(stmt, ast.If):
            cond = self.ev.const(stmt.condition, scope, "an if condition")
            if not isinstance(cond, bool):
                raise self.error(stmt.condition.loc, f"an if condition must be true or "
                                                     f"false, got {type_name(cond)}")
            return self.lower_body(stmt.body if cond else stmt.orelse, scope, in_model)
        elif isinstance(stmt, ast.Return):
            if in_model:
                raise self.error(stmt.loc, "'return' is only allowed in a block",
                                 "a model's results are its out[t] outputs")
            return [self.ev.eval(v, scope) for v in stmt.values]
        elif isinstance(stmt, (ast.Preset, ast.Profile)):
            if not in_model or scope.prefix or not scope.is_function:
                word = "preset" if isinstance(stmt, ast.Preset) else "profile"
                raise self.error(stmt.loc, f"'{word}' is only allowed at the top of a model")
        elif isinstance(stmt, ast.Table):
            self._table(stmt, scope)
        elif isinstance(stmt, ast.Weights):  # read once the body is lowered (weightmaps)
            self.weight_maps.check_placement(stmt, scope)
        return None

    def _poison_targets(self, stmt: ast.Stmt, scope: Scope) -> None:
        """Later uses of what a failed statement would have bound stay quiet: the names it
        assigns, and for a loop or an ``if`` the names its bodies assign."""
        if isinstance(stmt, ast.Table):
            scope.poisoned.add(stmt.name)
        for t in _assigned(stmt):
            if t.name in RESERVED_NAMES or t.name == INPUT_MULTIPLE:
                continue
            scope.poisoned.add(t.name)
            if t.indices or not isinstance(stmt, ast.Assign):
                scope.function_scope().poisoned.add(t.name)

    def _tick(self, loc: ast.Loc) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            self.error(loc, f"the spec unrolls to more than {MAX_STEPS:,} statements")
            raise self.sink.as_error()

    def _table(self, stmt: ast.Table, scope: Scope) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for e in stmt.entries:
            for key in (e.target, e.source):
                if key != "*" and key not in KNOWN_TASKS:
                    raise self.error(e.loc, f"table '{stmt.name}': '{key}' is not a task name",
                                     task_hint(key, KNOWN_TASKS, "the language"))
            row = rows.setdefault(e.target, {})
            if e.source in row:
                raise self.error(e.loc, f"table '{stmt.name}': duplicate entry "
                                        f"{e.target} <- {e.source}")
            row[e.source] = e.value
            self.tables.append(TableEntryIR(table=stmt.name, target=e.target, source=e.source,
                                            value=e.value, loc=sloc(e.loc)))
        self._bind_name(scope, stmt.name, TableValue(stmt.name, rows, self.tasks), stmt.loc)

    def _bind_name(self, scope: Scope, name: str, value: Any, loc: ast.Loc) -> None:
        """Inside a loop, assigning a name bound outside the loop rebinds it there (so
        `for i in range(n) { y = f(y) }` accumulates); a new name is local to the iteration."""
        if name in RESERVED_NAMES:
            raise self.error(loc, f"'{name}' is reserved and cannot be assigned")
        target = scope
        while not target.is_function and name not in target.vars and target.parent is not None:
            target = target.parent
        if name not in target.vars:
            target = scope
        if target.loop_var == name:
            raise self.error(loc, f"'{name}' is a loop variable and cannot be assigned")
        target.vars[name] = value
        target.poisoned.discard(name)
        scope.poisoned.discard(name)

    def _for(self, stmt: ast.For, scope: Scope, in_model: bool) -> None:
        for _, inner in iterations(self.ev, stmt.var, stmt.iterable, stmt.condition, scope,
                                   stmt.loc):
            result = self.lower_body(stmt.body, inner, in_model)
            if result is not None:
                raise self.error(stmt.loc, "'return' inside a loop is not allowed")

    def _target_key(self, target: ast.Target, scope: Scope) -> list[str]:
        keys = []
        for idx in target.indices:
            k = self.ev.const(idx, scope, "an index")
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise self.error(idx.loc, f"an index must be a task name or an integer, got "
                                          f"{type_name(k)}")
            keys.append(str(k))
        return keys

    def _node_name(self, target: ast.Target, scope: Scope) -> str:
        if target.indices:
            parts = [target.name] + self._target_key(target, scope)
        else:
            parts = [target.name] + list(scope.suffix)
        return scope.prefix + ".".join(parts)

    def _assign(self, stmt: ast.Assign, scope: Scope, in_model: bool) -> None:
        first = stmt.targets[0]
        if first.name == INPUT_MULTIPLE and len(stmt.targets) == 1 and not first.indices:
            self._input_multiple(stmt, scope, in_model)
            return
        if first.name == "out":
            if len(stmt.targets) != 1:
                raise self.error(stmt.loc, "an output is assigned on its own: out[t] = value")
            self._output(first, stmt, scope, in_model)
            return
        for t in stmt.targets:
            if t.attr is not None:
                raise self.error(t.loc, f"'{t.name}[...].{t.attr}': only outputs take a name "
                                        f"after a dot (out[t].{t.attr})")
            if t.name in RESERVED_NAMES:
                raise self.error(t.loc, f"'{t.name}' is reserved and cannot be assigned")
        names = [self._node_name(t, scope) for t in stmt.targets]
        kept = [n for t, n in zip(stmt.targets, names) if not _discards(t)]
        if _makes_nodes(stmt.value):  # its target names them: checked here, at the target
            for name, t in zip(names, stmt.targets):
                if not _discards(t):
                    self.names.check(name, t.loc)
        # the nodes are named after the first name kept (`_, attn = ...`: attn)
        value = self.ev.eval(stmt.value, scope, node_name=(kept or names)[0], shape=stmt)
        values = list(value) if isinstance(value, tuple) else [value]
        if len(stmt.targets) != len(values):
            raise self.error(stmt.loc, f"{len(stmt.targets)} names on the left but the right side "
                                       f"gives {len(values)} value{'s' if len(values) != 1 else ''}")
        for t, v in zip(stmt.targets, values):
            if _discards(t):
                self.discarded.append(v)
                continue
            if t.indices:
                self._bind_entry(t, v, scope)
            else:
                self._bind_name(scope, t.name, v, t.loc)

    def _drop_discarded(self) -> None:
        """`_` discards a result (docs/language.md): the nodes that only compute discarded
        results of a user block (`y, _ = my_block(x)`) are left out of the graph, not reported
        as never used. A node an output or a kept value needs stays."""
        refs = [r for v in self.discarded for r in _graph_refs(v)]
        if not refs:
            return
        nodes = {n.name: n for n in self.calls.nodes}
        feeding = _ancestors([r.node for r in refs], nodes)
        # kept: what the outputs read, and what every other node reads (an unused one is
        # still reported, so its inputs must stay)
        needed = _ancestors([o.value.node for o in self.outputs] +
                            [n for n in nodes if n not in feeding], nodes)
        drop = feeding - needed
        self.calls.nodes[:] = [n for n in self.calls.nodes if n.name not in drop]

    def _bind_entry(self, t: ast.Target, v: Any, scope: Scope) -> None:
        """``d[k] = v`` (or ``c[t][s] = v``): an entry of a family, created on first use."""
        keys = self._target_key(t, scope)
        found, fam = scope.lookup(t.name)
        if found and not isinstance(fam, Family):
            raise self.error(t.loc, f"'{t.name}' is not an indexed family here "
                                    f"(it was bound to a {type_name(fam)})")
        if not found:
            fam = Family(t.name)
            scope.function_scope().vars[t.name] = fam
        container = fam
        for k in keys[:-1]:
            container = container.items.setdefault(k, Family(f"{t.name}.{k}"))
            if not isinstance(container, Family):
                raise self.error(t.loc, f"'{t.name}[{k}]' is a value, not a family")
        container.items[keys[-1]] = v

    def _input_multiple(self, stmt: ast.Assign, scope: Scope, in_model: bool) -> None:
        """The model only takes inputs whose sides are multiples of k (InvPT: 32). A profile's
        default size is padded up to it, as the official code pads NYUD 425x560 to 448x576."""
        if not in_model or scope.prefix or not scope.is_function:
            raise self.error(stmt.loc, f"'{INPUT_MULTIPLE}' is set at the top of a model")
        k = self.ev.const(stmt.value, scope, f"'{INPUT_MULTIPLE}'")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1024:
            raise self.error(stmt.value.loc, f"'{INPUT_MULTIPLE}' is an integer from 1 to 1024")
        h, w = self.input_size
        if h % k or w % k:
            if self.explicit_input:
                raise self.error(stmt.loc, f"this model takes input sides that are multiples of "
                                           f"{k}; {h}x{w} is not",
                                 f"use --input {-(-h // k) * k}x{-(-w // k) * k} (pad the images)")
            self.input_size = (-(-h // k) * k, -(-w // k) * k)
        self.input_multiple = k

    def _output(self, target: ast.Target, stmt: ast.Assign, scope: Scope, in_model: bool) -> None:
        if not in_model or scope.prefix:
            raise self.error(target.loc, "outputs (out[t]) are declared in the model, not in a "
                                         "block", "return the value from the block instead")
        keys = self._target_key(target, scope)
        if len(keys) != 1:
            raise self.error(target.loc, "an output is written out[task] or out[task].name")
        task = keys[0]
        if task not in self.tasks:
            raise self.error(target.indices[0].loc, f"unknown task '{task}'",
                             task_hint(task, self.tasks))
        name = target.attr or "final"
        value = self.ev.eval(stmt.value, scope, node_name=f"out_{name}.{task}" if name != "final"
                             else f"out.{task}", shape=stmt)
        if not isinstance(value, GraphValue):
            raise self.error(stmt.value.loc, f"out[{task}] must be a graph value (a block's "
                                             f"result), got {type_name(value)}")
        for o in self.outputs:
            if o.task == task and o.name == name:
                raise self.error(target.loc, f"output '{name}' of task '{task}' is assigned twice",
                                 notes=(f"first assigned at line {o.loc.line}",))
        self.outputs.append(Output(task=task, name=name, value=value.ref, loc=sloc(target.loc)))


def _assigned(stmt: ast.Stmt) -> list[ast.Target]:
    """The targets a statement assigns, in its nested bodies too."""
    if isinstance(stmt, ast.Assign):
        return list(stmt.targets)
    if isinstance(stmt, ast.For):
        return [t for s in stmt.body for t in _assigned(s)]
    if isinstance(stmt, ast.If):
        return [t for s in stmt.body + stmt.orelse for t in _assigned(s)]
    return []


def _makes_nodes(expr: ast.Expr) -> bool:
    """A call of a block (not of a built-in function): its nodes are named after the target."""
    return isinstance(expr, ast.CallExpr) and not (
        isinstance(expr.callee, ast.Name) and expr.callee.name in BUILTIN_FUNCTIONS)


def _discards(t: ast.Target) -> bool:
    return t.name == "_" and not t.indices and t.attr is None


def _graph_refs(value: Any) -> list:
    if isinstance(value, GraphValue):
        return [value.ref]
    if isinstance(value, Family):
        return [r for v in value.items.values() for r in _graph_refs(v)]
    return []


def _ancestors(start: list[str], nodes: dict) -> set[str]:
    """The named nodes and every node they read, transitively."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        stack.extend(r.node for r in nodes[name].refs())
    return seen
