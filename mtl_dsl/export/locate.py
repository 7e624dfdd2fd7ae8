"""Failures of an export, told as the spec node that caused them and why.

``torch.export`` and the ONNX translator fail deep inside their own machinery; the user wrote a
spec. This module finds the spec node behind a failure and turns the failure into a ``SpecError`` at
that node's line:

* before tracing, blocks that cannot have a static graph by design (``blocker``): the modules of
  an architecture-search supergraph (they expose ``arch_parameters``) choose their operation from
  learnt weights at run time;
* a failure while tracing: the outermost frame of the traceback whose ``self`` is a node's module
  (or the ``call_module`` target that torch.fx names in the message);
* a batch dimension that cannot stay symbolic (found by ``torch.export`` after tracing, with no
  frame to point at): the first node whose module, exported alone, fails the same way;
* an operator the ONNX translator has no function for: the torch.fx node it was translating, and
  that node's ``nn_module_stack``;
* an ONNX node that ONNX Runtime cannot load or run: the node its error names (by name, or by
  operator), and the module path the exporter recorded in the node's metadata.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..errors import Diagnostic, SpecError

SEARCH_REASON = ("it belongs to an architecture-search supergraph, whose choice of operation "
                 "is made from learnt weights at run time, so it has no static graph")
SEARCH_HINT = ("run `mtl-dsl search` and export the spec it writes (`<name>_found.mtl`), which "
               "holds the chosen blocks")


def node_error(model, node_name: str, stage: str, reason: str, hint: str = "",
               notes: tuple[str, ...] = ()) -> SpecError:
    node = model.ir.node(node_name)
    loc = node.loc
    what = f"cannot export node '{node_name}' ({node.block})" + (f" {stage}" if stage else "")
    return SpecError(Diagnostic(loc.file, loc.line, loc.column, f"{what}: {reason}", hint,
                                _source_line(loc.file, loc.line), loc.length, notes))


def model_error(model, stage: str, reason: str, hint: str = "") -> SpecError:
    """A failure that no node can be blamed for (reported at the model's spec file)."""
    return SpecError(Diagnostic(model.ir.file, 1, 1, f"cannot export model '{model.ir.name}' "
                                                     f"{stage}: {reason}", hint))


def _source_line(file: str, line: int) -> str:
    from ..api import resolve_spec_path

    try:
        path, _ = resolve_spec_path(file)
        lines = path.read_text(encoding="utf-8").split("\n")
    except (SpecError, OSError, UnicodeDecodeError):
        return ""
    return lines[line - 1] if 0 < line <= len(lines) else ""


def blocker(model) -> SpecError | None:
    """The nodes that cannot be exported whatever the format (see the module doc), as one error
    at the first of them: they share one cause."""
    found = []
    for node in model.ir.nodes:
        module = model.get_submodule(node.name)
        if any(callable(getattr(m, "arch_parameters", None)) for m in module.modules()):
            found.append(node.name)
    if not found:
        return None
    notes = (f"so are {len(found) - 1} more nodes of the supergraph: "
             f"{', '.join(found[1:6])}{', ...' if len(found) > 6 else ''}",) if found[1:] else ()
    return node_error(model, found[0], "", SEARCH_REASON, SEARCH_HINT, notes)


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def node_of_traceback(exc: BaseException, model) -> str | None:
    """The spec node whose module's code was running when ``exc`` was raised."""
    nodes = {n.name for n in model.ir.nodes}
    modules = {id(m): name for name, m in model.named_modules() if name in nodes}
    for e in chain(exc):
        tb = e.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in modules:
                return modules[id(owner)]
            tb = tb.tb_next
        for target in re.findall(r"call_module\[target=([\w.]+)\]", str(e)):
            if target in nodes:
                return target
    return None


def node_of_program(program, graph_node: str | None, op: str | None, model,
                    prefix: str = "model.") -> str | None:
    """The spec node of an exported program's graph node: the nodes calling ``op`` (the one named
    ``graph_node`` first), or the node of that name when the operator is not known."""
    nodes = {n.name for n in model.ir.nodes}
    if op is not None:
        candidates = [n for n in program.graph.nodes if str(n.target) == op]
        candidates.sort(key=lambda n: n.name != graph_node)
    else:
        candidates = [n for n in program.graph.nodes if n.name == graph_node]
    for fx_node in candidates:
        for path, _ in (fx_node.meta.get("nn_module_stack") or {}).values():
            name = path[len(prefix):] if path.startswith(prefix) else path
            if name in nodes:
                return name
    return None


def node_of_fx_frames(exc: BaseException, model, prefix: str = "model.") -> str | None:
    """The spec node of the torch.fx node that a translator was working on when ``exc`` was
    raised (a frame's local ``node``, whose ``nn_module_stack`` names the modules it came from)."""
    from torch import fx

    nodes = {n.name for n in model.ir.nodes}
    for e in chain(exc):
        tb = e.__traceback__
        while tb is not None:
            fx_node = tb.tb_frame.f_locals.get("node")
            if isinstance(fx_node, fx.Node):
                for path, _ in (fx_node.meta.get("nn_module_stack") or {}).values():
                    name = path[len(prefix):] if path.startswith(prefix) else path
                    if name in nodes:
                        return name
            tb = tb.tb_next
    return None


def batch_specialising_node(model, example, batch_dim) -> str | None:
    """The first node (in graph order) that cannot take a symbolic batch on its own.

    A violated batch constraint is found by ``torch.export`` after tracing, from the guards, with
    no frame left to point at; so each node's module is exported alone, on the inputs it received
    from ``example``, with the batch dimension of every input symbolic. Run only after a failure.
    """
    import torch

    from .quiet import quiet

    received: dict[str, tuple] = {}
    modules = {n.name: model.get_submodule(n.name) for n in model.ir.nodes}
    hooks = [m.register_forward_pre_hook(lambda _, args, name=name: received.setdefault(name, args))
             for name, m in modules.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    batch = example.shape[0]

    def dims(value):
        if isinstance(value, torch.Tensor):
            return {0: batch_dim} if value.dim() and value.shape[0] == batch else None
        if isinstance(value, dict):
            return {k: dims(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(dims(v) for v in value)
        return None

    for node in model.ir.nodes:
        args = received.get(node.name)
        if args is None:
            continue
        try:
            with torch.no_grad(), quiet():
                torch.export.export(modules[node.name], args, dynamic_shapes=dims(args))
        except Exception as exc:  # noqa: BLE001 - only the kind of failure is looked at
            if "batch size" in trace_reason(exc)[0]:
                return node.name
    return None


def user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame outside torch and this package (the code that asked
    for the trouble)."""
    here = Path(__file__).resolve().parent
    last = ""
    for e in chain(exc):
        tb = e.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            path = Path(code.co_filename)
            if not ({"torch", "onnxscript", "_export"} & set(path.parts)
                    or path.resolve().parent == here):
                last = f"{Path(code.co_filename).name}:{tb.tb_lineno} in {code.co_name}"
            tb = tb.tb_next
        if last:
            return last
    return last


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.split("\n", 1)[0].strip() if text else type(exc).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


def node_of_onnx_runtime_failure(path: Path, exc: BaseException, model) -> tuple[str | None, str]:
    """(spec node, ONNX operator) of the ONNX node that ONNX Runtime's error names, by its name
    or else by its operator (``domain:Op(version)``): the exporter records each ONNX node's
    module path in its ``pkg.torch.onnx.name_scopes``."""
    import onnx

    text = str(exc)
    graph = onnx.load(str(path), load_external_data=False).graph

    def named(n) -> bool:
        return bool(n.name) and re.search(rf"(?<![\w.]){re.escape(n.name)}(?![\w.])", text)

    def by_op(n) -> bool:
        if n.domain:
            return f"{n.domain}:{n.op_type}(" in text
        return bool(re.search(rf"(?<![\w.:]){re.escape(n.op_type)}\(", text))

    for match in (named, by_op):
        for onnx_node in graph.node:
            if match(onnx_node):
                op = f"{onnx_node.domain + '.' if onnx_node.domain else ''}{onnx_node.op_type}"
                return _scope_node(onnx_node, model), op
    return None, ""


def _scope_node(onnx_node, model) -> str | None:
    import ast

    nodes = {n.name for n in model.ir.nodes}
    for prop in onnx_node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            for scope in reversed([str(s) for s in ast.literal_eval(prop.value)]):
                name = scope.removeprefix("model.")
                if name in nodes:
                    return name
    return None


def trace_reason(exc: BaseException) -> tuple[str, str]:
    """(why, hint) for a failure of ``torch.export``."""
    text = "\n".join(str(e) for e in chain(exc))
    where = user_frame(exc)
    at = f" (at {where})" if where else ""
    if "data-dependent" in text or "GuardOnDataDependent" in type(exc).__name__:
        return (f"its Python control flow depends on the values inside a tensor{at}, which a "
                f"static graph cannot express", "")
    if "Constraints violated" in text or "specialized" in text or "Specializations" in text:
        return (f"its computation depends on the batch size{at}, so the batch cannot be a "
                f"symbolic dimension", "export without --dynamic-batch")
    return f"torch.export failed{at}: {first_line(exc)}", ""


def onnx_failure(exc: BaseException) -> tuple[str | None, str | None, str]:
    """(graph node name, operator, why) from the ONNX exporter's error chain."""
    graph_node = op = None
    reason = ""
    for e in chain(exc):
        text = str(e)
        match = re.search(r"Error when translating node %(\w+)", text)
        if match and graph_node is None:
            graph_node = match.group(1)
        match = re.search(r"call_function\[target=([\w.]+)\]", text)
        if match and op is None:
            op = match.group(1).removeprefix("torch.ops.")
        match = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)', "
                          r"overload='(\w+)'\)>", text)
        if match:
            op = f"{match.group(1)}.{match.group(2)}"
            reason = f"ONNX has no translation for the operator {op}"
    if not reason:
        innermost = list(chain(exc))[-1]
        reason = f"the ONNX translation failed: {first_line(innermost)}"
    return graph_node, op, reason
