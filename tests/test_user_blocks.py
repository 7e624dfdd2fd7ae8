"""Blocks written as plain nn.Modules (`mtl_dsl.block`): the signature derived from the module,
shapes by the meta-device probe or declared, the block rule building them, and every error
raised in the user's code reaching the user located at the spec line, with its message."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mtl_dsl
from mtl_dsl import SpecError
from mtl_dsl.api import check_spec, compile_model
from mtl_dsl.blocks import REGISTRY
from mtl_dsl.blocks.construct import BlockDefinitionError
from mtl_dsl.types import FeatureMap, Tokens

PLUGIN = '''
"""Blocks for the tests of user blocks."""
import torch
from torch import nn

import mtl_dsl
from mtl_dsl.types import FeatureMap


@mtl_dsl.block("t_se_gate", inputs={"x": "features"}, params={"reduction": "bottleneck ratio"})
class SEGate(nn.Module):
    """Squeeze-and-excitation gate."""

    def __init__(self, in_channels: int, reduction: int = 4):
        super().__init__()
        if in_channels % reduction:
            raise ValueError(f"reduction {reduction} does not divide {in_channels} channels")
        self.down = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.up = nn.Conv2d(in_channels // reduction, in_channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))


@mtl_dsl.block("t_down", doc="A stride-2 conv to `width` channels, plus an optional skip.",
               inputs={"x": "input", "skip": "added when given"},
               params={"width": "output channels", "mode": mtl_dsl.Param(str, "sum", "how",
                                                                         choices=("sum", "cat"))})
class Down(nn.Module):
    def __init__(self, in_channels: int, width: int, mode: str = "sum"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)

    def forward(self, x, skip=None):
        y = self.conv(x)
        return y if skip is None else y + skip


@mtl_dsl.block("t_tokens_mix", inputs={"t": "tokens: tokens to mix", "m": "map|tokens: unused"},
               infer="same")
class TokensMix(nn.Module):
    """Mix tokens with a linear layer."""

    def __init__(self, t_channels: int):
        super().__init__()
        self.lin = nn.Linear(t_channels, t_channels)

    def forward(self, t, m):
        return self.lin(t)


@mtl_dsl.block("t_split", doc="Two halves of the channels.", inputs={"x": "input"},
               outputs=("first", "second"),
               infer=lambda call: (call.inputs["x"].model_copy(
                   update={"channels": call.inputs["x"].channels // 2}),) * 2)
class Split(nn.Module):
    def forward(self, x):
        return tuple(x.chunk(2, dim=1))


@mtl_dsl.block("t_huge", doc="A module too large to build for real.", inputs={"x": "input"})
class Huge(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.table = nn.Parameter(torch.empty(60_000, 60_000))  # 14 GB outside the meta device

    def forward(self, x):
        return x[:, :1] * self.table[0, 0]


@mtl_dsl.block("t_even", doc="A k x k convolution with an even k.", inputs={"x": "input"},
               params={"k": "kernel size"}, infer="same")
class Even(nn.Module):
    def __init__(self, in_channels: int, k: int = 2):
        super().__init__()
        if k % 2:
            raise ValueError(f"k={k} must be even")
        self.conv = nn.Conv2d(in_channels, in_channels, k, padding="same")

    def forward(self, x):
        return self.conv(x)


@mtl_dsl.block("t_fails", doc="Fails when it runs.", inputs={"x": "input"}, infer="same")
class Fails(nn.Module):
    def forward(self, x):
        if x.device.type != "meta" and x.shape[0] > 0:
            raise RuntimeError("this block found a NaN")
        return x


@mtl_dsl.block("t_probe_fails", doc="Fails when probed.", inputs={"x": "input"})
class ProbeFails(nn.Module):
    def forward(self, x):
        raise KeyError("no such table")


@mtl_dsl.block("t_bad_rule", doc="Its shape rule fails.", inputs={"x": "input"},
               infer=lambda call: call.inputs["missing"])
class BadRule(nn.Module):
    def forward(self, x):
        return x
'''
NAMES = ["t_se_gate", "t_down", "t_tokens_mix", "t_split", "t_huge", "t_even", "t_fails",
         "t_probe_fails", "t_bad_rule"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "user_blocks_for_tests.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    try:
        mtl_dsl.load_plugins(["user_blocks_for_tests"])
        yield folder / "user_blocks_for_tests.py"
    finally:
        sys.path.remove(str(folder))
        for name in NAMES:
            REGISTRY.pop(name, None)
        sys.modules.pop("user_blocks_for_tests", None)
        from mtl_dsl import plugins

        plugins._loaded.remove("user_blocks_for_tests")


def spec(tmp_path: Path, body: str, name: str = "spec.mtl") -> Path:
    p = tmp_path / name
    p.write_text("model m() {\n" + body + """
  for t in tasks {
    out[t] = conv_bn_act(y, channels(t), kernel = 1)
  }
}
""")
    return p


TASKS = dict(tasks="semseg:3,depth", input_size=(24, 40))


# -- the signature derived from the module ---------------------------------------------------------

def test_signature_is_derived_from_the_module(plugin):
    se = REGISTRY["t_se_gate"]
    assert se.signature() == "t_se_gate(x: map, reduction: int = 4) -> out"
    assert se.doc == "Squeeze-and-excitation gate." and se.family == "user"
    assert se.args["reduction"].doc == "bottleneck ratio"
    down = REGISTRY["t_down"]
    assert down.signature() == ('t_down(x: map, skip: map = none, width: int, mode: str = "sum") '
                                '-> out')
    assert down.args["mode"].choices == ("sum", "cat")
    mix = REGISTRY["t_tokens_mix"]
    assert mix.args["t"].kinds == (Tokens,) and mix.args["m"].kinds == (FeatureMap, Tokens)
    assert REGISTRY["t_split"].outputs == ("first", "second")


@pytest.mark.parametrize("source,message", [
    ("@mtl_dsl.block('t_x', inputs={'x': 'in'})\nclass A(nn.Module):\n"
     "    def forward(self, x): return x\n", "say what it does"),
    ("@mtl_dsl.block('t_x', doc='d')\nclass A(nn.Module):\n"
     "    def forward(self, x): return x\n", "document input 'x'"),
    ("@mtl_dsl.block('t_x', doc='d', inputs={'x': 'in'})\nclass A(nn.Module):\n"
     "    def __init__(self, k: int = 1): super().__init__()\n"
     "    def forward(self, x): return x\n", "document parameter 'k'"),
    ("@mtl_dsl.block('t_x', doc='d', inputs={'x': 'in'}, params={'k': 'k', 'in_channels': 'c'})"
     "\nclass A(nn.Module):\n    def __init__(self, in_channels, k: int = 1): super().__init__()\n"
     "    def forward(self, x): return x\n", "which are facts of the call: in_channels"),
    ("@mtl_dsl.block('t_x', doc='d', inputs={'x': 'in'}, params={'k': 'k'})\nclass A(nn.Module):\n"
     "    def __init__(self, k): super().__init__()\n"
     "    def forward(self, x): return x\n", "give parameter 'k' a type"),
    ("@mtl_dsl.block('t_x', doc='d', inputs={'x': 'in', 'y': 'in'})\nclass A(nn.Module):\n"
     "    def forward(self, x): return x\n", "inputs documents ['y'], which forward does not take"),
    ("@mtl_dsl.block('conv_bn_act', doc='d', inputs={'x': 'in'})\nclass A(nn.Module):\n"
     "    def forward(self, x): return x\n", "block 'conv_bn_act' is defined twice"),
    ("@mtl_dsl.block('t_x', doc='d')\ndef f(x): return x\n", "is not an nn.Module class"),
    ("@mtl_dsl.block('t x', doc='d')\nclass A(nn.Module):\n    def forward(self, x): return x\n",
     "a block name is an identifier"),
])
def test_declaration_mistakes_are_named_when_the_plugin_is_imported(source, message):
    namespace = {"mtl_dsl": mtl_dsl, "nn": torch.nn}
    with pytest.raises(BlockDefinitionError) as info:
        exec(source, namespace)  # noqa: S102 - test code, not user input
    assert message in str(info.value)
    assert "t_x" not in REGISTRY


# -- shapes: probed on the meta device, or declared --------------------------------------------------

def test_probed_and_declared_shapes(plugin, tmp_path):
    body = """
  x = conv_bn_act(images, 8)
  a = t_se_gate(x, reduction = 2)
  b = t_down(a, width = 6)
  c = t_down(a, t_down(x, width = 6), width = 6, mode = "cat")
  p, q = t_split(b + c)
  h = to_map(t_tokens_mix(tokens(p), q))
  y = t_huge(h)
"""
    graph = check_spec(spec(tmp_path, body), **TASKS)
    assert graph.types["a"][0].shape_str() == "[B, 8, H, W]"
    assert graph.types["b"][0].shape_str() == "[B, 6, H/2, W/2]"
    assert graph.types["p"] == (FeatureMap(channels=3, h=graph.types["b"][0].h,
                                           w=graph.types["b"][0].w),) * 2
    assert graph.types["y"][0].shape_str() == "[B, 1, H/2, W/2]"  # 14 GB, on the meta device


def test_user_blocks_compile_and_compute_their_modules(plugin, tmp_path):
    body = """
  x = conv_bn_act(images, 8)
  y = t_down(t_se_gate(x, reduction = 2), width = 8) if false else t_down(x, width = 8)
"""
    model = compile_model(spec(tmp_path, body), **TASKS)
    assert [n.block for n in model.ir.nodes][:2] == ["conv_bn_act", "t_down"]
    conv = model.get_submodule("y").conv
    assert (conv.in_channels, conv.out_channels, conv.stride) == (8, 8, (2, 2))
    out = model(torch.randn(2, 3, 24, 40))
    assert out["semseg"]["final"].shape == (2, 3, 24, 40)
    assert isinstance(model.get_submodule("y"), plugin_class("Down"))
    assert sorted(k for k in model.state_dict() if k.startswith("y.")) == ["y.conv.bias",
                                                                          "y.conv.weight"]
    assert not any(k.startswith("y_") for k in model.state_dict())  # the else side only


def plugin_class(name: str) -> type:
    return getattr(sys.modules["user_blocks_for_tests"], name)


# -- the user's errors, where the user sees them ----------------------------------------------------

def test_a_parameter_of_the_wrong_type_is_a_spec_error(plugin, tmp_path):
    body = '  y = t_se_gate(conv_bn_act(images, 8), reduction = "two")\n'
    with pytest.raises(SpecError) as info:
        check_spec(spec(tmp_path, body), **TASKS)
    assert "argument 'reduction' of 't_se_gate': expected int, got str" in info.value.message
    assert info.value.line == 2


def test_a_constructor_error_is_located_with_its_message(plugin, tmp_path):
    body = "  x = conv_bn_act(images, 8)\n  y = t_even(x, k = 3)\n"
    path = spec(tmp_path, body)
    check_spec(path, **TASKS)  # a declared shape: check does not build it
    with pytest.raises(SpecError) as info:
        compile_model(path, **TASKS)
    d = info.value.diagnostics[0]
    assert (d.line, d.column) == (3, 7) and d.source_line == "  y = t_even(x, k = 3)"
    assert "raised ValueError while it was built: k=3 must be even" in d.message
    assert f"(at {plugin}:" in d.message
    # a probed block is built by check already: the same message, from check
    with pytest.raises(SpecError) as info:
        check_spec(spec(tmp_path, "  y = t_se_gate(conv_bn_act(images, 8), reduction = 3)\n",
                        "b.mtl"), **TASKS)
    assert "raised ValueError while its output shape was probed: reduction 3 does not divide " \
           "8 channels" in info.value.message


def test_an_error_while_the_model_runs_is_a_spec_error_at_the_block(plugin, tmp_path):
    model = compile_model(spec(tmp_path, "  y = t_fails(conv_bn_act(images, 4))\n"), **TASKS)
    with pytest.raises(SpecError) as info:
        model(torch.randn(1, 3, 24, 40))
    d = info.value.diagnostics[0]
    assert d.line == 2 and "t_fails 'y'" in d.message
    assert "raised RuntimeError while it ran: this block found a NaN" in d.message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_errors_of_the_probe_and_of_a_shape_rule_are_located(plugin, tmp_path):
    with pytest.raises(SpecError) as info:
        check_spec(spec(tmp_path, "  y = t_probe_fails(conv_bn_act(images, 4))\n"), **TASKS)
    assert "raised KeyError while its output shape was probed: 'no such table'" in \
        info.value.message and info.value.line == 2
    with pytest.raises(SpecError) as info:
        check_spec(spec(tmp_path, "  y = t_bad_rule(conv_bn_act(images, 4))\n", "b.mtl"), **TASKS)
    assert "the shape rule (infer) of block 't_bad_rule' raised KeyError" in info.value.message


def test_the_probe_of_a_declared_block_is_never_run(plugin, tmp_path, monkeypatch):
    from mtl_dsl.modules import shape_probe

    monkeypatch.setattr(shape_probe, "probe_types", lambda *a: pytest.fail("probed"))
    check_spec(spec(tmp_path, "  y = to_map(t_tokens_mix(tokens(conv_bn_act(images, 4)), "
                              "images))\n"), **TASKS)
