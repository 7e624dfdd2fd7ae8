"""ATRC's Context Pooling blocks against direct computations of their definitions, shape
predictions against the modules, and the parameter counts of the official head."""
from __future__ import annotations

import json
import math
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_call as _make_call
from mtl_dsl.blocks import REGISTRY, Call, ShapeError
from mtl_dsl.modules.atrc import (ContextFusion, GlobalContext, LabelContext, LocalContext,
                                  build_context, local_attention)
from mtl_dsl.tasks import PROFILES
from mtl_dsl.types import H, W, FeatureMap, TaskMap

SYNTHETIC = PROFILES["synthetic"]
KINDS = ["global", "local", "t_label", "s_label"]


def make_call(block: str, inputs: dict, tasks=SYNTHETIC.tasks, size=(32, 40), **params) -> Call:
    return _make_call(block, inputs, params, tasks=tasks, size=size)


def fmap(channels: int, stride: int = 4) -> FeatureMap:
    return FeatureMap(channels=channels, h=H.cdiv(stride), w=W.cdiv(stride))


def eval_shape(t: FeatureMap, size) -> tuple[int, ...]:
    return t.concrete(size)


# -- shapes -----------------------------------------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(task_names=st.lists(st.sampled_from(SYNTHETIC.task_names), min_size=1, max_size=4,
                           unique=True),
       kinds=st.lists(st.sampled_from(KINDS + ["none", "search"]), min_size=16, max_size=16),
       h=st.integers(9, 30), w=st.integers(9, 30), cin=st.integers(4, 12))
def test_head_shapes_follow_infer_for_random_task_sets(task_names, kinds, h, w, cin):
    """A head of CP blocks and fusions over a random task set and random context table: every
    module's output has the shape the block's ``infer`` predicts."""
    torch.manual_seed(0)
    tasks = [SYNTHETIC.task(t) for t in task_names]
    size = (4 * h - 3, 4 * w - 1)  # odd input sizes: the stride-4 maps round up
    hh, ww = -(-size[0] // 4), -(-size[1] // 4)
    feats = {t.name: torch.randn(2, cin, hh, ww) for t in tasks}
    aux = {t.name: torch.randn(2, t.aux_channels, hh, ww) for t in tasks}
    f_type = fmap(cin)
    for i, t in enumerate(tasks):
        contexts, context_types = {}, {}
        for j, s in enumerate(tasks):
            kind = kinds[(4 * i + j) % 16]
            if kind == "none":
                continue
            call = make_call("context_pool",
                             {"target": f_type, "source": f_type,
                              "target_aux": fmap(t.aux_channels), "source_aux": fmap(s.aux_channels)},
                             tasks, size, kind=kind, pair=[t.name, s.name])
            predicted = REGISTRY["context_pool"].infer(call)
            module = REGISTRY["context_pool"].build(call).train()
            out = module(feats[t.name], feats[s.name], aux[t.name], aux[s.name])
            assert tuple(out.shape) == (2, *eval_shape(predicted, size)), kind
            contexts[s.name], context_types[s.name] = out, predicted
        context_map = TaskMap(items=context_types) if contexts else None
        fuse_call = make_call("context_fusion", {"x": f_type, "contexts": context_map}, tasks, size)
        predicted = REGISTRY["context_fusion"].infer(fuse_call)
        fused = REGISTRY["context_fusion"].build(fuse_call)(feats[t.name], contexts or None)
        assert tuple(fused.shape) == (2, *eval_shape(predicted, size))


@pytest.mark.parametrize("kind,missing", [("t_label", "target_aux"), ("s_label", "source_aux")])
def test_label_context_without_its_aux_logits_is_an_error(kind, missing):
    call = make_call("context_pool", {"target": fmap(8), "source": fmap(8)}, kind=kind)
    with pytest.raises(ShapeError, match=missing):
        REGISTRY["context_pool"].infer(call)


def test_search_needs_the_pair_and_drops_s_label_on_the_diagonal():
    with pytest.raises(ShapeError, match="pair"):
        REGISTRY["context_pool"].infer(make_call("context_pool", {"target": fmap(8), "source": fmap(8),
                                                                  "target_aux": fmap(2)},
                                                 kind="search"))
    call = make_call("context_pool", {"target": fmap(8), "source": fmap(8), "target_aux": fmap(2)},
                     kind="search", pair=["sal", "sal"])
    REGISTRY["context_pool"].infer(call)  # the diagonal needs no source aux
    block = REGISTRY["context_pool"].build(call)
    assert block.candidate_names == ("none", "global", "local", "t_label")
    off = make_call("context_pool", {"target": fmap(8), "source": fmap(8), "target_aux": fmap(2)},
                    kind="search", pair=["sal", "edge"])
    with pytest.raises(ShapeError, match="source_aux"):
        REGISTRY["context_pool"].infer(off)


def test_mismatched_sizes_name_both_inputs():
    call = make_call("context_pool", {"target": fmap(8, 4), "source": fmap(8, 8)})
    with pytest.raises(ShapeError) as info:
        REGISTRY["context_pool"].infer(call)
    assert set(info.value.args_involved) == {"target", "source"}


# -- semantics --------------------------------------------------------------------------------------

def _randomise_bn(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics/affines so that a wrong projection order shows up."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_global_context_is_eq3_with_the_code_feature_maps():
    torch.manual_seed(0)
    block = GlobalContext(6, 5, 4)
    _randomise_bn(block)
    block.eval()
    target, source = torch.randn(2, 6, 5, 7), torch.randn(2, 5, 5, 7)
    out = block(target, source)
    # The code's feature maps: q, k = Conv-BN-ReLU, Conv-BN, softplus; v = Conv-BN-ReLU.
    q = F.softplus(block.query[1](block.query[0](target))).flatten(2)
    k = F.softplus(block.key[1](block.key[0](source))).flatten(2)
    v = torch.relu(block.value.bn(block.value.conv(source))).flatten(2)
    expected = torch.zeros_like(q)
    n = q.shape[2]
    for b in range(2):
        for i in range(n):
            sims = [(q[b, :, i] * k[b, :, j]).sum() for j in range(n)]
            numerator = sum(s * v[b, :, j] for j, s in enumerate(sims))
            expected[b, :, i] = numerator / max(sum(sims), 1e-12)
    torch.testing.assert_close(out.flatten(2), expected, rtol=1e-4, atol=1e-5)


def test_local_context_is_an_explicit_loop_over_the_zero_padded_window():
    torch.manual_seed(0)
    window = 9
    block = LocalContext(6, 5, 4, window=window)
    _randomise_bn(block)
    block.eval()
    target, source = torch.randn(1, 6, 6, 11), torch.randn(1, 5, 6, 11)
    out = block(target, source)
    q = block.query(target)[0]
    k = block.key(source)[0]
    v = block.value(source)[0]
    c, h, w = q.shape
    r = window // 2
    expected = torch.zeros_like(q)
    for y in range(h):
        for x in range(w):
            sims, values = [], []
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    sy, sx = y + dy, x + dx
                    inside = 0 <= sy < h and 0 <= sx < w
                    # outside the image: similarity 0 and value 0, still in the softmax
                    sims.append((q[:, y, x] * k[:, sy, sx]).sum() if inside else torch.tensor(0.0))
                    values.append(v[:, sy, sx] if inside else torch.zeros(c))
            weights = torch.softmax(torch.stack(sims) / math.sqrt(c), dim=0)
            expected[:, y, x] = (weights[:, None] * torch.stack(values)).sum(0)
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)


def test_local_attention_in_row_chunks_matches_one_chunk_with_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 13, 10, requires_grad=True) for _ in range(3))
    whole = local_attention(q, k, v, 5, chunk_elements=1 << 30)
    grads_whole = torch.autograd.grad(whole.square().sum(), (q, k, v))
    chunked = local_attention(q, k, v, 5, chunk_elements=2 * 3 * 25 * 10 * 3)  # 3 rows a chunk
    grads_chunked = torch.autograd.grad(chunked.square().sum(), (q, k, v))
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(grads_chunked, grads_whole):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("regions", ["target", "source"])
def test_label_context_is_an_explicit_prototype_attention(regions):
    torch.manual_seed(0)
    block = LabelContext(6, 5, 4, regions=regions)
    _randomise_bn(block)
    block.eval()
    target, source = torch.randn(2, 6, 4, 5), torch.randn(2, 5, 4, 5)
    target_aux, source_aux = torch.randn(2, 3, 4, 5), torch.randn(2, 7, 4, 5)
    out = block(target, source, target_aux, source_aux)
    logits = target_aux if regions == "target" else source_aux
    for b in range(2):
        r_count = logits.shape[1]
        prototypes = torch.zeros(5, r_count, 1)
        for r in range(r_count):
            density = torch.softmax(logits[b, r].flatten(), dim=0)  # over positions
            prototypes[:, r, 0] = (source[b].flatten(1) * density).sum(1)
        k = block.key(prototypes[None])[0].flatten(1)  # C x R
        v = block.value(prototypes[None])[0].flatten(1)
        q = block.query(target[b:b + 1])[0].flatten(1)  # C x N
        for i in range(q.shape[1]):
            weights = torch.softmax(q[:, i] @ k / math.sqrt(4), dim=0)
            torch.testing.assert_close(out[b].flatten(1)[:, i], v @ weights, rtol=1e-4, atol=1e-5)


def test_label_context_batchnorm_runs_over_prototypes_in_training():
    """BN of the key/value projections normalises over the B x R prototype 'pixels'."""
    block = LabelContext(4, 4, 4).train()
    out = block(torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), torch.randn(3, 6, 5, 5))
    assert out.shape == (3, 4, 5, 5)
    assert block.value.bn.num_batches_tracked.item() == 1


def test_fusion_starts_from_the_plain_features():
    """out_proj's BN is zero-initialised: at init the contexts do not change the fused input."""
    torch.manual_seed(0)
    fusion = ContextFusion(4, 6, dropout=0.0).eval()
    features = torch.randn(1, 4, 3, 3)
    a = fusion(features, {"x": torch.randn(1, 3, 3, 3), "y": torch.randn(1, 3, 3, 3)})
    b = fusion(features, {"x": torch.randn(1, 3, 3, 3), "y": torch.randn(1, 3, 3, 3)})
    torch.testing.assert_close(a, b)
    assert torch.count_nonzero(fusion.out_proj.bn.weight) == 0
    assert isinstance(ContextFusion(4, 0).dropout, torch.nn.Dropout2d)


def test_cp_convs_are_xavier_uniform():
    torch.manual_seed(0)
    conv = build_context("global", 64, 64, 32).value.conv
    bound = math.sqrt(6 / (64 + 32))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound


# -- parameter counts of the official head (NYUD-v2, HRNet18: C_in = 270) --------------------------

def _head_parameters(table: dict[str, dict[str, str]], search: bool = False) -> int:
    """The official head built from the blocks, as atrc.mtl composes them."""
    from mtl_dsl.modules.common import ConvBnAct

    profile = PROFILES["nyud"]
    cin, c = 270, 270 // 4
    tasks = profile.task_names
    needs_aux = {t for t in tasks for s in tasks if table[t][s] in ("t_label", "search")}
    needs_aux |= {s for t in tasks for s in tasks if table[t][s] in ("s_label", "search")}
    total = 0
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for t in tasks:
        spec = profile.task(t)
        total += count(ConvBnAct(cin, c, 3)) + count(torch.nn.Conv2d(c, spec.channels, 1))
        if t in needs_aux:
            total += count(ConvBnAct(cin, cin, 1)) + count(torch.nn.Conv2d(cin, spec.aux_channels, 1))
        n = 0
        for s in tasks:
            kind = table[t][s]
            if kind == "none":
                continue
            n += 1
            call = make_call("context_pool", {"target": fmap(c), "source": fmap(c),
                                              "target_aux": fmap(spec.aux_channels),
                                              "source_aux": fmap(profile.task(s).aux_channels)},
                             profile.tasks, profile.input_size, kind=kind, pair=[t, s])
            total += count(REGISTRY["context_pool"].build(call))
        total += count(ContextFusion(c, n * (c // 2)))
    return total


def _genotype(name: str) -> dict[str, dict[str, str]]:
    codes = {0: "none", 1: "global", 2: "local", 3: "t_label", 4: "s_label"}
    data = json.loads(resources.files("mtl_dsl.resources").joinpath(name).read_text())["data"]
    return {t: {s: codes[v] for s, v in row.items()} for t, row in data.items()}


@pytest.mark.parametrize("kind,expected", [("global", 873_452), ("local", 873_452),
                                           ("t_label", 1_200_274), ("s_label", 1_200_274),
                                           ("search", 1_598_594)])
def test_official_head_parameter_counts(kind, expected):
    tasks = PROFILES["nyud"].task_names
    assert _head_parameters({t: {s: kind for s in tasks} for t in tasks}) == expected


def test_shipped_nyud_genotype_head_parameter_count():
    assert _head_parameters(_genotype("atrc_nyud_hrnet18.json")) == 1_200_274
