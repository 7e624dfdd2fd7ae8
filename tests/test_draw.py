"""Drawings of a graph: Graphviz's layout (clusters per block call and per task, arrowheads, whole
labels), Mermaid, and the layout used without Graphviz. Graphviz is a CI dependency (.ci/run
installs it): the tests that need `dot` fail without it, they do not skip."""
from __future__ import annotations

import html
import re
import subprocess

import pytest

from mtl_dsl.api import check_spec
from mtl_dsl.cli import main
from mtl_dsl.draw import (cluster_tree, edges, graphviz_available, node_lines, to_dot, to_mermaid,
                          to_svg, wrap_shape)
from mtl_dsl.frontend import iter_builtin_specs
from mtl_dsl.svg_layout import MAX_WIDTH

TASKS = {"atrc_pascal_hrnet18": "pascal", "atrc_nyud_hrnet18": "nyud", "atrc_nyud_hrnet48": "nyud"}


@pytest.fixture(scope="module")
def atrc():
    return check_spec("atrc_nyud_hrnet18", tasks="nyud")


def svg_texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def test_graphviz_is_installed():
    assert graphviz_available(), "Graphviz's dot is a dependency of the drawings (.ci/run installs it)"


def test_graphviz_svg_has_clusters_arrowheads_and_whole_labels(atrc):
    svg = to_svg(atrc)  # dot is on PATH: Graphviz lays it out
    assert svg.startswith("<svg") and 'class="graph"' in svg  # Graphviz's own SVG
    edge_groups = re.findall(r'<g id="edge\d+" class="edge">(.*?)</g>', svg, re.S)
    assert len(edge_groups) == len(edges(atrc.ir))
    assert all("<polygon" in g for g in edge_groups), "every edge ends in an arrowhead"
    texts = " ".join(svg_texts(svg))
    for n in atrc.ir.nodes:
        for line in node_lines(atrc, n):
            assert line in texts, f"label line {line!r} of {n.name} is missing or cut"
    clusters = re.findall(r'class="cluster"', svg)
    tasks = [t.name for t in atrc.ir.tasks]
    assert len(clusters) == 1 + len(tasks)  # the imported ATRC head, and a column per task in it
    source = next(p for p in iter_builtin_specs() if p.name == "atrc_nyud_hrnet18.mtl").read_text()
    call = next(i for i, text in enumerate(source.splitlines(), 1) if "res = atrc_head(" in text)
    assert re.search(rf"res: block call at atrc_nyud_hrnet18\.mtl:{call}, inlined from "
                     rf"\S*atrc\.mtl", texts)
    assert all(f"task {t}" in texts for t in tasks)
    width = float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1))
    assert width < 2600  # the home-made layout drew ATRC 9,020 px wide


def test_every_builtin_spec_gives_valid_dot():
    for path in iter_builtin_specs():
        graph = check_spec(path, tasks=TASKS.get(path.stem))
        proc = subprocess.run(["dot", "-Tcanon"], input=to_dot(graph), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (path.stem, proc.stderr)


def test_clusters_group_block_calls_and_each_tasks_fan_out():
    graph = check_spec("demt", tasks="semseg:3,depth")
    root = cluster_tree(graph.ir)
    calls = {c.label.split(":")[0]: c for c in root.children.values() if c.kind == "call"}
    assert set(calls) == {"d", "f", "q"}  # the spec's three block calls
    d = calls["d"]
    assert d.nodes == ["d.e"]  # shared by every task
    assert {c.label: c.nodes for c in d.children.values()} == {
        "task semseg": ["d.d.semseg.m.0"], "task depth": ["d.d.depth.m.0"]}
    top = {c.label: c.nodes for c in root.children.values() if c.kind == "task"}
    assert top == {"task semseg": ["out.semseg"], "task depth": ["out.depth"]}
    assert root.nodes == ["feats", "x"]
    every = [n for c in root.walk() for n in c.nodes]
    assert sorted(every) == sorted(n.name for n in graph.ir.nodes)  # each node in one place


def test_mermaid_has_every_node_edge_and_cluster():
    graph = check_spec("demt", tasks="semseg:3,depth")
    text = to_mermaid(graph)
    lines = text.splitlines()
    assert lines[0] == "flowchart TB"
    assert sum("-->" in line for line in lines) == len(edges(graph.ir))
    opened = sum(line.strip().startswith("subgraph ") for line in lines)
    assert opened == sum(1 for _ in cluster_tree(graph.ir).walk()) - 1
    assert opened == sum(line.strip() == "end" for line in lines)
    for i, n in enumerate(graph.ir.nodes):
        defined = [line for line in lines if line.strip().startswith(f"n{i}[")]
        assert len(defined) == 1 and n.name in defined[0] and n.block in defined[0]
    assert '"' not in "".join(re.findall(r'\["(.*?)"\]', text))  # quotes inside labels escaped


def test_layout_without_graphviz_is_readable(atrc):
    svg = to_svg(atrc, engine="builtin")
    assert 'class="graph"' not in svg
    width = float(re.search(r'<svg [^>]*width="([\d.]+)"', svg).group(1))
    assert width <= MAX_WIDTH + 300  # a wide layer wraps
    last_edge = max(m.start() for m in re.finditer('class="edge"', svg))
    assert last_edge < svg.index("<rect"), "edges are drawn first, boxes over them"
    assert svg.count('marker-end="url(#arrow)"') == len(edges(atrc.ir)) and '<marker id="arrow"' in svg
    texts = svg_texts(svg)
    for n in atrc.ir.nodes:
        for line in node_lines(atrc, n):
            assert line in texts
    rects = [tuple(float(v) for v in m) for m in
             re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)]
    for i, (x, y, w, h) in enumerate(rects):  # no box hides another
        for (x2, y2, w2, h2) in rects[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y


def test_long_shapes_wrap_between_whole_shapes_and_are_never_cut():
    text = "{semseg: [B, 128, H/4, W/4], depth: [B, 128, H/4, W/4], normals: [B, 128, H/4, W/4]}"
    lines = wrap_shape(text, width=40)
    assert len(lines) == 3 and " ".join(lines) == text
    assert all(line.count("[") == line.count("]") for line in lines)
    assert wrap_shape("[B, 1234567890123, H/4, W/4]", width=8) == ["[B, 1234567890123, H/4, W/4]"]


def test_cli_emits_mermaid_and_svg_and_refuses_other_suffixes(tmp_path, capsys):
    mmd, svg = tmp_path / "g.mmd", tmp_path / "g.svg"
    assert main(["compile", "baseline_mt", "--emit", str(mmd), "--emit", str(svg),
                 "--emit-only"]) == 0
    assert mmd.read_text().startswith("flowchart TB") and "<svg" in svg.read_text()
    assert main(["compile", "baseline_mt", "--emit", str(tmp_path / "g.png"), "--emit-only"]) == 2
    assert ".mmd" in capsys.readouterr().err
