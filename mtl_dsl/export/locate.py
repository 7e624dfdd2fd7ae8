"""Failures of an export, told as the spec node that caused them and why.

``torch.export`` and the ONNX translator fail deep inside their own machinery; the user wrote a
spec. This module finds the spec node behind a failure and turns the failure into a ``SpecError`` at
that node's line:

* before tracing, blocks that cannot have a static graph by design (``blocker``): the modules of
  an architecture-search supergraph (they expose ``arch_parameters``) choose their operation from
  learnt weights at run time;
* a failure while tracing: the outermost frame of the traceback whose ``self`` is a node's module
  (or the ``call_module`` target that torch.fx names in the message);
* an operator the ONNX translator has no function for: the graph node it names, then that node's
  ``nn_module_stack`` in the exported program.
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


def user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame outside torch (the code that asked for the trouble)."""
    last = ""
    for e in chain(exc):
        tb = e.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            parts = Path(code.co_filename).parts
            if "torch" not in parts and "onnxscript" not in parts and "_export" not in parts:
                last = f"{Path(code.co_filename).name}:{tb.tb_lineno} in {code.co_name}"
            tb = tb.tb_next
        if last:
            return last
    return last


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.split("\n", 1)[0].strip() if text else type(exc).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


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
