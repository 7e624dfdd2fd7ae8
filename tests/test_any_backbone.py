"""Any timm model as a backbone: geometry from timm's feature_info and a shape probe on the meta
device, cached; predicted (torch-free) shapes equal the real ones for a sample of small
features_only models at random sizes; the table agrees with the probe; `check` stays torch-free."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec
from mtl_dsl.blocks import get_block
from mtl_dsl.blocks import backbones as bb
from mtl_dsl.blocks import timm_geometry
from mtl_dsl.blocks.registry import Call
from mtl_dsl.errors import SpecError
from mtl_dsl.modules import timm_probe
from mtl_dsl.types import H, W, FeatureMap

ROOT = Path(__file__).resolve().parent.parent
IMAGES = FeatureMap(channels=3, h=H, w=W)
# Small timm models of different families that support features_only (random init, CPU).
SAMPLE = ["test_convnext", "test_efficientnet", "test_byobnet", "test_nfnet", "resnet10t",
          "lcnet_050", "regnetx_002", "efficientvit_b0"]


@pytest.fixture(scope="module", autouse=True)
def fresh_cache(tmp_path_factory):
    """Every probe in this module runs (no cache from an earlier run or another test)."""
    old = os.environ.get("MTL_DSL_CACHE")
    os.environ["MTL_DSL_CACHE"] = str(tmp_path_factory.mktemp("mtl-dsl-cache"))
    yield
    if old is None:
        del os.environ["MTL_DSL_CACHE"]
    else:
        os.environ["MTL_DSL_CACHE"] = old


def backbone_call(name: str, size, **params) -> Call:
    block = get_block("backbone")
    full = {k: v.default for k, v in block.params().items() if not v.required}
    full.update(params, name=name)
    return Call(node="feats", block="backbone", inputs={"images": IMAGES}, params=full, tasks=(),
                input_size=size)


@pytest.fixture(scope="module")
def sample_models():
    """name -> (geometry, module) for every sampled model, probed once."""
    torch.manual_seed(0)
    out = {}
    for name in SAMPLE:
        geometry = bb.find_backbone(name)
        call = backbone_call(name, (64, 64))
        out[name] = geometry, get_block("backbone").build(call).eval()
    return out


@pytest.mark.parametrize("name", SAMPLE)
@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.tuples(st.integers(33, 90), st.integers(33, 90)))
def test_predicted_shapes_equal_actual_for_any_timm_model(sample_models, name, size):
    geometry, module = sample_models[name]
    assert geometry.source == "timm"
    predicted = get_block("backbone").infer(backbone_call(name, size))
    with torch.no_grad():
        maps = module(torch.randn(1, 3, *size))
    assert [tuple(m.shape[1:]) for m in maps] == [lv.concrete(size) for lv in predicted.levels]


def test_levels_are_named_by_stride_and_default_to_strides_4_to_32(sample_models):
    convnext, _ = sample_models["test_convnext"]  # strides 4..32: levels 1..4
    assert convnext.levels == (1, 2, 3, 4) and convnext.default_levels == [1, 2, 3, 4]
    effnet, _ = sample_models["test_efficientnet"]  # strides 2..32: levels 0..4
    assert effnet.levels == (0, 1, 2, 3, 4) and effnet.default_levels == [1, 2, 3, 4]
    assert effnet.indices == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
    assert convnext.indices == {1: 0, 2: 1, 3: 2, 4: 3}
    with pytest.raises(Exception, match="has no level 0"):
        get_block("backbone").infer(backbone_call("test_convnext", (64, 64), levels=[0, 1]))


@pytest.mark.parametrize("name", ["resnet18", "hrnet_w18_small_v2", "swin_tiny_patch4_window7_224",
                                  "vit_small_patch16_224", "test_vit"])
def test_the_table_is_what_the_probe_finds(name):
    table = bb.BACKBONES[name]
    probed = bb.geometry_of(timm_probe.describe(name))
    assert (probed.family, probed.channels, probed.depth, probed.patch) == \
        (table.family, table.channels, table.depth, table.patch)
    for lv in table.levels:
        for pad in (False, True):
            assert [probed.level_size(lv, H, pad).eval(d, d) for d in range(17, 120)] == \
                [table.level_size(lv, H, pad).eval(d, d) for d in range(17, 120)], (lv, pad)
    if table.family == "hrnet":
        assert probed.last_module == bb.HRNET_LAST_MODULE[name]


def test_the_cache_answers_the_second_time(monkeypatch):
    first = timm_geometry.describe("test_byobnet")
    assert "test_byobnet" in json.loads(timm_geometry.cache_file().read_text())
    monkeypatch.setattr(timm_geometry, "_probe_here", lambda name: pytest.fail("probed again"))
    assert timm_geometry.describe("test_byobnet.some_tag") == first


def test_check_stays_torch_free_and_probes_in_a_child(tmp_path):
    spec = tmp_path / "spec.mtl"
    spec.write_text("""
model m(backbone = "test_resnet") {
  x = upsample_concat(backbone(backbone))
  for t in tasks {
    out[t] = conv_bn_act(x, channels(t), kernel = 1)
  }
}
""")
    script = ("import json, sys\nfrom mtl_dsl.api import check_spec\n"
              f"g = check_spec({str(spec)!r}, tasks='semseg:3,depth', input_size=(45, 61))\n"
              "print(json.dumps({'torch': 'torch' in sys.modules, "
              "'shape': g.types['x'][0].shape_str()}))\n")
    env = dict(os.environ, MTL_DSL_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "shape": "[B, 368, H/4, W/4]"}
    cache = next((tmp_path / "cache").glob("backbones-timm*.json"))
    assert json.loads(cache.read_text())["test_resnet"]["family"] == "resnet"


def test_unknown_names_and_input_rules_are_located_errors(tmp_path):
    spec = tmp_path / "spec.mtl"
    spec.write_text("""
model m(backbone = "test_convnex") {
  x = upsample_concat(backbone(backbone))
  for t in tasks {
    out[t] = conv_bn_act(x, channels(t), kernel = 1)
  }
}
""")
    with pytest.raises(SpecError) as info:
        check_spec(spec, tasks="semseg:3,depth", input_size=(64, 64))
    e = info.value
    assert "'test_convnex' is not a timm model" in e.message and e.line == 3
    assert "test_convnext" in e.hint
    bb.register_backbone("strict_net", bb.BackboneGeometry("timm", {1: 8}, offsets={1: (0, 4)},
                                                          indices={1: 0}, multiple=32))
    try:
        with pytest.raises(SpecError) as info:
            check_spec(spec, tasks="semseg:3,depth", input_size=(70, 64),
                       overrides={"backbone": "strict_net"})
        assert "takes input sides that are multiples of 32, not 70x64" in info.value.message
        assert "--input 96x64" in info.value.hint
    finally:
        bb.REGISTERED.pop("strict_net")
