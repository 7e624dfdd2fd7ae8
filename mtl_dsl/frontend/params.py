"""Model parameters: their defaults, the model's presets, ``--set`` overrides, and the types they
are coerced to.

Every model parameter has a default, and a type (written, or taken from the default); a preset
(``--preset NAME``) applies its values first, then ``--set k=v`` overrides. A value of the wrong
type is an error at the place that gave it. ``parse_override`` reads the ``k=v`` of ``--set``:
``v`` is a spec literal, and a bare word is a string (a timm model name).
"""
from __future__ import annotations

import json
import math
from typing import Any

from ..errors import Diagnostic, Located, SpecError, did_you_mean
from ..ir import ParamValue
from . import ast
from .consteval import Evaluator
from .parser import parse_source
from .values import FileScope, Poison, Scope, TableRow, TableValue, jsonable, short, sloc, type_name

CONST_PARAM_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list,
                     "dict": dict}
GRAPH_PARAM_TYPES = {"map", "tokens", "multiscale", "attention", "taskmap", "any"}


def coerce(ev: Evaluator, value: Any, type_name_: str, loc: Located, what: str) -> Any:
    """``value`` as a ``type_name_`` (an int is a float where a float is wanted), or Poison."""
    want = CONST_PARAM_TYPES.get(type_name_)
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
        raise ev.error(loc, f"{what} must be {type_name_}, got {type_name(value)} {short(value)}")
    return value


def bind_model_params(ev: Evaluator, model: ast.BlockDef, top: FileScope,
                      overrides: dict[str, Any], preset: str | None) -> dict[str, ParamValue]:
    """The model's parameters after its defaults, the chosen preset and the ``--set`` overrides.

    A parameter whose default is wrong is left out, and so are the later mistakes about it (a
    preset that sets it is not also an error)."""
    builtins = Scope(vars={}, parent=None, prefix="", file=top)
    values, failed = _defaults(ev, model, builtins)
    known = set(values) | failed
    presets = _presets(ev, model)
    if preset is not None:
        if preset not in presets:
            ev.sink.add_source("--preset", preset)
            ev.sink.error(ast.Loc("--preset", 1, 1, len(preset)),
                          f"model '{model.name}' has no preset '{preset}'",
                          did_you_mean(preset, presets) or
                          (f"presets: {', '.join(presets)}" if presets else "it has no presets"))
        else:
            for arg in presets[preset].values:
                _set_param(ev, values, known, arg.name, arg.value, arg.loc, "preset", builtins,
                           model)
    for name, value in overrides.items():
        loc = _flag(ev, name, value)
        _set_param(ev, values, known, name, ast.Const(value, loc), loc, "set", builtins, model)
    for s in presets.values():
        _check_preset(ev, s, values, known, s.name == preset, builtins, model)
    return values


def _presets(ev: Evaluator, model: ast.BlockDef) -> dict[str, ast.Preset]:
    """The model's presets by name; a name given twice is an error (the first one counts)."""
    presets: dict[str, ast.Preset] = {}
    for s in model.body:
        if not isinstance(s, ast.Preset):
            continue
        if s.name in presets:
            ev.sink.error(s.loc, f"duplicate preset '{s.name}' in model '{model.name}'",
                          "give each preset its own name",
                          notes=(f"first defined at line {presets[s.name].loc.line}",))
            continue
        presets[s.name] = s
    return presets


def _check_preset(ev: Evaluator, preset: ast.Preset, values: dict[str, ParamValue],
                  known: set[str], selected: bool, builtins: Scope, model: ast.BlockDef) -> None:
    """Every preset, selected or not, sets real parameters, each once, to values of their
    types (the selected one's values were checked as they were applied)."""
    first: dict[str, ast.Loc] = {}
    for arg in preset.values:
        if arg.name is None:
            continue
        if arg.name in first:
            ev.sink.error(arg.loc, f"preset '{preset.name}' sets '{arg.name}' twice",
                          "the last value would silently win: keep one",
                          notes=(f"first set at line {first[arg.name].line}",))
            continue
        first[arg.name] = arg.loc
        if arg.name not in known:
            ev.sink.error(arg.loc, f"a preset sets unknown parameter '{arg.name}'",
                          did_you_mean(arg.name, values), notes=(f"in preset '{preset.name}'",))
        elif not selected:  # checked on a copy: only the selected preset is applied
            _set_param(ev, dict(values), known, arg.name, arg.value, arg.loc, "preset",
                       builtins, model)


def _flag(ev: Evaluator, name: str, value: Any) -> ast.Loc:
    """Where ``--set name=value`` is quoted in a message: the flag's text, the value underlined.
    (Flags are read one at a time, so the one text registered for ``--set`` is this one's.)"""
    text = value if isinstance(value, str) and value.replace("_", "").replace("-", "").replace(
        ".", "").isalnum() else json.dumps(value)
    ev.sink.add_source("--set", f"{name}={text}")
    return ast.Loc("--set", 1, len(name) + 2, max(1, len(text)))


def _defaults(ev: Evaluator, model: ast.BlockDef,
              builtins: Scope) -> tuple[dict[str, ParamValue], set[str]]:
    """The parameters with their defaults, and the names of those whose default is wrong."""
    values: dict[str, ParamValue] = {}
    failed: set[str] = set()
    for p in model.params:
        if p.name in values:
            ev.sink.error(p.loc, f"duplicate parameter '{p.name}'")
            continue
        try:
            values[p.name] = _default(ev, p, builtins)
        except Poison:
            failed.add(p.name)
    return values, failed


def _default(ev: Evaluator, p: ast.ParamDef, builtins: Scope) -> ParamValue:
    if p.default is None:
        raise ev.error(p.loc, f"model parameter '{p.name}' needs a default value",
                       f"write {p.name} = <value>")
    value = ev.const(p.default, builtins, "a parameter default")
    written = p.type or type_name(value)
    if p.type is not None and p.type not in CONST_PARAM_TYPES:
        raise ev.error(p.loc, f"unknown type '{p.type}' for model parameter '{p.name}'",
                       did_you_mean(p.type, CONST_PARAM_TYPES) or
                       f"model parameters are {', '.join(CONST_PARAM_TYPES)}")
    value = coerce(ev, value, written, p.default.loc, f"parameter '{p.name}'")
    return ParamValue(value=jsonable(value), type=written, origin="default", loc=sloc(p.loc))


def _set_param(ev: Evaluator, values: dict[str, ParamValue], known: set[str], name: str | None,
               expr: ast.Expr, loc: ast.Loc, origin: str, scope: Scope,
               model: ast.BlockDef) -> None:
    if name is None or name not in values:
        if origin == "set" and name not in known:
            at_name = ast.Loc(loc.file, loc.line, 1, len(name or ""))
            ev.sink.error(at_name, f"model '{model.name}' has no parameter '{name}'",
                          did_you_mean(name or "", values) or f"parameters: {', '.join(values)}")
        return
    old = values[name]
    try:
        value = ev.const(expr, scope, f"parameter '{name}'")
        value = coerce(ev, value, old.type, loc, f"parameter '{name}'")
    except Poison:
        return
    values[name] = ParamValue(value=jsonable(value), type=old.type,
                              origin=origin, loc=old.loc)  # type: ignore[arg-type]


# -- the command line -----------------------------------------------------------------------------

def parse_override(text: str) -> tuple[str, Any]:
    """``k=v`` from ``--set``: v is a spec literal; a bare word is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise SpecError(Diagnostic("--set", 1, 1, f"expected NAME=VALUE, got '{text}'",
                                   source_line=text))
    raw = raw.strip()
    src = f"model m(v = {raw}) {{}}"
    try:
        spec = parse_source(src, "--set")
        default = spec.models[0].params[0].default
    except (SpecError, IndexError):
        default = None
    value = _literal(default)
    if not _finite(value):  # 1e400: refused as typed (the spec's message, the flag's text)
        column = len(text) - len(text.partition("=")[2].lstrip()) + 1
        raise SpecError(Diagnostic("--set", 1, column, "number is not finite", source_line=text,
                                   length=max(1, len(raw))))
    if value is _NOT_LITERAL:
        if raw.replace("_", "").replace("-", "").replace(".", "").isalnum():
            return key, raw  # a bare word such as a timm model name
        raise SpecError(Diagnostic("--set", 1, len(key) + 2, f"cannot read the value of "
                                   f"'{key}': {raw}", "use a number, true/false, \"text\" or "
                                   "[list]", source_line=text))
    return key, value


_NOT_LITERAL = object()


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return all(_finite(v) for v in value) if isinstance(value, list) else True


def _literal(expr: Any) -> Any:
    if isinstance(expr, ast.Const):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and expr.op == "-" and isinstance(expr.operand, ast.Const) \
            and isinstance(expr.operand.value, (int, float)):
        return -expr.operand.value
    if isinstance(expr, ast.ListExpr):
        items = [_literal(i) for i in expr.items]
        return _NOT_LITERAL if any(i is _NOT_LITERAL for i in items) else items
    if isinstance(expr, ast.Name):
        return expr.name  # bare word
    return _NOT_LITERAL
