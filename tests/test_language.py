"""The front-end: syntax, semantics, and the errors a person reads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtl_dsl.api import check_spec, load_ir, parse_override
from mtl_dsl.errors import SpecError

TINY = """
block stem(x, ch: int = 8) {
  y = conv_bn_act(x, ch, stride = 2)
  return conv_bn_act(y, ch, stride = 2)
}
model tiny(dim = 8, heads = 2) {
  preset wide(dim = 16)
  x = stem(images, ch = dim) :: [B, dim, H/4, W/4]
  for t in tasks {
    h[t] = conv_bn_act(x, dim)
    out[t] = dense_head(h[t], task = t)
  }
}
"""


def write(tmp_path: Path, text: str, name: str = "spec.mtl") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def errors_of(path: Path, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        check_spec(path, **kw)
    return info.value


def test_tiny_spec_lowers_to_named_nodes(tmp_path):
    ir = load_ir(write(tmp_path, TINY), tasks="nyud")
    names = [n.name for n in ir.nodes]
    assert names[:2] == ["x.y", "x.conv_bn_act"]
    assert "h.semseg" in names and "out.edge" in names
    assert [(o.task, o.name) for o in ir.outputs] == [
        ("semseg", "final"), ("depth", "final"), ("normals", "final"), ("edge", "final")]
    assert ir.params["dim"].value == 8 and ir.params["dim"].origin == "default"


def test_preset_and_set_override(tmp_path):
    p = write(tmp_path, TINY)
    ir = load_ir(p, preset="wide")
    assert ir.params["dim"].value == 16 and ir.params["dim"].origin == "preset"
    ir = load_ir(p, preset="wide", overrides={"dim": 4})
    assert ir.params["dim"].value == 4 and ir.params["dim"].origin == "set"
    assert ir.node("h.semseg").params["channels"] == 4


def test_override_values_parse_as_literals():
    assert parse_override("dim=128") == ("dim", 128)
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("flag=true") == ("flag", True)
    assert parse_override("levels=[1, 2]") == ("levels", [1, 2])
    assert parse_override("backbone=swin_tiny_patch4_window7_224") == (
        "backbone", "swin_tiny_patch4_window7_224")
    assert parse_override('name="a b"') == ("name", "a b")
    with pytest.raises(SpecError) as e:
        parse_override("novalue")
    assert e.value.message == "expected NAME=VALUE, got 'novalue'" and e.value.file == "--set"


def test_parentheses_group_expressions(tmp_path):
    spec = TINY.replace("model tiny(dim = 8,", "model tiny(dim = (1 + 3) * 2 - -(2 * (1)) + 2,")
    ir = load_ir(write(tmp_path, spec), tasks="depth")
    assert ir.params["dim"].value == 12
    assert ir.node("h.depth").params["channels"] == 12


def test_explicit_task_list_and_loops(tmp_path):
    ir = load_ir(write(tmp_path, TINY), tasks="semseg:13,depth")
    assert [t.name for t in ir.tasks] == ["semseg", "depth"]
    assert ir.tasks[0].channels == 13


def test_constants_tables_conditions_and_nested_families(tmp_path):
    spec = """
model m(dim = 8) {
  table ctx {
    semseg <- depth: local
    *      <- *: global
  }
  x = conv_bn_act(images, dim * 2 // 2 + 0, stride = 4)
  for t in tasks {
    f[t] = conv_bn_act(x, dim)
  }
  for t in tasks {
    for s in tasks if ctx[t][s] != "none" and s != t {
      c[t][s] = conv_bn_act(f[s], max(1, dim // 2), kernel = 1)
    }
    if len(tasks) > 1 {
      out[t] = dense_head(concat(c[t]), task = t)
    } else {
      out[t] = dense_head(f[t], task = t)
    }
  }
}
"""
    ir = load_ir(write(tmp_path, spec), tasks="semseg:5,depth,edge")
    assert "c.semseg.depth" in [n.name for n in ir.nodes]
    assert "c.semseg.semseg" not in [n.name for n in ir.nodes]
    graph = check_spec(write(tmp_path, spec), tasks="semseg:5,depth,edge")
    concat = graph.ir.node("out.semseg_concat")
    assert graph.types[concat.name][0].channels == 8  # two sources x 4 channels
    ir1 = load_ir(write(tmp_path, spec), tasks="semseg:5")
    assert [n.block for n in ir1.nodes].count("concat") == 0


def test_multiple_outputs_and_named_outputs(tmp_path):
    spec = """
block two(x) {
  a = conv_bn_act(x, 4)
  b = conv_bn_act(x, 6)
  return a, b
}
model m() {
  x = conv_bn_act(images, 8, stride = 4)
  for t in tasks {
    a, b = two(x)
    out[t] = dense_head(a, task = t)
    out[t].inter = dense_head(b, task = t)
  }
}
"""
    ir = load_ir(write(tmp_path, spec), tasks="semseg:3,depth")
    assert {(o.task, o.name) for o in ir.outputs} == {
        ("semseg", "final"), ("semseg", "inter"), ("depth", "final"), ("depth", "inter")}
    assert "a.semseg.a" in [n.name for n in ir.nodes]


def test_import_relative_then_builtin(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib", "block head2(x, task: str) {\n  return dense_head(x, task = task)\n}\n",
          "parts.mtl")
    spec = """
import "lib/parts.mtl"
import "baseline_mt.mtl" as base
model m(dim = 8) {
  x = base.fcn_features("resnet18", [1, 2], "")
  for t in tasks {
    out[t] = head2(x, t)
  }
}
"""
    graph = check_spec(write(tmp_path, spec), tasks="depth", input_size=(64, 64))
    assert graph.types["x.upsample_concat"][0].channels == 64 + 128


# -- errors ---------------------------------------------------------------------------------------

def test_error_is_rendered_with_file_line_column_and_caret(tmp_path):
    p = write(tmp_path, TINY.replace("dense_head(h[t]", "dense_hed(h[t]"))
    e = errors_of(p)
    assert e.line == 11 and e.column == 14
    assert "unknown block 'dense_hed'" in e.message
    assert "did you mean 'dense_head'" in e.hint
    text = str(e)
    assert text.startswith(f"{p}:11:14: error: unknown block 'dense_hed'")
    lines = text.split("\n")
    assert "out[t] = dense_hed(h[t], task = t)" in lines[1]
    caret_col = lines[2].index("^")
    assert lines[1][caret_col:caret_col + 9] == "dense_hed"


def test_syntax_errors_use_plain_terminal_names(tmp_path):
    e = errors_of(write(tmp_path, "model m() {\n  x = conv_bn_act(images 8)\n}\n"))
    assert e.line == 2
    assert "__ANON" not in str(e) and "expected one of" in e.message
    assert "','" in e.message and "')'" in e.message
    assert e.message.startswith("unexpected '8'; expected one of: ") and len(e.diagnostics) == 1


def test_several_independent_mistakes_are_all_reported(tmp_path):
    spec = """
model m(dim = 8) {
  x = conv_bn_act(images, dim, kernal = 3)
  y = conv_bn_acts(images, dim)
  z = conv_bn_act(images, "eight")
  for t in tasks {
    out[t] = dense_head(x, task = t)
  }
}
"""
    e = errors_of(write(tmp_path, spec))
    messages = [d.message for d in e.diagnostics]
    assert len(messages) == 3, messages
    assert "no argument 'kernal'" in messages[0] and "did you mean 'kernel'" in e.diagnostics[0].hint
    assert "unknown block 'conv_bn_acts'" in messages[1]
    assert "expected int" in messages[2]


@pytest.mark.parametrize("body,fragment", [
    ("x = conv_bn_act(images)", "missing required argument 'channels'"),
    ("x = conv_bn_act(images, 4, 3, 1, 1, 1, \"bn\", \"relu\", false, \"default\", 9)",
     "takes at most 10 arguments"),
    ("x = conv_bn_act(images, 1000000000)", "above the maximum"),
    ("x = conv_bn_act(images, 4, norm = \"batch\")", "expected one of"),
    ("x = conv_bn_act(images, 4)\n  x2 = dense_head(x, task = \"sal\")", "unknown task 'sal'"),
    ("x = conv_bn_act(imagse, 4)", "unknown name 'imagse'"),
    ("x = conv_bn_act(y, 4)\n  y = conv_bn_act(images, 4)", "unknown name 'y'"),
    ("x = conv_bn_act(images, 4)\n  x = conv_bn_act(x, 4, groups = 3)", "groups=3 must divide"),
])
def test_semantic_errors(tmp_path, body, fragment):
    spec = f"model m() {{\n  {body}\n  for t in tasks {{\n    out[t] = dense_head(x, task = t)\n  }}\n}}\n"
    e = errors_of(write(tmp_path, spec), tasks="semseg:3,depth")
    assert fragment in str(e), str(e)
    assert e.line >= 2


def test_duplicate_output_block_and_recursion(tmp_path):
    spec = """
block a(x) {
  return b(x)
}
block b(x) {
  return a(x)
}
model m() {
  x = a(images)
  for t in tasks {
    out[t] = dense_head(x, task = t)
  }
}
"""
    e = errors_of(write(tmp_path, spec))
    assert "calls itself (a -> b -> a)" in str(e)
    spec2 = """
model m() {
  x = conv_bn_act(images, 4)
  for t in tasks {
    out[t] = dense_head(x, task = t)
    out[t] = dense_head(x, task = t)
  }
}
"""
    assert "assigned twice" in str(errors_of(write(tmp_path, spec2, "b.mtl")))
    spec3 = "block conv_bn_act(x) {\n  return x\n}\nmodel m() {\n  x = conv_bn_act(images)\n}\n"
    assert "already a built-in block" in str(errors_of(write(tmp_path, spec3, "c.mtl")))


def test_channel_mismatch_names_both_nodes(tmp_path):
    spec = """
model m() {
  a = conv_bn_act(images, 4, stride = 2)
  b = conv_bn_act(images, 4, stride = 4)
  s = add(a, b)
  for t in tasks {
    out[t] = dense_head(s, task = t)
  }
}
"""
    e = errors_of(write(tmp_path, spec))
    text = str(e)
    assert "cannot add" in text
    assert "node 'a' (conv_bn_act) at" in text and "node 'b' (conv_bn_act) at" in text
    assert ":3" in text and ":4" in text


def test_shape_assertion_and_dead_branch(tmp_path):
    bad = TINY.replace(":: [B, dim, H/4, W/4]", ":: [B, dim, H/8, W/4]")
    assert "shape assertion failed" in str(errors_of(write(tmp_path, bad)))
    dead = TINY.replace("for t in tasks {", "unused = conv_bn_act(x, 3)\n  for t in tasks {", 1)
    e = errors_of(write(tmp_path, dead, "d.mtl"))
    assert "'unused' (conv_bn_act) is never used" in str(e)


def test_imports_not_found_circular_and_not_mtl(tmp_path):
    assert "import not found" in str(errors_of(write(tmp_path, 'import "nope.mtl"\nmodel m() {}\n')))
    write(tmp_path, 'import "b2.mtl"\nblock fa(x) {\n  return x\n}\n', "a2.mtl")
    write(tmp_path, 'import "a2.mtl"\nblock fb(x) {\n  return x\n}\n', "b2.mtl")
    assert "circular import" in str(errors_of(tmp_path / "a2.mtl"))
    e = errors_of(write(tmp_path, 'import "/etc/passwd"\nmodel m() {}\n', "p.mtl"))
    assert "must name a .mtl spec file" in str(e)


def test_malformed_inputs_give_spec_errors(tmp_path):
    junk = tmp_path / "junk.mtl"
    junk.write_bytes(bytes(range(256)) * 4)
    assert "not UTF-8" in str(errors_of(junk))
    assert errors_of(junk).message == "spec file is not UTF-8 text (byte 0x80)"
    big = tmp_path / "big.mtl"
    big.write_text("#" * (10 * 1024 * 1024))
    assert "too large" in str(errors_of(big))
    deep = write(tmp_path, "model m() {\n  x = " + "(" * 5000 + "1" + ")" * 5000 + "\n}\n", "deep.mtl")
    assert "nested" in str(errors_of(deep))
    huge = write(tmp_path, TINY.replace("dim = 8", "dim = 1e9"), "huge.mtl")
    assert "must be int" in str(errors_of(huge))
    assert errors_of(huge).message == ("argument 'ch' of 'stem' must be int, got float "
                                       "(1000000000.0)")
    huge2 = write(tmp_path, TINY.replace("dim = 8", "dim = 1000000000"), "huge2.mtl")
    assert "above the maximum" in str(errors_of(huge2))
    loop = write(tmp_path, "model m() {\n for i in range(10000) {\n for j in range(10000) {\n"
                           "  x[i][j] = conv_bn_act(images, 1)\n }\n }\n}\n", "loop.mtl")
    assert "more than" in str(errors_of(loop))


def test_unknown_profile_and_builtin_spec_name():
    with pytest.raises(SpecError) as e:
        check_spec("baseline_mt", tasks="nyu")
    assert "did you mean 'nyud'" in str(e.value)
    with pytest.raises(SpecError) as e:
        check_spec("baseline_mtt")
    assert "did you mean 'baseline_mt'" in str(e.value)


def test_check_does_not_import_torch():
    code = ("import sys; from mtl_dsl.api import check_spec; check_spec('baseline_mt'); "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loops_accumulate_into_outer_names(tmp_path):
    spec = """
block stack(x, depth: int = 1) {
  y = conv_bn_act(x, 4)
  for i in range(depth - 1) {
    y = conv_bn_act(y, 4)
  }
  return y
}
model m(depth = 3) {
  x = conv_bn_act(images, 4, stride = 4)
  for t in tasks {
    d[t] = stack(x, depth = depth)
    h = conv_bn_act(d[t], 4)
    out[t] = dense_head(h, task = t)
  }
}
"""
    graph = check_spec(write(tmp_path, spec), tasks="depth,edge")
    convs = [n for n in graph.ir.nodes if n.block == "conv_bn_act"]
    assert len(convs) == 1 + 2 * (3 + 1)
    head_input = graph.ir.node("h.depth").inputs["x"].node
    chain = graph.ir.node(head_input)
    assert graph.ir.node(chain.inputs["x"].node).inputs["x"].node == "d.depth.y"
    bad = spec.replace("    y = conv_bn_act(y, 4)", "    i = 2")
    assert "loop variable" in str(errors_of(write(tmp_path, bad, "bad.mtl")))


# -- one root cause, one error --------------------------------------------------------------------

def _model(body: str) -> str:
    return "model m(dim = 4) {\n" + body + "\n}\n"


def test_what_a_failed_loop_or_if_assigns_is_not_reported_again(tmp_path):
    spec = _model("""  x = conv_bn_act(images, dim, stride = 4)
  for t in tasks if undefined_flag {
    a[t] = conv_bn_act(x, dim)
  }
  if undefined_flag {
    b = conv_bn_act(x, dim)
  } else {
    c = conv_bn_act(x, dim)
  }
  for t in tasks {
    out[t] = dense_head(add(add(a[t], b), c), task = t)
  }""")
    e = errors_of(write(tmp_path, spec), tasks="depth,edge")
    assert [d.message for d in e.diagnostics] == ["unknown name 'undefined_flag'"]
    assert "the same error at 1 more place" in str(e)


def test_a_weights_map_naming_what_a_failed_statement_would_have_made_is_quiet(tmp_path):
    spec = _model("""  x = conv_bn_act(images, dim, stride = 4, size = 3)
  for t in tasks {
    out[t] = dense_head(x, task = t)
  }
  weights official {
    "stem" -> "x"
    "head.{t}" -> "outs.{t}"
  }""")
    e = errors_of(write(tmp_path, spec), tasks="depth,edge")
    assert [d.line for d in e.diagnostics] == [2]
    fixed = write(tmp_path, spec.replace(", size = 3", ""))
    (d,) = errors_of(fixed, tasks="depth,edge").diagnostics  # then the map's own mistake shows
    assert d.line == 8 and "'outs.depth' (for t = depth) names no node" in d.message


def test_the_same_place_failing_per_task_is_one_error(tmp_path):
    spec = _model("""  x = conv_bn_act(images, 6, stride = 4)
  for t in tasks {
    h[t] = conv_bn_act(x, 4, groups = 4)
    out[t] = dense_head(h[t], task = t)
  }""")
    e = errors_of(write(tmp_path, spec), tasks="semseg:3,depth,normals,edge")
    (d,) = e.diagnostics
    assert d.line == 4 and "groups" in d.message
    assert "this place fails 3 more times" in str(e)


def test_a_missing_table_entry_is_one_error_naming_what_the_table_covers(tmp_path):
    spec = _model("""  table ctx {
    semseg <- depth: global
  }
  x = conv_bn_act(images, dim, stride = 4)
  for t in tasks {
    for s in tasks if ctx[t][s] != "none" {
      c[t][s] = conv_bn_act(x, dim)
    }
    out[t] = dense_head(concat(c[t]), task = t)
  }""")
    e = errors_of(write(tmp_path, spec), tasks="semseg:3,depth")
    (d,) = e.diagnostics
    assert d.message == "table 'ctx' has no entry semseg <- semseg"
    assert "the table names semseg, depth; the tasks of this profile are semseg, depth" in str(e)


def test_unused_nodes_of_one_statement_are_one_error(tmp_path):
    spec = 'import "demt.mtl" as demt\n' + _model("""  x = conv_bn_act(images, 8, stride = 4)
  mixed = demt.demt_encoder(x, 8, depth = 1)
  mixed = demt.demt_encoder(x, 8, depth = 1)
  for t in tasks {
    out[t] = dense_head(mixed[t], task = t)
  }""")
    e = errors_of(write(tmp_path, spec), tasks="depth,edge")
    (d,) = e.diagnostics
    assert d.line == 4 and d.message == ("node 'mixed.e' (demt_linear_norm) is never used: no "
                                         "output depends on it")
    assert "2 more nodes of this statement are unused too" in str(e)
