"""The resolved spec text of a checked graph (``mtl-dsl render``): imports, blocks, loops and
parameters resolved, each value marked with where it came from. No torch. (Drawings of the
graph, DOT, Mermaid and SVG, are in ``mtl_dsl.draw``.)"""
from __future__ import annotations

import json
from typing import Any

from .checker import CheckedGraph
from .ir import CollectionRef, Ref


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


def render_spec(graph: CheckedGraph) -> str:
    ir = graph.ir
    out = [f"# model '{ir.name}' from {ir.file}, resolved"
           + (f" with preset '{ir.preset}'" if ir.preset else ""),
           f"# tasks ({ir.profile}): " + ", ".join(f"{t.name}:{t.channels}" for t in ir.tasks)
           + f"; input {ir.input_size[0]}x{ir.input_size[1]}"]
    for path in ir.imports:
        out.append(f"# imported: {path}")
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
        text = f"  {n.name} = {n.block}({', '.join(args + explicit)})"
        out.append(f"{text}  # {shape}  <- {where}")
        if defaults:
            out.append(f"  {' ' * len(n.name)}   # defaults: {', '.join(defaults)}")
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
