"""InvPT: the attention message passing against an explicit computation, the decoder's parameter
breakdown against the official model's, and the compiled reference spec (shapes against the
checker, deep-supervision outputs, gradients, ablations, errors) and the DeMT+InvPT hybrid."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import n_params
from mtl_dsl.api import check_spec, compile_model
from mtl_dsl.blocks import get_block
from mtl_dsl.errors import SpecError
from mtl_dsl.modules.invpt import InvPTTransformerBlock
from mtl_dsl.types import AttentionMap, FeatureMap, MultiScale, TaskMap

SMALL = {"backbone": "test_vit", "levels": [2, 4, 6], "width": 32, "pred_width": 16}
SMALL_DIMS = [48, 24, 12]
TEST_VIT_WIDTH = 64
ROOT = Path(__file__).resolve().parent.parent
TASKS = "semseg:5,depth"


def small_model(overrides: dict | None = None, tasks: str = TASKS, size=(64, 64), preset=None):
    return compile_model("invpt", tasks=tasks, overrides={**SMALL, **(overrides or {})},
                         input_size=size, preset=preset)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_model()


# -- attention message passing against an explicit computation -------------------------------------

def official_block(block: InvPTTransformerBlock, x: list[torch.Tensor], previous: torch.Tensor,
                   previous_grid: tuple[int, int], amp: str):
    """The official InvPTBlock / SelfAttention forward, written out op by op."""
    attn_mod = block.attn
    tasks, heads = len(x), attn_mod.heads
    b, c, h, w = x[0].shape
    tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in x], dim=1)
    normed = block.norm1(tokens)
    maps = [normed[:, i * h * w:(i + 1) * h * w].transpose(1, 2).reshape(b, c, h, w)
            for i in range(tasks)]
    names = list(attn_mod.query_embed)
    q = torch.cat([attn_mod.query_embed[names[i]](maps[i]).flatten(2).transpose(1, 2)
                   for i in range(tasks)], dim=1)
    pooled = [F.avg_pool2d(m, attn_mod.kv_pool.kernel_size, attn_mod.kv_pool.stride,
                           ceil_mode=True) for m in maps]
    kv = torch.cat([p.flatten(2).transpose(1, 2) for p in pooled], dim=1)

    def split_heads(t):  # 'b t (h d) -> b h t d'
        return t.reshape(b, t.shape[1], heads, c // heads).permute(0, 2, 1, 3)

    q, k, v = split_heads(attn_mod.q(q)), split_heads(attn_mod.k(kv)), split_heads(attn_mod.v(kv))
    scores = torch.einsum("bhlk,bhtk->bhlt", q, k) * c ** -0.5
    sh, sw = previous_grid
    ups = []
    for i in range(tasks):  # 'b h (m n) a -> (b h) a m n', x2 bilinear, back
        part = previous[:, :, i * sh * sw:(i + 1) * sh * sw, :]
        keys = part.shape[-1]
        part = part.reshape(b * heads, sh, sw, keys).permute(0, 3, 1, 2)
        part = F.interpolate(part, scale_factor=2, mode="bilinear", align_corners=False)
        ups.append(part.permute(0, 2, 3, 1).reshape(b, heads, 4 * sh * sw, keys))
    message = torch.cat(ups, dim=2)
    if amp == "conv":
        fuse = attn_mod.amp.fuse
        fused = torch.einsum("oi,bi...->bo...", fuse.weight[:, :, 0, 0],
                             torch.cat([scores, message], dim=1)) + fuse.bias[None, :, None, None]
    else:
        fused = attn_mod.amp.alpha[0] * scores + attn_mod.amp.alpha[1] * message
    out = torch.einsum("bhlt,bhtv->bhlv", fused.softmax(-1), v)
    out = attn_mod.proj(out.permute(0, 2, 1, 3).reshape(b, -1, c))
    qh, qw = 2 * sh, 2 * sw
    back = [F.interpolate(out[:, i * qh * qw:(i + 1) * qh * qw].transpose(1, 2)
                          .reshape(b, c, qh, qw), size=(h, w), mode="bilinear",
                          align_corners=False).flatten(2).transpose(1, 2) for i in range(tasks)]
    y = tokens + torch.cat(back, dim=1)
    y = y + block.mlp(block.norm2(y))
    return [y[:, i * h * w:(i + 1) * h * w].transpose(1, 2).reshape(b, c, h, w)
            for i in range(tasks)], fused


@pytest.mark.parametrize("amp", ["conv", "scalars"])
def test_amp_equals_the_official_computation(amp):
    torch.manual_seed(0)
    tasks, dim, heads, grid = ["semseg", "depth", "edge"], 8, 2, (8, 12)
    block = InvPTTransformerBlock(tasks, dim, heads, kv_pool=4, amp=amp).eval()
    for p in block.parameters():  # away from the init, so every term matters
        torch.nn.init.normal_(p, 0.0, 0.3)
    x = {t: torch.randn(2, dim, *grid) for t in tasks}
    previous_grid = (2, 3)  # the stage before ran at 4x6: queries 2x3; keys 2x3 per task
    previous = torch.randn(2, heads, len(tasks) * 6, len(tasks) * 6)
    out, scores = block(x, previous)
    want, want_scores = official_block(block, [x[t] for t in tasks], previous, previous_grid, amp)
    torch.testing.assert_close(scores, want_scores, rtol=1e-4, atol=1e-5)
    for t, w in zip(tasks, want):
        torch.testing.assert_close(out[t], w, rtol=1e-4, atol=1e-5)
    # the message matters: other previous scores give other outputs
    other, _ = block(x, previous + torch.randn_like(previous))
    assert not torch.allclose(other["semseg"], out["semseg"])


def test_scores_are_scaled_by_the_stage_width_or_the_head_width():
    torch.manual_seed(0)
    official = InvPTTransformerBlock(["semseg"], 8, 2, 2, amp=None)
    paper = InvPTTransformerBlock(["semseg"], 8, 2, 2, amp=None, scale="head")
    assert official.attn.scale == pytest.approx(8 ** -0.5)
    assert paper.attn.scale == pytest.approx(4 ** -0.5)


# -- the official parameter breakdown ------------------------------------------------------------

# The official model (github.com/prismformore/Multi-Task-Transformer, InvPT/models/transformers/
# invpt.py and transformer_decoder.py) on NYUD, ViT-L/16 at 448x576, its submodules counted, without
# the 6,639,562 parameters it builds and never uses (scale_embed[2], redu_chan[0], stage-0
# fuse_attn, norm_mt).
OFFICIAL_PARTS = {
    "preliminary decoders": 56_635_392,
    "intermediate heads": 23_085,
    "scale_embed (used)": 9_290_736 - 5_308_992,
    "mix_proj": 1_207_872,
    "stage 0": 4_014_154 - 10,
    "stage 1": 9_974_314,
    "stage 2": 2_498_842,
    "norm_mts": 8_064,
    "redu_chan 1-2": 999_936,
    "mt_proj": 11_950_848,
    "final heads": 25_965,
}


def part_of(node: str, block: str) -> str:
    if node.startswith("pre.feature."):
        return "preliminary decoders"
    if node.startswith("pre.pred."):
        return "intermediate heads"
    if node.startswith("efa_map."):
        return "scale_embed (used)"
    if node.startswith("pre.mixed."):
        return "mix_proj"
    if node.startswith(("dec.y.", "dec.up.")):
        return f"stage {node.split('.')[2]}"
    if node.startswith("dec.norm."):
        return "norm_mts"
    if node.startswith("dec.fused."):
        return "redu_chan 1-2"
    if node.startswith("out.") and node.endswith(".proj"):
        return "mt_proj"
    if node.startswith("out.") and node.endswith(".logits"):
        return "final heads"
    return node


def test_decoder_parameters_equal_the_official_breakdown():
    graph = check_spec("invpt", tasks="nyud", input_size=(448, 576))  # no torch, no ViT-L
    parts: dict[str, int] = {}
    with torch.device("meta"):  # shapes only: no memory for the 91 M decoder weights
        for node in graph.ir.nodes:
            if node.block == "backbone":
                continue
            module = get_block(node.block).build(graph.calls[node.name])
            if n_params(module):
                key = part_of(node.name, node.block)
                parts[key] = parts.get(key, 0) + n_params(module)
    assert parts == OFFICIAL_PARTS
    # + ViT-L/16 at 448x576 (304,133,120) = 395,453,326 = 402,092,888 - 6,639,562 (dead)
    assert sum(parts.values()) + 304_133_120 == 402_092_888 - 6_639_562


# -- the compiled spec -----------------------------------------------------------------------------

def concrete(value_type, size):
    if isinstance(value_type, FeatureMap):
        return ("map", value_type.concrete(size))
    if isinstance(value_type, MultiScale):
        return ("list", [lv.concrete(size) for lv in value_type.levels])
    if isinstance(value_type, TaskMap):
        return ("dict", {k: concrete(v, size) for k, v in value_type.items.items()})
    if isinstance(value_type, AttentionMap):
        q, k = value_type.queries, value_type.keys
        return ("attn", (value_type.heads, q.groups * q.h.eval(*size) * q.w.eval(*size),
                         k.groups * k.h.eval(*size) * k.w.eval(*size)))
    raise TypeError(value_type)


def actual(value, kind):
    if kind == "map" or kind == "attn":
        return (kind, tuple(value.shape[1:]))
    if kind == "list":
        return (kind, [tuple(v.shape[1:]) for v in value])
    return ("dict", {k: actual(v, "map" if isinstance(v, torch.Tensor) else "dict")
                     for k, v in value.items()})


def assert_shapes_match_the_checker(model, size):
    seen = {}
    hooks = [module.register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(name, out))
        for name, module in model.node_modules().items()]
    try:
        with torch.no_grad(), model.fusion_off():  # each node's own module runs (hooks see it)
            outputs = model.eval()(torch.randn(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    for name, types in model.checked.types.items():
        if name == "images":
            continue
        outs = seen[name] if len(types) > 1 else (seen[name],)
        for t, o in zip(types, outs):
            want = concrete(t, size)
            assert actual(o, want[0]) == want, name
    return outputs


TASK_POOL = ["semseg", "human_parts", "sal", "normals", "depth", "edge"]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.generate])  # each example compiles a model: no shrinking
@given(tasks=st.lists(st.sampled_from(TASK_POOL), min_size=1, max_size=4, unique=True),
       h=st.sampled_from([32, 64, 96]), w=st.sampled_from([32, 64, 96]),
       stages=st.integers(1, 3))
def test_shapes_match_the_checker(tasks, h, w, stages):
    model = small_model({"stages": stages}, tasks=",".join(tasks), size=(h, w))
    outputs = assert_shapes_match_the_checker(model, (h, w))
    assert model.output_names == {t: ["final", "inter"] for t in tasks}
    for t in tasks:
        channels = model.profile.task(t).channels
        for name in ("final", "inter"):
            assert outputs[t][name].shape == (1, channels, h, w)


def test_attention_scores_are_a_graph_value(model):
    scores = {name: types[1] for name, types in model.checked.types.items()
              if name.startswith("dec.y.")}
    assert sorted(scores) == ["dec.y.0", "dec.y.1", "dec.y.2"]
    # 64x64 -> ViT grid 4x4 -> stages at 2x2, 4x4, 8x8; queries at half; keys pooled to 1x1
    for s, (name, a) in enumerate(sorted(scores.items())):
        assert isinstance(a, AttentionMap) and a.heads == 2
        assert (a.queries.groups, a.queries.h.eval(64, 64)) == (2, 2 ** s)
        assert (a.keys.groups, a.keys.h.eval(64, 64), a.keys.w.eval(64, 64)) == (2, 1, 1)
    nodes = {n.name: n for n in model.ir.nodes}
    assert nodes["dec.y.1"].inputs["attn"].node == "dec.y.0"
    assert nodes["dec.y.2"].inputs["attn"].node == "dec.y.1"
    assert nodes["dec.y.0"].inputs["attn"] is None  # stage 0 has no message and no fuse conv


def test_every_parameter_learns_from_final_and_intermediate_losses(model):
    assert model.idle_parameters == {}
    model.train().zero_grad()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"semseg", "depth"}
    assert all(set(o) == {"final", "inter"} for o in out.values())
    loss = sum(v.square().mean() for o in out.values() for v in o.values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_intermediate_output_is_the_preliminary_prediction(model):
    assert {o.task: o.value.node for o in model.ir.outputs if o.name == "inter"} == \
        {"semseg": "pre.pred.semseg", "depth": "pre.pred.depth"}


def efa_params(width: int, dims: list[int]) -> int:
    transposed = width * dims[2] * 9 + dims[2]  # block 6 -> stride 8
    conv = width * dims[1] * 9 + dims[1]  # block 12 -> stride 16
    return transposed + conv


def test_ablations_remove_exactly_their_modules(model):
    full = n_params(model)
    heads, tasks = 2, 2
    # AMP: one 1x1 conv (2*heads -> heads, bias) in stages 1 and 2
    assert full - n_params(small_model({"amp": False})) == 2 * (2 * heads * heads + heads)
    # EFA: the two encoder-feature embeddings
    assert full - n_params(small_model({"efa": False})) == efa_params(TEST_VIT_WIDTH, SMALL_DIMS)
    # Table 1 baseline MT: backbone, preliminary decoders, and a 1x1 prediction per task
    baseline = small_model(preset="baseline_mt")
    pre = sum(n_params(m) for n, m in model.node_modules().items() if n.startswith("pre.feature"))
    heads_1x1 = (32 + 1) * (5 + 1)
    assert n_params(baseline) == n_params(model.feats) + pre + heads_1x1
    assert baseline.output_names == {"semseg": ["final"], "depth": ["final"]}
    # the paper's AMP: two scalars per stage instead of the conv
    paper_amp = small_model({"amp_mode": "scalars"})
    assert full - n_params(paper_amp) == 2 * (2 * heads * heads + heads - 2)
    assert tasks == len(model.output_names)


def test_fewer_stages_drop_whole_stages(model):
    two = small_model({"stages": 2})
    assert not any(n.startswith(("dec.y.2", "dec.up.2", "efa_map.2"))
                   for n in two.node_modules())
    dropped = sum(n_params(m) for n, m in model.node_modules().items()
                  if n.startswith(("dec.y.2", "dec.up.2", "efa_map.2", "dec.norm.2")))
    dropped += 2 * (SMALL_DIMS[2] + 1) * SMALL_DIMS[0]  # stage 2's 1x1 projection per task
    assert n_params(model) - n_params(two) == dropped
    assert two.eval()(torch.randn(1, 3, 64, 64))["depth"]["final"].shape == (1, 1, 64, 64)


def test_paper_variant_compiles():
    paper = small_model(preset="paper")
    nodes = {n.name: n for n in paper.ir.nodes}
    assert nodes["dec.y.1"].params["amp"] == "scalars" and nodes["dec.y.1"].params["scale"] == "head"
    # stage 0 at the encoder grid (4x4 at 64x64), so stage 2 is at stride 4
    assert paper.checked.types["dec.y.2"][0].items["semseg"].concrete((64, 64)) == (12, 16, 16)
    out = paper(torch.randn(1, 3, 64, 64))
    assert out["semseg"]["final"].shape == (1, 5, 64, 64)


def test_odd_encoder_grid_is_a_shape_error(tmp_path):
    # The reference spec states the sides it takes (the official code pads NYUD to 448x576) ...
    with pytest.raises(SpecError) as err:
        check_spec("invpt", tasks=TASKS, overrides=SMALL, input_size=(48, 64))
    assert "multiples of 32" in str(err.value) and "--input 64x64" in str(err.value)
    # ... and the decoder blocks themselves refuse an odd encoder grid.
    spec = tmp_path / "odd.mtl"
    spec.write_text((ROOT / "specs" / "invpt.mtl").read_text().replace(
        "  input_multiple = 32", "  # no input_multiple"))
    with pytest.raises(SpecError) as err:
        check_spec(spec, tasks=TASKS, overrides=SMALL, input_size=(48, 64))
    text = str(err.value)
    assert "encoder-feature map" in text and "even grid" in text


def test_amp_between_stages_with_different_key_grids_is_an_error(tmp_path):
    spec = tmp_path / "bad.mtl"
    spec.write_text('import "invpt.mtl"\n'
                    'model bad() {\n'
                    '  feats = backbone("test_vit", levels = [6])\n'
                    '  x = invpt_decoder_input(feats)\n'
                    '  for t in tasks { c[t] = conv_bn_act(x, 48, kernel = 1) }\n'
                    '  d = invpt_decoder(c, use_efa = false, dims = [48, 24, 12], '
                    'kv_pools = [2, 2, 8])\n'
                    '  for t in tasks { out[t] = task_head(d[t], t, 48) }\n'
                    '}\n')
    with pytest.raises(SpecError) as err:
        check_spec(spec, tasks=TASKS, input_size=(64, 64))
    assert "attention message has keys" in str(err.value)


def test_hybrid_demt_invpt_trains_one_step():
    torch.manual_seed(0)
    model = compile_model("hybrid_demt_invpt", tasks="semseg:5,normals",
                          overrides={"backbone": "resnet18", "dim": 32}, input_size=(64, 64))
    assert model.idle_parameters == {}
    kinds = {n.block for n in model.ir.nodes}
    assert {"deformable_mixer", "invpt_transformer", "invpt_up_embed"} <= kinds
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01)
    before = [p.detach().clone() for p in params]
    out = model(torch.randn(2, 3, 64, 64))
    assert out["semseg"]["final"].shape == (2, 5, 64, 64)
    loss = sum(v.square().mean() for o in out.values() for v in o.values())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in params)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
