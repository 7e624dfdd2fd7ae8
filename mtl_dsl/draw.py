"""Drawings of a checked graph: Graphviz DOT, Mermaid, and SVG (``--emit graph.dot|graph.mmd|
graph.svg``). No torch.

Every drawing groups the nodes the same way (``cluster_tree``): the nodes inlined from one call of
a user block (or of a block imported from another spec) form a cluster labelled with the call's
name and place, and inside it, and at the top level, the nodes of one task's fan-out (``d[t]``,
``out[t]``, ATRC's ``c[t][s]``) form a cluster per task, so the per-task columns read side by
side. Each node shows its name, block and full output shape.

The SVG is laid out by Graphviz's ``dot`` when it is on PATH (clusters, arrowheads, edges routed
around boxes). Without Graphviz a layered drawing of our own is written instead
(``mtl_dsl.svg_layout``), so ``--emit graph.svg`` works on any machine.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .checker import CheckedGraph
from .ir import IMAGES, ModelIR, Node

SHAPE_WIDTH = 44  # characters per line of a shape in a label; longer shapes wrap at ", "
DOT_TIMEOUT_S = 120


@dataclass
class Cluster:
    """A group of nodes in a drawing: a block call or a task's fan-out; the root is the model."""

    key: str
    label: str
    kind: str  # "model", "call" or "task"
    nodes: list[str] = field(default_factory=list)
    children: dict[str, "Cluster"] = field(default_factory=dict)

    def child(self, key: str, label: str, kind: str) -> "Cluster":
        if key not in self.children:
            self.children[key] = Cluster(key, label, kind)
        return self.children[key]

    def walk(self) -> Iterator["Cluster"]:
        yield self
        for c in self.children.values():
            yield from c.walk()


def task_of(name: str, tasks: list[str]) -> str | None:
    """The first task a node's dotted name is about (``d.semseg``, ``res.a.semseg_detach``)."""
    for part in name.split("."):
        for t in tasks:
            if part == t or part.startswith(t + "_"):
                return t
    return None


def cluster_tree(ir: ModelIR) -> Cluster:
    root = Cluster("model", ir.name, "model")
    tasks = [t.name for t in ir.tasks]
    for n in ir.nodes:
        scope = root
        if n.trace:
            call = n.trace[0]
            label = f"{n.name.split('.')[0]}: block call at {short_path(call.file)}:{call.line}"
            if n.loc.file != ir.file and n.loc.file != call.file:
                label += f", inlined from {short_path(n.loc.file)}"
            scope = scope.child(f"call:{call.file}:{call.line}:{call.column}", label, "call")
        task = task_of(n.name, tasks)
        if task is not None:
            scope = scope.child(f"{scope.key}/task:{task}", f"task {task}", "task")
        scope.nodes.append(n.name)
    return root


def wrap_shape(text: str, width: int = SHAPE_WIDTH) -> list[str]:
    """A shape string broken between whole shapes (after "], ") into lines of at most ``width``
    characters; a single shape longer than that stays whole: nothing is ever cut."""
    parts = re.split(r"(?<=\]), ", text)
    lines: list[str] = []
    current = ""
    for i, part in enumerate(parts):
        piece = part + ("," if i < len(parts) - 1 else "")
        candidate = f"{current} {piece}" if current else piece
        if current and len(candidate) > width:
            lines.append(current)
            current = piece
        else:
            current = candidate
    lines.append(current)
    return lines


def short_path(path: str) -> str:
    """A file as a reader knows it: relative to the working folder, else its name."""
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def node_lines(graph: CheckedGraph, n: Node) -> list[str]:
    shape = " ".join(t.shape_str() for t in graph.types[n.name])
    return [n.name, n.block, *wrap_shape(shape)]


def edges(ir: ModelIR) -> list[tuple[str, str]]:
    """(producer, consumer) pairs, one per distinct pair, outputs included (``out:task:name``)."""
    out: list[tuple[str, str]] = []
    for n in ir.nodes:
        for src in dict.fromkeys(r.node for r in n.refs()):
            out.append((src, n.name))
    for o in ir.outputs:
        out.append((o.value.node, output_id(o.task, o.name)))
    return out


def output_id(task: str, name: str) -> str:
    return f"out:{task}:{name}"


# -- Graphviz DOT -------------------------------------------------------------------------------

def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_label(lines: list[str]) -> str:
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def to_dot(graph: CheckedGraph) -> str:
    ir = graph.ir
    lines = [f"digraph {_dot_str(ir.name)} {{",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=10, nodesep=0.2, ranksep=0.35, '
             'newrank=true];',
             '  node [shape=box, style="rounded,filled", fillcolor="#eef5ff", color="#335577", '
             'fontname="Helvetica", fontsize=9];',
             '  edge [color="#666666", arrowsize=0.6];',
             f'  {_dot_str(IMAGES)} [shape=oval, fillcolor="#ffffff", '
             f'label={_dot_label(["images", "[B, 3, H, W]"])}];']
    by_name = {n.name: n for n in ir.nodes}
    counter = iter(range(1_000_000))

    def emit(cluster: Cluster, indent: str) -> None:
        for name in cluster.nodes:
            lines.append(f"{indent}{_dot_str(name)} "
                         f"[label={_dot_label(node_lines(graph, by_name[name]))}];")
        for child in cluster.children.values():
            style = "dashed" if child.kind == "task" else "rounded"
            lines.append(f"{indent}subgraph cluster_{next(counter)} {{")
            lines.append(f'{indent}  label={_dot_str(child.label)}; style="{style}"; '
                         f'color="#99aabb"; fontcolor="#445566";')
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit(cluster_tree(ir), "  ")
    for o in ir.outputs:
        lines.append(f'  {_dot_str(output_id(o.task, o.name))} [shape=oval, fillcolor="#eeffee", '
                     f'label={_dot_label([f"{o.task}.{o.name}"])}];')
    for src, dst in edges(ir):
        lines.append(f"  {_dot_str(src)} -> {_dot_str(dst)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- Mermaid ------------------------------------------------------------------------------------

def _mermaid_label(lines: list[str]) -> str:
    text = "<br/>".join(lines)
    for a, b in (("&", "#amp;"), ('"', "#quot;"), ("<br/>", "\0"), ("<", "#lt;"), (">", "#gt;"),
                 ("\0", "<br/>")):
        text = text.replace(a, b)
    return f'"{text}"'


def to_mermaid(graph: CheckedGraph) -> str:
    """A Mermaid flowchart (renders on GitHub in a ```mermaid block or a .mmd file)."""
    ir = graph.ir
    ids: dict[str, str] = {IMAGES: "images"}
    for i, n in enumerate(ir.nodes):
        ids[n.name] = f"n{i}"
    for i, o in enumerate(ir.outputs):
        ids[output_id(o.task, o.name)] = f"o{i}"
    by_name = {n.name: n for n in ir.nodes}
    lines = ["flowchart TB", '  images(["images<br/>[B, 3, H, W]"])']
    counter = iter(range(1_000_000))

    def emit(cluster: Cluster, indent: str) -> None:
        for name in cluster.nodes:
            lines.append(f"{indent}{ids[name]}[{_mermaid_label(node_lines(graph, by_name[name]))}]")
        for child in cluster.children.values():
            lines.append(f"{indent}subgraph c{next(counter)} [{_mermaid_label([child.label])}]")
            emit(child, indent + "  ")
            lines.append(f"{indent}end")

    emit(cluster_tree(ir), "  ")
    for o in ir.outputs:
        lines.append(f"  {ids[output_id(o.task, o.name)]}([{_mermaid_label([f'{o.task}.{o.name}'])}])")
    for src, dst in edges(ir):
        lines.append(f"  {ids[src]} --> {ids[dst]}")
    return "\n".join(lines) + "\n"


# -- SVG ----------------------------------------------------------------------------------------

def graphviz_available() -> bool:
    return shutil.which("dot") is not None


def to_svg(graph: CheckedGraph, engine: str = "auto") -> str:
    """The drawing as SVG: Graphviz's layout (``engine="graphviz"``, the default when ``dot`` is
    on PATH) or our own layered one (``"builtin"``)."""
    if engine == "auto":
        engine = "graphviz" if graphviz_available() else "builtin"
    if engine == "graphviz":
        return _graphviz_svg(to_dot(graph))
    from .svg_layout import layered_svg

    return layered_svg(graph)


def _graphviz_svg(dot: str) -> str:
    try:
        proc = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True,
                              timeout=DOT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"Graphviz 'dot' failed: {e}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"Graphviz 'dot' failed: {proc.stderr.strip()[:500]}")
    svg = proc.stdout
    return svg[svg.find("<svg"):]  # the XML prolog and DOCTYPE are optional in a standalone SVG


def graph_view(graph: CheckedGraph, suffix: str) -> Any:
    """The text of the drawing a file suffix asks for (.dot, .mmd, .svg), or None."""
    return {".dot": to_dot, ".gv": to_dot, ".mmd": to_mermaid, ".svg": to_svg}.get(suffix,
                                                                                  lambda g: None)(graph)
