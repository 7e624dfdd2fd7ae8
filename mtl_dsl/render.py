"""Views of a checked graph: the resolved spec text (``mtl-dsl render``), Graphviz DOT and a
self-contained SVG drawing (``--emit graph.dot|graph.svg``). No torch, no Graphviz needed."""
from __future__ import annotations

import html
import json
from typing import Any

from .checker import CheckedGraph
from .ir import IMAGES, CollectionRef, Node, Ref


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
    out.append("}")
    return "\n".join(out)


def _edges(n: Node) -> list[str]:
    return [r.node for r in n.refs()]


def to_dot(graph: CheckedGraph) -> str:
    ir = graph.ir
    lines = [f'digraph "{ir.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];',
             f'  "{IMAGES}" [shape=oval, label="images [B, 3, H, W]"];']
    for n in ir.nodes:
        shape = " ".join(t.shape_str() for t in graph.types[n.name])
        lines.append(f'  "{n.name}" [label="{n.name}\\n{n.block}\\n{shape}"];')
        for src in dict.fromkeys(_edges(n)):
            lines.append(f'  "{src}" -> "{n.name}";')
    for o in ir.outputs:
        oid = f"out:{o.task}:{o.name}"
        lines.append(f'  "{oid}" [shape=oval, label="{o.task}.{o.name}"];')
        lines.append(f'  "{o.value.node}" -> "{oid}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(graph: CheckedGraph) -> str:
    """A layered drawing: each node one row below its deepest input."""
    ir = graph.ir
    depth: dict[str, int] = {IMAGES: 0}
    for n in ir.nodes:
        depth[n.name] = 1 + max((depth[r] for r in _edges(n)), default=0)
    boxes: dict[str, tuple[str, str]] = {IMAGES: ("images", "[B, 3, H, W]")}
    for n in ir.nodes:
        boxes[n.name] = (f"{n.name} ({n.block})",
                         " ".join(t.shape_str() for t in graph.types[n.name]))
    out_depth = max(depth.values()) + 1
    for o in ir.outputs:
        key = f"out:{o.task}:{o.name}"
        boxes[key] = (f"{o.task}.{o.name}", "output")
        depth[key] = out_depth
    rows: dict[int, list[str]] = {}
    for key in boxes:
        rows.setdefault(depth[key], []).append(key)
    bw, bh, gx, gy = 230, 44, 20, 40
    width = max(len(r) for r in rows.values()) * (bw + gx) + gx
    height = (max(rows) + 1) * (bh + gy) + gy
    pos: dict[str, tuple[int, int]] = {}
    for d, keys in rows.items():
        offset = (width - len(keys) * (bw + gx) + gx) // 2
        for i, key in enumerate(keys):
            pos[key] = (offset + i * (bw + gx), gy + d * (bh + gy))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="Helvetica" font-size="11">']
    def edge(a: str, b: str) -> None:
        x1, y1 = pos[a][0] + bw // 2, pos[a][1] + bh
        x2, y2 = pos[b][0] + bw // 2, pos[b][1]
        parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#888"/>')
    for n in ir.nodes:
        for src in dict.fromkeys(_edges(n)):
            edge(src, n.name)
    for o in ir.outputs:
        edge(o.value.node, f"out:{o.task}:{o.name}")
    for key, (title, sub) in boxes.items():
        x, y = pos[key]
        fill = "#eef5ff" if not key.startswith("out:") else "#efe"
        parts.append(f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="5" fill="{fill}" '
                     f'stroke="#357"/>')
        parts.append(f'<text x="{x + 6}" y="{y + 17}">{html.escape(title[:38])}</text>')
        parts.append(f'<text x="{x + 6}" y="{y + 34}" fill="#555">{html.escape(sub[:40])}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
