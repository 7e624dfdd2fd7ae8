"""What blocks compute, by value, against the equations they implement: the mutations that shape,
count and gradient tests let through (a concat rule that assumes equal widths, a dropped
residual) fail here."""
from __future__ import annotations

import torch

from conftest import make_call
from mtl_dsl.api import compile_model
from mtl_dsl.blocks import REGISTRY
from mtl_dsl.modules.demt import DeformableMixer, TaskInteraction, TaskQuery, map_tokens, token_map
from mtl_dsl.types import H, W, FeatureMap, TaskMap


def fmap(channels: int) -> FeatureMap:
    return FeatureMap(channels=channels, h=H.cdiv(4), w=W.cdiv(4))


def test_concat_of_unequal_widths_predicts_and_computes_their_sum():
    block = REGISTRY["concat"]
    for inputs, widths in (({"a": fmap(3), "b": fmap(5)}, (3, 5)),
                           ({"a": fmap(2), "b": fmap(7), "c": fmap(4)}, (2, 7, 4)),
                           ({"a": TaskMap(items={"semseg": fmap(6), "depth": fmap(1)})}, (6, 1))):
        call = make_call("concat", inputs, size=(32, 40))
        assert block.infer(call).channels == sum(widths)
        module = block.build(call)
        maps = [torch.randn(2, c, 8, 10) for c in widths]
        args = ({"semseg": maps[0], "depth": maps[1]},) if "semseg" in str(inputs) else maps
        out = module(*args)
        assert out.shape == (2, sum(widths), 8, 10)
        assert torch.equal(out, torch.cat(maps, 1))


def test_concat_of_unequal_widths_compiles_to_the_predicted_width(tmp_path):
    spec = tmp_path / "cat.mtl"
    spec.write_text("model cat() {\n  a = conv_bn_act(images, 3, stride = 4)\n"
                    "  b = conv_bn_act(images, 5, stride = 4)\n"
                    "  for t in tasks {\n    out[t] = dense_head(concat(a, b), task = t, width = 2)\n"
                    "  }\n}\n")
    model = compile_model(spec, tasks="depth", input_size=(16, 16))
    assert model.out.depth.bottleneck.conv.weight.shape == (2, 8, 3, 3)
    model(torch.randn(1, 3, 16, 16))


def test_deformable_mixer_adds_its_deformable_branch_to_the_channel_mix():
    """Paper eqs. 2-5: x' = BN(GELU(conv1x1(x))); out = x' + BN(GELU(deform(x')))."""
    torch.manual_seed(0)
    mixer = DeformableMixer(6).eval()
    for bn in (mixer.channel_mix[2], mixer.spatial[2]):  # non-trivial BN statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5, 7)
    mixed = mixer.channel_mix(x)
    branch = mixer.spatial(mixed)
    assert branch.abs().mean() > 1e-3 and mixed.abs().mean() > 1e-3  # both terms matter
    assert torch.allclose(mixer(x), mixed + branch, atol=1e-6)


def test_task_query_adds_its_attention_to_the_query_and_interaction_has_no_residual():
    """DeMT eqs. 10-12: out = q + sMLP(attn(q, K)); eqs. 7-9: interaction = sMLP(attn(X, X))."""
    torch.manual_seed(1)
    query = TaskQuery(8, 2, "tasks").eval()
    q = torch.randn(2, 8, 3, 4)
    keys = {t: torch.randn(2, 8, 3, 4) for t in ("semseg", "depth")}
    tokens = map_tokens(q)
    stacked = torch.stack([map_tokens(m) for m in keys.values()], 1)
    attended = query.smlp(query.task_query(tokens, stacked))
    assert attended.abs().mean() > 1e-3
    assert torch.allclose(query(q, keys), token_map(tokens + attended, 3, 4), atol=1e-5)

    inter = TaskInteraction(8, 2, "self").eval()
    out = inter(keys)
    for t, m in keys.items():
        expected = token_map(inter.smlp(inter.task_fusion.out_proj(inter.task_fusion.v_proj(
            map_tokens(m)))), 3, 4)
        assert torch.allclose(out[t], expected, atol=1e-5)


def test_compiled_demt_decoder_keeps_both_residuals():
    """The compiled spec wires the residuals in: zeroing a task-query's attention output leaves
    exactly its query (the mixer's output) as that node's result."""
    torch.manual_seed(2)
    model = compile_model("demt", tasks="semseg:3,depth", input_size=(32, 32),
                          overrides={"backbone": "resnet18", "dim": 8, "heads": 2},
                          fuse=False).eval()  # each node's own module runs (hooks see it)
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, (i, o))) for n in ("q.q.depth", "d.d.depth.m.0")]
    q = model.get_submodule("q.q.depth")
    with torch.no_grad():
        q.smlp[0].weight.zero_()
        q.smlp[0].bias.zero_()
        q.smlp[1].weight.zero_()
        q.smlp[1].bias.zero_()
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    query_in, query_out = seen["q.q.depth"]
    assert torch.allclose(query_out, query_in[0], atol=1e-6)
    assert torch.equal(query_in[0], seen["d.d.depth.m.0"][1])  # the query is the mixer's output
