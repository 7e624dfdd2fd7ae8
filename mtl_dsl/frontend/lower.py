"""Syntax tree -> ``ModelIR``: resolve imports, apply presets and overrides, evaluate constants,
unroll loops, decide ``if``s, inline user blocks and bind every block call to its signature.

Errors are collected, not raised one by one: a failing statement poisons the names it would have
bound (so their later uses stay quiet) and lowering goes on, so a spec with several independent
mistakes reports all of them.
"""
from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..blocks import REGISTRY
from ..blocks.registry import Block, Input, Param, _short
from ..errors import Diagnostic, SpecError, did_you_mean
from ..ir import (IMAGES, CollectionRef, ModelIR, Node, Output, ParamValue, Ref, ShapeAssertion,
                  SourceLoc, TableEntryIR)
from ..tasks import TaskProfile
from ..types import TaskMap, Dim
from . import ast
from .parser import parse_file

BUILTIN_SPECS = Path(__file__).resolve().parent.parent.parent / "specs"
PACKAGED_SPECS = Path(__file__).resolve().parent.parent / "specs"
MAX_INT = 2 ** 53
MAX_LIST = 10_000
MAX_NODES = 20_000
MAX_STEPS = 200_000
MAX_CALL_DEPTH = 32

RESERVED_NAMES = {"out", "images", "tasks"}
INPUT_MULTIPLE = "input_multiple"  # `input_multiple = 32` in a model: the sides it accepts
# Attributes of every torch module (and of the compiled model): a node may not be named after one.
MODULE_ATTRIBUTES = {
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children",
    "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward",
    "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half", "ipu",
    "load_state_dict", "modules", "mtia", "named_buffers", "named_children", "named_modules",
    "named_parameters", "parameters", "register_backward_hook", "register_buffer",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "smart_apply", "state_dict", "to",
    "to_empty", "train", "training", "type", "xpu", "zero_grad", "graph", "code", "recompile",
    "print_readable", "to_folder", "meta", "ir", "profile", "idle_parameters", "output_names",
    "checked", "input_size", "summary",
}
GRAPH_PARAM_TYPES = {"map", "tokens", "multiscale", "attention", "taskmap", "any"}
CONST_PARAM_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list,
                     "dict": dict}


class _Poison(Exception):
    """Aborts the current statement after its error was recorded (or because it used a name
    whose own statement failed)."""


# -- values during evaluation ---------------------------------------------------------------------

@dataclass(frozen=True)
class GraphValue:
    ref: Ref


@dataclass
class Family:
    """An indexed family ``d[k]`` of graph values (or nested families)."""

    name: str
    items: dict[str, Any] = field(default_factory=dict)

    def to_collection(self) -> CollectionRef:
        out: dict[str, Any] = {}
        for k, v in self.items.items():
            out[k] = v.to_collection() if isinstance(v, Family) else v.ref
        return CollectionRef(items=out)


class MissingTableEntry(ValueError):
    """A table lookup ``table[target][source]`` with neither an entry nor a ``*`` default."""


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
        raise MissingTableEntry(f"table '{self.name}' has no entry {target} <- {source}")

    def row(self, target: str) -> "TableRow":
        return TableRow(self, target)

    def to_json(self) -> dict:
        return {t: {s: self.lookup(t, s) for s in self.tasks} for t in self.tasks}


@dataclass
class TableRow:
    table: TableValue
    target: str

    def to_json(self) -> dict:
        return {s: self.table.lookup(self.target, s) for s in self.table.tasks}


@dataclass
class UserBlock:
    definition: ast.BlockDef
    module: "_FileScope"


@dataclass
class _FileScope:
    """What names a spec file sees: its own blocks, flat imports, aliased imports."""

    spec: ast.SpecFile
    blocks: dict[str, UserBlock] = field(default_factory=dict)
    aliases: dict[str, "_FileScope"] = field(default_factory=dict)

    def exports(self) -> dict[str, UserBlock]:
        return self.blocks


@dataclass
class Scope:
    vars: dict[str, Any]
    parent: "Scope | None"
    prefix: str  # node-name prefix ("" at model level, "h.semseg." inside an inlined block)
    suffix: tuple[str, ...] = ()  # loop values: names bound in a loop get ".<value>" appended
    is_function: bool = True
    file: _FileScope | None = None
    loop_var: str | None = None
    poisoned: set[str] = field(default_factory=set)

    def lookup(self, name: str) -> tuple[bool, Any]:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.poisoned:
                raise _Poison()
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


def _sloc(loc: ast.Loc) -> SourceLoc:
    return SourceLoc(file=loc.file, line=loc.line, column=loc.column, length=loc.length)


# -- the lowering ---------------------------------------------------------------------------------

class Lowerer:
    def __init__(self, profile: TaskProfile, input_size: tuple[int, int] | None = None,
                 search_paths: list[Path] | None = None):
        self.profile = profile
        self.tasks = profile.task_names
        self.input_size = tuple(input_size or profile.input_size)
        self.explicit_input = input_size is not None
        self.input_multiple: int | None = None
        self.search_paths = search_paths if search_paths is not None else _default_search_paths()
        self.errors: list[Diagnostic] = []
        self.sources: dict[str, list[str]] = {}
        self.files: dict[str, _FileScope] = {}
        self.loading: list[str] = []
        self.nodes: list[Node] = []
        self.node_names: set[str] = set()
        self.outputs: list[Output] = []
        self.tables: list[TableEntryIR] = []
        self.call_stack: list[str] = []
        self.selects: dict[tuple[str, int, str], GraphValue] = {}
        self.name_prefixes: set[str] = set()  # every proper dotted prefix of a node name
        self.trace: list[SourceLoc] = []
        self.steps = 0

    # errors ------------------------------------------------------------------------------------
    def error(self, loc: ast.Loc | SourceLoc, message: str, hint: str = "",
              notes: tuple[str, ...] = ()) -> _Poison:
        lines = self.sources.get(loc.file, [])
        text = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
        self.errors.append(Diagnostic(loc.file, loc.line, loc.column, message, hint, text,
                                      loc.length, notes))
        return _Poison()

    def _raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(self.errors)

    # files and imports -------------------------------------------------------------------------
    def load(self, path: Path, display: str) -> _FileScope:
        key = str(path.resolve())
        if key in self.files:
            return self.files[key]
        spec = parse_file(path, display)
        self.sources[display] = spec.source.split("\n")
        scope = _FileScope(spec)
        self.loading.append(key)
        for imp in spec.imports:
            self._import(scope, imp, path.parent)
        for b in spec.blocks:
            if b.name in REGISTRY:
                self.error(b.loc, f"block '{b.name}' is already a built-in block",
                           "choose another name for your block")
            elif b.name in scope.blocks and scope.blocks[b.name].definition is not b:
                prev = scope.blocks[b.name].definition.loc
                self.error(b.loc, f"duplicate block name '{b.name}'",
                           notes=(f"first defined at {prev.file}:{prev.line}",))
            else:
                scope.blocks[b.name] = UserBlock(b, scope)
        seen_models: dict[str, ast.BlockDef] = {}
        for m in spec.models:
            if m.name in seen_models:
                self.error(m.loc, f"duplicate model name '{m.name}'",
                           notes=(f"first defined at line {seen_models[m.name].loc.line}",))
            seen_models[m.name] = m
        self.loading.pop()
        self.files[key] = scope
        return scope

    def _import(self, scope: _FileScope, imp: ast.Import, base: Path) -> None:
        if not imp.path.endswith(".mtl"):
            self.error(imp.loc, f"cannot import '{imp.path}': imports must name a .mtl spec file")
            return
        candidates = [base / imp.path] + [d / imp.path for d in self.search_paths]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            self.error(imp.loc, f"import not found: '{imp.path}'",
                       f"looked in {base} and the built-in specs folder")
            return
        key = str(found.resolve())
        if key in self.loading:
            chain = " -> ".join(Path(k).name for k in self.loading[self.loading.index(key):])
            self.error(imp.loc, f"circular import of '{imp.path}' ({chain} -> {found.name})")
            return
        display = str(found) if not found.is_absolute() else _display_path(found)
        try:
            imported = self.load(found, display)
        except SpecError as e:
            self.errors.extend(e.diagnostics)
            return
        if imp.alias:
            if imp.alias in scope.aliases:
                self.error(imp.loc, f"duplicate import alias '{imp.alias}'")
            scope.aliases[imp.alias] = imported
            return
        for name, ub in imported.exports().items():
            existing = scope.blocks.get(name)
            if existing is not None and existing.definition is not ub.definition:
                self.error(imp.loc, f"block '{name}' imported from '{imp.path}' conflicts with "
                                    f"another block of that name",
                           notes=(f"the other is defined at {existing.definition.loc.file}:"
                                  f"{existing.definition.loc.line}",),
                           hint=f"import it with an alias: import \"{imp.path}\" as name")
                continue
            scope.blocks[name] = ub

    # entry point -------------------------------------------------------------------------------
    def lower(self, path: Path, display: str, model_name: str | None = None,
              overrides: dict[str, Any] | None = None, preset: str | None = None,
              override_locs: dict[str, ast.Loc] | None = None) -> ModelIR:
        top = self.load(path, display)
        self._raise_if_errors()
        models = top.spec.models
        if not models:
            raise SpecError(Diagnostic(display, 1, 1, f"no model in {display}",
                                       "a spec needs a 'model name(...) { ... }' to compile"))
        if model_name is None:
            model = models[0]
        else:
            match = [m for m in models if m.name == model_name]
            if not match:
                raise SpecError(Diagnostic(display, 1, 1, f"no model named '{model_name}' in "
                                           f"{display}", did_you_mean(model_name,
                                                                      [m.name for m in models])))
            model = match[0]
        params = self._model_params(model, top, overrides or {}, preset, override_locs or {})
        self._raise_if_errors()
        scope = Scope(vars={k: v.value for k, v in params.items()}, parent=None, prefix="",
                      file=top)
        self._lower_body(model.body, scope, in_model=True)
        self._raise_if_errors()  # a missing output is often a consequence of an earlier error
        for t in self.tasks:
            if not any(o.task == t and o.name == "final" for o in self.outputs):
                self.error(model.loc, f"model '{model.name}' gives no output for task '{t}'",
                           "assign out[t] = ... inside 'for t in tasks'")
        self._raise_if_errors()
        presets = [s.name for s in model.body if isinstance(s, ast.Preset)]
        return ModelIR(name=model.name, file=display, tasks=list(self.profile.tasks),
                       profile=self.profile.name, input_size=self.input_size, params=params,
                       preset=preset, presets=presets, nodes=self.nodes, outputs=self.outputs,
                       tables=self.tables,
                       imports=sorted(k for k in self.files if k != str(path.resolve())))

    def _model_params(self, model: ast.BlockDef, top: _FileScope, overrides: dict[str, Any],
                      preset: str | None, override_locs: dict[str, ast.Loc]) -> dict[str, ParamValue]:
        builtins = Scope(vars={}, parent=None, prefix="", file=top)
        values: dict[str, ParamValue] = {}
        for p in model.params:
            if p.name in values:
                self.error(p.loc, f"duplicate parameter '{p.name}'")
                continue
            if p.default is None:
                self.error(p.loc, f"model parameter '{p.name}' needs a default value",
                           f"write {p.name} = <value>")
                continue
            try:
                value = self.const(p.default, builtins, "a parameter default")
            except _Poison:
                continue
            type_name = p.type or _type_name(value)
            if p.type is not None and p.type not in CONST_PARAM_TYPES:
                self.error(p.loc, f"unknown type '{p.type}' for model parameter '{p.name}'",
                           did_you_mean(p.type, CONST_PARAM_TYPES) or
                           f"model parameters are {', '.join(CONST_PARAM_TYPES)}")
                continue
            value = self._coerce(value, type_name, p.default.loc, f"parameter '{p.name}'")
            values[p.name] = ParamValue(value=_jsonable(value), type=type_name, origin="default",
                                        loc=_sloc(p.loc))
        presets = {s.name: s for s in model.body if isinstance(s, ast.Preset)}
        if preset is not None:
            if preset not in presets:
                loc = override_locs.get("--preset", ast.Loc("<command line>", 1, 1))
                self.error(loc, f"model '{model.name}' has no preset '{preset}'",
                           did_you_mean(preset, presets) or
                           (f"presets: {', '.join(presets)}" if presets else "it has no presets"))
            else:
                for arg in presets[preset].values:
                    self._set_param(values, arg.name, arg.value, arg.loc, "preset", builtins,
                                    model)
        for name, value in overrides.items():
            loc = override_locs.get(name, ast.Loc("<command line>", 1, 1))
            self._set_param(values, name, ast.Const(value, loc), loc, "set", builtins, model)
        # presets must name real parameters even when not selected
        for s in presets.values():
            for arg in s.values:
                if arg.name is not None and arg.name not in values:
                    self.error(arg.loc, f"preset '{s.name}' sets unknown parameter '{arg.name}'",
                               did_you_mean(arg.name, values))
        return values

    def _set_param(self, values: dict[str, ParamValue], name: str | None, expr: ast.Expr,
                   loc: ast.Loc, origin: str, scope: Scope, model: ast.BlockDef) -> None:
        if name is None or name not in values:
            if origin == "set":
                self.error(loc, f"model '{model.name}' has no parameter '{name}'",
                           did_you_mean(name or "", values) or
                           f"parameters: {', '.join(values)}")
            return
        try:
            value = self.const(expr, scope, f"parameter '{name}'")
        except _Poison:
            return
        old = values[name]
        value = self._coerce(value, old.type, loc, f"parameter '{name}'")
        values[name] = ParamValue(value=_jsonable(value), type=old.type, origin=origin,  # type: ignore[arg-type]
                                  loc=old.loc)

    def _coerce(self, value: Any, type_name: str, loc: ast.Loc, what: str) -> Any:
        want = CONST_PARAM_TYPES.get(type_name)
        if want is None:
            return value
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if value is None:
            return value
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is list and isinstance(value, (TableValue, TableRow)):
            ok = False
        if not ok:
            raise self.error(loc, f"{what} must be {type_name}, got {_type_name(value)} "
                                  f"{_short(value)}")
        return value

    # statements --------------------------------------------------------------------------------
    def _lower_body(self, body: list[ast.Stmt], scope: Scope, in_model: bool) -> list | None:
        """Lower statements; returns the evaluated return values if a Return is reached."""
        for stmt in body:
            self._tick(stmt.loc)
            try:
                if isinstance(stmt, ast.Assign):
                    self._assign(stmt, scope, in_model)
                elif isinstance(stmt, ast.For):
                    self._for(stmt, scope, in_model)
                elif isinstance(stmt, ast.If):
                    cond = self.const(stmt.condition, scope, "an if condition")
                    if not isinstance(cond, bool):
                        raise self.error(stmt.condition.loc, f"an if condition must be true or "
                                                             f"false, got {_type_name(cond)}")
                    result = self._lower_body(stmt.body if cond else stmt.orelse, scope, in_model)
                    if result is not None:
                        return result
                elif isinstance(stmt, ast.Return):
                    if in_model:
                        raise self.error(stmt.loc, "'return' is only allowed in a block",
                                         "a model's results are its out[t] outputs")
                    return [self.eval(v, scope) for v in stmt.values]
                elif isinstance(stmt, ast.Preset):
                    if not in_model or scope.prefix or not scope.is_function:
                        raise self.error(stmt.loc, "'preset' is only allowed at the top of a model")
                elif isinstance(stmt, ast.Table):
                    self._table(stmt, scope)
            except MissingTableEntry as e:
                self.error(stmt.loc, str(e), "add the entry, or a default row/column '*'")
                self._poison_targets(stmt, scope)
            except _Poison:
                self._poison_targets(stmt, scope)
                if isinstance(stmt, ast.Return):
                    raise
        return None

    def _poison_targets(self, stmt: ast.Stmt, scope: Scope) -> None:
        """Later uses of what a failed statement would have bound stay quiet."""
        if isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                scope.poisoned.add(t.name)
                if t.indices:
                    scope.function_scope().poisoned.add(t.name)

    def _tick(self, loc: ast.Loc) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            self.error(loc, f"the spec unrolls to more than {MAX_STEPS:,} statements")
            raise SpecError(self.errors)

    def _table(self, stmt: ast.Table, scope: Scope) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for e in stmt.entries:
            for key in (e.target, e.source):
                if key != "*" and key not in _ALL_TASKS:
                    raise self.error(e.loc, f"table '{stmt.name}': '{key}' is not a task name",
                                     did_you_mean(key, _ALL_TASKS))
            row = rows.setdefault(e.target, {})
            if e.source in row:
                raise self.error(e.loc, f"table '{stmt.name}': duplicate entry "
                                        f"{e.target} <- {e.source}")
            row[e.source] = e.value
            self.tables.append(TableEntryIR(table=stmt.name, target=e.target, source=e.source,
                                            value=e.value, loc=_sloc(e.loc)))
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
        items = self.const(stmt.iterable, scope, "a for loop")
        if isinstance(items, (TableRow, TableValue)):
            items = list(self.tasks)
        if not isinstance(items, list):
            raise self.error(stmt.iterable.loc, f"a for loop runs over a list, got "
                                                f"{_type_name(items)}")
        if stmt.var in RESERVED_NAMES:
            raise self.error(stmt.loc, f"'{stmt.var}' is reserved and cannot be a loop variable")
        for item in items:
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise self.error(stmt.iterable.loc, f"a for loop runs over names or integers, "
                                                    f"got {_type_name(item)} {_short(item)}")
            inner = Scope(vars={stmt.var: item}, parent=scope, prefix=scope.prefix,
                          suffix=scope.suffix + (str(item),), is_function=False, file=scope.file,
                          loop_var=stmt.var)
            if stmt.condition is not None:
                cond = self.const(stmt.condition, inner, "a loop condition")
                if not isinstance(cond, bool):
                    raise self.error(stmt.condition.loc, "a loop condition must be true or false")
                if not cond:
                    continue
            result = self._lower_body(stmt.body, inner, in_model)
            if result is not None:
                raise self.error(stmt.loc, "'return' inside a loop is not allowed")

    def _target_key(self, target: ast.Target, scope: Scope) -> list[str]:
        keys = []
        for idx in target.indices:
            k = self.const(idx, scope, "an index")
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise self.error(idx.loc, f"an index must be a task name or an integer, got "
                                          f"{_type_name(k)}")
            keys.append(str(k))
        return keys

    def _assign(self, stmt: ast.Assign, scope: Scope, in_model: bool) -> None:
        first = stmt.targets[0]
        if first.name == INPUT_MULTIPLE and len(stmt.targets) == 1 and not first.indices:
            self._input_multiple(stmt, scope, in_model)
            return
        # outputs
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
        value = self.eval(stmt.value, scope, node_name=names[0], shape=stmt)
        values = list(value) if isinstance(value, tuple) else [value]
        if len(stmt.targets) != len(values):
            raise self.error(stmt.loc, f"{len(stmt.targets)} names on the left but the right side "
                                       f"gives {len(values)} value{'s' if len(values) != 1 else ''}")
        for t, v in zip(stmt.targets, values):
            if t.name == "_" and not t.indices:
                continue
            if t.indices:
                keys = self._target_key(t, scope)
                found, fam = scope.lookup(t.name)
                if found and not isinstance(fam, Family):
                    raise self.error(t.loc, f"'{t.name}' is not an indexed family here "
                                            f"(it was bound to a {_type_name(fam)})")
                if not found:
                    fam = Family(t.name)
                    scope.function_scope().vars[t.name] = fam
                container = fam
                for k in keys[:-1]:
                    container = container.items.setdefault(k, Family(f"{t.name}.{k}"))
                    if not isinstance(container, Family):
                        raise self.error(t.loc, f"'{t.name}[{k}]' is a value, not a family")
                container.items[keys[-1]] = v
            else:
                self._bind_name(scope, t.name, v, t.loc)

    def _input_multiple(self, stmt: ast.Assign, scope: Scope, in_model: bool) -> None:
        """The model only takes inputs whose sides are multiples of k (InvPT: 32). A profile's
        default size is padded up to it, as the official code pads NYUD 425x560 to 448x576."""
        if not in_model or scope.prefix or not scope.is_function:
            raise self.error(stmt.loc, f"'{INPUT_MULTIPLE}' is set at the top of a model")
        k = self.const(stmt.value, scope, f"'{INPUT_MULTIPLE}'")
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

    def _node_name(self, target: ast.Target, scope: Scope) -> str:
        if target.indices:
            parts = [target.name] + self._target_key(target, scope)
        else:
            parts = [target.name] + list(scope.suffix)
        base = scope.prefix + ".".join(parts)
        return base

    def _unique(self, name: str, loc: ast.Loc) -> str:
        first = name.split(".")[0]
        if first in MODULE_ATTRIBUTES or keyword.iskeyword(first):
            raise self.error(loc, f"'{first}' cannot name a node: it is an attribute of every "
                                  f"torch module", "pick another name")
        if name not in self.node_names and not self._prefix_clash(name):
            return name
        if self._prefix_clash(name):
            # `y` is a node and a loop rebinds it as `y.0`: flatten to `y_0`.
            name = name.replace(".", "_")
            if name not in self.node_names and not self._prefix_clash(name):
                return name
        for i in range(2, MAX_NODES + 2):
            candidate = f"{name}_{i}"
            if candidate not in self.node_names and not self._prefix_clash(candidate):
                return candidate
        raise self.error(loc, f"cannot find a free node name for '{name}'")

    def _prefix_clash(self, name: str) -> bool:
        """A node's module path may not be a prefix of another's (x and x.y)."""
        parts = name.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in self.node_names:
                return True
        return name in self.name_prefixes

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
                             did_you_mean(task, self.tasks) or
                             f"tasks of this profile: {', '.join(self.tasks)}")
        name = target.attr or "final"
        value = self.eval(stmt.value, scope, node_name=f"out_{name}.{task}" if name != "final"
                          else f"out.{task}", shape=stmt)
        if not isinstance(value, GraphValue):
            raise self.error(stmt.value.loc, f"out[{task}] must be a graph value (a block's "
                                             f"result), got {_type_name(value)}")
        for o in self.outputs:
            if o.task == task and o.name == name:
                raise self.error(target.loc, f"output '{name}' of task '{task}' is assigned twice",
                                 notes=(f"first assigned at line {o.loc.line}",))
        self.outputs.append(Output(task=task, name=name, value=value.ref, loc=_sloc(target.loc)))

    # expressions -------------------------------------------------------------------------------
    def const(self, expr: ast.Expr, scope: Scope, what: str) -> Any:
        value = self.eval(expr, scope)
        if isinstance(value, (GraphValue, Family, tuple)):
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
            v = self.const(expr.operand, scope, f"'{expr.op}'")
            if expr.op == "not":
                if not isinstance(v, bool):
                    raise self.error(expr.loc, f"'not' needs true or false, got {_type_name(v)}")
                return not v
            if not _is_number(v):
                raise self.error(expr.loc, f"cannot negate {_type_name(v)}")
            return -v
        if isinstance(expr, ast.BoolOp):
            left = self.const(expr.left, scope, f"'{expr.op}'")
            if not isinstance(left, bool):
                raise self.error(expr.left.loc, f"'{expr.op}' needs true or false, got "
                                                f"{_type_name(left)}")
            if expr.op == "and" and not left:
                return False
            if expr.op == "or" and left:
                return True
            right = self.const(expr.right, scope, f"'{expr.op}'")
            if not isinstance(right, bool):
                raise self.error(expr.right.loc, f"'{expr.op}' needs true or false, got "
                                                 f"{_type_name(right)}")
            return right
        if isinstance(expr, ast.Compare):
            return self._compare(expr, scope)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, scope)
        if isinstance(expr, ast.GetItem):
            return self._getitem(expr, scope)
        if isinstance(expr, ast.GetAttr):
            raise self.error(expr.loc, f"'.{expr.attr}' is only used to call a block of an "
                                       f"aliased import (alias.block(...))")
        if isinstance(expr, ast.CallExpr):
            return self._call(expr, scope, node_name, shape)
        raise self.error(getattr(expr, "loc"), "unsupported expression")

    def _plain(self, value: Any, loc: ast.Loc) -> Any:
        if isinstance(value, (GraphValue, Family, tuple)):
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
        raise self.error(expr.loc, f"unknown name '{expr.name}'", hint)

    def _compare(self, expr: ast.Compare, scope: Scope) -> bool:
        left = self.const(expr.left, scope, f"'{expr.op}'")
        right = self.const(expr.right, scope, f"'{expr.op}'")
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
                                                     f"right, got {_type_name(right)}")
                if isinstance(right, str) and not isinstance(left, str):
                    raise self.error(expr.left.loc, f"'{op}' a string needs a string on the left")
                result = left in right
                return result if op == "in" else not result
            if not (_is_number(left) and _is_number(right)) and not (
                    isinstance(left, str) and isinstance(right, str)):
                raise self.error(expr.loc, f"cannot compare {_type_name(left)} and "
                                           f"{_type_name(right)} with '{op}'")
            return {"<": left < right, "<=": left <= right, ">": left > right,
                    ">=": left >= right}[op]
        except TypeError:
            raise self.error(expr.loc, f"cannot compare {_type_name(left)} and "
                                       f"{_type_name(right)}") from None

    def _binop(self, expr: ast.BinOp, scope: Scope) -> Any:
        left = self.const(expr.left, scope, f"'{expr.op}'")
        right = self.const(expr.right, scope, f"'{expr.op}'")
        op = expr.op
        if _is_number(left) and _is_number(right):
            if op in ("/", "//", "%") and right == 0:
                raise self.error(expr.loc, "division by zero")
            result = {"+": lambda: left + right, "-": lambda: left - right,
                      "*": lambda: left * right, "/": lambda: left / right,
                      "//": lambda: left // right, "%": lambda: left % right}[op]()
            if isinstance(result, int) and abs(result) > MAX_INT:
                raise self.error(expr.loc, f"integer result {result:.3g} is too large")
            if isinstance(result, float) and not math.isfinite(result):
                raise self.error(expr.loc, "result is not a finite number")
            return result
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > 10_000:
                raise self.error(expr.loc, "string too long")
            return left + right
        if op == "+" and isinstance(left, list) and isinstance(right, list):
            if len(left) + len(right) > MAX_LIST:
                raise self.error(expr.loc, f"list longer than {MAX_LIST:,} items")
            return left + right
        if op == "*" and isinstance(left, list) and isinstance(right, int) \
                and not isinstance(right, bool):
            if len(left) * max(0, right) > MAX_LIST:
                raise self.error(expr.loc, f"list longer than {MAX_LIST:,} items")
            return left * right
        raise self.error(expr.loc, f"cannot apply '{op}' to {_type_name(left)} and "
                                   f"{_type_name(right)}")

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
            return self._select(obj, str(key), expr.loc)
        raise self.error(expr.loc, f"cannot index {_type_name(obj)}")

    # calls -------------------------------------------------------------------------------------
    def _call(self, expr: ast.CallExpr, scope: Scope, node_name: str | None,
              shape: ast.Assign | None) -> Any:
        callee = expr.callee
        if isinstance(callee, ast.Name) and callee.name in BUILTIN_FUNCTIONS:
            found, _ = scope.lookup(callee.name)
            if not found:
                return self._builtin(callee.name, expr, scope)
        user, block = self._resolve_callee(callee, scope)
        if node_name is None:
            node_name = self._anonymous_name(scope, _callee_name(callee))
        if user is not None:
            result = self._inline(user, expr, scope, node_name)
            if shape is not None and shape.shape is not None and shape.value is expr:
                if not isinstance(result, GraphValue) or result.ref.index != 0:
                    raise self.error(shape.shape_loc or expr.loc,
                                     "a shape assertion needs a single value")
                self._attach_assertion(result.ref.node, self._shape_assertion(shape, scope))
            return result
        assert block is not None
        return self._block_call(block, expr, scope, node_name, shape)

    def _anonymous_name(self, scope: Scope, block: str) -> str:
        """A call nested in another call's arguments is named after the enclosing node."""
        if self._current_target is None:  # e.g. `return upsample_concat(feats)`
            return scope.prefix + block
        return self._current_target + "_" + block

    _current_target: str | None = None

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
        raise self.error(callee.loc, f"unknown block '{name}'",
                         did_you_mean(name, options) or "run 'mtl-dsl blocks' to list them")

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
            bound[name] = (self.eval(a.value, scope), a.value.loc)
        for a in keyword_args:
            assert a.name is not None
            if a.name not in names:
                raise self.error(a.loc, f"{what} has no argument '{a.name}'",
                                 did_you_mean(a.name, names) or f"arguments: {', '.join(names)}")
            if a.name in bound:
                raise self.error(a.loc, f"argument '{a.name}' is given twice")
            bound[a.name] = (self.eval(a.value, scope), a.value.loc)
        return bound

    def _block_call(self, block: Block, expr: ast.CallExpr, scope: Scope, node_name: str,
                    shape: ast.Assign | None) -> Any:
        name = self._unique(node_name, expr.loc)
        saved = self._current_target
        self._current_target = name
        try:
            bound = self._bind_args(expr, list(block.args), f"block '{block.name}'", scope)
        finally:
            self._current_target = saved
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
            assertion = self._shape_assertion(shape, scope)
        if len(self.nodes) >= MAX_NODES:
            self.error(expr.loc, f"the model has more than {MAX_NODES:,} nodes")
            raise SpecError(self.errors)
        node = Node(name=name, block=block.name, inputs=inputs, params=params,
                    loc=_sloc(expr.loc), trace=list(self.trace), num_outputs=len(block.outputs),
                    shape=assertion, defaulted=defaulted)
        self._add_node(node)
        if len(block.outputs) == 1:
            return GraphValue(Ref(node=name))
        return tuple(GraphValue(Ref(node=name, index=i)) for i in range(len(block.outputs)))

    def _add_node(self, node: Node) -> None:
        self.nodes.append(node)
        self.node_names.add(node.name)
        parts = node.name.split(".")
        for i in range(1, len(parts)):
            self.name_prefixes.add(".".join(parts[:i]))

    def _select(self, value: GraphValue, key: str, loc: ast.Loc) -> GraphValue:
        """``g[t]`` on a block's per-task result: a ``select`` node (shared by repeated uses)."""
        cache_key = (value.ref.node, value.ref.index, key)
        if cache_key in self.selects:
            return self.selects[cache_key]
        base = value.ref.node.replace(".", "_") + (f"_{value.ref.index}" if value.ref.index else "")
        name = self._unique(f"{base}_{key}", loc)
        node = Node(name=name, block="select", inputs={"x": value.ref}, params={"key": key},
                    loc=_sloc(loc), trace=list(self.trace))
        self._add_node(node)
        self.selects[cache_key] = GraphValue(Ref(node=name))
        return self.selects[cache_key]

    def _attach_assertion(self, node_name: str, assertion: ShapeAssertion) -> None:
        for i, n in enumerate(self.nodes):
            if n.name == node_name:
                self.nodes[i] = n.model_copy(update={"shape": assertion})
                return
        raise self.error(assertion.loc, "a shape assertion needs a block's result, not the input")

    def _input_value(self, block: Block, arg_name: str, spec: Input, value: Any,
                     loc: ast.Loc) -> Any:
        if isinstance(value, GraphValue):
            return value.ref
        if isinstance(value, Family):
            if TaskMap not in spec.kinds:
                raise self.error(loc, f"argument '{arg_name}' of '{block.name}' takes a "
                                      f"{spec.type_name()}, not a per-task collection",
                                 f"select one entry, e.g. {value.name}[t]")
            return value.to_collection()
        if isinstance(value, tuple):
            raise self.error(loc, f"argument '{arg_name}' of '{block.name}' got several values",
                             "unpack them first: a, b = block(...)")
        raise self.error(loc, f"argument '{arg_name}' of '{block.name}' takes a graph value "
                              f"({spec.type_name()}), got the constant {_short(value)}")

    def _param_value(self, block: Block, arg_name: str, spec: Param, value: Any,
                     loc: ast.Loc) -> Any:
        if isinstance(value, (GraphValue, Family, tuple)):
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
            raise self.error(loc, f"unknown task '{value}'",
                             did_you_mean(str(value), self.tasks) or
                             f"tasks of this profile: {', '.join(self.tasks)}")
        return _jsonable(value)

    def _shape_assertion(self, stmt: ast.Assign, scope: Scope) -> ShapeAssertion:
        dims: list[Any] = []
        for d in stmt.shape or []:
            dims.append(self._shape_dim(d, scope))
        loc = stmt.shape_loc or stmt.loc
        return ShapeAssertion(dims=dims, loc=_sloc(loc))

    def _shape_dim(self, expr: ast.Expr, scope: Scope) -> Any:
        if isinstance(expr, ast.Name) and expr.name in ("B", "_"):
            return expr.name
        value = self._symbolic(expr, scope)
        if isinstance(value, Dim):
            return str(value) if value.ops or value.base in ("H", "W") else int(value.base)
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

    def _inline(self, user: UserBlock, expr: ast.CallExpr, scope: Scope, node_name: str) -> Any:
        d = user.definition
        if d.name in self.call_stack or len(self.call_stack) >= MAX_CALL_DEPTH:
            chain = " -> ".join(self.call_stack[self.call_stack.index(d.name):] + [d.name]) \
                if d.name in self.call_stack else "too deep"
            raise self.error(expr.loc, f"block '{d.name}' calls itself ({chain})",
                             "blocks cannot be recursive: the graph would be a cycle")
        names = [p.name for p in d.params]
        saved = self._current_target
        self._current_target = node_name
        try:
            bound = self._bind_args(expr, names, f"block '{d.name}'", scope)
        finally:
            self._current_target = saved
        defaults_scope = Scope(vars={}, parent=None, prefix="", file=user.module)
        local: dict[str, Any] = {}
        missing = []
        for p in d.params:
            if p.name in bound:
                value, loc = bound[p.name]
            elif p.default is not None:
                value, loc = self.eval(p.default, defaults_scope), p.default.loc
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
        self.trace.append(_sloc(expr.loc))
        try:
            before = len(self.errors)
            result = self._lower_body(d.body, inner, in_model=False)
            if len(self.errors) > before:
                raise _Poison()
        finally:
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
            if isinstance(value, (GraphValue, Family, tuple)):
                raise self.error(loc, f"argument '{p.name}' of '{d.name}' is a constant ({t}), "
                                      f"not a graph value")
            return self._coerce(value, t, loc, f"argument '{p.name}' of '{d.name}'")
        if t in GRAPH_PARAM_TYPES:
            if t == "taskmap" and not isinstance(value, Family):
                raise self.error(loc, f"argument '{p.name}' of '{d.name}' takes a per-task "
                                      f"collection")
            if t != "taskmap" and t != "any" and not isinstance(value, GraphValue):
                raise self.error(loc, f"argument '{p.name}' of '{d.name}' takes a graph value "
                                      f"({t}), got {_type_name(value)}")
            return value
        raise self.error(p.loc, f"unknown type '{t}'",
                         did_you_mean(t, set(CONST_PARAM_TYPES) | GRAPH_PARAM_TYPES))

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
        try:
            return self._apply_builtin(name, args, expr)
        except (TypeError, ValueError) as e:
            raise self.error(expr.loc, f"'{name}': {e}") from None

    def _apply_builtin(self, name: str, args: list[Any], expr: ast.CallExpr) -> Any:
        def seq(v: Any) -> list:
            if isinstance(v, TableRow):
                return list(v.to_json().values())
            if isinstance(v, dict):
                return list(v.values())
            if isinstance(v, (list, str)):
                return list(v)
            raise TypeError(f"needs a list, got {_type_name(v)}")

        if name == "len":
            v = args[0]
            if isinstance(v, Family):
                return len(v.items)
            if isinstance(v, (TableRow, TableValue)):
                return len(self.tasks)
            if not isinstance(v, (list, str, dict)):
                raise TypeError(f"needs a list, string or dict, got {_type_name(v)}")
            return len(v)
        if name == "range":
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise TypeError("needs integers")
            r = range(*args)
            if len(r) > MAX_LIST:
                raise ValueError(f"more than {MAX_LIST:,} values")
            return list(r)
        if name in ("min", "max"):
            values = seq(args[0]) if len(args) == 1 else args
            if not values or not all(_is_number(v) for v in values):
                raise TypeError("needs numbers")
            return min(values) if name == "min" else max(values)
        if name == "int":
            if not _is_number(args[0]):
                raise TypeError(f"needs a number, got {_type_name(args[0])}")
            return int(args[0])
        if name == "float":
            if not _is_number(args[0]):
                raise TypeError(f"needs a number, got {_type_name(args[0])}")
            return float(args[0])
        if name == "str":
            if isinstance(args[0], (list, dict)):
                raise TypeError("needs a number, string or bool")
            return str(args[0]).lower() if isinstance(args[0], bool) else str(args[0])
        if name == "keys":
            v = args[0]
            if isinstance(v, (TableRow, TableValue)):
                return list(self.tasks)
            if isinstance(v, dict):
                return list(v)
            raise TypeError(f"needs a dict or table, got {_type_name(v)}")
        if name == "values":
            return seq(args[0])
        if name == "column":
            table, key = args
            if not isinstance(table, TableValue) or not isinstance(key, str):
                raise TypeError("column(table, source) needs a table and a task name")
            return [table.lookup(t, key) for t in self.tasks]
        if name in ("channels", "aux_channels"):
            t = args[0]
            if t not in self.tasks:
                raise ValueError(f"unknown task {t!r}")
            spec = self.profile.task(t)
            return spec.channels if name == "channels" else spec.aux_channels
        raise TypeError("unknown function")


BUILTIN_FUNCTIONS: dict[str, tuple[int, int]] = {
    "len": (1, 1), "range": (1, 3), "min": (1, 8), "max": (1, 8), "int": (1, 1), "float": (1, 1),
    "str": (1, 1), "keys": (1, 1), "values": (1, 1), "column": (2, 2), "channels": (1, 1),
    "aux_channels": (1, 1),
}
_ALL_TASKS = ("semseg", "human_parts", "sal", "normals", "depth", "edge")


def _callee_name(callee: ast.Expr) -> str:
    if isinstance(callee, ast.Name):
        return callee.name
    if isinstance(callee, ast.GetAttr):
        return callee.attr
    return "call"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, (TableValue, TableRow)):
        return value.to_json()
    return value


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _default_search_paths() -> list[Path]:
    return [p for p in (BUILTIN_SPECS, PACKAGED_SPECS) if p.is_dir()]


def builtin_spec_dirs() -> list[Path]:
    return _default_search_paths()


def iter_builtin_specs() -> Iterator[Path]:
    seen = set()
    for d in _default_search_paths():
        for p in sorted(d.glob("*.mtl")):
            if p.name not in seen:
                seen.add(p.name)
                yield p
