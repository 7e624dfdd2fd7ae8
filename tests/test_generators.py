"""Reductions and generators over per-task collections, conditional expressions, `none` for an
optional input, and the lexing rule that tells a conditional expression's `if` from an if
statement's."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec, compile_model, load_ir
from mtl_dsl.errors import SpecError
from mtl_dsl.frontend import parse_source

ALL_TASKS = ["semseg:3", "human_parts", "sal", "normals", "depth", "edge"]


def write(tmp_path: Path, text: str, name: str = "spec.mtl") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path, tasks: str = "semseg:3,depth,edge", **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        check_spec(path, tasks=tasks, input_size=(16, 16), **kw)
    return info.value


# -- sum over a generator == the explicit sum ------------------------------------------------------

COMPREHENSION = """
model m() {
  x = conv_bn_act(images, 4)
  for t in tasks {
    f[t] = conv_bn_act(x, 4)
  }
  for t in tasks {
    out[t] = conv_bn_act(f[t] + sum(f[s] for s in tasks if s != t), channels(t), kernel = 1)
  }
}
"""


def explicit(tasks: list[str]) -> str:
    """The same model with each sum written out by hand."""
    lines = ["model m() {", "  x = conv_bn_act(images, 4)", "  for t in tasks {",
             "    f[t] = conv_bn_act(x, 4)", "  }"]
    for t in tasks:
        others = [s for s in tasks if s != t]
        total = " + ".join(f'f["{s}"]' for s in others) if others else "0"
        lines.append(f'  out["{t}"] = conv_bn_act(f["{t}"] + ({total}), channels("{t}"), '
                     f'kernel = 1)')
    return "\n".join(lines + ["}"]) + "\n"


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.lists(st.sampled_from(ALL_TASKS), min_size=1, max_size=6, unique=True))
def test_sum_of_a_generator_equals_the_explicit_sum(tmp_path, chosen):
    tasks = ",".join(chosen)
    names = [t.split(":")[0] for t in chosen]
    torch.manual_seed(0)
    generated = compile_model(write(tmp_path, COMPREHENSION), tasks=tasks, input_size=(8, 8))
    by_hand = compile_model(write(tmp_path, explicit(names), "b.mtl"), tasks=tasks,
                            input_size=(8, 8))
    weights = {k: v for k, v in generated.state_dict().items()}
    assert set(weights) == set(by_hand.state_dict())
    by_hand.load_state_dict(weights)
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a, b = generated.eval()(images), by_hand.eval()(images)
    for t in names:
        assert torch.equal(a[t]["final"], b[t]["final"]), t
    sums = [n for n in generated.ir.nodes if n.block == "sum"]
    assert len(sums) == (len(names) if len(names) > 1 else 0)  # one node per sum, none of nothing
    for n in sums:
        assert list(n.inputs["x"].items) == [s for s in names if s not in n.name]


def test_a_generator_runs_like_a_for_loop(tmp_path):
    spec = """
model m(skip = "edge") {
  x = conv_bn_act(images, 4)
  table ctx { semseg <- depth: on   * <- *: off }
  for t in tasks {
    f[t] = conv_bn_act(x, 4)
  }
  a = sum(f[s] for s in tasks if s != skip)
  b = mean(conv_bn_act(f[s], 4) for s in tasks if ctx["semseg"][s] == "on" or s == "edge")
  c = max(f[s] for s in ["depth", "semseg"])
  d = min([f["edge"], f["depth"]])
  e = stack(a, b, c, d)
  u = concat(f[s] for s in tasks if s != skip)
  z = tokens(stack(f[s] for s in tasks))
  y = concat(u, sum(e), split(z, f)["depth"])
  for t in tasks {
    out[t] = conv_bn_act(y, channels(t), kernel = 1)
  }
}
"""
    graph = check_spec(write(tmp_path, spec), tasks="semseg:3,depth,edge", input_size=(16, 16))
    nodes = {n.name: n for n in graph.ir.nodes}
    assert list(nodes["a"].inputs["x"].items) == ["semseg", "depth"]
    assert list(nodes["b"].inputs["x"].items) == ["depth", "edge"]
    assert [r.node for r in nodes["b"].inputs["x"].refs()] == ["b_depth_conv_bn_act",
                                                               "b_edge_conv_bn_act"]
    assert list(nodes["c"].inputs["x"].items) == ["depth", "semseg"]
    assert [r.node for r in nodes["d"].refs()] == ["f.edge", "f.depth"]  # a list, as values
    assert nodes["u"].block == "concat" and list(nodes["u"].inputs["a"].items) == ["semseg",
                                                                                  "depth"]
    assert [r.node for r in nodes["y_sum"].refs()] == ["a", "b", "c", "d"]
    assert graph.types["u"][0].shape_str() == "[B, 8, H, W]"
    assert graph.types["z"][0].shape_str() == "[B, 3*H*W, 4]"
    assert graph.types["y"][0].shape_str() == "[B, 16, H, W]"


def test_reductions_and_generators_of_constants_fold(tmp_path):
    spec = """
model m(widths = [4, 8, 2]) {
  n = sum(w * 2 for w in widths)
  k = max(channels(t) for t in tasks) + min(w for w in widths if w > 2) + sum([])
  avg = mean(widths)
  x = conv_bn_act(images, n + k + int(avg) + sum(1 for w in widths if w > 100))
  for t in tasks {
    out[t] = conv_bn_act(x, channels(t), kernel = 1)
  }
}
"""
    ir = load_ir(write(tmp_path, spec), tasks="semseg:5,depth", input_size=(16, 16))
    assert ir.nodes[0].params["channels"] == 28 + (5 + 4 + 0) + 4 + 0


@pytest.mark.parametrize("expr,message", [
    ("mean(f[s] for s in tasks if s == \"normals\")", "'mean' of no values"),
    ("max(w for w in [])", "'max' of no values"),
    ("sum(f[s] if s == \"depth\" else 1 for s in tasks)",
     "a generator gives graph values and constants"),
    ("sum(f[s] for s in [\"depth\", \"depth\"])", "gives 'depth' twice"),
    ("sum(f[s] for s in 3)", "a generator runs over a list, got int"),
    ("sum(f[s] for s in tasks if 1)", "a loop condition must be true or false"),
    ("sum(f[s] for tasks in tasks)", "'tasks' is reserved"),
    ("sum(f, axis = 1)", "'sum' takes positional arguments only"),
    ("stack(1, 2)", "'stack' collects graph values"),
    ("max(f[\"depth\"], 0)", "'max' takes graph values or numbers, not both"),
    ("sum(\"ab\", \"c\")", "'sum' adds numbers, got str"),
    ("sum(d, d)", "cannot sum a per-task collection"),
    ("mean(x)", "'mean' of one feature map reduces nothing"),
    ("sum(f[s] for s in tasks) * sum(g[s] for s in tasks)", "cannot multiply [B, 4, H, W] and "
                                                             "[B, 4, H/2, W/2]"),
])
def test_reduction_errors(tmp_path, expr, message):
    spec = f"""
model m() {{
  x = conv_bn_act(images, 4)
  for t in tasks {{
    f[t] = conv_bn_act(x, 4)
    g[t] = conv_bn_act(x, 4, stride = 2)
  }}
  for t in tasks {{
    for s in tasks {{
      d[t][s] = f[s]
    }}
  }}
  y = {expr}
  for t in tasks {{
    out[t] = conv_bn_act(x, channels(t), kernel = 1)
  }}
}}
"""
    e = error_of(write(tmp_path, spec))
    assert message in e.message, str(e)
    assert e.diagnostics[0].line == 13


def test_mismatched_terms_name_the_entries_and_their_nodes(tmp_path):
    spec = """
model m() {
  x = conv_bn_act(images, 4)
  for t in tasks {
    f[t] = conv_bn_act(x, 4 if t != "edge" else 8)
  }
  y = sum(f[s] for s in tasks)
  for t in tasks {
    out[t] = conv_bn_act(y, channels(t), kernel = 1)
  }
}
"""
    e = error_of(write(tmp_path, spec))
    d = e.diagnostics[0]
    assert (d.line, d.column) == (7, 7)
    assert "cannot sum entry 'edge' [B, 8, H, W] with the entries before it ([B, 4, H, W])" in \
        d.message
    assert any("'x[edge]' comes from node 'f.edge'" in n for n in d.notes)
    assert any("'x[semseg]' comes from node 'f.semseg'" in n for n in d.notes)


# -- conditional expressions -----------------------------------------------------------------------

def test_conditional_expressions_evaluate_only_the_chosen_side(tmp_path):
    spec = """
model m(variant = "paper", k: int = 3) {
  width = 8 if variant == "paper" else undefined_name
  x = conv_bn_act(images, width)
  y = conv_bn_act(x, 4) if k > 2 else conv_bn_act(x, 6)
  z = y if k > 5 else (y * 2 if variant == "paper" else y)
  for t in tasks {
    out[t] = conv_bn_act(z, channels(t), kernel = 1 if t == "semseg" else 3)
  }
}
"""
    ir = load_ir(write(tmp_path, spec), tasks="semseg:3,depth", input_size=(16, 16))
    blocks = [(n.name, n.block) for n in ir.nodes]
    assert blocks[:3] == [("x", "conv_bn_act"), ("y", "conv_bn_act"), ("z", "mul")]
    assert ir.node("x").params["channels"] == 8 and ir.node("y").params["channels"] == 4
    assert ir.node("out.semseg").params["kernel"] == 1
    assert ir.node("out.depth").params["kernel"] == 3
    e = error_of(write(tmp_path, spec, "b.mtl"), overrides={"variant": "official"})
    assert "unknown name 'undefined_name'" in e.message


def test_conditional_needs_a_constant_condition(tmp_path):
    spec = """
model m() {
  x = conv_bn_act(images, 4)
  y = x if x else x
  for t in tasks {
    out[t] = conv_bn_act(y, channels(t), kernel = 1)
  }
}
"""
    assert "needs a constant, not a graph value" in error_of(write(tmp_path, spec)).message
    spec2 = spec.replace("x if x else x", "x if 1 else x")
    assert "must be true or false, got int" in error_of(write(tmp_path, spec2, "b.mtl")).message


def test_an_if_that_starts_a_line_starts_a_statement():
    """After `x = a`, an `if` continues the value on the same line and starts a statement on the
    next one (or after '{', '}' and 'else'); inside brackets it never starts a statement."""
    spec = parse_source("""
model m(c = true) {
  x = 1 if c else 2
  if c { y = 1 } else if not c { y = 2 }
  z = x
  if c {
    y = 3
  }
  else
  if c {
    y = 4
  }
  for s in tasks
      if s != "depth" {
    w = sum(k for k in [1, 2]
            if k > 1)
  }
  v = (1
       if c else 2)
}
""")
    body = spec.models[0].body
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["Assign", "If", "Assign", "If", "For", "Assign"]
    assert type(body[0].value).__name__ == "IfExp" and type(body[5].value).__name__ == "IfExp"
    assert type(body[3].orelse[0]).__name__ == "If"
    assert body[4].condition is not None
    with pytest.raises(SpecError) as info:
        parse_source("model m(c = true) {\n  x = 1\n    if c else 2\n}\n")
    assert info.value.line == 3


# -- `none` where an input is optional ------------------------------------------------------------

def test_none_is_accepted_for_an_optional_input(tmp_path):
    spec = """
block pick(x: map, like: map = none) {
  return resize(x, like = like, scale = 2 if like == none else 1)
}
model m() {
  x = conv_bn_act(images, 4, stride = 2)
  t0 = tokens(x)
  a = to_map(attention(t0, none, heads = 2))
  y = pick(a) + pick(x, none) + resize(x, none, scale = 2)
  for t in tasks {
    out[t] = conv_bn_act(y, channels(t), kernel = 1)
  }
}
"""
    graph = check_spec(write(tmp_path, spec), tasks="semseg:3,depth", input_size=(16, 16))
    assert graph.ir.node("a_attention").inputs["kv"] is None
    assert graph.types["y"][0].shape_str() == "[B, 4, 2*(H/2), 2*(W/2)]"
    bad = spec.replace("tokens(x)", "tokens(none)")
    e = error_of(write(tmp_path, bad, "b.mtl"), tasks="semseg:3,depth")
    assert "argument 'x' of 'tokens' is a required taskmap | map: it cannot be none" in e.message
