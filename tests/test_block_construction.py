"""The one rule that builds every block's module: constructor parameters bound by name to the
block's parameters and the facts of its call; a block only names its module."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import mtl_dsl
from conftest import make_call as _make_call
from mtl_dsl.api import check_spec, compile_model
from mtl_dsl.blocks import REGISTRY, Block, Call, Input, Param, register
from mtl_dsl.blocks.construct import (INPUT_FACTS, STANDARD_FACTS, BlockDefinitionError, bind,
                                      call_facts, resolve_module)
from mtl_dsl.tasks import PROFILES
from mtl_dsl.types import H, W, FeatureMap, TaskMap, Tokens

SYNTHETIC = PROFILES["synthetic"]


def offered_names(block: Block) -> set[str]:
    """Every name the rule can bind for this block, whatever the call."""
    names = set(block.params()) | set(STANDARD_FACTS)
    names |= {f"{i}_{fact}" for i in block.inputs() for fact in INPUT_FACTS}
    return names


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_block_names_a_module_whose_required_parameters_the_rule_supplies(name):
    block = REGISTRY[name]
    cls = type(block)
    assert cls.module is not None, f"{name} names no module"
    target = resolve_module(cls.module)
    assert callable(target)
    if cls.module_args is not Block.module_args:
        return  # a special construction (backbone) binds its own arguments
    special = cls.extra_args is not Block.extra_args
    missing = [p.name for p in inspect.signature(target).parameters.values()
               if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               and p.name not in offered_names(block)]
    if special:  # what extra_args supplies is checked by building (the model tests)
        assert all(m not in block.params() for m in missing)
    else:
        assert missing == [], f"{name}: {target} needs {missing}, which the rule does not supply"


def test_no_block_overrides_build():
    overriding = [n for n, b in REGISTRY.items() if type(b).build is not Block.build]
    assert overriding == []


def make_call(block: str, inputs: dict, **params) -> Call:
    return _make_call(block, inputs, params, tasks=SYNTHETIC.tasks, size=(32, 48))


def fmap(channels: int, stride: int = 4) -> FeatureMap:
    return FeatureMap(channels=channels, h=H.cdiv(stride), w=W.cdiv(stride))


def test_facts_of_maps_tokens_and_collections():
    d = TaskMap(items={"semseg": fmap(8), "depth": fmap(8)})
    facts = call_facts(REGISTRY["split"], make_call("split", {
        "x": Tokens(channels=8, h=H.cdiv(4), w=W.cdiv(4), groups=2), "like": d}))
    assert facts["x_channels"] == facts["in_channels"] == 8
    assert facts["x_groups"] == 2 and facts["x_size"] == (8, 12)
    assert facts["like_keys"] == ["semseg", "depth"] and facts["like_channels"] == 8
    assert facts["tasks"] == ["semseg", "depth"]  # the entries of the first collection input
    assert facts["channels_first"] is False and facts["input_size"] == (32, 48)
    assert facts["out_channels"] == 8  # a per-task result whose maps share one width
    mixed = TaskMap(items={"semseg": fmap(8), "depth": fmap(4)})
    facts = call_facts(REGISTRY["concat"], make_call("concat", {"a": mixed}))
    assert facts["a_channels"] is None and facts["a_size"] == (8, 12)  # widths differ, grid shared
    assert facts["out_channels"] == 12 and facts["out_size"] == (8, 12)
    assert facts["b_channels"] is None  # an omitted optional input


def test_without_a_collection_input_tasks_are_the_models():
    facts = call_facts(REGISTRY["conv_bn_act"], make_call("conv_bn_act", {"x": fmap(3)},
                                                          channels=5))
    assert facts["tasks"] == SYNTHETIC.task_names
    assert facts["channels_first"] is True and facts["out_channels"] == 5
    assert facts["channels"] == 5 and facts["in_channels"] == 3


def test_bind_passes_by_name_and_leaves_defaults_alone():
    def make(in_channels, heads, extra=7, *rest, **kw):
        return in_channels, heads, extra

    assert bind(make, {"in_channels": 3, "heads": 2, "unused": 1}, "b") == {"in_channels": 3,
                                                                             "heads": 2}
    assert bind(make, {"in_channels": 3, "heads": 2, "extra": 9}, "b")["extra"] == 9


def test_a_required_parameter_no_fact_supplies_is_a_definition_error_naming_it():
    def make(in_channels, widht):
        return None

    with pytest.raises(BlockDefinitionError, match=r"block 'b'.*needs 'widht'.*in_channels"):
        bind(make, {"in_channels": 3}, "b")


def test_module_paths_resolve_lazily_and_bad_paths_say_why():
    assert resolve_module("mtl_dsl.modules.common.ConvBnAct").__name__ == "ConvBnAct"
    with pytest.raises(BlockDefinitionError, match="has no 'Nope'"):
        resolve_module("mtl_dsl.modules.common.Nope")
    with pytest.raises(BlockDefinitionError, match="cannot import"):
        resolve_module("mtl_dsl.modules.nonexistent.Thing")
    with pytest.raises(BlockDefinitionError, match="dotted"):
        resolve_module("ConvBnAct")


def test_equal_constructions_build_modules_of_one_structure():
    """What a cross-task pass needs: per-task heads on one map with one width are one structure;
    a head for a task with other channels is not."""
    block = REGISTRY["dense_head"]
    x = fmap(16)
    tasks = {t.name: t for t in SYNTHETIC.tasks}
    same = [block.construction(make_call("dense_head", {"x": x}, task=t))
            for t in ("depth", "edge")]
    assert tasks["depth"].channels == tasks["edge"].channels
    assert same[0] == same[1]
    other = block.construction(make_call("dense_head", {"x": x}, task="normals"))
    assert other[0] is same[0][0] and other[1] != same[0][1]
    a, b = (block.build(make_call("dense_head", {"x": x}, task=t)) for t in ("depth", "edge"))
    assert [(k, v.shape) for k, v in a.state_dict().items()] == \
        [(k, v.shape) for k, v in b.state_dict().items()]


class Gate(nn.Module):
    """A user's module: sigmoid(conv(x)) * x, its width from the call."""

    def __init__(self, in_channels: int, kernel: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)) * x


@pytest.fixture
def gate_block():
    @register
    class GateBlock(Block):
        name = "test_gate"
        module = Gate  # the class itself: a user block needs no dotted path
        doc = "A gate."
        args = {"x": Input((FeatureMap,), "map"), "kernel": Param(int, 1, "kernel", min=1)}

        def infer(self, call: Call) -> FeatureMap:
            return call.inputs["x"]

    yield GateBlock
    del REGISTRY["test_gate"]


def test_a_block_written_as_a_module_class_compiles_with_no_build_code(tmp_path: Path, gate_block):
    spec = tmp_path / "gated.mtl"
    spec.write_text("model gated(dim = 6) {\n"
                    "  x = conv_bn_act(images, dim, stride = 4)\n"
                    "  for t in tasks {\n"
                    "    out[t] = dense_head(test_gate(x, kernel = 3), task = t)\n"
                    "  }\n}\n")
    model = compile_model(spec, tasks="semseg:3,depth", input_size=(16, 16))
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    assert len(gates) == 2 and gates[0].conv.weight.shape == (6, 6, 3, 3)
    out = model(torch.randn(2, 3, 16, 16))
    assert out["semseg"]["final"].shape == (2, 3, 16, 16)


def test_registering_a_block_without_a_module_is_refused():
    with pytest.raises(RuntimeError, match="names no module"):
        @register
        class Nothing(Block):
            name = "test_nothing"
            args = {"x": Input((FeatureMap,), "map")}

            def infer(self, call: Call) -> FeatureMap:
                return call.inputs["x"]
    assert "test_nothing" not in REGISTRY


def test_every_common_block_builds_and_runs_through_the_rule(tmp_path: Path):
    """The primitives no reference spec uses, compiled and run: the rule gives each its
    arguments."""
    spec = tmp_path / "prims.mtl"
    spec.write_text("""
model prims(dim = 8) {
  feats = backbone("resnet18", levels = [1, 2])
  x = resize(select_level(feats, 2), scale = 2)
  y = resize(x, like = select_level(feats, 1))
  y = activation(linear(layer_norm(y), dim), fn = "gelu")
  x = dropout(linear_norm(y, dim, order = "norm_first"), p = 0.2)
  x = mlp(x, ratio = 0.5, residual = true, norm = true)
  x = detach(add(x, y, x))
  t = to_map(attention(tokens(x), heads = 2, over = "self"))
  for s in tasks {
    d[s] = conv_bn_act(t, dim, kernel = 1, norm = "none", act = "none")
  }
  g = split(attention(tokens(d), tokens(d), heads = 2, over = "tasks", residual = true), d)
  for s in tasks {
    out[s] = dense_head(concat(select(g, key = s), d[s]), task = s)
  }
}
""")
    graph = check_spec(spec, tasks="semseg:3,depth", input_size=(32, 32))
    used = {n.block for n in graph.ir.nodes}
    common = {n for n, b in REGISTRY.items() if b.family == "common"}
    assert common <= used, common - used
    model = compile_model(spec, tasks="semseg:3,depth", input_size=(32, 32))
    assert model.d.semseg.conv.bias is not None  # bias=none: a conv bias when no norm follows
    out = model(torch.randn(2, 3, 32, 32))
    assert out["depth"]["final"].shape == (2, 1, 32, 32)


def test_the_package_exports_the_user_api():
    from mtl_dsl import SpecError, check_spec as c, compile_model as m, load_ir, register as r

    assert c is check_spec and m is compile_model and r is register
    assert load_ir("baseline_mt").name == "baseline_mt"
    assert issubclass(SpecError, Exception)
    assert {"compile_model", "check_spec", "load_ir", "register", "SpecError"} <= set(mtl_dsl.__all__)
    with pytest.raises(AttributeError):
        mtl_dsl.nope  # noqa: B018
