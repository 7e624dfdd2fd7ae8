"""The SVG drawing used when Graphviz is not installed: a layered layout of our own.

Graphviz (``mtl_dsl.draw``) is the layout to use; this one exists so ``--emit graph.svg`` gives a
readable picture on a machine without it. Each node sits one layer below its deepest input; a
layer wider than ``MAX_WIDTH`` wraps onto further rows (ATRC's 16 context blocks do not make a
9,000-pixel-wide picture); a layer is ordered by task, and each task has its own colour. Boxes
are as wide as their longest line (nothing is cut); edges are drawn first, with arrowheads, so
boxes sit on top of them.
"""
from __future__ import annotations

import html

from .checker import CheckedGraph
from .draw import edges, node_lines, output_id, task_of
from .ir import IMAGES

MAX_WIDTH = 1500  # px: a layer wraps beyond this
CHAR_W, LINE_H, PAD, GAP_X, GAP_Y = 6.6, 13, 6, 16, 34
PALETTE = ("#eef5ff", "#fff4e6", "#eefbea", "#f6ecff", "#fdecef", "#ecfbfb", "#fbfbe6")


def _size(lines: list[str]) -> tuple[float, float]:
    return max(len(line) for line in lines) * CHAR_W + 2 * PAD, len(lines) * LINE_H + 2 * PAD


def layered_svg(graph: CheckedGraph) -> str:
    ir = graph.ir
    tasks = [t.name for t in ir.tasks]
    labels: dict[str, list[str]] = {IMAGES: ["images", "[B, 3, H, W]"]}
    for n in ir.nodes:
        labels[n.name] = node_lines(graph, n)
    for o in ir.outputs:
        labels[output_id(o.task, o.name)] = [f"{o.task}.{o.name}", "output"]
    links = edges(ir)

    def task_rank(key: str) -> int:
        t = key.split(":")[1] if key.startswith("out:") else task_of(key, tasks)
        return tasks.index(t) + 1 if t in tasks else 0

    pos, width, height = _place(labels, links, task_rank)
    return _draw(labels, links, pos, width, height, task_rank)


def _place(labels: dict[str, list[str]], links: list[tuple[str, str]],
           task_rank) -> tuple[dict[str, tuple[float, float, float, float]], float, float]:
    """Boxes in layers by depth from the input (wrapped into rows), each layer ordered by task:
    each key's x, y, width and height, and the drawing's width and height."""
    depth: dict[str, int] = {IMAGES: 0}
    inputs: dict[str, list[str]] = {}
    for src, dst in links:
        inputs.setdefault(dst, []).append(src)
    for key in labels:  # nodes are in topological order, outputs last
        if key != IMAGES:
            depth[key] = 1 + max((depth[s] for s in inputs.get(key, [])), default=0)
    layers: dict[int, list[str]] = {}
    for key in labels:
        layers.setdefault(depth[key], []).append(key)
    pos: dict[str, tuple[float, float, float, float]] = {}  # x, y, w, h
    y = GAP_Y / 2
    width = 0.0
    for d in sorted(layers):
        keys = sorted(layers[d], key=lambda k: (task_rank(k), list(labels).index(k)))
        for row in _wrap(keys, labels):
            x = GAP_X
            row_h = 0.0
            for key in row:
                w, h = _size(labels[key])
                pos[key] = (x, y, w, h)
                x += w + GAP_X
                row_h = max(row_h, h)
            width = max(width, x)
            y += row_h + GAP_Y
    return pos, width, y


def _draw(labels: dict[str, list[str]], links: list[tuple[str, str]],
          pos: dict[str, tuple[float, float, float, float]], width: float, height: float,
          task_rank) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" '
             f'font-size="11">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
             'fill="#666"/></marker></defs>']
    for src, dst in links:  # edges first: boxes are drawn over them
        sx, sy, sw, sh = pos[src]
        dx, dy, dw, _ = pos[dst]
        x1, y1, x2, y2 = sx + sw / 2, sy + sh, dx + dw / 2, dy
        mid = (y1 + y2) / 2
        parts.append(f'<path class="edge" d="M {x1:.1f} {y1:.1f} C {x1:.1f} {mid:.1f} {x2:.1f} '
                     f'{mid:.1f} {x2:.1f} {y2:.1f}" fill="none" stroke="#888" '
                     f'marker-end="url(#arrow)"/>')
    for key, lines in labels.items():
        x, y0, w, h = pos[key]
        rank = task_rank(key)
        fill = "#ffffff" if key == IMAGES else PALETTE[rank % len(PALETTE)]
        rx = h / 2 if key == IMAGES or key.startswith("out:") else 5
        parts.append(f'<g class="node"><title>{html.escape(key)}</title>'
                     f'<rect x="{x:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx:.1f}" '
                     f'fill="{fill}" stroke="#357"/>')
        for i, line in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            colour = "#222" if i < 2 else "#555"
            parts.append(f'<text x="{x + PAD:.1f}" y="{y0 + PAD + (i + 1) * LINE_H - 3:.1f}" '
                         f'fill="{colour}"{weight}>{html.escape(line)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _wrap(keys: list[str], labels: dict[str, list[str]]) -> list[list[str]]:
    rows: list[list[str]] = [[]]
    x = GAP_X
    for key in keys:
        w = _size(labels[key])[0]
        if rows[-1] and x + w + GAP_X > MAX_WIDTH:
            rows.append([])
            x = GAP_X
        rows[-1].append(key)
        x += w + GAP_X
    return rows
