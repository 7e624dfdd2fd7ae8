"""Arithmetic on graph values: operators with the checker's broadcasting rules (against torch's
on real tensors), element-wise functions, softmax, global pooling, learned scales, the modules
they compile to, their rows in the node table (MACs of a weighted sum) and in `render`."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec, compile_model
from mtl_dsl.errors import SpecError
from mtl_dsl.render import render_spec

TASKS = "semseg:3,depth"
HEAD = """
  for t in tasks {
    out[t] = conv_bn_act(y, channels(t), kernel = 1, norm = "none", act = "none")
  }
}
"""


def write(tmp_path: Path, body: str, name: str = "spec.mtl") -> Path:
    p = tmp_path / name
    p.write_text("model m() {\n" + body + HEAD)
    return p


def node_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every node of a compiled model for ``images``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n.name).register_forward_hook(
        lambda mod, args, out, name=n.name: seen.__setitem__(name, out)) for n in model.ir.nodes]
    try:
        with torch.no_grad(), model.fusion_off():  # each node's own module runs (hooks see it)
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


def error_of(path: Path, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        check_spec(path, tasks=TASKS, input_size=(16, 16), **kw)
    return info.value


# -- operators compute what a hand-written model computes ---------------------------------------

def test_operators_compute_the_torch_expression(tmp_path):
    body = """
  a = conv_bn_act(images, 4, act = "none")
  b = conv_bn_act(images, 4, stride = 2, act = "none")
  g = sigmoid(global_pool(a, mode = "max"))
  s = sigmoid(conv_bn_act(images, 1, kernel = 1, norm = "none", act = "none"))
  c = resize(b, like = a)
  y = a * g + 2 * c - a / 4 - 1 + s * (0.5 - c) / (1 + relu(a) * tanh(a))
"""
    torch.manual_seed(0)
    model = compile_model(write(tmp_path, body), tasks=TASKS, input_size=(16, 16)).eval()
    v = node_outputs(model, torch.randn(2, 3, 16, 16))
    a, c, s = v["a"], v["c"], v["s"]
    g = torch.sigmoid(a.amax(dim=(2, 3), keepdim=True))
    expected = a * g + 2 * c - a / 4 - 1 + s * (0.5 - c) / (1 + torch.relu(a) * torch.tanh(a))
    assert v["y"].shape == (2, 4, 16, 16)
    torch.testing.assert_close(v["y"], expected, rtol=1e-6, atol=1e-6)
    blocks = {n.name: n.block for n in model.ir.nodes}
    assert blocks["y"] == "add" and blocks["g"] == "sigmoid" and blocks["g_global_pool"] == \
        "global_pool"
    assert sorted(set(blocks.values()) & {"mul", "sub", "div", "add"}) == ["add", "div", "mul",
                                                                          "sub"]


def test_unary_minus_softmax_gelu_and_learned_scale(tmp_path):
    body = """
  a = conv_bn_act(images, 4, act = "none")
  alpha = learned_scale(channels = 4, init = 0.25)
  p = softmax(a)
  q = softmax(a, dim = "space")
  y = -gelu(a) + alpha * p + q
"""
    torch.manual_seed(0)
    model = compile_model(write(tmp_path, body), tasks=TASKS, input_size=(16, 16)).eval()
    images = torch.randn(3, 3, 16, 16)
    v = node_outputs(model, images)
    a = v["a"]
    assert v["alpha"].shape == (3, 4, 1, 1) and torch.all(v["alpha"] == 0.25)
    torch.testing.assert_close(v["p"].sum(dim=1), torch.ones(3, 16, 16))
    torch.testing.assert_close(v["q"].flatten(2).sum(dim=-1), torch.ones(3, 4))
    expected = -torch.nn.functional.gelu(a) + 0.25 * torch.softmax(a, 1) + \
        torch.softmax(a.flatten(2), -1).view_as(a)
    torch.testing.assert_close(v["y"], expected)
    assert model.state_dict()["alpha.weight"].shape == (1, 4, 1, 1)


def test_operators_on_tokens(tmp_path):
    body = """
  a = conv_bn_act(images, 4, stride = 4)
  k = tokens(a)
  y = to_map(k * sigmoid(linear(k, 1)) + k)
"""
    graph = check_spec(write(tmp_path, body), tasks=TASKS, input_size=(16, 16))
    assert graph.types["y_add"][0].shape_str() == "[B, H/4*W/4, 4]"


# -- broadcasting: the checker's shape against torch's on real tensors ---------------------------

OPS = {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div}


def _operand(name: str, channels: int, stride: int, pooled: bool, tokens: bool) -> str:
    line = f"  {name} = conv_bn_act(images, {channels}, stride = {stride})\n"
    if pooled:
        line += f"  {name} = global_pool({name})\n"
    if tokens:
        line += f"  {name} = tokens({name})\n"
    return line


def _concrete(channels: int, stride: int, pooled: bool, tokens: bool, size) -> tuple:
    h, w = (1, 1) if pooled else (-(-size[0] // stride), -(-size[1] // stride))
    return (2, h * w, channels) if tokens else (2, channels, h, w)


operand = st.tuples(st.sampled_from([1, 3, 4]), st.sampled_from([1, 2, 8]), st.booleans(),
                    st.booleans())


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=operand, b=operand, op=st.sampled_from(sorted(OPS)),
       size=st.tuples(st.integers(8, 24), st.integers(8, 24)))
def test_operator_shapes_follow_torch_broadcasting(tmp_path, a, b, op, size):
    body = _operand("a", *a) + _operand("b", *b) + f"  r = a {op} b\n"
    body += "  y = to_map(r)\n" if a[3] and b[3] else "  y = r\n"
    path = write(tmp_path, body)
    shape_a, shape_b = _concrete(*a, size), _concrete(*b, size)
    try:
        torch_shape = tuple(OPS[op](torch.ones(shape_a), torch.ones(shape_b)).shape)
    except RuntimeError:
        torch_shape = None
    same_kind = a[3] == b[3]
    channels_ok = a[0] == b[0] or 1 in (a[0], b[0])
    if a[3]:  # tokens: the same grid
        space_ok = shape_a[1] == shape_b[1]
    else:  # maps: equal sizes, or one side 1x1 by pooling (not by a small input)
        space_ok = a[2] or b[2] or shape_a[2:] == shape_b[2:]
    try:
        graph = check_spec(path, tasks=TASKS, input_size=size)
    except SpecError as e:
        assert not (same_kind and channels_ok and space_ok), str(e)
        d = e.diagnostics[0]
        line = body.split("\n").index(f"  r = a {op} b") + 2
        assert (d.line, d.column) == (line, 9), str(e)  # at the operator
        if same_kind:
            assert shape_text(a) in d.message and shape_text(b) in d.message
            assert any("'left' comes from node 'a" in n for n in d.notes)  # a or a_2
            assert any("'right' comes from node 'b" in n for n in d.notes)
        return
    assert same_kind and channels_ok and space_ok
    assert torch_shape is not None  # every accepted case is one torch accepts
    t = graph.types["r"][0]
    if a[3]:
        predicted = (2, t.groups * t.h.eval(*size) * t.w.eval(*size), t.channels)
    else:
        predicted = (2,) + t.concrete(size)
    assert predicted == torch_shape


def shape_text(operand: tuple) -> str:
    """How a message shows an operand's shape (its start, for tokens its width)."""
    channels, stride, pooled, tokens = operand
    if tokens:
        return f", {channels}]"
    if pooled:
        return f"[B, {channels}, 1, 1]"
    side = "H" if stride == 1 else f"H/{stride}"
    return f"[B, {channels}, {side}, "


def test_accepted_shapes_are_the_shapes_torch_computes(tmp_path):
    """Compiled and run: the checker's type of every operator is the tensor's shape."""
    body = """
  a = conv_bn_act(images, 4, stride = 2)
  g = global_pool(conv_bn_act(images, 1, stride = 8))
  s = conv_bn_act(images, 1, stride = 2)
  y = (a * g + s) / (1 + g) - s * a
"""
    model = compile_model(write(tmp_path, body), tasks=TASKS, input_size=(13, 22)).eval()
    v = node_outputs(model, torch.randn(2, 3, 13, 22))
    for n in model.ir.nodes:
        t = model.checked.types[n.name][0]
        if getattr(t, "kind", "") == "map":
            assert tuple(v[n.name].shape) == (2,) + t.concrete((13, 22)), n.name


# -- errors ------------------------------------------------------------------------------------

def test_mismatch_is_located_at_the_operator_with_both_shapes_and_origins(tmp_path):
    body = """
  gate = conv_bn_act(images, 8, stride = 2)
  msg = conv_bn_act(images, 4, stride = 4)
  y = gate *
      msg
"""
    e = error_of(write(tmp_path, body))
    assert len(e.diagnostics) == 1
    d = e.diagnostics[0]
    assert (d.line, d.column) == (5, 12)
    assert "cannot multiply [B, 8, H/2, W/2] and [B, 4, H/4, W/4]" in d.message
    assert "8 channels against 4" in d.message and "sizes H/2xW/2 and H/4xW/4 differ" in d.message
    assert d.notes == (f"'left' comes from node 'gate' (conv_bn_act) at {tmp_path}/spec.mtl:3",
                       f"'right' comes from node 'msg' (conv_bn_act) at {tmp_path}/spec.mtl:4")


def test_a_map_that_is_1x1_only_at_this_size_does_not_broadcast(tmp_path):
    body = """
  a = conv_bn_act(images, 4, stride = 8)
  b = conv_bn_act(images, 4)
  y = a + b
"""
    with pytest.raises(SpecError) as info:
        check_spec(write(tmp_path, body), tasks=TASKS, input_size=(8, 8))
    e = info.value
    assert "1x1 against 8x8" in e.message and "only at this input size" in e.hint


@pytest.mark.parametrize("expr,message", [
    ("a // 2", "'//' works on constants only"),
    ("a % b", "'%' works on constants only"),
    ("a / 0", "division by zero"),
    ('a * "x"', "cannot multiply str"),
    ("a + true", "cannot add bool"),
    ("d * a", "not the per-task collection 'd'"),
    ("a + tokens(a)", "a feature map and a token sequence do not combine"),
    ("a * backbone(\"resnet18\")", "argument 'right' of 'mul' takes a map | tokens, but gets a "
                                   "multi-scale list"),
])
def test_operator_errors(tmp_path, expr, message):
    body = f"""
  a = conv_bn_act(images, 4)
  b = conv_bn_act(images, 4)
  for t in tasks {{
    d[t] = conv_bn_act(a, 4)
  }}
  y = {expr}
"""
    e = error_of(write(tmp_path, body))
    assert message in e.message
    assert e.diagnostics[0].line == 8


def test_spec_errors_survive_pickling():
    """A Ray worker's spec error reaches the driver whole (it used to arrive as a list of
    characters: "'str' object has no attribute 'render'")."""
    from mtl_dsl.errors import Diagnostic

    e = SpecError([Diagnostic("a.mtl", 3, 7, "cannot multiply", "hint", "  y = a * b", 1,
                              ("note",))])
    again = pickle.loads(pickle.dumps(e))
    assert again.diagnostics == e.diagnostics and str(again) == str(e)


# -- element-wise blocks, softmax over tasks, pooling --------------------------------------------

def test_softmax_over_tasks_weights_sum_to_one(tmp_path):
    body = """
  a = conv_bn_act(images, 4)
  for t in tasks {
    f[t] = conv_bn_act(a, 4)
    score[t] = conv_bn_act(a, 1, kernel = 1, norm = "none", act = "none")
  }
  w = softmax(score, dim = "tasks")
  y = sum(w[s] * f[s] for s in tasks)
"""
    torch.manual_seed(0)
    model = compile_model(write(tmp_path, body), tasks=TASKS, input_size=(16, 16)).eval()
    v = node_outputs(model, torch.randn(2, 3, 16, 16))
    weights = v["w"]
    assert list(weights) == ["semseg", "depth"]
    torch.testing.assert_close(weights["semseg"] + weights["depth"], torch.ones(2, 1, 16, 16))
    expected = weights["semseg"] * v["f.semseg"] + weights["depth"] * v["f.depth"]
    torch.testing.assert_close(v["y"], expected)


@pytest.mark.parametrize("body,message", [
    ("  a = conv_bn_act(images, 4)\n  y = softmax(a, dim = \"tasks\")\n",
     "softmax over tasks takes a per-task collection"),
    ("  a = conv_bn_act(images, 4)\n  y = softmax(stack(a, global_pool(a)), dim = \"tasks\")\n",
     "needs entries of one shape"),
    ("  a = conv_bn_act(images, 4)\n  y = global_pool(tokens(a))\n",
     "takes a map, but gets a token sequence"),
    ("  a = conv_bn_act(images, 4)\n  y = softmax(a, dim = \"batch\")\n", "expected one of"),
])
def test_elementwise_block_errors(tmp_path, body, message):
    assert message in str(error_of(write(tmp_path, body)))


# -- the node table and render --------------------------------------------------------------------

def test_weighted_sum_counts_a_multiply_add_per_term_and_element(tmp_path):
    from mtl_dsl.summary import model_figures

    body = """
  a = conv_bn_act(images, 4)
  for t in tasks {
    f[t] = conv_bn_act(a, 4)
    g[t] = sigmoid(f[t])
  }
  p = sum(g[s] * f[s] for s in tasks)
  q = sum(0.5 * f[s] for s in tasks)
  r = sum(f[s] for s in tasks)
  y = p * q + r
"""
    model = compile_model(write(tmp_path, body), tasks=TASKS, input_size=(16, 16))
    figures = model_figures(model)
    elements = 4 * 16 * 16
    assert figures["macs"]["p"] == 2 * elements  # two terms
    assert figures["macs"]["q"] == 2 * elements
    assert figures["macs"]["r"] == 0 and figures["macs"]["y"] == 0 and figures["macs"]["y_mul"] == 0
    # the nodes' MACs add up to the model's (the outputs' resizing does none)
    assert figures["total_macs"] == sum(figures["macs"][n.name] for n in model.ir.nodes)
    assert figures["macs"]["a"] == 16 * 16 * 4 * 3 * 9  # a convolution, counted by torch
    assert not figures["uncounted"]


def test_render_writes_operators_as_the_spec_does(tmp_path):
    body = """
  a = conv_bn_act(images, 4)
  for t in tasks {
    f[t] = conv_bn_act(a, 4)
  }
  y = 0.5 * a - sum(sigmoid(f[s]) * f[s] for s in tasks) / 2 + mean(f)
"""
    text = render_spec(check_spec(write(tmp_path, body), tasks=TASKS, input_size=(16, 16)))
    assert "  y_mul = 0.5 * a" in text
    assert "  y_sum = sum(y_semseg_sigmoid * f.semseg, y_depth_sigmoid * f.depth)" in text
    assert "  y_div = y_sum / 2.0" in text
    assert "  y_mean = mean(f.semseg, f.depth)" in text
    assert "  y = y_sub + y_mean" in text
