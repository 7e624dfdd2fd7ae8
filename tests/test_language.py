"""The front-end: syntax, semantics, and the errors a person reads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec, load_ir, parse_override
from mtl_dsl.errors import SpecError
from mtl_dsl.tasks import PROFILES

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


# -- a spec made for one dataset ------------------------------------------------------------------

DATASET_SPECS = [("atrc_nyud_hrnet18", "nyud"), ("atrc_nyud_hrnet48", "nyud"),
                 ("atrc_pascal_hrnet18", "pascal")]


@pytest.mark.parametrize("spec,profile", DATASET_SPECS)
def test_a_spec_made_for_a_dataset_checks_with_no_flags(spec, profile):
    ir = check_spec(spec).ir
    assert ir.profile == profile
    assert ir.tasks == list(PROFILES[profile].tasks)
    assert tuple(ir.input_size) == PROFILES[profile].input_size


@pytest.mark.parametrize("spec,profile", DATASET_SPECS)
def test_another_profile_is_refused_with_one_error(spec, profile):
    other = "pascal" if profile == "nyud" else "nyud"
    with pytest.raises(SpecError) as info:
        check_spec(spec, tasks=other)
    (d,) = info.value.diagnostics
    assert d.message.startswith(f"model '{spec}' is made for the task profile '{profile}' (")
    assert f"not for '{other}'" in d.message
    assert d.source_line.strip().startswith(f"profile {profile}")
    assert "leave out --tasks" in d.hint


def test_the_same_tasks_by_another_name_and_another_input_size_are_accepted():
    ir = load_ir("atrc_nyud_hrnet18", tasks="semseg:40,depth,normals,edge", input_size=(64, 96))
    assert [t.name for t in ir.tasks] == ["semseg", "depth", "normals", "edge"]
    assert tuple(ir.input_size) == (64, 96)
    with pytest.raises(SpecError) as info:
        load_ir("atrc_nyud_hrnet18", tasks="semseg:13,depth,normals,edge")
    assert len(info.value.diagnostics) == 1 and "(semseg:13, depth" in info.value.message


@pytest.mark.parametrize("spec, profile, tasks", [
    ("atrc_pascal_hrnet18", "pascal", "semseg:21,normals"),
    ("atrc_pascal_hrnet18", "pascal", "normals,semseg:21"),
    ("atrc_nyud_hrnet18", "nyud", "depth,edge")])
def test_a_selection_of_the_profiles_tasks_is_accepted_at_its_input_size(spec, profile, tasks):
    """As the official ATRC code builds a searched genotype for any of its tasks (in the order
    configured): github.com/brdav/atrc, src/model/heads/relationalcontext.py."""
    ir = load_ir(spec, tasks=tasks)
    assert [t.name for t in ir.tasks] == [t.split(":")[0] for t in tasks.split(",")]
    assert tuple(ir.input_size) == PROFILES[profile].input_size
    assert tuple(load_ir(spec, tasks=tasks, input_size=(64, 96)).input_size) == (64, 96)


@pytest.mark.parametrize("tasks", ["semseg:21,depth", "semseg:40,normals", "semseg:21,semseg:21"])
def test_tasks_outside_the_profile_are_still_refused(tasks):
    with pytest.raises(SpecError) as info:
        load_ir("atrc_pascal_hrnet18", tasks=tasks)
    assert len(info.value.diagnostics) == 1


PROFILED = """model m(dim = 4) {
  PROFILE
  x = conv_bn_act(images, dim, stride = 4)
  for t in tasks {
    out[t] = dense_head(x, task = t)
  }
}
"""


@pytest.mark.parametrize("statement,tasks,size", [
    ("profile nyud", ["semseg", "depth", "normals", "edge"], (425, 560)),
    ("profile pascal(input = [256, 320])", ["semseg", "human_parts", "sal", "normals", "edge"],
     (256, 320)),
    ('profile "depth,edge"(input = [64, 64],)', ["depth", "edge"], (64, 64)),
])
def test_the_profile_statement_sets_the_tasks_and_the_input_size(tmp_path, statement, tasks,
                                                                  size):
    ir = load_ir(write(tmp_path, PROFILED.replace("PROFILE", statement)))
    assert [t.name for t in ir.tasks] == tasks and tuple(ir.input_size) == size


@pytest.mark.parametrize("statement,message", [
    ("profile nyudd", "unknown task profile or task 'nyudd'"),
    ("profile nyud(input = [425])", "'input' is [height, width] in pixels"),
    ("profile nyud(input = [4, 560])", "'input' is [height, width] in pixels"),
    ("profile nyud(size = [64, 64])", "'profile' takes one setting, input = [height, width]"),
    ("profile nyud\n  profile nyud", "a model states its profile once"),
])
def test_profile_statement_mistakes(tmp_path, statement, message):
    e = errors_of(write(tmp_path, PROFILED.replace("PROFILE", statement)))
    assert len(e.diagnostics) == 1 and message in e.message, str(e)


def test_profile_belongs_at_the_top_of_a_model(tmp_path):
    spec = "block b(x) {\n  profile nyud\n  return x\n}\n" + PROFILED.replace(
        "PROFILE", "").replace("conv_bn_act(images", "conv_bn_act(b(images)")
    e = errors_of(write(tmp_path, spec), tasks="depth")
    assert len(e.diagnostics) == 1 and e.line == 2
    assert "'profile' is only allowed at the top of a model" in e.message


def test_a_spec_made_for_a_dataset_compiles_with_no_flags():
    from mtl_dsl.api import compile_model

    model = compile_model("atrc_nyud_hrnet18", input_size=(64, 64))
    same = compile_model("atrc_nyud_hrnet18", tasks="nyud", input_size=(64, 64))
    assert model.profile.name == "nyud" and model.output_names == same.output_names
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in same.parameters())


def test_a_spec_made_for_a_dataset_trains_with_no_tasks_given(tmp_path):
    from mtl_dsl.runtime.checkpoints import read_meta
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.launch import run_training

    cfg = load_config(overrides={
        "model": {"overrides": {"backbone": "resnet18", "dim": 8}},
        "dataset": {"length": 4, "val_length": 2},
        "training": {"iterations": 2, "batch_size": 2, "input_size": [32, 32], "augment": False,
                     "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 2,
                     "eval_batches": 1},
        "run": {"storage": str(tmp_path), "threads_per_worker": 1}})
    assert cfg.tasks is None and cfg.dataset.name == "synthetic"
    result = run_training("atrc_nyud_hrnet18", cfg, plain=True, progress=lambda record: None)
    assert result.run_dir.name == "atrc_nyud_hrnet18-nyud"
    assert set(result.history[-1]["losses"]) >= {"semseg", "depth", "normals", "edge"}
    meta = read_meta(result.checkpoint)
    assert meta["profile"]["name"] == "nyud" and meta["run_config"]["tasks"] == "nyud"


def test_a_spec_made_for_a_dataset_predicts_from_official_weights_with_no_tasks_given(tmp_path):
    from PIL import Image
    from test_golden import official_file

    from mtl_dsl.cli import main

    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    weights = official_file("atrc_genotype", tmp_path)
    assert main(["predict", "atrc_nyud_hrnet18", "--weights", str(weights), "--input", "64x64",
                 str(image), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        [f"scene_{t}.png" for t in sorted(["semseg", "depth", "normals", "edge"])]


def test_a_sweep_of_a_spec_made_for_a_dataset_takes_its_profile(tmp_path):
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.sweep import run_sweep

    cfg = load_config(overrides={"run": {"storage": str(tmp_path), "name": "s"},
                                 "tune": {"search": {"dimm": "[8, 16]"}}})
    with pytest.raises(SpecError) as info:  # checked before any trial: the model's parameters
        run_sweep("atrc_nyud_hrnet18", cfg, plain=True, progress=lambda line: None)
    assert info.value.message == "model 'atrc_nyud_hrnet18' has no parameter 'dimm'"


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


# -- syntax errors: one per mistake, and constructs of other languages named ----------------------

BODY = """  x = conv_bn_act(images, dim, stride = 4)
  y = conv_bn_act(x, dim, kernel = 3,
                  stride = 1)
  for t in tasks {
    h[t] = conv_bn_act(y, dim)
    out[t] = dense_head(h[t], task = t)
  }"""


@pytest.mark.parametrize("old,new,line,fragment", [
    ("images, dim, stride", "images dim, stride", 2, "unexpected name 'dim'"),
    ("stride = 4)", "stride = 4", 3, "is a ')' missing at the end of line 2?"),
    ("kernel = 3,", "kernel = 3", 4, "unexpected name 'stride'"),
    ("stride = 4)", "stride = 4) }", 3, "unexpected name 'y'"),
    ("for t in tasks {", "for t in tasks", 6, "is a '{' missing at the end of line 5?"),
    ("h[t] = conv_bn_act(y, dim)", "h[t] = = conv_bn_act(y, dim)", 6, "unexpected '='"),
    ("x = conv_bn_act", "x = 'a' + conv_bn_act", 2, "unexpected character '''"),
])
def test_a_syntax_error_is_reported_once(tmp_path, old, new, line, fragment):
    e = errors_of(write(tmp_path, _model(BODY.replace(old, new, 1))))
    assert len(e.diagnostics) == 1, str(e)
    assert e.line == line and fragment in str(e), str(e)


def test_a_bracket_left_open_by_a_syntax_error_does_not_change_the_if_statements_after_it(
        tmp_path):
    """An `if` that starts a statement is told from a conditional expression's by the brackets
    open before it; after a syntax error, those of the broken statement do not count."""
    body = BODY.replace("  for t in tasks {", "  if dim > 2 {\n    z = 1\n  }\n  for t in tasks {")
    e = errors_of(write(tmp_path, _model("  w = max((1, 2)\n" + body)))
    assert [d.line for d in e.diagnostics] == [2], str(e)
    assert errors_of(write(tmp_path, "(\n" + _model(body))).line == 1


def test_independent_syntax_errors_are_each_reported(tmp_path):
    text = _model(BODY.replace("images, dim", "images dim").replace("h[t] = conv", "h[t] = = conv"))
    e = errors_of(write(tmp_path, text + "block b(x) {\n  return x +* 1\n}\n"))
    assert [d.line for d in e.diagnostics] == [2, 6, 11]


@pytest.mark.parametrize("statement,message,hint", [
    ("y = [a for a in [1, 2]]", "a list comprehension is not part of the language", "for v in"),
    ("y = {a: 1 for a in tasks}", "a dict comprehension is not part of the language", "for v in"),
    ("y = true ? 1 : 2", "a conditional expression 'c ? a : b' is not part", "a if c else b"),
    ("y = max(1, a for a in [1, 2])", "a generator expression is only allowed as the sole "
                                      "argument of a call", "sum(x[s] for s in tasks)"),
    ("while true {\n    y = 1\n  }", "a 'while' loop is not part of the language", "range(n)"),
    ("while n < 3 {\n    y = 1\n  }", "a 'while' loop is not part of the language", "range(n)"),
    ("let y = 1", "'let' is not part of the language", "name = value"),
    ("def f(x) {\n    y = x\n  }", "'def' is not part of the language", "block name("),
    ("y += 1", "'+=' is not part of the language", "x = x + ..."),
    ("y = 2 ** 3", "'**' (power) is not part of the language", "x * x"),
    ("y = true && false", "'&&' is not part of the language", "'and'"),
    ("y = true || false", "'||' is not part of the language", "'or'"),
    ("y = !true", "'!' is not part of the language", "'not'"),
    ("y = 1;", "';' is not part of the language", "end of its line"),
])
def test_constructs_the_language_lacks_are_named(tmp_path, statement, message, hint):
    e = errors_of(write(tmp_path, _model("  " + statement + "\n" + BODY)))
    (d,) = e.diagnostics
    assert d.message.startswith(message) and hint in d.hint and d.line == 2


def test_an_import_without_quotes_is_named(tmp_path):
    e = errors_of(write(tmp_path, "import demt\n" + _model(BODY)))
    (d,) = e.diagnostics
    assert d.message == "an import names a file in double quotes"
    assert d.hint == 'write: import "demt.mtl"'


def test_python_constants_hint_at_the_spelling(tmp_path):
    e = errors_of(write(tmp_path, _model("  flag = True\n" + BODY)))
    assert e.message == "unknown name 'True'" and e.hint == "write true"


# -- --set values, task names, reserved node names, links -----------------------------------------

@pytest.mark.parametrize("text,message", [
    ("dim=abc", "parameter 'dim' must be int, got str ('abc')"),
    ("dim=64.5", "parameter 'dim' must be int, got float (64.5)"),
])
def test_a_wrong_set_value_is_one_error_at_the_flag(text, message):
    key, value = parse_override(text)
    with pytest.raises(SpecError) as info:
        check_spec("baseline_mt", overrides={key: value})
    (d,) = info.value.diagnostics
    assert d.message == message and d.file == "--set"
    assert d.source_line == text and d.column == len("dim=") + 1


def test_a_wrong_set_value_exits_2_without_a_traceback(capsys):
    from mtl_dsl.cli import main

    assert main(["check", "baseline_mt", "--set", "dim=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--set:1:5: error: parameter 'dim' must be int") and "Traceback" not in err


def test_a_default_of_the_wrong_type_is_an_error(tmp_path):
    e = errors_of(write(tmp_path, TINY.replace("dim = 8", 'dim: int = "eight"')))
    assert e.message == "parameter 'dim' must be int, got str ('eight')"


@pytest.mark.parametrize("where", ["out", "task"])
def test_a_task_typo_suggests_the_task_and_lists_the_profile(tmp_path, where):
    body = ('  x = conv_bn_act(images, 4, stride = 4)\n  for t in tasks {\n'
            '    out[t] = dense_head(x, task = t)\n  }\n')
    body += ('  out["segsem"].aux = dense_head(x, task = "depth")' if where == "out" else
             '  y = dense_head(x, task = "segsem")')
    e = errors_of(write(tmp_path, _model(body)), tasks="nyud")
    assert e.diagnostics[0].message == "unknown task 'segsem'"
    assert e.diagnostics[0].hint == ("did you mean 'semseg'? (the tasks of this profile: semseg, "
                                     "depth, normals, edge)")


@pytest.mark.parametrize("name", ["add_submodule", "delete_submodule",
                                  "delete_all_unused_submodules", "forward", "training", "ir",
                                  "class"])
def test_nodes_cannot_be_named_after_attributes_of_the_compiled_model(tmp_path, name):
    e = errors_of(write(tmp_path, TINY.replace("h[t] = conv_bn_act(x, dim)",
                                               f"{name} = conv_bn_act(x, dim)\n    h[t] = {name}")))
    (d,) = e.diagnostics
    assert d.message.startswith(f"'{name}' cannot name a node: ") and d.line == 10


def test_inner_names_of_a_block_cannot_be_module_attributes(tmp_path):
    spec = TINY.replace("y = conv_bn_act(x, ch, stride = 2)", "forward = conv_bn_act(x, ch, stride = 2)")
    spec = spec.replace("return conv_bn_act(y, ch", "return conv_bn_act(forward, ch")
    e = errors_of(write(tmp_path, spec))
    (d,) = e.diagnostics
    assert d.message == ("'forward' cannot name a node (in 'x.forward'): every torch module has an "
                         "attribute of that name") and d.line == 3


def test_an_import_link_to_another_kind_of_file_is_refused_without_reading_it(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not echo this line\n")
    (tmp_path / "lib.mtl").symlink_to(secret)
    e = errors_of(write(tmp_path, 'import "lib.mtl"\n' + TINY))
    (d,) = e.diagnostics
    assert d.message == (f"cannot import 'lib.mtl': it is a link to {secret.resolve()}, which is "
                         f"not a .mtl spec file")
    assert "do not echo" not in str(e)
    (tmp_path / "top.mtl").symlink_to(secret)
    with pytest.raises(SpecError) as info:
        check_spec(tmp_path / "top.mtl")
    assert "is a link to" in info.value.message and "do not echo" not in str(info.value)


def test_an_import_link_to_a_spec_file_is_followed(tmp_path):
    (tmp_path / "real").mkdir()
    write(tmp_path / "real", "block head2(x, task: str) {\n  return dense_head(x, task = task)\n}\n",
          "parts.mtl")
    (tmp_path / "parts.mtl").symlink_to(tmp_path / "real" / "parts.mtl")
    spec = TINY.replace("out[t] = dense_head(h[t], task = t)", "out[t] = head2(h[t], t)")
    assert load_ir(write(tmp_path, 'import "parts.mtl"\n' + spec), tasks="depth").outputs


# -- operator precedence: every pair, against Python's (the same order for these operators) ------

ARITHMETIC = ["+", "-", "*", "/", "//", "%"]
COMPARISON = ["==", "!=", "<", "<=", ">", ">="]
LOGICAL = ["and", "or"]


def _value(expr: str):
    """The value of a constant expression in the language."""
    from mtl_dsl.errors import Diagnostics
    from mtl_dsl.frontend.consteval import Evaluator
    from mtl_dsl.frontend.values import Scope

    default = parse_source_expr(expr)
    return Evaluator(Diagnostics(), PROFILES["synthetic"]).const(default, Scope({}, None, ""), "v")


def parse_source_expr(expr: str):
    from mtl_dsl.frontend import parse_source

    return parse_source(f"model m(v = {expr}) {{}}").models[0].params[0].default


def _python(expr: str):
    return eval(expr.replace("true", "True").replace("false", "False"))  # noqa: S307 - constants


numbers = st.integers(-9, 9).filter(lambda n: n != 0)


@pytest.mark.parametrize("first", ARITHMETIC)
@pytest.mark.parametrize("second", ARITHMETIC + COMPARISON)
@settings(max_examples=6, deadline=None)
@given(a=numbers, b=numbers, c=numbers)
def test_binary_operators_bind_as_in_python(first, second, a, b, c):
    for expr in (f"{a} {first} {b} {second} {c}", f"{a} {second} {b} {first} {c}"
                 if second in ARITHMETIC else f"{a} {first} {b} {second} {c} {first} {a}"):
        assert _value(expr) == _python(expr), expr


@pytest.mark.parametrize("op", ARITHMETIC)
@settings(max_examples=10, deadline=None)
@given(a=numbers, b=numbers)
def test_unary_minus_binds_tighter_than_every_binary_operator(op, a, b):
    for expr in (f"-{abs(a)} {op} {b}", f"{a} {op} -{abs(b)}", f"- {abs(a)} {op} {b} {op} {b}"):
        assert _value(expr) == _python(expr), expr


@pytest.mark.parametrize("logic", LOGICAL)
@pytest.mark.parametrize("compare", COMPARISON)
@settings(max_examples=6, deadline=None)
@given(a=numbers, b=numbers, flag=st.booleans())
def test_comparisons_bind_tighter_than_and_or_not(logic, compare, a, b, flag):
    word = "true" if flag else "false"
    for expr in (f"{a} {compare} {b} {logic} {word}", f"{word} {logic} {a} {compare} {b}",
                 f"not {a} {compare} {b} {logic} {word}", f"not {word} {logic} {word}"):
        assert _value(expr) == _python(expr), expr


@pytest.mark.parametrize("x,y,z", [(p, q, r) for p in (True, False) for q in (True, False)
                                   for r in (True, False)])
def test_and_binds_tighter_than_or(x, y, z):
    words = {True: "true", False: "false"}
    for expr in (f"{words[x]} or {words[y]} and {words[z]}",
                 f"{words[x]} and {words[y]} or {words[z]}",
                 f"not {words[x]} and {words[y]}", f"not {words[x]} or {words[y]}"):
        assert _value(expr) == _python(expr), expr


def test_comparisons_do_not_chain(tmp_path):
    e = errors_of(write(tmp_path, TINY.replace("dim = 8", "dim = 1 < 2 < 3")))
    assert e.message.startswith("unexpected '<'")
