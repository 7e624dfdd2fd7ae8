"""Specs and flags found by a new user's probe (the docs only) and by token-level mutation of the
shipped specs: each mistake is one located error (file or flag, line, column, what was expected),
never a Python exception; and what the docs promise works."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtl_dsl.api import check_spec
from mtl_dsl.errors import SpecError

HEAD = "model m(dim: int = 8) {\n"
BODY = ("  x = conv_bn_act(images, dim, stride = 4)\n"
        "  for t in tasks {\n"
        "    out[t] = dense_head(x, task = t)\n"
        "  }\n"
        "}\n")


def only_error(tmp_path: Path, text: str, **kw):
    path = tmp_path / "spec.mtl"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        check_spec(path, tasks="semseg,depth", input_size=(32, 32), **kw)
    (d,) = info.value.diagnostics
    assert d.file.endswith("spec.mtl") and str(info.value).startswith(f"{d.file}:{d.line}:")
    return d


# -- `return` in a model --------------------------------------------------------------------------

def test_a_return_in_a_model_is_one_error_not_an_exception(tmp_path):
    d = only_error(tmp_path, HEAD + BODY.replace("}\n", "}\n  return x\n", 1))
    assert (d.line, d.column) == (6, 3)
    assert d.message == "'return' is only allowed in a block"
    assert d.hint == "a model's results are its out[t] outputs"


def test_a_return_in_a_model_exits_2_without_a_traceback(tmp_path, capsys):
    from mtl_dsl.cli import main

    spec = tmp_path / "spec.mtl"
    spec.write_text(HEAD + "  x = conv_bn_act(images, dim, stride = 4)\n  if dim > 2 {\n"
                    "    return x\n  }\n" + BODY.split("\n", 1)[1])
    assert main(["check", str(spec), "--tasks", "semseg", "--input", "32x32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:4:5: error: 'return' is only allowed in a block")
    assert "Traceback" not in err and "    4 |     return x\n" in err


# -- presets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("presets,line,column,message", [
    ("  preset p(dim = 4)\n  preset p(dim = 2)\n", 3, 10, "duplicate preset 'p' in model 'm'"),
    ("  preset p(dim = 4, dim = 8)\n", 2, 21, "preset 'p' sets 'dim' twice"),
    # a preset that is not selected is checked all the same: its values have the types
    ('  preset p(dim = "wide")\n', 2, 12, "parameter 'dim' must be int, got str ('wide')"),
    ("  preset p(dim = nope)\n", 2, 18, "unknown name 'nope'"),
    ("  preset p(dim = 1 // 0)\n", 2, 20, "division by zero"),
])
def test_every_preset_is_checked_whether_selected_or_not(tmp_path, presets, line, column, message):
    d = only_error(tmp_path, HEAD + presets + BODY)
    assert (d.line, d.column, d.message) == (line, column, message)


def test_a_duplicate_preset_names_the_first_definition(tmp_path):
    d = only_error(tmp_path, HEAD + "  preset p(dim = 4)\n  preset q(dim = 2)\n"
                                    "  preset p(dim = 2)\n" + BODY, preset="q")
    assert d.line == 4 and d.notes == ("first defined at line 2",)


def test_a_selected_preset_reports_its_wrong_value_once(tmp_path):
    d = only_error(tmp_path, HEAD + '  preset p(dim = "wide")\n' + BODY, preset="p")
    assert (d.line, d.column) == (2, 12) and d.message.startswith("parameter 'dim' must be int")


# -- collections of constants ---------------------------------------------------------------------

@pytest.mark.parametrize("use,column,message", [
    ("concat(d)", 14, "argument 'a' of 'concat' takes a collection of graph values, but its "
                      "entry d[semseg] is the constant (3)"),
    ("sum(d)", 11, "'sum' of a collection reduces graph values, but its entry d[semseg] is the "
                   "constant (3)"),
])
def test_a_collection_of_constants_given_as_graph_values_is_an_error(tmp_path, use, column,
                                                                     message):
    text = (HEAD + "  x = conv_bn_act(images, dim, stride = 4)\n"
            "  for t in tasks {\n    d[t] = 3\n  }\n"
            f"  y = {use}\n"
            "  for t in tasks {\n    out[t] = dense_head(x + y, task = t)\n  }\n}\n")
    d = only_error(tmp_path, text)
    assert (d.line, d.column, d.message) == (6, column, message)


def test_a_block_returning_a_constant_into_a_collection_is_located(tmp_path):
    """The mutation of specs/demt.mtl that found it: `return m[depth - 1]` -> `return [depth - 1]`."""
    text = ("block stack(x) {\n  return [0]\n}\n" + HEAD +
            "  x = conv_bn_act(images, dim, stride = 4)\n"
            "  for t in tasks {\n    d[t] = stack(x)\n  }\n  f = tokens(d)\n"
            "  for t in tasks {\n    out[t] = dense_head(x, task = t)\n  }\n}\n")
    d = only_error(tmp_path, text)
    assert (d.line, d.column) == (9, 14)  # f = tokens(d)
    assert "entry d[semseg] is the constant ([0])" in d.message


# -- flags ----------------------------------------------------------------------------------------

def test_an_unknown_model_is_an_error_at_the_flag_listing_the_models(tmp_path):
    path = tmp_path / "two.mtl"
    path.write_text(HEAD + BODY + HEAD.replace("model m(", "model second(") + BODY)
    with pytest.raises(SpecError) as info:
        check_spec(path, tasks="semseg", model="third")
    (d,) = info.value.diagnostics
    assert (d.file, d.line, d.column, d.length) == ("--model", 1, 1, 5)
    assert d.message == f"no model named 'third' in {path}" and d.source_line == "third"
    assert d.hint == "its models: m, second"
    with pytest.raises(SpecError) as info:
        check_spec(path, tasks="semseg", model="secnd")
    assert info.value.diagnostics[0].hint == "did you mean 'second'?"


@pytest.mark.parametrize("flag,column,length", [
    ("dim=1e400", 5, 5), ("dim= -1e400", 6, 6), ("levels=[1, 1e999]", 8, 10)])
def test_an_infinite_set_value_is_refused_as_typed(flag, column, length):
    from mtl_dsl.api import parse_override

    with pytest.raises(SpecError) as info:
        parse_override(flag)
    (d,) = info.value.diagnostics
    assert (d.file, d.column, d.length, d.message) == ("--set", column, length,
                                                       "number is not finite")
    assert d.source_line == flag  # before: the value re-printed as JSON, 'dim=Infinity'


def test_blocks_of_an_unknown_name_points_at_it_and_names_the_spec_defining_it(capsys):
    from mtl_dsl.cli import main

    assert main(["blocks", "conv_bn_act", "conv_bn_actt", "fcn_features"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("blocks:1:13: error: unknown block 'conv_bn_actt'\n"
                          "    1 | conv_bn_act conv_bn_actt fcn_features\n"
                          "      |             ^~~~~~~~~~~~\n"
                          "hint: did you mean 'conv_bn_act'?")
    assert ("blocks:1:26: error: unknown block 'fcn_features'" in err and
            "hint: 'fcn_features' is not in the library: the built-in spec baseline_mt.mtl "
            "defines it (line 8); import \"baseline_mt.mtl\" to call it" in err)


# -- a lost '}' -----------------------------------------------------------------------------------

def test_a_weights_map_that_lost_its_brace_is_one_error_with_the_hint(tmp_path):
    """A mutation of specs/baseline_mt.mtl (the '}' of fcn_features' weights map deleted) gave a
    second error at the next model's header, which inside the open map is no definition."""
    text = ('block feats_of(x) {\n  y = conv_bn_act(x, 4, stride = 4)\n'
            '  weights official {\n    "backbone" -> "y"\n\n  return y\n}\n\n' +
            HEAD +
            "  x = feats_of(images)\n" + BODY.split("\n", 1)[1])
    d = only_error(tmp_path, text)
    assert (d.line, d.column) == (6, 10)
    assert d.hint == "the file opens 1 more '{' than it closes: is a '}' missing above this line?"


# -- `_` discards a result ------------------------------------------------------------------------

TWO = """block two(x, dim: int) {
  y = conv_bn_act(x, dim)
  a = conv_bn_act(y, dim)
  b = conv_bn_act(y, 1, kernel = 1, act = "none")
  return a, b
}
"""


def test_a_discarded_result_of_a_user_block_is_left_out_not_reported(tmp_path):
    """docs/language.md: `_` discards one result. For a user block the nodes computing it were
    reported as never used (and named after `_` when it came first)."""
    path = tmp_path / "spec.mtl"
    path.write_text(TWO + HEAD + "  x = conv_bn_act(images, dim, stride = 4)\n"
                    "  a, _ = two(x, dim)\n  _, g = two(x, dim)\n"
                    "  for t in tasks {\n    out[t] = dense_head(a * g, task = t)\n  }\n}\n")
    graph = check_spec(path, tasks="semseg", input_size=(32, 32))
    assert [n.name for n in graph.ir.nodes] == ["x", "a.y", "a.a", "g.y", "g.b", "out.semseg_mul",
                                                "out.semseg"]


def test_a_kept_result_that_is_unused_is_still_reported_with_what_it_reads(tmp_path):
    d = only_error(tmp_path, TWO + HEAD + "  x = conv_bn_act(images, dim, stride = 4)\n"
                   "  a, _ = two(x, dim)\n" + BODY.split("\n", 1)[1])
    assert (d.line, d.message) == (9, "node 'a.y' (conv_bn_act) is never used: no output "
                                      "depends on it")
    assert d.notes == ("1 more node of this statement is unused too: a.a (conv_bn_act)",)


def test_what_only_an_unused_statement_reads_is_named_in_its_error_not_its_own(tmp_path):
    """A mutation of a probe spec (`x = fuse(lo, ...)` renamed `xx = ...`) gave two errors, the
    second for `lo`, which only `xx` read."""
    path = tmp_path / "spec.mtl"
    d = only_error(tmp_path, HEAD + "  x = conv_bn_act(images, dim, stride = 4)\n"
                   "  lo = conv_bn_act(x, dim)\n  mid = relu(lo)\n  xx = conv_bn_act(mid, dim)\n"
                   "  for t in tasks {\n    out[t] = dense_head(x, task = t)\n  }\n}\n")
    assert (d.line, d.message) == (5, "node 'xx' (conv_bn_act) is never used: no output "
                                      "depends on it")
    assert d.notes == (f"so is what only it reads: node 'lo' (conv_bn_act) at {path}:3, "
                       f"node 'mid' (relu) at {path}:4",)


@pytest.mark.parametrize("value,message", [
    (True, "parameter 'dim' must be int, got bool (true)"),
    (None, "argument 'channels' of 'conv_bn_act': expected int, got none"),
])
def test_values_are_spelt_as_in_a_spec_in_messages(tmp_path, value, message):
    """Before: 'got bool (True)', 'got NoneType (None)': Python's words, not the language's."""
    path = tmp_path / "spec.mtl"
    path.write_text(HEAD + BODY)
    with pytest.raises(SpecError) as info:
        check_spec(path, tasks="semseg", input_size=(32, 32), overrides={"dim": value})
    assert info.value.diagnostics[0].message == message


def test_one_value_of_the_wrong_kind_given_to_several_calls_is_one_error(tmp_path):
    """A mutation of specs/atrc_pascal_hrnet18.mtl (`x = upsample_concat(feats)` -> `x = (feats)`)
    gave one error per call that reads x."""
    path = tmp_path / "spec.mtl"
    d = only_error(tmp_path, HEAD + "  feats = backbone(\"resnet18\", levels = [1, 2])\n"
                   "  x = feats\n  a = conv_bn_act(x, dim)\n  b = relu(x)\n  c = linear(x, dim)\n"
                   "  for t in tasks {\n    out[t] = dense_head(a + b + c, task = t)\n  }\n}\n")
    assert (d.line, d.column) == (4, 7)
    assert d.message.startswith("argument 'x' of 'conv_bn_act' takes a map, but gets a "
                                "multi-scale list")
    assert d.notes == (f"the value comes from node 'feats' (backbone) at {path}:2",
                       f"the same value is given at 2 more places: {path}:5, {path}:6")
