"""The resolved spec text of a checked graph (``mtl-dsl render``): imports, blocks, loops and
parameters resolved, each value marked with where it came from. No torch. (Drawings of the
graph, DOT, Mermaid and SVG, are in ``mtl_dsl.draw``.)"""
from __future__ import annotations

import json
from typing import Any

from .checker import CheckedGraph
from .ir import CollectionRef, Ref
from .passes.fuse import FusionPlan


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _ref(v: Ref | CollectionRef | None) -> str:
    if v is None:
        return "none"
    if isinstance(v, Ref):
        return v.node if v.index == 0 else f"{v.node}#{v.index}"
    return "{" + ", ".join(f"{k}: {_ref(x)}" for k, x in v.items.items()) + "}"


_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _operator_text(n: Node) -> str | None:
    """An operator or reduction node as the spec writes it: ``a * b``, ``0.5 * x``,
    ``sum(g * m for [depth, edge])``; None for other blocks."""
    if n.block in _INFIX:
        const = n.params.get("const")
        a, b = n.inputs.get("left"), n.inputs.get("right")
        left = _ref(a) if a is not None else _literal(const)
        right = _ref(b) if b is not None else _literal(const)
        text = f"{left} {_INFIX[n.block]} {right}"
        third = n.inputs.get("third")
        return text + (f" + {_ref(third)}" if third is not None else "")
    if n.block in ("sum", "mean", "max", "min"):
        x = n.inputs.get("x")
        if not isinstance(x, CollectionRef):
            return f"{n.block}({_ref(x)})"
        w = n.inputs.get("w")
        coeffs = n.params.get("coeffs")
        terms = []
        for i, (key, v) in enumerate(x.items.items()):
            if isinstance(w, CollectionRef):
                terms.append(f"{_ref(w.items[key])} * {_ref(v)}")
            elif isinstance(coeffs, list):
                terms.append(f"{_literal(coeffs[i])} * {_ref(v)}")
            else:
                terms.append(_ref(v))
        return f"{n.block}({', '.join(terms)})"
    return None


def render_spec(graph: CheckedGraph, fusion: FusionPlan | None = None) -> str:
    """The resolved spec; with a fusion plan, each node says whether it runs batched and with
    which calls, or why not (``fusion`` None: fusion is off)."""
    ir = graph.ir
    out = [f"# model '{ir.name}' from {ir.file}, resolved"
           + (f" with preset '{ir.preset}'" if ir.preset else ""),
           f"# tasks ({ir.profile}): " + ", ".join(f"{t.name}:{t.channels}" for t in ir.tasks)
           + f"; input {ir.input_size[0]}x{ir.input_size[1]}"]
    for path in ir.imports:
        out.append(f"# imported: {path}")
    if fusion is None:
        out.append("# fusion off (--set fuse=false)")
    else:
        out.append(f"# fusion: {fusion.describe()[0]} (--set fuse=false turns it off)")
    out.append(f"model {ir.name}(")
    for name, p in ir.params.items():
        origin = {"default": f"default, {p.loc.file}:{p.loc.line}", "preset": f"preset "
                  f"'{ir.preset}'", "set": "--set"}[p.origin]
        out.append(f"  {name}: {p.type} = {_literal(p.value)},  # {origin}")
    out.append(") {")
    for n in ir.nodes:
        args = [f"{k} = {_ref(v)}" for k, v in n.inputs.items() if v is not None]
        explicit = [f"{k} = {_literal(v)}" for k, v in n.params.items() if k not in n.defaulted]
        defaults = [f"{k} = {_literal(v)}" for k, v in n.params.items() if k in n.defaulted]
        shape = " ".join(t.shape_str() for t in graph.types[n.name])
        where = f"{n.loc.file}:{n.loc.line}"
        if n.trace:
            where += " via " + ", ".join(f"{t.file}:{t.line}" for t in reversed(n.trace))
        expression = _operator_text(n)
        call = f"{n.block}({', '.join(args + explicit)})"
        text = f"  {n.name} = {expression or call}"
        out.append(f"{text}  # {shape}  <- {where}")
        if defaults and expression is None:
            out.append(f"  {' ' * len(n.name)}   # defaults: {', '.join(defaults)}")
        note = fusion.note(n.name) if fusion is not None else ""
        if note:
            out.append(f"  {' ' * len(n.name)}   # {note}")
    for o in ir.outputs:
        suffix = "" if o.name == "final" else f".{o.name}"
        out.append(f"  out[{o.task}]{suffix} = {_ref(o.value)}")
    for name, entries in ir.weight_maps.items():  # expanded: one entry per official prefix
        out.append(f"  weights {name} {{")
        for e in entries:
            via = f" via {', '.join(e.via)}" if e.via else ""
            entry = (f'"{e.official}" -> "{e.target}"' if e.target is not None
                     else f'unused "{e.official}": "{e.reason}"')
            out.append(f"    {entry}  # {e.loc.file}:{e.loc.line}{via}")
        out.append("  }")
    out.append("}")
    return "\n".join(out)
