"""The front-end's machinery: source positions in the syntax tree, the one diagnostics sink, the
parser's single transformer pass, structured shape assertions in the IR."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mtl_dsl.api import check_spec, load_ir
from mtl_dsl.errors import Diagnostics, SpecError
from mtl_dsl.frontend import ast, iter_builtin_specs, parse_source
from mtl_dsl.frontend import parser as parser_module
from mtl_dsl.frontend.to_ast import ToAst
from mtl_dsl.ir import ModelIR
from mtl_dsl.types import Dim

SPECS = {p.name: p.read_text() for p in iter_builtin_specs()}


def _strip_locs(node):
    """A syntax-tree node with every location removed (to compare structure only)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, ast.Loc):
        return (type(node).__name__,) + tuple(
            (f.name, _strip_locs(getattr(node, f.name))) for f in dataclasses.fields(node)
            if f.name not in ("loc", "span", "shape_loc", "target_loc", "source_loc")
            and not isinstance(getattr(node, f.name), ast.Loc))  # op_loc, var_loc, ...
    if isinstance(node, (list, tuple)):
        return tuple(_strip_locs(n) for n in node)
    return node


def _expressions(node):
    """Every expression node below ``node``."""
    if isinstance(node, (list, tuple)):
        for n in node:
            yield from _expressions(n)
        return
    if not dataclasses.is_dataclass(node) or isinstance(node, ast.Loc):
        return
    if isinstance(node, ast.Expr.__args__):
        yield node
    for f in dataclasses.fields(node):
        yield from _expressions(getattr(node, f.name))


def _statements(body):
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.For):
            yield from _statements(stmt.body)
        elif isinstance(stmt, ast.If):
            yield from _statements(stmt.body)
            yield from _statements(stmt.orelse)


def _parse_expression(text: str) -> ast.Expr:
    spec = parse_source(f"model m(v = {text}) {{}}")
    return spec.models[0].params[0].default


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_expression_spans_its_own_text(name):
    """source[start:end] of an expression parses back to the same expression."""
    source = SPECS[name]
    spec = parse_source(source, name)
    exprs = list(_expressions(spec.blocks + spec.models))
    assert len(exprs) > 20
    for e in exprs:
        text = source[e.loc.start:e.loc.end]
        assert _strip_locs(_parse_expression(text)) == _strip_locs(e), text


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_statement_and_definition_spans_its_own_text(name):
    source = SPECS[name]
    spec = parse_source(source, name)
    for d in spec.blocks + spec.models:
        again = parse_source(source[d.span.start:d.span.end])
        assert _strip_locs((again.blocks + again.models)[0]) == _strip_locs(d)
        for stmt in _statements(d.body):
            text = source[stmt.span.start:stmt.span.end]
            wrapped = parse_source("block b() {\n" + text + "\n}").blocks[0].body
            assert [_strip_locs(s) for s in wrapped] == [_strip_locs(stmt)], text
    for imp in spec.imports:
        assert source[imp.span.start:imp.span.end].startswith("import ")


def test_table_entries_locate_their_keys_and_values():
    source = SPECS["atrc_nyud_hrnet18.mtl"]
    spec = parse_source(source)
    table = next(s for s in spec.models[0].body if isinstance(s, ast.Table))
    assert len(table.entries) == 16
    for e in table.entries:
        assert source[e.target_loc.start:e.target_loc.end] == e.target
        assert source[e.source_loc.start:e.source_loc.end] == e.source
        assert source[e.loc.start:e.loc.end] == e.value


def test_ir_keeps_the_offsets_of_table_values(tmp_path):
    """What `mtl-dsl search` rewrites: the IR's table entries point at their values' text."""
    ir = load_ir("atrc", tasks="nyud")
    source = Path(next(p for p in iter_builtin_specs() if p.name == "atrc.mtl")).read_text()
    entries = [e for e in ir.tables if e.loc.file.endswith("atrc.mtl")]
    assert entries and all(source[e.loc.start:e.loc.end] == "search" for e in entries)


def test_parentheses_are_part_of_the_location():
    source = "model m(v = 2 * (3 + 4)) {}"
    e = parse_source(source).models[0].params[0].default
    assert source[e.right.loc.start:e.right.loc.end] == "(3 + 4)"
    assert source[e.loc.start:e.loc.end] == "2 * (3 + 4)"


def test_the_transformer_runs_once_per_parse(monkeypatch):
    calls = []
    original = ToAst.start

    def counting(self, children):
        calls.append(len(children))
        return original(self, children)

    monkeypatch.setattr(ToAst, "start", counting)
    parser_module._parser.cache_clear()
    try:
        spec = parse_source(SPECS["demt.mtl"])
    finally:
        monkeypatch.undo()
        parser_module._parser.cache_clear()
    assert calls == [len(spec.imports) + len(spec.blocks) + len(spec.models)]


# -- one diagnostics sink --------------------------------------------------------------------------

def test_diagnostics_quote_the_registered_source_and_raise_all_in_order():
    sink = Diagnostics()
    sink.add_source("a.mtl", "first line\nsecond line\n")
    assert len(sink) == 0
    sink.raise_if_errors()  # nothing reported: nothing raised
    sink.error(ast.Loc("a.mtl", 2, 8, 4), "one", "a hint")
    sink.error(ast.Loc("b.mtl", 1, 1), "two")
    with pytest.raises(SpecError) as info:
        sink.raise_if_errors()
    first, second = info.value.diagnostics
    assert (first.message, first.source_line, first.hint, first.length) == (
        "one", "second line", "a hint", 4)
    assert (second.message, second.source_line) == ("two", "")


def test_errors_of_an_import_and_of_the_importing_file_come_together(tmp_path):
    (tmp_path / "broken.mtl").write_text("block b(x) {\n  return x\n}\nblock c(x) {\n  return x +* 1\n}\n")
    spec = tmp_path / "top.mtl"
    spec.write_text('import "broken.mtl"\nblock conv_bn_act(x) {\n  return x\n}\n'
                    'model m() {\n  x = conv_bn_act(images, 4)\n}\n')
    with pytest.raises(SpecError) as info:
        check_spec(spec, tasks="depth")
    files = [(Path(d.file).name, d.line) for d in info.value.diagnostics]
    assert files == [("broken.mtl", 5), ("top.mtl", 2)]
    assert info.value.diagnostics[0].source_line == "  return x +* 1"
    assert "already a built-in block" in info.value.diagnostics[1].message


def test_checker_errors_quote_the_spec_through_the_shared_sink(tmp_path):
    spec = tmp_path / "s.mtl"
    spec.write_text("model m() {\n  a = conv_bn_act(images, 4, stride = 2)\n"
                    "  b = conv_bn_act(images, 4, stride = 4)\n  s = add(a, b)\n"
                    "  for t in tasks {\n    out[t] = dense_head(s, task = t)\n  }\n}\n")
    with pytest.raises(SpecError) as info:
        check_spec(spec, tasks="depth")
    (d,) = info.value.diagnostics
    assert d.line == 4 and d.source_line == "  s = add(a, b)"


# -- shape assertions are structured --------------------------------------------------------------

SHAPED = """model m(dim = 8) {
  x = conv_bn_act(images, dim, stride = 4) :: SHAPE
  for t in tasks {
    out[t] = dense_head(x, task = t)
  }
}
"""


def test_shape_assertions_are_kept_as_dims_in_the_ir(tmp_path):
    p = tmp_path / "s.mtl"
    p.write_text(SHAPED.replace("SHAPE", "[B, dim, H/4, 2*(W/8)]"))
    ir = load_ir(p, tasks="depth")
    dims = ir.node("x").shape.dims
    assert dims[:2] == ["B", 8]
    assert dims[2] == Dim.of("H").cdiv(4) and dims[3] == Dim.of("W").cdiv(8).mul(2)
    again = ModelIR.from_json(ir.to_json())
    assert again.node("x").shape == ir.node("x").shape


@pytest.mark.parametrize("shape,size,ok", [
    ("[B, dim, H*2/8, W/4]", (97, 130), True),   # ceil(2H/8), not 2*ceil(H/8): the text is ambiguous
    ("[B, dim, 2*(H/8), W/4]", (97, 130), False),  # 2*ceil(97/8) = 26, the map has 25 rows
    ("[B, dim, 4*H/16, W/4]", (97, 130), True),
    ("[B, dim, (H+3)//4, W/4]", (97, 130), True),
    ("[B, dim, H/4 + 1, W/4]", (96, 128), False),
])
def test_shape_assertions_compare_the_sizes_written(tmp_path, shape, size, ok):
    p = tmp_path / "s.mtl"
    p.write_text(SHAPED.replace("SHAPE", shape))
    if ok:
        check_spec(p, tasks="depth", input_size=size)
    else:
        with pytest.raises(SpecError) as info:
            check_spec(p, tasks="depth", input_size=size)
        assert "shape assertion failed" in info.value.message


# -- folding: one root cause, one error -----------------------------------------------------------

def _d(line, message, column=1, file="a.mtl"):
    from mtl_dsl.errors import Diagnostic

    return Diagnostic(file, line, column, message)


def test_errors_at_one_place_fold_into_the_first():
    from mtl_dsl.errors import fold

    out = fold([_d(3, "x for semseg"), _d(3, "x for depth"), _d(3, "x for edge"), _d(5, "other")])
    assert [(d.line, d.message) for d in out] == [(3, "x for semseg"), (5, "other")]
    assert out[0].notes[-1].startswith("this place fails 2 more times")
    assert out[1].notes == ()


def test_one_message_at_several_places_folds_into_the_first_listing_them():
    from mtl_dsl.errors import fold

    items = [_d(line, "unknown name 'dim'") for line in (2, 4, 6, 8, 10, 12, 12)]
    (d,) = fold(items)
    assert d.line == 2
    assert d.notes == ("the same error at 5 more places: a.mtl:4, a.mtl:6, a.mtl:8, a.mtl:10 "
                       "and 1 more",)


def test_diagnostics_raise_the_folded_errors():
    sink = Diagnostics()
    for line in (1, 2):
        sink.error(ast.Loc("a.mtl", line, 1), "same")
    with pytest.raises(SpecError) as info:
        sink.raise_if_errors()
    assert len(info.value.diagnostics) == 1 and len(sink) == 2


@pytest.mark.parametrize("name,options,hint", [
    ("segsem", ["semseg", "human_parts", "sal", "normals", "depth", "edge"], "did you mean 'semseg'?"),
    ("imagse", ["images", "tasks"], "did you mean 'images'?"),
    ("kernal", ["kernel", "stride"], "did you mean 'kernel'?"),
    ("upsample", ["upsample_concat", "add"], "did you mean 'upsample_concat'?"),
    ("x", ["y", "z"], ""),
    ("zzzzzz", ["semseg", "depth"], ""),
])
def test_did_you_mean_finds_slips_and_swaps(name, options, hint):
    from mtl_dsl.errors import did_you_mean

    assert did_you_mean(name, options) == hint


def test_edit_distance_counts_a_swap_once():
    from mtl_dsl.errors import edit_distance

    assert [edit_distance(a, b) for a, b in [("ab", "ba"), ("kitten", "sitting"), ("", "abc"),
                                             ("semseg", "segsem"), ("same", "same")]] == [1, 3, 3, 2, 0]


# -- reserved node names come from torch ----------------------------------------------------------

def test_reserved_names_are_those_of_the_installed_torch():
    """reserved_names.json is regenerated from torch.fx.GraphModule and compared (after a torch
    upgrade: python -m mtl_dsl.frontend.reserved)."""
    import json
    import subprocess
    import sys

    from mtl_dsl.frontend.reserved import DATA

    stored = json.loads(DATA.read_text())
    run = subprocess.run([sys.executable, "-m", "mtl_dsl.frontend.reserved", "--print"],
                         check=True, capture_output=True, text=True)
    fresh = json.loads(run.stdout)
    assert stored["model"] == fresh["model"] and stored["module"] == fresh["module"]
    assert {"add_submodule", "delete_submodule", "delete_all_unused_submodules", "forward",
            "ir", "idle_parameters"} <= set(stored["model"])


def test_a_node_name_the_model_does_not_reserve_compiles_and_runs(tmp_path):
    """The other side of the reserved list: a name close to a reserved one is a working module."""
    import torch

    from mtl_dsl.api import compile_model

    spec = tmp_path / "s.mtl"
    spec.write_text("model m() {\n  add_submodules = conv_bn_act(images, 4, stride = 2)\n"
                    "  for t in tasks {\n    out[t] = dense_head(add_submodules, task = t)\n  }\n}\n")
    model = compile_model(spec, tasks="depth", input_size=(16, 16)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 16, 16))["depth"]["final"].shape == (1, 1, 16, 16)
    assert "add_submodules.conv.weight" in model.state_dict()


# -- the corpus: shipped specs check clean, mutations give one error per mistake -----------------

def _presets(name):
    spec = parse_source(SPECS[name], name)
    return [None] + [s.name for m in spec.models[:1] for s in m.body if isinstance(s, ast.Preset)]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_shipped_spec_and_preset_checks_clean_with_no_flags(name):
    for preset in _presets(name):
        graph = check_spec(name[:-4], preset=preset)
        assert graph.ir.outputs and set(graph.types) >= {n.name for n in graph.ir.nodes}
