"""DeMT: the blocks against explicit computations, the official parameter breakdown, and the
compiled reference spec (shapes, gradients, idle parameters, ablations)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from mtl_dsl.blocks import get_block
from mtl_dsl.blocks.registry import Call
from mtl_dsl.modules.demt import (ChannelDeformConv, PixelOffsets, TaskInteraction, TaskQuery,
                                  TokenAttention, kernel_coordinates)
from mtl_dsl.tasks import PROFILES
from conftest import assert_batch_independent
from conftest import make_call as _make_call
from conftest import n_params
from mtl_dsl.types import H, W, FeatureMap, TaskMap

NYUD = PROFILES["nyud"]


def make_call(block: str, inputs: dict, params: dict, tasks=NYUD.tasks, size=(425, 560)) -> Call:
    return _make_call(block, inputs, params, tasks=tasks, size=size, node=block)


def stride4(channels: int) -> FeatureMap:
    return FeatureMap(channels=channels, h=H.cdiv(4), w=W.cdiv(4))


def build(block: str, inputs: dict, params: dict, **kw) -> torch.nn.Module:
    call = make_call(block, inputs, params, **kw)
    get_block(block).infer(call)
    return get_block(block).build(call)


# -- the operators against explicit computations ---------------------------------------------------

def bilinear_zero_pad(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img[c] sampled at (y, x) bilinearly, corners outside the map counting as 0 (DCNv1)."""
    h, w = img.shape[-2:]
    y0, x0 = math.floor(y), math.floor(x)
    total = torch.zeros(())
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total = total + wy * wx * img[yy, xx]
    return total


def test_kernel_coordinates_are_one_based_rows_then_columns():
    grid = kernel_coordinates(3, 4, torch.zeros(1))
    assert grid.shape == (1, 18, 3, 4)
    # tap 0 is (-1, -1), tap 5 is (0, +1), tap 8 is (+1, +1); pixel (i, j) is (i+1, j+1) 1-based
    assert grid[0, 0, 2, 3] == 3 - 1 and grid[0, 9, 2, 3] == 4 - 1
    assert grid[0, 5, 1, 0] == 2 + 0 and grid[0, 9 + 5, 1, 0] == 1 + 1
    assert grid[0, 8, 0, 0] == 2 and grid[0, 17, 0, 0] == 2


def test_offsets_are_the_official_affine_function_of_coordinates():
    torch.manual_seed(0)
    net = PixelOffsets(4)
    assert torch.count_nonzero(net.p_conv.weight) == 0  # zero-initialised, as the official code
    with torch.no_grad():
        net.p_conv.weight.normal_()
    x = torch.randn(2, 4, 5, 6)
    p = net.p_conv(x) + kernel_coordinates(5, 6, x)
    # the row group of `opt` sees only the 9 row coordinates and gives outputs 0..D-1
    rows_only = torch.nn.functional.conv2d(p[:, :9], net.opt.weight[:4], net.opt.bias[:4], padding=1)
    cols_only = torch.nn.functional.conv2d(p[:, 9:], net.opt.weight[4:], net.opt.bias[4:], padding=1)
    assert torch.allclose(net(x), torch.cat([rows_only, cols_only], 1), atol=1e-5)


def test_deformable_conv_equals_explicit_bilinear_sampling():
    torch.manual_seed(1)
    dim, h, w = 3, 4, 5
    conv = ChannelDeformConv(dim)
    with torch.no_grad():  # small offsets keep some samples inside, some outside the map
        conv.get_offset.opt.weight.mul_(0.05)
    x = torch.randn(1, dim, h, w)
    offsets = conv.get_offset(x)[0]
    expected = torch.zeros(dim, h, w)
    for i in range(h):
        for j in range(w):
            # torchvision reads offset channel 2c as dy and 2c+1 as dx of input channel c
            samples = torch.stack([bilinear_zero_pad(x[0, c], i + offsets[2 * c, i, j].item(),
                                                     j + offsets[2 * c + 1, i, j].item())
                                   for c in range(dim)])
            expected[:, i, j] = conv.weight[:, :, 0, 0] @ samples + conv.bias
    assert torch.allclose(conv(x)[0], expected, atol=1e-5)


def test_task_query_attention_equals_a_loop_over_pixels():
    torch.manual_seed(2)
    dim, heads, tasks, n = 8, 2, 3, 5
    attn = TokenAttention(dim, heads, "tasks")
    q = torch.randn(2, n, dim)
    kv = torch.randn(2, tasks, n, dim)
    out = attn(q, kv)
    hd = dim // heads
    for b in range(2):
        for p in range(n):
            qp = attn.q_proj(q[b, p])
            kp, vp = attn.k_proj(kv[b, :, p]), attn.v_proj(kv[b, :, p])  # [tasks, dim]
            heads_out = []
            for hh in range(heads):
                s = slice(hh * hd, (hh + 1) * hd)
                weights = torch.softmax(kp[:, s] @ qp[s] / math.sqrt(hd), 0)
                heads_out.append(weights @ vp[:, s])
            assert torch.allclose(out[b, p], attn.out_proj(torch.cat(heads_out)), atol=1e-5)


def test_self_attention_is_value_then_output_projection():
    torch.manual_seed(3)
    attn = TokenAttention(8, 4, "self")
    x = torch.randn(3, 7, 8)
    expected = attn.out_proj(attn.v_proj(x))
    assert torch.allclose(attn(x, x.unsqueeze(1)), expected, atol=1e-6)
    attn(x, x.unsqueeze(1)).sum().backward()
    assert torch.count_nonzero(attn.q_proj.weight.grad) == 0
    assert torch.count_nonzero(attn.k_proj.weight.grad) == 0


def test_global_attention_equals_softmax_over_all_tokens():
    torch.manual_seed(4)
    attn = TokenAttention(8, 2, "all")
    q, kv = torch.randn(1, 5, 8), torch.randn(1, 3, 5, 8)
    keys = kv.reshape(1, 15, 8)
    qh = attn.q_proj(q).view(1, 5, 2, 4).transpose(1, 2)
    kh = attn.k_proj(keys).view(1, 15, 2, 4).transpose(1, 2)
    vh = attn.v_proj(keys).view(1, 15, 2, 4).transpose(1, 2)
    ref = (torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, -1) @ vh).transpose(1, 2).reshape(1, 5, 8)
    assert torch.allclose(attn(q, kv), attn.out_proj(ref), atol=1e-5)


@pytest.mark.parametrize("over", ["self", "all"])
def test_decoder_is_batch_independent(over):
    torch.manual_seed(5)
    inter = TaskInteraction(8, 2, over, prenorm=over == "all").eval()
    query = TaskQuery(8, 2, "tasks" if over == "self" else "all", prenorm=over == "all").eval()
    maps = {t: torch.randn(3, 8, 4, 5) for t in ("semseg", "depth")}
    full = query(maps["depth"], inter(maps))
    alone = query(maps["depth"][1:2], inter({t: m[1:2] for t, m in maps.items()}))
    assert torch.allclose(full[1:2], alone, atol=1e-5)


# -- the official parameter breakdown (NYUD, HRNet18 features C_in = 270) -------------------------
# Each submodule of the official DemtHead (github.com/yangyangxu0/DeMT, src/model/heads/demt_head.py)
# counted; D = 128 gives the paper's 4.76 M (DeMT Table 1, HRNet18), D = 256 is the code's default.

BREAKDOWN = {  # submodule: (D = 128, D = 256)
    "linear1": (34_944, 69_888),
    "defor_mixers": (301_128, 864_328),
    "task_fusion": (66_048, 263_168),
    "smlp": (16_768, 66_304),
    "task_querys": (264_192, 1_052_672),
    "smlp2": (67_072, 265_216),
    "bottleneck": (152_328, 304_392),
    "final_logits": (1_530, 1_530),
}


@pytest.mark.parametrize("column, dim, head_total", [(0, 128, 904_010), (1, 256, 2_887_498)])
def test_head_parameters_equal_the_official_breakdown(column, dim, head_total):
    features = stride4(270)
    x = stride4(dim)
    deformed = TaskMap(items={t.name: x for t in NYUD.tasks})
    linear = build("demt_linear_norm", {"x": features}, {"dim": dim})
    mixers = [build("deformable_mixer", {"x": x}, {}) for _ in NYUD.tasks]
    inter = build("task_interaction", {"x": deformed}, {})
    queries = [build("task_query", {"x": x, "context": deformed}, {}) for _ in NYUD.tasks]
    heads = [build("ratio_head", {"x": x, "features": features}, {"task": t.name})
             for t in NYUD.tasks]
    measured = {
        "linear1": n_params(linear),
        "defor_mixers": sum(map(n_params, mixers)),
        "task_fusion": n_params(inter.task_fusion),
        "smlp": n_params(inter.smlp),
        "task_querys": sum(n_params(q.task_query) for q in queries),
        "smlp2": sum(n_params(q.smlp) for q in queries),
        "bottleneck": sum(n_params(h.bottleneck) for h in heads),
        "final_logits": sum(n_params(h.final_logits) for h in heads),
    }
    assert measured == {k: v[column] for k, v in BREAKDOWN.items()}
    assert sum(measured.values()) == head_total
    assert heads[0].bottleneck[0].out_channels == 270 // 8


def test_idle_parameters_of_the_attentions():
    x = stride4(16)
    one = TaskMap(items={"depth": x})
    two = TaskMap(items={"depth": x, "edge": x})
    block_i, block_q = get_block("task_interaction"), get_block("task_query")
    assert set(block_i.idle(make_call("task_interaction", {"x": two}, {}))) == {
        "task_fusion.q_proj", "task_fusion.k_proj"}
    assert block_i.idle(make_call("task_interaction", {"x": two}, {"over": "all"})) == {}
    assert block_q.idle(make_call("task_query", {"x": x, "context": two}, {})) == {}
    # one task: the per-pixel softmax is over one key
    assert set(block_q.idle(make_call("task_query", {"x": x, "context": one}, {}))) == {
        "task_query.q_proj", "task_query.k_proj"}


def test_heads_must_divide_the_width():
    x = stride4(10)
    call = make_call("task_interaction", {"x": TaskMap(items={"depth": x})}, {"heads": 4})
    with pytest.raises(Exception, match="divisible"):
        get_block("task_interaction").infer(call)


# -- the compiled reference spec -----------------------------------------------------------------

from mtl_dsl.api import check_spec, compile_model  # noqa: E402
from mtl_dsl.tasks import KNOWN_TASKS  # noqa: E402

TINY = "resnet18"  # random weights; levels 64/128/256/512 at strides 4..32: C_in = 960


def task_string(tasks: list[str]) -> str:
    return ",".join(f"{t}:3" if t in ("semseg", "human_parts") else t for t in tasks)


def predicted_shape(t, size, batch):
    if t.kind == "taskmap":
        return {k: predicted_shape(v, size, batch) for k, v in t.items.items()}
    if t.kind == "multiscale":
        return [(batch,) + lv.concrete(size) for lv in t.levels]
    return (batch,) + tuple(t.concrete(size))


def actual_shape(value):
    if isinstance(value, dict):
        return {k: actual_shape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [actual_shape(v) for v in value]
    return tuple(value.shape)


def run_and_check_shapes(model, images) -> dict:
    """Forward ``images`` and assert every node's output has the checker's predicted shape."""
    seen = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name, module in model.node_modules().items()]
    try:
        with model.fusion_off():  # each node's own module runs (hooks see it)
            out = model(images)
    finally:
        for h in hooks:
            h.remove()
    size, batch = tuple(images.shape[-2:]), images.shape[0]
    for name, value in seen.items():
        types = model.checked.types[name]
        assert actual_shape(value) == predicted_shape(types[0], size, batch), name
    for task in model.profile.tasks:
        assert out[task.name]["final"].shape == (batch, task.channels, *size)
    return out


def summed_loss(out) -> torch.Tensor:
    return sum(v.float().pow(2).mean() for task in out.values() for v in task.values())


def randomise_norms(model) -> None:
    """Random affine norms, so that a zero-initialised norm scale (as timm's ResNet has by default)
    cannot hide a path: gradient reachability is then a property of the graph alone."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)


def params_without_gradient(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)}


def every_variant_and_ablation(test):
    """Explicit examples: each variant with each ablation, whatever the random examples draw."""
    for i, (variant, modules) in enumerate((v, m) for v in ("official", "paper")
                                           for m in ("dm", "dm+ti", "dm+ti+tq")):
        tasks = (["semseg"], ["depth", "edge"], ["semseg", "normals", "sal"])[i % 3]
        test = example(tasks=tasks, h=33 + i, w=40 - i, heads=(1, 2, 4)[i % 3], per_head=2,
                       depth=1 + i % 2, variant=variant, modules=modules)(test)
    return test


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking a model is slow
@every_variant_and_ablation
@given(tasks=st.lists(st.sampled_from(KNOWN_TASKS), min_size=1, max_size=3, unique=True),
       h=st.integers(32, 56), w=st.integers(32, 56), heads=st.sampled_from([1, 2, 4]),
       per_head=st.integers(2, 4), depth=st.integers(1, 2),
       variant=st.sampled_from(["official", "paper"]),
       modules=st.sampled_from(["dm", "dm+ti", "dm+ti+tq"]))
def test_compiled_shapes_gradients_and_idle_parameters(tasks, h, w, heads, per_head, depth,
                                                       variant, modules):
    torch.manual_seed(0)
    model = compile_model("demt", tasks=task_string(tasks), input_size=(h, w), overrides={
        "backbone": TINY, "dim": heads * per_head, "heads": heads, "depth": depth,
        "variant": variant, "modules": modules})
    model.train()
    randomise_norms(model)
    summed_loss(run_and_check_shapes(model, torch.randn(2, 3, h, w))).backward()
    assert params_without_gradient(model) == set(model.idle_parameters)
    fusion_qk = {f"f.f.task_fusion.{p}.{q}" for p in ("q_proj", "k_proj") for q in ("weight", "bias")}
    query_qk = {f"q.q.{t}.task_query.{p}.{q}" for t in tasks for p in ("q_proj", "k_proj")
                for q in ("weight", "bias")}
    expected = set()
    if modules != "dm" and variant == "official":
        expected |= fusion_qk  # the official task interaction: softmax over one key
    if modules == "dm+ti+tq" and variant == "official" and len(tasks) == 1:
        expected |= query_qk  # the per-pixel softmax over the tasks has one key
    assert set(model.idle_parameters) == expected
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in expected)


def test_compiled_model_is_batch_independent():
    torch.manual_seed(1)
    for variant in ("official", "paper"):
        model = compile_model("demt", tasks="semseg:3,depth,edge", input_size=(32, 40),
                              overrides={"backbone": TINY, "dim": 8, "variant": variant}).eval()
        assert_batch_independent(model, torch.randn(3, 3, 32, 40), 2)


def mixer_params(d: int) -> int:
    """1x1 conv + BN, deformable 1x1 conv + BN, p_conv 3x3 d->18, opt 3x3 18->2d (groups 2)."""
    return (d * d + d + 2 * d) * 2 + (9 * 18 * d + 18) + (2 * d * 9 * 9 + 2 * d)


def attention_params(d: int) -> int:
    return 4 * (d * d + d)


def smlp_params(d: int) -> int:
    return d * d + d + 2 * d


def head_params(cin: int, d: int, channels: list[int], ratio: int) -> int:
    w = cin // ratio
    return sum(9 * d * w + 2 * w + w * c + c for c in channels)


def demt_params(cin: int, d: int, channels: list[int], depth: int = 1) -> int:
    t = len(channels)
    return (cin * d + 3 * d + t * depth * mixer_params(d) + attention_params(d) + smlp_params(d)
            + t * (attention_params(d) + smlp_params(d)) + head_params(cin, d, channels, 8))


count = n_params


def tiny(overrides: dict, tasks: str = "semseg:3,depth,normals", size=(32, 32)):
    return compile_model("demt", tasks=tasks, input_size=size,
                         overrides={"backbone": TINY, "dim": 16, **overrides})


def test_ablations_change_the_parameters_by_the_removed_modules():
    d, t = 16, 3
    full, no_tq, dm = tiny({}), tiny({"modules": "dm+ti"}), tiny({"modules": "dm"})
    assert count(full) - count(no_tq) == t * (attention_params(d) + smlp_params(d))
    assert count(no_tq) - count(dm) == attention_params(d) + smlp_params(d)
    for depth in (2, 4, 8):
        assert count(tiny({"depth": depth})) - count(full) == (depth - 1) * t * mixer_params(d)
    # the paper's variant: LayerNorm on C_in before the linear, LayerNorms before the attentions
    assert count(tiny({"variant": "paper"})) - count(full) == 2 * 960 - 2 * d + 2 * d + t * 4 * d
    assert count(full) - count(full, "feats") == demt_params(960, d, [3, 1, 3])


@pytest.mark.parametrize("levels, cin, stride", [([1], 64, 4), ([1, 2], 192, 4),
                                                 ([1, 2, 3], 448, 4), ([2, 3, 4], 896, 8)])
def test_scales_set_the_width_and_the_grid_of_the_head(levels, cin, stride):
    model = tiny({"levels": levels}, size=(48, 64))
    assert count(model) - count(model, "feats") == demt_params(cin, 16, [3, 1, 3])
    graph = model.checked.types
    assert predicted_shape(graph["d.e"][0], (48, 64), 1) == (1, 16, 48 // stride, 64 // stride)


def test_official_totals_on_nyud():
    """Parameters to the unit, as the official code (github.com/yangyangxu0/DeMT) holds them and
    DeMT's Table 1 prints them: HRNet18 with D = 128 (4.76 M), Swin-T with D = 256 (32.07 M).
    (Swin-S gives the official code's 53,388,163, not the published 53.03 M.)"""
    expected = {"hrnet18": (4_764_730, 3_860_720), "swin_t": (32_070_259, 27_520_698)}
    for preset, (total, backbone) in expected.items():
        model = compile_model("demt", tasks="nyud", preset=preset)
        assert (count(model), count(model, "feats")) == (total, backbone), preset


def test_spec_errors_name_the_ablation():
    with pytest.raises(Exception, match="dm\\+ti"):
        check_spec("demt", tasks="nyud", overrides={"modules": "dm+tq"})
