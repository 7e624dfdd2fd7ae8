"""The programmatic entry points: spec -> IR -> checked graph -> compiled model.

``load_ir`` and ``check_spec`` never import torch; ``compile_model`` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checker import CheckedGraph, check_ir
from .errors import Diagnostic, SpecError, did_you_mean
from .frontend import ast
from .frontend.lower import Lowerer, builtin_spec_dirs, iter_builtin_specs
from .frontend.parser import parse_source
from .ir import ModelIR
from .tasks import TaskError, TaskProfile, resolve_tasks

if TYPE_CHECKING:  # pragma: no cover
    from .compiler import CompiledModel


def resolve_spec_path(spec: str | Path) -> tuple[Path, str]:
    """A path to a .mtl file, or the name of a built-in spec (``baseline_mt``)."""
    p = Path(spec)
    if p.is_file():
        return p, str(spec)
    text = str(spec)
    if "/" not in text and "\\" not in text:
        name = text[:-4] if text.endswith(".mtl") else text
        for d in builtin_spec_dirs():
            candidate = d / f"{name}.mtl"
            if candidate.is_file():
                return candidate, f"{name}.mtl"
        builtin = [q.stem for q in iter_builtin_specs()]
        if not text.endswith(".mtl"):
            raise SpecError(Diagnostic(text, 1, 1, f"no spec file or built-in spec named "
                                                   f"'{text}'",
                                       did_you_mean(text, builtin) or
                                       f"built-in specs: {', '.join(builtin)}"))
    if p.exists() and not p.is_file():
        raise SpecError(Diagnostic(text, 1, 1, f"{text} is not a file"))
    raise SpecError(Diagnostic(text, 1, 1, f"spec file not found: {text}"))


def resolve_profile(tasks: str | TaskProfile | None) -> TaskProfile:
    if isinstance(tasks, TaskProfile):
        return tasks
    try:
        return resolve_tasks(tasks)
    except TaskError as e:
        raise SpecError(Diagnostic("--tasks", 1, 1, e.message, source_line=tasks or "")) from None


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
    if value is _NOT_LITERAL:
        if raw.replace("_", "").replace("-", "").replace(".", "").isalnum():
            return key, raw  # a bare word such as a timm model name
        raise SpecError(Diagnostic("--set", 1, len(key) + 2, f"cannot read the value of "
                                   f"'{key}': {raw}", "use a number, true/false, \"text\" or "
                                   "[list]", source_line=text))
    return key, value


_NOT_LITERAL = object()


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


def load_ir(spec: str | Path, tasks: str | TaskProfile | None = None,
            overrides: dict[str, Any] | None = None, preset: str | None = None,
            input_size: tuple[int, int] | None = None, model: str | None = None) -> ModelIR:
    ir, _ = _lower(spec, tasks, overrides, preset, input_size, model)
    return ir


def _lower(spec, tasks, overrides, preset, input_size, model):
    path, display = resolve_spec_path(spec)
    profile = resolve_profile(tasks)
    if input_size is not None:
        h, w = input_size
        if not (isinstance(h, int) and isinstance(w, int) and 8 <= h <= 8192 and 8 <= w <= 8192):
            raise SpecError(Diagnostic("--input", 1, 1, f"input size {h}x{w} is out of range "
                                                        f"(8 to 8192 per side)"))
    lowerer = Lowerer(profile, input_size)
    ir = lowerer.lower(path, display, model, overrides, preset)
    return ir, lowerer.sources


def check_spec(spec: str | Path, tasks: str | TaskProfile | None = None,
               overrides: dict[str, Any] | None = None, preset: str | None = None,
               input_size: tuple[int, int] | None = None, model: str | None = None) -> CheckedGraph:
    ir, sources = _lower(spec, tasks, overrides, preset, input_size, model)
    return check_ir(ir, sources)


def compile_model(spec: str | Path, tasks: str | TaskProfile | None = None,
                  overrides: dict[str, Any] | None = None, preset: str | None = None,
                  input_size: tuple[int, int] | None = None,
                  model: str | None = None) -> "CompiledModel":
    from .compiler import compile_graph

    return compile_graph(check_spec(spec, tasks, overrides, preset, input_size, model))


def build_model(spec: Any, tasks: str | TaskProfile | None = None,
                overrides: dict[str, Any] | None = None, preset: str | None = None,
                input_size: tuple[int, int] | None = None) -> Any:
    """The model of a spec (a path or built-in name: ``compile_model``) or of a model factory, a
    callable ``factory(profile, input_size)`` returning an ``nn.Module`` with the compiled model's
    output format (what the training runtime accepts in place of a spec)."""
    if callable(spec) and not isinstance(spec, (str, Path)):
        profile = resolve_profile(tasks)
        return spec(profile, tuple(input_size) if input_size is not None else profile.input_size)
    return compile_model(str(spec), tasks, overrides, preset, input_size)


def compile_ir(ir: ModelIR) -> "CompiledModel":
    from .compiler import compile_graph

    return compile_graph(check_ir(ir))
