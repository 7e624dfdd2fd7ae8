"""Backbones and aggregation: official parameter counts, predicted (torch-free) shapes against the
real ones at random sizes, the geometry table against timm, mmseg-style HRNet fusion and Swin
windows, strict safetensors loading, idle HRNet fusions, upsample_concat / select_level."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from conftest import make_call as _make_call
from conftest import n_params
from mtl_dsl.blocks import get_block
from mtl_dsl.blocks.backbones import (BACKBONES, HRNET_LAST_MODULE, REGISTERED, BackboneGeometry,
                                     register_backbone, timm_features)
from mtl_dsl.blocks.registry import Call, ShapeError
from mtl_dsl.errors import SpecError
from mtl_dsl.modules.backbones import create_backbone
from mtl_dsl.types import H, W, FeatureMap, MultiScale

IMAGES = FeatureMap(channels=3, h=H, w=W)
SIZES = st.tuples(st.integers(33, 72), st.integers(33, 72))


def make_call(block: str, inputs: dict, params: dict, size=(64, 64)) -> Call:
    return _make_call(block, inputs, params, size=size, node="feats")


def backbone_call(name: str, size=(64, 64), **params) -> Call:
    return make_call("backbone", {"images": IMAGES}, dict(params, name=name), size)


def build_backbone(name: str, size=(64, 64), **params):
    call = backbone_call(name, size, **params)
    block = get_block("backbone")
    return block.infer(call), block.build(call).eval()


def run(model, size):
    with torch.no_grad():
        return model(torch.randn(1, 3, *size))


def assert_shapes(predicted: MultiScale, maps, size):
    assert [tuple(m.shape[1:]) for m in maps] == [lv.concrete(size) for lv in predicted.levels]


# -- official figures ------------------------------------------------------------------------------

def test_hrnet18_small_v2_matches_the_official_backbone():
    predicted, model = build_backbone("hrnet_w18_small_v2", size=(425, 560))
    assert n_params(model) == 3_860_720  # the ATRC code's HRNetV2-W18-small
    # (github.com/brdav/atrc, src/model/backbones/hrnet.py, mmseg's hrnetv2_w18_small), instantiated
    assert [lv.concrete((425, 560)) for lv in predicted.levels] == [
        (18, 107, 140), (36, 54, 70), (72, 27, 35), (144, 14, 18)]


def test_swin_t_with_output_norms_matches_the_mmseg_backbone():
    with torch.device("meta"):
        predicted, model = build_backbone("swin_tiny_patch4_window7_224", size=(425, 560))
        _, plain = build_backbone("swin_tiny_patch4_window7_224", output_norms=False)
    assert n_params(model) == 27_520_698  # timm's 27,517,818 + norm0..norm3
    assert n_params(plain) == 27_517_818
    assert [lv.concrete((425, 560))[1:] for lv in predicted.levels] == [
        (107, 140), (54, 70), (27, 35), (14, 18)]  # 425 padded to 428 rows


def test_vit_large_position_table_follows_the_compile_size():
    with torch.device("meta"):  # 300 M parameters: count them without allocating
        _, model = build_backbone("vit_large_patch16_384", size=(448, 576), levels=[6, 12, 18, 24])
    assert n_params(model) == 304_133_120  # InvPT's ViT-L/16 at 448x576
    # (github.com/prismformore/Multi-Task-Transformer, InvPT/models/transformers/vit.py): 28x36+1


# -- the table against timm ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_geometry_table_matches_timm(name):
    geometry = BACKBONES[name]
    with torch.device("meta"):
        if geometry.family == "vit":
            model = timm.create_model(name, pretrained=False, num_classes=0)
            assert len(model.blocks) == geometry.depth
            assert {model.embed_dim} == set(geometry.channels.values())
            assert model.patch_embed.patch_size[0] == geometry.patch
            return
        extra = {"feature_location": ""} if geometry.family == "hrnet" else {}
        model = timm.create_model(name, pretrained=False, features_only=True,
                                  out_indices=[lv - (geometry.family == "swin")
                                               for lv in geometry.levels], **extra)
    assert model.feature_info.channels() == [geometry.channels[lv] for lv in geometry.levels]
    strides = model.feature_info.reduction()
    assert strides == [2 ** (lv + 1) for lv in geometry.levels]
    if geometry.family == "hrnet":
        assert len(model.stage4) - 1 == HRNET_LAST_MODULE[name]


# -- predicted shapes == actual shapes -------------------------------------------------------------

@pytest.fixture(scope="module")
def small_backbones():
    torch.manual_seed(0)
    return {
        "resnet18": build_backbone("resnet18", levels=[0, 1, 2, 3, 4]),
        "hrnet": build_backbone("hrnet_w18_small_v2", levels=[0, 1, 2, 3, 4]),
        "vit": build_backbone("test_vit", levels=[2, 6]),
        "vit_padded": build_backbone("test_vit", levels=[1, 3], pad_to_patch=True),
    }


@pytest.mark.parametrize("key", ["resnet18", "hrnet", "vit", "vit_padded"])
@settings(max_examples=6, deadline=None)
@given(size=SIZES)
def test_predicted_shapes_equal_actual_shapes(small_backbones, key, size):
    predicted, model = small_backbones[key]
    assert_shapes(predicted, run(model, size), size)


def tiny_swin(**options):
    return create_backbone("swin_tiny_patch4_window7_224", "swin", [1, 2, 3, 4],
                           img_size=(64, 64), embed_dim=8, depths=(1, 2, 1, 2),
                           num_heads=(1, 1, 1, 1), **options).eval()


@pytest.fixture(scope="module")
def tiny_swins():
    torch.manual_seed(0)
    return {pad: tiny_swin(pad_to_patch=pad, output_norms=True) for pad in (True, False)}


@pytest.mark.parametrize("pad", [True, False])
@settings(max_examples=6, deadline=None)
@given(size=SIZES)
def test_swin_shapes_follow_the_swin_rule(tiny_swins, pad, size):
    geometry = BackboneGeometry("swin", {k: 8 * 2 ** (k - 1) for k in (1, 2, 3, 4)}, patch=4)
    maps = run(tiny_swins[pad], size)
    expected = [(geometry.channels[lv], geometry.level_size(lv, H, pad).eval(*size),
                 geometry.level_size(lv, W, pad).eval(*size)) for lv in (1, 2, 3, 4)]
    assert [tuple(m.shape[1:]) for m in maps] == expected


@pytest.fixture(scope="module")
def registered_convnext():
    """A timm model outside the table, described by its strided ops (ConvNeXt: all floor)."""
    steps = {0: [(4, 4, 0)]}
    for level in (1, 2, 3):
        steps[level] = steps[level - 1] + [(2, 2, 0)]
    register_backbone("test_convnext", timm_features({0: 24, 1: 32, 2: 48, 3: 64}, steps))
    yield build_backbone("test_convnext")
    del REGISTERED["test_convnext"]


@settings(max_examples=6, deadline=None)
@given(size=SIZES)
def test_a_registered_timm_model_works_as_a_backbone(registered_convnext, size):
    predicted, model = registered_convnext
    assert [str(lv.h) for lv in predicted.levels] == ["H//4", "H//8", "H//16", "H//32"]
    assert_shapes(predicted, run(model, size), size)


def test_swin_padding_and_floor_differ_as_documented():
    block = get_block("backbone")
    with_pad = block.infer(backbone_call("swin_tiny_patch4_window7_224"))
    without = block.infer(backbone_call("swin_tiny_patch4_window7_224", pad_to_patch=False))
    assert [str(lv.h) for lv in with_pad.levels] == ["H/4", "H/8", "H/16", "H/32"]
    assert [lv.h.eval(425, 560) for lv in without.levels] == [106, 53, 27, 14]


# -- HRNet fusion ----------------------------------------------------------------------------------

def test_bilinear_hrnet_fusion_runs_at_odd_sizes_where_timm_fails():
    predicted, model = build_backbone("hrnet_w18_small_v2", size=(85, 113))
    maps = run(model, (85, 113))
    assert [tuple(m.shape[2:]) for m in maps] == [(22, 29), (11, 15), (6, 8), (3, 4)]
    assert_shapes(predicted, maps, (85, 113))
    _, nearest = build_backbone("hrnet_w18_small_v2", size=(85, 113), hrnet_fusion="timm")
    with pytest.raises(RuntimeError):  # nearest x2 of 11 rows is 22, of 3 rows 6 != 8
        run(nearest, (85, 113))
    assert nearest.state_dict().keys() == model.state_dict().keys()


def test_bilinear_hrnet_fusion_is_a_bilinear_upsample_of_the_coarse_branch():
    torch.manual_seed(0)
    _, bilinear = build_backbone("hrnet_w18_small_v2", hrnet_fusion="bilinear")
    _, nearest = build_backbone("hrnet_w18_small_v2", hrnet_fusion="timm")
    nearest.load_state_dict(bilinear.state_dict())
    stage = bilinear.body.stage2[0]  # two branches: 18 ch at stride 4, 36 ch at stride 8
    x = [torch.randn(1, 18, 12, 12), torch.randn(1, 36, 6, 6)]
    with torch.no_grad():
        fused = stage([t.clone() for t in x])
        branches = [b(t) for b, t in zip(stage.branches, x)]
        coarse = stage.fuse_layers[0][1][1](stage.fuse_layers[0][1][0](branches[1]))
        expected = F.relu(branches[0] + F.interpolate(coarse, scale_factor=2, mode="bilinear",
                                                      align_corners=False))
        assert torch.allclose(fused[0], expected, atol=1e-5)
        assert not torch.allclose(nearest.body.stage2[0]([t.clone() for t in x])[0], expected,
                                  atol=1e-3)


def test_hrnet_fusions_into_unreturned_branches_are_idle():
    call = backbone_call("hrnet_w18_small_v2", levels=[1, 2])
    block = get_block("backbone")
    idle = block.idle(call)
    assert set(idle) == {"body.stage4.1.fuse_layers.2", "body.stage4.1.fuse_layers.3"}
    model = block.build(call).eval()  # eval: BN on the 1x1 stride-32 map of a 32x32 image
    sum(m.sum() for m in model(torch.randn(1, 3, 32, 32))).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    declared = {n for n, _ in model.named_parameters() if any(n.startswith(k + ".") for k in idle)}
    assert no_grad == declared and declared


@pytest.mark.parametrize("name, levels", [("resnet18", [1, 2, 3, 4]), ("test_vit", [2, 6]),
                                          ("hrnet_w18_small_v2", [1, 2, 3, 4])])
def test_every_parameter_gets_a_gradient_from_the_start(name, levels):
    torch.manual_seed(0)
    _, model = build_backbone(name, size=(32, 32), levels=levels)
    sum(m.pow(2).mean() for m in model(torch.randn(1, 3, 32, 32))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


# -- Swin windows ----------------------------------------------------------------------------------

def test_mmseg_windows_equal_timm_windows_when_maps_are_whole_windows():
    torch.manual_seed(0)
    mmseg, timm_style = tiny_swin(swin_window="mmseg"), tiny_swin(swin_window="timm")
    timm_style.load_state_dict(mmseg.state_dict())
    x = torch.randn(1, 3, 112, 112)  # maps 28, 14, 7, 4: the 4x4 one is padded to a 7x7 window
    with torch.no_grad():
        a, b = mmseg(x), timm_style(x)
    for level in range(3):
        assert torch.allclose(a[level], b[level], atol=1e-5)
    assert not torch.allclose(a[3], b[3], atol=1e-4)  # pad-then-shift differs from shift-then-pad


# -- ViT -------------------------------------------------------------------------------------------

def test_vit_final_norm_only_on_the_chosen_levels():
    torch.manual_seed(0)
    _, model = build_backbone("test_vit", levels=[3, 6])
    maps = run(model, (64, 64))
    normed_std = maps[1].std(dim=1)  # LayerNorm at init: zero mean, unit std over channels
    assert torch.allclose(maps[1].mean(dim=1), torch.zeros(1), atol=1e-4)
    assert torch.allclose(normed_std, torch.ones_like(normed_std), atol=0.05)
    assert not torch.allclose(maps[0].mean(dim=1), torch.zeros(1), atol=1e-2)
    _, unnormed = build_backbone("test_vit", levels=[3, 4], vit_norm=[])
    assert "body.norm.weight" not in unnormed.state_dict()
    assert len(unnormed.body.blocks) == 4  # blocks after the last level are not built


# -- pretrained weights ----------------------------------------------------------------------------

def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    _, source = build_backbone("resnet18", levels=[1, 2])
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    _, loaded = build_backbone("resnet18", levels=[1, 2], pretrained=str(path))
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    bare = tmp_path / "timm_names.safetensors"  # the timm model's own key names
    save_file(source.body.state_dict(), str(bare))
    _, loaded = build_backbone("resnet18", levels=[1, 2], pretrained=str(bare))
    assert torch.equal(loaded.body.conv1.weight, source.body.conv1.weight)



def test_a_whole_timm_models_state_dict_loads_as_the_block_doc_says(tmp_path):
    """`pretrained` takes "the timm model's" state_dict: timm.create_model(name).state_dict()
    holds the classifier and stages features_only does not build (ResNet's fc and layer3-4 for
    levels [1, 2]) and Swin's stages as layers.N (features_only: layers_N); timm drops / renames
    them when it loads its own weights, so must we."""
    import timm

    torch.manual_seed(3)
    whole = timm.create_model("resnet18")
    path = tmp_path / "resnet18_whole.safetensors"
    save_file(whole.state_dict(), str(path))
    _, loaded = build_backbone("resnet18", levels=[1, 2], pretrained=str(path))
    assert torch.equal(loaded.body.layer2[1].conv2.weight, whole.layer2[1].conv2.weight)
    assert not any("fc." in k or "layer3" in k for k in loaded.state_dict())

    tiny = dict(embed_dim=8, depths=(1, 2, 1, 2), num_heads=(1, 1, 1, 1))
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=(64, 64),
                             always_partition=True, strict_img_size=False, **tiny)
    swin_path = tmp_path / "swin_whole.safetensors"
    save_file(swin.state_dict(), str(swin_path))
    with pytest.raises(SpecError) as err:  # the mmseg output norms are not in a timm model
        create_backbone("swin_tiny_patch4_window7_224", "swin", [1, 2, 3, 4], img_size=(64, 64),
                        output_norms=True, pretrained=str(swin_path), **tiny)
    assert "8 missing keys: output_norms.0.bias, output_norms.0.weight" in str(err.value)
    assert "unexpected" not in str(err.value)
    loaded = create_backbone("swin_tiny_patch4_window7_224", "swin", [1, 2, 3, 4],
                             img_size=(64, 64), pretrained=str(swin_path), **tiny)
    assert torch.equal(loaded.body.layers_3.blocks[1].attn.qkv.weight,
                       swin.layers[3].blocks[1].attn.qkv.weight)

    other = tmp_path / "resnet34_whole.safetensors"  # another model's weights stay an error
    save_file(timm.create_model("resnet34").state_dict(), str(other))
    with pytest.raises(SpecError, match="unexpected keys: body.layer1.2.bn1.bias"):
        build_backbone("resnet18", levels=[1, 2], pretrained=str(other))

def test_vit_position_table_is_resampled_to_the_input_size(tmp_path):
    torch.manual_seed(2)
    _, square = build_backbone("test_vit", size=(64, 64), levels=[2, 6])  # 4x4 (+cls) table
    path = tmp_path / "vit.safetensors"
    save_file(square.state_dict(), str(path))
    _, wide = build_backbone("test_vit", size=(48, 96), levels=[2, 6], pretrained=str(path))
    assert wide.body.pos_embed.shape == (1, 1 + 3 * 6, 64)
    assert torch.equal(wide.body.pos_embed[:, 0], square.body.pos_embed[:, 0])  # class token
    assert torch.equal(wide.body.blocks[0].attn.qkv.weight, square.body.blocks[0].attn.qkv.weight)


def test_mismatched_weights_list_the_keys(tmp_path):
    _, source = build_backbone("resnet18", levels=[1, 2])
    state = source.state_dict()
    state.pop("body.conv1.weight")
    state["body.extra"] = torch.zeros(1)
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(SpecError) as err:
        build_backbone("resnet18", levels=[1, 2], pretrained=str(path))
    text = str(err.value)
    assert str(path) in text and "body.conv1.weight" in text and "body.extra" in text


def test_corrupt_or_missing_weights_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(SpecError, match="corrupt.safetensors"):
        build_backbone("resnet18", levels=[1], pretrained=str(corrupt))
    with pytest.raises(SpecError, match="not found"):
        build_backbone("resnet18", levels=[1], pretrained=str(tmp_path / "absent.safetensors"))


# -- checking without torch ------------------------------------------------------------------------

def test_unknown_backbone_suggests_a_known_one():
    with pytest.raises(ShapeError) as err:
        get_block("backbone").infer(backbone_call("hrnet_w18_smal_v2"))
    # any timm model is a backbone now (issue 12): the one not in timm is named as such
    assert "hrnet_w18_small_v2" in err.value.hint and "is not a timm model" in err.value.message


@pytest.mark.parametrize("params, message", [
    ({"name": "resnet18", "levels": [1, 5]}, "no level 5"),
    ({"name": "resnet18", "levels": [2, 1]}, "increasing"),
    ({"name": "resnet18", "output_norms": True}, "swin backbones only"),
    ({"name": "hrnet_w18_small_v2", "pad_to_patch": True}, "swin and vit"),
    ({"name": "test_vit", "levels": [2, 4], "vit_norm": [3]}, "subset"),
    ({"name": "hrnet_w18_small_v2", "levels": [0]}, "branch levels"),
    ({"name": "hrnet_w18_small_v2", "drop_path": 0.1}, "stochastic depth"),
])
def test_bad_parameters_are_shape_errors(params, message):
    with pytest.raises(ShapeError, match=message):
        get_block("backbone").infer(make_call("backbone", {"images": IMAGES}, params))


def test_block_files_do_not_import_torch():
    code = ("import sys, mtl_dsl.blocks.backbones, mtl_dsl.blocks.aggregation;"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- aggregation -----------------------------------------------------------------------------------

def hrnet18_levels() -> MultiScale:
    return get_block("backbone").infer(backbone_call("hrnet_w18_small_v2"))


def test_upsample_concat_shapes():
    block = get_block("upsample_concat")
    out = block.infer(make_call("upsample_concat", {"x": hrnet18_levels()}, {}))
    assert out.channels == 270 and str(out.h) == "H/4"
    swin = get_block("backbone").infer(backbone_call("swin_tiny_patch4_window7_224"))
    assert block.infer(make_call("upsample_concat", {"x": swin}, {})).channels == 1440
    coarse = block.infer(make_call("upsample_concat", {"x": hrnet18_levels()}, {"levels": [3, 4]}))
    assert coarse.channels == 216 and str(coarse.h) == "H/16"
    with pytest.raises(ShapeError, match="level 5"):
        block.infer(make_call("upsample_concat", {"x": hrnet18_levels()}, {"levels": [1, 5]}))


@settings(max_examples=10, deadline=None)
@given(size=SIZES, levels=st.sampled_from([None, [1, 2, 3, 4], [2, 4], [3, 1], [4]]))
def test_upsample_concat_resizes_to_the_first_listed_level(size, levels):
    x = hrnet18_levels()
    call = make_call("upsample_concat", {"x": x}, {"levels": levels}, size)
    predicted = get_block("upsample_concat").infer(call)
    maps = [torch.randn(1, *lv.concrete(size)) for lv in x.levels]
    out = get_block("upsample_concat").build(call)(maps)
    assert tuple(out.shape[1:]) == predicted.concrete(size)
    chosen = [maps[i - 1] for i in (levels or [1, 2, 3, 4])]
    expected = torch.cat([F.interpolate(m, size=chosen[0].shape[-2:], mode="bilinear",
                                        align_corners=False) for m in chosen], dim=1)
    assert torch.allclose(out, expected)


def test_select_level():
    x = hrnet18_levels()
    call = make_call("select_level", {"x": x}, {"level": 3})
    assert get_block("select_level").infer(call) == x.levels[2]
    maps = [torch.randn(1, *lv.concrete((64, 64))) for lv in x.levels]
    assert get_block("select_level").build(call)(maps) is maps[2]
    with pytest.raises(ShapeError, match="level 5"):
        get_block("select_level").infer(make_call("select_level", {"x": x}, {"level": 5}))
