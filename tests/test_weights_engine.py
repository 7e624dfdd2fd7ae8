"""The name-correspondence engine: block layouts, the plan (by name only, longest prefix, every
official tensor once), and the tensor operations a layout may ask for, each checked against the
module it describes."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mtl_dsl.ir import SourceLoc, WeightRule
from mtl_dsl.weights.layout import SPLIT, UNFOLD_ORDER, Alias, multihead_attention, resolve
from mtl_dsl.weights.plan import make_plan, select
from mtl_dsl.weights.tensors import materialize, swin_to_unfold_order, unfold_to_swin_order

LOC = SourceLoc(file="test.mtl", line=3, column=5)


def entry(official: str, target: str | None, reason: str = "", via=()) -> WeightRule:
    return WeightRule(official=official, target=target, reason=reason, via=list(via), loc=LOC)


# -- layouts ----------------------------------------------------------------------------------------

def test_alias_captures_integers_and_shifts_them_in_the_template():
    alias = Alias("stages.{s}.downsample.norm", ("body.layers_{s+1}.downsample.norm",))
    assert alias.match("stages.2.downsample.norm.weight") == ["body.layers_3.downsample.norm.weight"]
    assert alias.match("stages.x.downsample.norm.weight") is None
    assert alias.match("stages.2.downsample") is None
    assert Alias("a.{k}.b", ("c.{k-1}",)).match("a.1.b") == ["c.0"]


def test_alias_matches_whole_components_only():
    alias = Alias("fc_s.fc1", ("fc_s.1",))
    assert alias.match("fc_s.fc1.weight") == ["fc_s.1.weight"]
    assert alias.match("fc_s.fc10.weight") is None
    assert alias.match("fc_s.fc") is None


def test_first_alias_wins_so_an_unused_buffer_can_precede_its_module():
    layout = (Alias("3.fn.0.offset", reason="never read"), Alias("3.fn.0", ("spatial.0",)))
    assert resolve(layout, "3.fn.0.offset")[1] == []
    assert resolve(layout, "3.fn.0.weight")[1] == ["spatial.0.weight"]
    assert resolve(layout, "9.weight") is None


def test_alias_refuses_incoherent_declarations():
    with pytest.raises(ValueError, match="needs a reason"):
        Alias("x")
    with pytest.raises(ValueError, match="two or more"):
        Alias("x", ("a",), SPLIT)
    with pytest.raises(ValueError, match="op 'split'"):
        Alias("x", ("a", "b"))
    with pytest.raises(ValueError, match="unknown weight op"):
        Alias("x", ("a",), "transpose")
    with pytest.raises(ValueError, match="does not capture"):
        Alias("x", ("a.{n}",)).match("x")


# -- the plan ---------------------------------------------------------------------------------------

def test_longest_prefix_decides_and_the_rest_of_the_name_is_carried_over():
    entries = [entry("head", "h"), entry("head.special", "s.inner"),
               entry("head.special.skip", None, "not needed")]
    official = {"head.a.weight": (2,), "head.special.weight": (3,), "head.special.skip.x": (1,)}
    model = {"h.a.weight": (2,), "s.inner.weight": (3,)}
    plan = make_plan("official", entries, official, model, {"h": (), "s": ()})
    assert [(t.official, t.ours) for t in plan.transfers] == [
        ("head.a.weight", ("h.a.weight",)), ("head.special.weight", ("s.inner.weight",))]
    assert plan.unused == {"head.special.skip.x": "not needed"}
    assert not plan.problems(allow_partial=False)


def test_same_shape_tensors_are_never_matched_by_order_or_shape():
    # Two 4x4 projections whose names do not correspond: nothing goes anywhere.
    entries = [entry("head.q", "att.q_proj")]
    official = {"head.q.weight": (4, 4), "head.k.weight": (4, 4)}
    model = {"att.q_proj.weight": (4, 4), "att.k_proj.weight": (4, 4)}
    plan = make_plan("official", entries, official, model, {"att": ()})
    assert [t.ours for t in plan.transfers] == [("att.q_proj.weight",)]
    assert plan.outside == ["head.k.weight"]
    assert plan.missing == ["att.k_proj.weight"]
    problems = plan.problems(allow_partial=False)
    assert "1 official tensor not in the map 'official'" in problems[0]
    assert "att.k_proj.weight" in problems[1] and "--allow-partial" in problems[1]
    assert plan.problems(allow_partial=True) == [problems[0]]


def test_a_shape_mismatch_names_both_tensors_and_both_shapes():
    plan = make_plan("official", [entry("head.logits", "out.logits")],
                     {"head.logits.weight": (40, 67, 1, 1)}, {"out.logits.weight": (21, 67, 1, 1)},
                     {"out": ()})
    assert plan.problems(False)[0] == ("shape mismatch: official head.logits.weight [40, 67, 1, 1] "
                                       "-> model out.logits.weight [21, 67, 1, 1]")


def test_two_entries_claiming_one_official_prefix_are_an_error():
    plan = make_plan("official", [entry("backbone", "net.a.feats"), entry("backbone", "net.b.feats")],
                     {"backbone.w": (1,)}, {"net.a.feats.w": (1,), "net.b.feats.w": (1,)},
                     {"net.a.feats": (), "net.b.feats": ()})
    assert "claimed by two entries: test.mtl:3 and test.mtl:3" in plan.problems(True)[0]


def test_an_entry_pointing_at_no_model_tensor_is_named():
    plan = make_plan("official", [entry("head.x", "out.y")], {"head.x.weight": (1,)},
                     {"out.z.weight": (1,)}, {"out": ()})
    assert plan.unresolved == ["head.x.weight -> out.y.weight: the model has no tensor of that "
                               "name (test.mtl:3)"]


def test_the_node_layout_renames_splits_and_drops():
    layouts = {"f": multihead_attention("att") + (Alias("buf", reason="a constant"),)}
    official = {"head.att.in_proj_weight": (12, 4), "head.att.in_proj_bias": (12,),
                "head.att.out_proj.weight": (4, 4), "head.buf": (3,)}
    model = {f"f.att.{p}_proj.weight": (4, 4) for p in "qkvo"} | \
        {f"f.att.{p}_proj.bias": (4,) for p in "qkv"}
    model["f.att.out_proj.weight"] = model.pop("f.att.o_proj.weight")
    plan = make_plan("official", [entry("head", "f")], official, model, layouts)
    assert not plan.problems(False)
    split = next(t for t in plan.transfers if t.official == "head.att.in_proj_weight")
    assert split.ours == ("f.att.q_proj.weight", "f.att.k_proj.weight", "f.att.v_proj.weight")
    assert split.op == SPLIT and plan.unused == {"head.buf": "a constant"}


def test_a_split_checks_the_stacked_shape():
    layouts = {"f": multihead_attention("att")}
    model = {f"f.att.{p}_proj.weight": (4, 4) for p in "qkv"}
    plan = make_plan("official", [entry("h", "f")], {"h.att.in_proj_weight": (12, 5)}, model, layouts)
    assert "it holds 3 tensors stacked along dim 0" in plan.problems(True)[0]


def test_optional_official_tensors_keep_ours_without_counting_as_missing():
    layouts = {"c": (Alias("fixed_weights", ("frozen",), optional=True, reason="once frozen"),
                     Alias("arch_param", ("arch_logits",)))}
    model = {"c.frozen": (4,), "c.arch_logits": (4,)}
    plan = make_plan("official", [entry("cp", "c")], {"cp.arch_param": (4,)}, model, layouts)
    assert not plan.problems(False) and plan.kept_optional == ["c.frozen"]
    plan = make_plan("official", [entry("cp", "c")], {"cp.arch_param": (4,), "cp.fixed_weights": (4,)},
                     model, layouts)
    assert sorted(n for t in plan.transfers for n in t.ours) == ["c.arch_logits", "c.frozen"]


def test_a_part_selects_its_entries_and_only_its_tensors_must_be_given():
    entries = [entry("head.enc", "d", via=["demt"]), entry("head.dec", "y", via=["tpanet"])]
    chosen = select(entries, "demt")
    assert [e.target for e in chosen] == ["d"]
    official = {"head.enc.w": (2,), "head.other.w": (2,)}
    model = {"d.w": (2,), "y.w": (2,), "feats.w": (2,)}
    plan = make_plan("official", chosen, official, model, {"d": (), "y": (), "feats": ()}, scoped=True)
    assert plan.missing == [] and plan.outside == ["head.other.w"]
    assert not plan.problems(allow_partial=False)


# -- tensor operations, checked against the modules they describe ---------------------------------

def test_split_in_proj_reproduces_nn_multihead_attention():
    from mtl_dsl.modules.demt import TokenAttention

    torch.manual_seed(0)
    official = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = TokenAttention(8, 2, "all").eval()
    layouts = {"a": multihead_attention("mha")}
    state = {f"mha.{k}": v for k, v in official.state_dict().items()}
    model_state = {f"a.mha.{k}": v for k, v in ours.state_dict().items()}
    plan = make_plan("official", [entry("", "a")], {k: tuple(v.shape) for k, v in state.items()},
                     {k: tuple(v.shape) for k, v in model_state.items()}, layouts)
    assert not plan.problems(False)
    converted = materialize(plan, state, model_state)
    ours.load_state_dict({k[len("a.mha."):]: v for k, v in converted.items()})
    query, context = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    expected, _ = official(query, context, context)
    assert torch.allclose(ours(query, context.unsqueeze(1)), expected, atol=1e-6)


class UnfoldPatchMerging(nn.Module):
    """mmsegmentation's PatchMerging: nn.Unfold(2, stride 2) (channel-major), LayerNorm, Linear."""

    def __init__(self, channels: int):
        super().__init__()
        self.sampler = nn.Unfold(kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(4 * channels)
        self.reduction = nn.Linear(4 * channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: B, H, W, C
        b, h, w, _ = x.shape
        x = self.sampler(x.permute(0, 3, 1, 2)).transpose(1, 2)
        return self.reduction(self.norm(x)).reshape(b, h // 2, w // 2, -1)


def test_unfold_order_reproduces_mmseg_patch_merging_in_timms():
    from timm.models.swin_transformer import PatchMerging

    torch.manual_seed(0)
    mmseg = UnfoldPatchMerging(6).eval()
    with torch.no_grad():
        mmseg.norm.weight.uniform_(0.5, 1.5)
        mmseg.norm.bias.normal_()
    timm_merge = PatchMerging(6).eval()
    official = {f"ds.{k}": v for k, v in mmseg.state_dict().items()}
    layouts = {"m": (Alias("ds.reduction", ("reduction",), UNFOLD_ORDER),
                     Alias("ds.norm", ("norm",), UNFOLD_ORDER))}
    model_state = {f"m.{k}": v for k, v in timm_merge.state_dict().items()}
    plan = make_plan("official", [entry("", "m")], {k: tuple(v.shape) for k, v in official.items()},
                     {k: tuple(v.shape) for k, v in model_state.items()}, layouts)
    assert not plan.problems(False)
    timm_merge.load_state_dict({k[2:]: v for k, v in materialize(plan, official, model_state).items()})
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(timm_merge(x), mmseg(x), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3))
def test_unfold_order_permutation_round_trips(channels, lead):
    x = torch.randn(lead, 4 * channels)
    y = unfold_to_swin_order(x)
    assert torch.equal(swin_to_unfold_order(y), x)
    assert sorted(y[0].tolist()) == sorted(x[0].tolist())
    if channels > 1:
        assert not torch.equal(y, x)


def test_materialize_casts_half_precision_to_the_model_dtype():
    plan = make_plan("official", [entry("w", "m.w")], {"w": (3,)}, {"m.w": (3,)}, {"m": ()})
    for dtype in (torch.float16, torch.bfloat16):
        value = torch.tensor([1.5, -2.25, 3.0], dtype=dtype)
        out = materialize(plan, {"w": value}, {"m.w": torch.zeros(3)})
        assert out["m.w"].dtype == torch.float32 and out["m.w"].tolist() == [1.5, -2.25, 3.0]
