"""The compiler: predicted shapes are the real ones, names are stable, gradients reach what they
should, idle parameters are exactly those that get none, and torch.compile runs the model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec, compile_ir, compile_model, load_ir
from mtl_dsl.errors import SpecError
from mtl_dsl.ir import ModelIR
from mtl_dsl.tasks import KNOWN_TASKS

SPEC = """
block stem(x, ch: int) {
  y = conv_bn_act(x, ch, stride = 2)
  return conv_bn_act(y, ch, stride = 2, kernel = KERNEL)
}
model tiny(dim = 8, heads = 2, over = "all", depth = 1) {
  x = stem(images, dim)
  for t in tasks {
    d[t] = conv_bn_act(x, dim, kernel = 1)
    for i in range(depth - 1) {
      d[t] = add(d[t], conv_bn_act(d[t], dim))
    }
  }
  f = attention(tokens(d), heads = heads, over = over)
  g = split(f, d)
  for t in tasks {
    h[t] = concat(g[t], d[t])
    out[t] = dense_head(h[t], task = t)
    out[t].inter = dense_head(d[t], task = t, bottleneck = false)
  }
}
"""


def spec_file(tmp_path: Path, kernel: int = 3) -> Path:
    p = tmp_path / f"tiny{kernel}.mtl"
    p.write_text(SPEC.replace("KERNEL", str(kernel)))
    return p


task_sets = st.lists(st.sampled_from(KNOWN_TASKS), min_size=1, max_size=5, unique=True)


def task_string(tasks: list[str], classes: int) -> str:
    return ",".join(f"{t}:{classes}" if t in ("semseg", "human_parts") else t for t in tasks)


@pytest.mark.parametrize("over", ["all", "tasks", "self"])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=task_sets, classes=st.integers(2, 9), h=st.integers(9, 40), w=st.integers(9, 40),
       dim=st.sampled_from([4, 8, 12]), heads=st.sampled_from([1, 2, 4]), depth=st.integers(1, 3),
       batch=st.integers(1, 2))
def test_predicted_shapes_equal_actual_shapes(tmp_path, tasks, classes, h, w, dim, heads, over,
                                              depth, kernel, batch):
    """Every variant of the attention (over) and of the kernel is run; sizes, widths, heads,
    depth and tasks are drawn for each."""
    path = spec_file(tmp_path, kernel)
    overrides = {"dim": dim, "heads": heads, "over": over, "depth": depth}
    graph = check_spec(path, tasks=task_string(tasks, classes), overrides=overrides,
                       input_size=(h, w))
    model = compile_ir(graph.ir)
    model.eval()
    seen: dict[str, object] = {}
    hooks = [model.get_submodule(n.name).register_forward_hook(
        lambda m, i, o, name=n.name: seen.__setitem__(name, o)) for n in graph.ir.nodes]
    with torch.no_grad(), model.fusion_off():  # every node's own module runs (hooks see it)
        out = model(torch.randn(batch, 3, h, w))
    for hk in hooks:
        hk.remove()
    for n in graph.ir.nodes:
        predicted = graph.types[n.name][0]
        actual = seen[n.name]
        assert _shape_of(actual, batch) == _predicted(predicted, (h, w), batch), n.name
    for t in graph.ir.tasks:
        assert out[t.name]["final"].shape == (batch, t.channels, h, w)
        assert out[t.name]["inter"].shape == (batch, t.channels, h, w)


def _shape_of(value, batch):
    if isinstance(value, dict):
        return {k: _shape_of(v, batch) for k, v in value.items()}
    return tuple(value.shape)


def _predicted(t, size, batch):
    if t.kind == "taskmap":
        return {k: _predicted(v, size, batch) for k, v in t.items.items()}
    return (batch,) + tuple(t.concrete(size))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=task_sets, classes=st.integers(1, 50), dim=st.integers(1, 64),
       over=st.sampled_from(["all", "tasks", "self"]))
def test_ir_json_round_trip_is_identity(tmp_path, tasks, classes, dim, over):
    ir = load_ir(spec_file(tmp_path), tasks=task_string(tasks, classes),
                 overrides={"dim": dim * 4, "over": over, "heads": 4})
    text = ir.to_json()
    again = ModelIR.from_json(text)
    assert again == ir
    assert again.to_json() == text


def test_state_dict_keys_are_stable_and_readable(tmp_path):
    a = compile_model(spec_file(tmp_path), tasks="semseg:3,depth", input_size=(16, 16))
    b = compile_model(spec_file(tmp_path), tasks="semseg:3,depth", input_size=(16, 16))
    assert list(a.state_dict()) == list(b.state_dict())
    keys = list(a.state_dict())
    assert "x.y.conv.weight" in keys and "d.semseg.conv.weight" in keys
    assert "out.depth.logits.weight" in keys and "out_inter.semseg.logits.bias" in keys
    b.load_state_dict(a.state_dict())


def _summed_loss(out):
    return sum(v.float().pow(2).mean() for task in out.values() for v in task.values())


@pytest.mark.parametrize("over", ["all", "tasks", "self"])
def test_every_trainable_parameter_gets_a_gradient_and_idle_is_the_rest(tmp_path, over):
    torch.manual_seed(0)
    model = compile_model(spec_file(tmp_path), tasks="semseg:3,depth,normals",
                          overrides={"over": over, "depth": 2}, input_size=(24, 20))
    model.train()
    _summed_loss(model(torch.randn(2, 3, 24, 20))).backward()
    no_grad = {n for n, p in model.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)}
    assert no_grad == set(model.idle_parameters)
    if over == "self":
        assert set(model.idle_parameters) == {"f.attn.q_proj.weight", "f.attn.q_proj.bias",
                                              "f.attn.k_proj.weight", "f.attn.k_proj.bias"}
        assert not any(p.requires_grad for n, p in model.named_parameters()
                       if n in model.idle_parameters)
    else:
        assert model.idle_parameters == {}


def test_torch_compile_runs_the_model(tmp_path):
    model = compile_model(spec_file(tmp_path), tasks="depth,edge", input_size=(16, 16)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        got = compiled(x)
    for t in expected:
        torch.testing.assert_close(got[t]["final"], expected[t]["final"])


def test_forward_is_straight_line_code(tmp_path):
    model = compile_model(spec_file(tmp_path), tasks="depth", input_size=(16, 16))
    code = model.code
    assert "for " not in code and "self.d.depth(" in code


def test_baseline_mt_matches_the_official_count_on_nyud():
    model = compile_model("baseline_mt", tasks="nyud")
    assert sum(p.numel() for p in model.parameters()) == 4_515_556
    assert model.input_size == (425, 560)


def test_baseline_mt_macs_on_nyud_within_two_percent():
    from mtl_dsl.flops import count_macs

    model = compile_model("baseline_mt", tasks="nyud").eval()
    report = count_macs(model, torch.zeros(1, 3, 425, 560))
    assert abs(report.total / 17.48e9 - 1) < 0.02
    assert report.uncounted == ()


def test_build_errors_are_spec_errors(tmp_path):
    spec = tmp_path / "w.mtl"
    spec.write_text('model m() {\n  f = backbone("resnet18", levels = [1, 2], pretrained = '
                    '"missing.safetensors")\n  x = upsample_concat(f)\n  for t in tasks {\n'
                    '    out[t] = dense_head(x, task = t)\n  }\n}\n')
    with pytest.raises(SpecError) as e:
        compile_model(spec, tasks="depth", input_size=(32, 32))
    assert "missing.safetensors" in str(e.value)


@pytest.mark.parametrize("backbone,levels,params", [
    ("resnet50", [1, 2, 3, 4], 23_508_032),
    ("vit_base_patch16_384", [3, 6, 9, 12], None),
    ("swin_small_patch4_window7_224", [1, 2, 3, 4], 48_838_602),
    ("swin_base_patch4_window7_224", [1, 2, 3, 4], 86_745_016),
])
def test_the_papers_backbones_compile_and_run(backbone, levels, params):
    model = compile_model("baseline_mt", tasks="depth", input_size=(64, 64),
                          overrides={"backbone": backbone, "levels": levels, "dim": 8}).eval()
    feats = model.get_submodule("x.feats")
    if params is not None:
        assert sum(p.numel() for p in feats.parameters()) == params
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["depth"]["final"].shape == (1, 1, 64, 64)


CONCATS = """
model m() {
  a = conv_bn_act(images, 3, stride = 2)
  b = conv_bn_act(images, 5, stride = 2)
  c = conv_bn_act(images, 2, stride = 2)
  two = concat(a, b)
  three = concat(a, b, c)
  for t in tasks {
    w[t] = conv_bn_act(a, WIDTH)
  }
  per_task = concat(w)
  joined = concat(concat(two, three), per_task)
  for t in tasks {
    out[t] = dense_head(joined, task = t)
  }
}
"""


@pytest.mark.parametrize("widths", [(1, 4, 7), (6, 2, 3)])
def test_concat_of_unequal_widths_is_predicted_as_built(tmp_path, widths):
    """The checker's channel count of every concat (two maps, three maps, a per-task collection
    of different widths) is the width torch computes."""
    tasks = "depth,edge,normals"
    spec = tmp_path / "c.mtl"
    spec.write_text(CONCATS.replace(
        "  for t in tasks {\n    w[t] = conv_bn_act(a, WIDTH)\n  }",
        "\n".join(f'  w["{t}"] = conv_bn_act(a, {w})' for t, w in zip(tasks.split(","), widths))))
    graph = check_spec(spec, tasks=tasks, input_size=(12, 10))
    predicted = {n: graph.types[n][0].channels for n in
                 ("two", "three", "per_task", "joined")}
    assert predicted == {"two": 8, "three": 10, "per_task": sum(widths),
                         "joined": 18 + sum(widths)}
    model = compile_ir(graph.ir).eval()
    seen = {}
    for name in predicted:
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
    with torch.no_grad():
        model(torch.randn(2, 3, 12, 10))
    assert {n: s[1] for n, s in seen.items()} == predicted
    assert all(s == (2, predicted[n], 6, 5) for n, s in seen.items())
