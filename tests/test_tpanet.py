"""TPANet: the blocks against explicit computations, the released head's parameter breakdown, the
spatial MLP sized by the input size, and the compiled reference spec (shapes, gradients, idle
parameters, ablations)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import compile_model
from mtl_dsl.modules.tpanet import AdaptiveTaskMixing, CrossAttention, SharedMlp
from mtl_dsl.tasks import KNOWN_TASKS, PROFILES
from mtl_dsl.types import TaskMap
from conftest import assert_batch_independent, n_params
from test_demt import (TINY, attention_params, build, count, head_params,
                       params_without_gradient, randomise_norms, run_and_check_shapes, stride4,
                       summed_loss, task_string)

NYUD = PROFILES["nyud"]


# -- the released head's parameters (NYUD, HRNet18 features C_in = 270) ---------------------------
# Each submodule of the released AdaptHead (github.com/yangyangxu0/TPANet,
# src/model/heads/adapthead.py) counted.

def test_head_parameters_equal_the_released_breakdown():
    features = stride4(270)
    x = stride4(108)
    prior = build("task_prior_extractor", {"x": features}, {"dim": 108})
    priors = TaskMap(items={t.name: x for t in NYUD.tasks})
    mixing = build("adaptive_task_mixing", {"x": priors}, {})
    cross = [build("tpanet_cross_attention", {"x": x, "prior": x}, {}) for _ in NYUD.tasks]
    mlp = build("tpanet_mlp", {"x": priors}, {})
    heads = [build("ratio_head", {"x": x, "features": features}, {"task": t.name, "ratio": 4})
             for t in NYUD.tasks]
    measured = {
        "specific_tasks": n_params(prior.specific_tasks),
        "inject_prior": n_params(prior.inject_prior),
        "adapt_task_mixing": n_params(mixing),
        "fc_s": n_params(mixing.fc_s),
        "fc_c": n_params(mixing.fc_c),
        "LN_a": n_params(mixing.norm),
        "cross_atts": sum(map(n_params, cross)),
        "mlp": n_params(mlp.mlp),
        "norm2": n_params(mlp.norm2),
        "bottleneck": sum(n_params(h.bottleneck) for h in heads),
        "final_logits": sum(n_params(h.final_logits) for h in heads),
    }
    assert measured == {"specific_tasks": 58_752, "inject_prior": 14_688,
                        "adapt_task_mixing": 630_507, "fc_s": 254_667, "fc_c": 374_976,
                        "LN_a": 864, "cross_atts": 188_352, "mlp": 47_196, "norm2": 216,
                        "bottleneck": 261_032, "final_logits": 3_060}
    head = (measured["specific_tasks"] + measured["inject_prior"] + measured["adapt_task_mixing"]
            + measured["cross_atts"] + measured["mlp"] + measured["norm2"]
            + measured["bottleneck"] + measured["final_logits"])
    assert head == 1_203_803
    assert heads[0].bottleneck[0].out_channels == 270 // 4


@pytest.mark.parametrize("size, positions, hidden", [((425, 560), 14_980, 7),
                                                     ((512, 512), 16_384, 8),
                                                     ((64, 64), 256, 256),
                                                     ((128, 160), 1_280, 1_280),
                                                     ((180, 180), 2_025, 1)])
def test_spatial_mlp_width_follows_the_input_size(size, positions, hidden):
    x = stride4(8)
    mixing = build("adaptive_task_mixing", {"x": TaskMap(items={"depth": x, "edge": x})}, {},
                   size=size)
    assert mixing.fc_s[1].in_features == positions and mixing.fc_s[1].out_features == hidden
    assert mixing.fc_s[0].normalized_shape == (positions,)


def test_spatial_mlp_refuses_another_input_size():
    mixing = AdaptiveTaskMixing(4, 2, positions=12)
    with pytest.raises(ValueError, match="compile the model for this input size"):
        mixing({"depth": torch.randn(1, 4, 4, 4), "edge": torch.randn(1, 4, 4, 4)})


def test_adaptive_task_mixing_equals_the_released_equations():
    torch.manual_seed(0)
    mixing = AdaptiveTaskMixing(3, 2, positions=12, ratio=0.25)
    with torch.no_grad():
        for p in mixing.parameters():
            p.normal_()
    maps = {"depth": torch.randn(2, 3, 3, 4), "edge": torch.randn(2, 3, 3, 4)}
    out = mixing(maps)
    x = torch.cat([maps["depth"], maps["edge"]], 1).flatten(2).transpose(1, 2)  # (B, S, T*D)
    x = x + mixing.fc_s(mixing.norm(x).transpose(1, 2)).transpose(1, 2)
    x = x + mixing.fc_c(mixing.norm(x))  # the same LayerNorm again
    y = x.transpose(1, 2).reshape(2, 6, 3, 4)
    assert torch.allclose(out["depth"], y[:, :3], atol=1e-5)
    assert torch.allclose(out["edge"], y[:, 3:], atol=1e-5)


def test_cross_attention_at_one_key_is_twice_the_value_projection():
    torch.manual_seed(1)
    cross = CrossAttention(8, 2, "self")
    f, p = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5)
    ft = f.flatten(2).transpose(1, 2)
    expected = p + f + 2 * cross.attn.out_proj(cross.attn.v_proj(ft)).transpose(1, 2).reshape(2, 8, 3, 5)
    assert torch.allclose(cross(f, p), expected, atol=1e-5)


def test_shared_mlp_is_one_module_for_all_tasks():
    torch.manual_seed(2)
    mlp = SharedMlp(6)
    maps = {"depth": torch.randn(1, 6, 2, 2), "edge": torch.randn(1, 6, 2, 2)}
    out = mlp(maps)
    for t, m in maps.items():
        x = m.flatten(2).transpose(1, 2)
        y = (x + mlp.mlp(mlp.norm2(x))).transpose(1, 2).reshape(1, 6, 2, 2)
        assert torch.allclose(out[t], y, atol=1e-6)


# -- the compiled reference spec -----------------------------------------------------------------

# Explicit examples covering every pair of variant, ablation and attention (6 cases instead of 12).
PAIRWISE = [("official", "tpe", "self"), ("paper", "tpe", "all"), ("official", "tpe+atm", "all"),
            ("paper", "tpe+atm", "self"), ("official", "tpe+atm+ca", "self"),
            ("paper", "tpe+atm+ca", "all")]


def every_pair_of_options(test):
    for i, (variant, modules, over) in enumerate(PAIRWISE):
        tasks = (["semseg"], ["depth", "edge"], ["semseg", "normals", "sal"])[i % 3]
        test = example(tasks=tasks, h=33 + i, w=40 - i, heads=(1, 2, 3)[i % 3], per_head=2,
                       variant=variant, modules=modules, over=over)(test)
    return test


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking a model is slow
@every_pair_of_options
@given(tasks=st.lists(st.sampled_from(KNOWN_TASKS), min_size=1, max_size=3, unique=True),
       h=st.integers(32, 56), w=st.integers(32, 56), heads=st.sampled_from([1, 2, 3]),
       per_head=st.integers(1, 3), variant=st.sampled_from(["official", "paper"]),
       modules=st.sampled_from(["tpe", "tpe+atm", "tpe+atm+ca"]),
       over=st.sampled_from(["self", "all"]))
def test_compiled_shapes_gradients_and_idle_parameters(tasks, h, w, heads, per_head, variant,
                                                       modules, over):
    torch.manual_seed(0)
    dim = 2 * heads * per_head  # the released grouped convolutions need an even width
    model = compile_model("tpanet", tasks=task_string(tasks), input_size=(h, w), overrides={
        "backbone": TINY, "dim": dim, "heads": heads, "variant": variant, "modules": modules,
        "over": over})
    model.train()
    randomise_norms(model)
    summed_loss(run_and_check_shapes(model, torch.randn(2, 3, h, w))).backward()
    assert params_without_gradient(model) == set(model.idle_parameters)
    expected = set()
    if modules == "tpe+atm+ca" and over == "self":
        expected = {f"y.a.{t}.attn.{p}.{q}" for t in tasks for p in ("q_proj", "k_proj")
                    for q in ("weight", "bias")}
    assert set(model.idle_parameters) == expected


def test_compiled_model_is_batch_independent():
    torch.manual_seed(3)
    for over in ("self", "all"):
        model = compile_model("tpanet", tasks="semseg:3,depth", input_size=(32, 40),
                              overrides={"backbone": TINY, "dim": 8, "over": over}).eval()
        assert_batch_independent(model, torch.randn(3, 3, 32, 40), 1, 2)


def tpe_params(cin: int, d: int, tasks: int, groups: int = 2, bn: bool = False) -> int:
    return (tasks + 1) * (cin * d // groups + d + (2 * d if bn else 0))


def atm_params(positions: int, d: int, tasks: int, ratio: float = 0.0005) -> int:
    hidden = int(positions * ratio) or positions  # the released Mlp: int(hidden) or in_features
    width = tasks * d
    spatial = 2 * positions + positions * hidden + hidden + hidden * positions + positions
    return 2 * width + spatial + 2 * width + 2 * (width * width + width)


def shared_mlp_params(d: int) -> int:
    return 2 * d + 2 * d + (d * 2 * d + 2 * d) + (2 * d * d + d)


def tiny(overrides: dict, tasks: str = "semseg:3,depth,normals", size=(32, 32)):
    return compile_model("tpanet", tasks=tasks, input_size=size,
                         overrides={"backbone": TINY, "dim": 12, **overrides})


def test_ablations_change_the_parameters_by_the_removed_modules():
    d, t, channels = 12, 3, [3, 1, 3]
    full, no_ca, tpe = tiny({}), tiny({"modules": "tpe+atm"}), tiny({"modules": "tpe"})
    assert count(full) - count(no_ca) == t * attention_params(d) + shared_mlp_params(d)
    assert count(no_ca) - count(tpe) == atm_params(8 * 8, d, t)
    assert count(tpe) - count(tpe, "feats") == tpe_params(960, d, t) + head_params(960, d, channels, 4)
    # the paper's Conv + BN prior extractor: ungrouped, with BatchNorm, in all T + 1 branches
    assert count(tiny({"variant": "paper"})) - count(full) == (
        tpe_params(960, d, t, 1, True) - tpe_params(960, d, t))


@pytest.mark.parametrize("levels, cin, stride", [([4], 512, 32), ([3, 4], 768, 16),
                                                 ([2, 3, 4], 896, 8)])
def test_scales_set_the_width_and_the_grid_of_the_head(levels, cin, stride):
    size = (128, 96)
    model = tiny({"levels": levels, "modules": "tpe+atm"}, size=size)
    positions = (size[0] // stride) * (size[1] // stride)
    assert count(model) - count(model, "feats") == (
        tpe_params(cin, 12, 3) + atm_params(positions, 12, 3) + head_params(cin, 12, [3, 1, 3], 4))


def test_official_totals_on_nyud():
    """The released AdaptHead (github.com/yangyangxu0/TPANet) with HRNet18: 5,064,523 (TPANet's
    Table 1 prints 5.18 M); the paper's Conv+BN priors (section 3, eqs. 1-2): 5,138,503."""
    model = compile_model("tpanet", tasks="nyud", preset="hrnet18")
    assert (count(model), count(model, "feats")) == (5_064_523, 3_860_720)
    paper = compile_model("tpanet", tasks="nyud", preset="hrnet18", overrides={"variant": "paper"})
    assert count(paper) == 5_138_503


def test_pascal_builds_the_spatial_mlp_for_its_grid():
    model = compile_model("tpanet", tasks="pascal", preset="hrnet18")
    fc_s = model.get_submodule("y.f").fc_s
    assert (fc_s[1].in_features, fc_s[1].out_features) == (16_384, 8)
