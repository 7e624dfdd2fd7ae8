"""The reference specs' weights maps hold for every task set and size they accept: official
state_dicts written from the official naming scheme (``official_names``, anchored below to the
official code's own key lists) convert with every official tensor used exactly once or listed as
never used, every shape agreeing and every model tensor given a value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import official_names as on
from mtl_dsl.api import compile_model
from mtl_dsl.tasks import resolve_tasks
from mtl_dsl.weights.convert import plan_for
from mtl_dsl.weights.files import OfficialWeights
from mtl_dsl.weights.tensors import materialize

RESOURCES = Path(__file__).resolve().parents[1] / "mtl_dsl" / "resources"
OFFSET = "DeMT's `offset` buffer: filled from the kernel size at construction, never read by the forward"
CUSTOM = "semseg:13,depth,normals"


def genotype(name: str) -> dict:
    return json.loads((RESOURCES / f"{name}.json").read_text())["data"]


def uniform_genotype(tasks: list[str], code: int) -> dict:
    return {t: {s: code for s in tasks} for t in tasks}


# -- the maps, spec by spec ---------------------------------------------------------------------

def plan(spec: str, tasks: str, official: on.Shapes, map_name: str = "official", **kwargs):
    with torch.device("meta"):
        model = compile_model(spec, tasks=tasks, **kwargs)
    weights = OfficialWeights(path=Path("official.pth"), tensors=on.meta_state(official),
                              format="torch")
    return model, plan_for(model, weights, map_name)


def assert_complete(model, plan, official: on.Shapes, unused: dict[str, str],
                    optional: list[str] = ()) -> None:
    assert plan.problems(allow_partial=False) == []
    used = [t.official for t in plan.transfers]
    assert len(used) == len(set(used))  # each official tensor once
    assert sorted(used + list(plan.unused)) == sorted(official)
    assert plan.unused == unused
    assert sorted(plan.kept_optional) == sorted(optional)
    assert plan.loaded | set(plan.kept_optional) == set(model.state_dict())


def _profile(tasks: str, size=None):
    profile = resolve_tasks(tasks)
    return profile, size or profile.input_size


@pytest.mark.parametrize("tasks", ["nyud", "pascal", CUSTOM])
def test_baseline_mt(tasks):
    profile, _ = _profile(tasks)
    official = {**on.hrnet18_backbone(), **on.fcn_head(profile, 270)}
    model, p = plan("baseline_mt", tasks, official)
    assert_complete(model, p, official, {})


@pytest.mark.parametrize("tasks", ["semseg:40", "normals"])
def test_baseline_st_single_task_checkpoints(tasks):
    profile, _ = _profile(tasks)
    official = {**on.hrnet18_backbone(), **on.fcn_head(profile, 270)}
    model, p = plan("baseline_st", tasks, official)
    assert_complete(model, p, official, {})


@pytest.mark.parametrize("tasks", ["nyud", "pascal", CUSTOM])
def test_demt(tasks):
    profile, _ = _profile(tasks)
    official = {**on.hrnet18_backbone(), **on.demt_head(profile, 270, 128)}
    model, p = plan("demt", tasks, official)
    offsets = {f"head.defor_mixers.{i}.blocks.0.3.fn.0.offset": OFFSET
               for i in range(len(profile.tasks))}
    assert_complete(model, p, official, offsets)


@pytest.mark.parametrize("tasks, size", [("nyud", (425, 560)), ("pascal", (512, 512)),
                                         (CUSTOM, (425, 560))])
def test_tpanet(tasks, size):
    profile, _ = _profile(tasks)
    positions = -(-size[0] // 4) * -(-size[1] // 4)
    official = {**on.hrnet18_backbone(), **on.tpanet_head(profile, 270, positions)}
    model, p = plan("tpanet", tasks, official, input_size=size)
    assert_complete(model, p, official, {})


@pytest.mark.parametrize("tasks", ["nyud", "pascal", CUSTOM])
def test_atrc_search_supergraph(tasks):
    profile, _ = _profile(tasks)
    official = {**on.hrnet18_backbone(), **on.atrc_search_head(profile, 270)}
    model, p = plan("atrc", tasks, official)
    # the official file stores `fixed_weights` only once a block froze: ours stay "not frozen"
    frozen = [f"res.c.{t}.{s}.frozen" for t in profile.task_names for s in profile.task_names]
    assert_complete(model, p, official, {}, optional=frozen)


@pytest.mark.parametrize("preset, code", [("global", 1), ("local", 2), ("t_label", 3),
                                          ("s_label", 4)])
def test_atrc_single_context_heads(preset, code):
    profile, _ = _profile("nyud")
    official = {**on.hrnet18_backbone(),
                **on.atrc_head(profile, 270, uniform_genotype(profile.task_names, code))}
    model, p = plan("atrc", "nyud", official, preset=preset)
    assert_complete(model, p, official, {})


@pytest.mark.parametrize("spec, tasks", [("atrc_nyud_hrnet18", "nyud"),
                                         ("atrc_pascal_hrnet18", "pascal")])
def test_atrc_shipped_genotypes(spec, tasks):
    profile, _ = _profile(tasks)
    official = {**on.hrnet18_backbone(), **on.atrc_head(profile, 270, genotype(spec))}
    model, p = plan(spec, tasks, official)
    assert_complete(model, p, official, {})


def test_atrc_nyud_hrnet48():
    import timm

    with torch.device("meta"):  # HRNet-W48's names are mmseg's, as for W18
        body = timm.create_model("hrnet_w48", features_only=True, feature_location="",
                                 out_indices=(1, 2, 3, 4))
    backbone = {f"backbone.{k}": tuple(v.shape) for k, v in body.state_dict().items()}
    profile, _ = _profile("nyud")
    official = {**backbone, **on.atrc_head(profile, 720, genotype("atrc_nyud_hrnet48"))}
    model, p = plan("atrc_nyud_hrnet48", "nyud", official)
    assert_complete(model, p, official, {})


def test_invpt_nyud_from_keys_json():
    """The official InvPT state_dict as keys.json lists it (654 tensors, ViT-L/16 at 448x576), with
    random values: every row is used exactly once or reported as never used, every shape agrees,
    and every value arrives where its name says. The ViT-L and other tensors above 2 M elements
    stay on the meta device (1.6 GB of float32 otherwise): names and shapes are checked for all."""
    keys = on.invpt_keys()
    official = {name: tuple(shape) for name, shape, _ in keys["state_dict"]}
    model, p = plan("invpt", "nyud", official)
    assert p.problems(allow_partial=False) == []
    assert set(p.unused) == set(keys["never_used"])  # every other row is used, each once
    assert sorted([t.official for t in p.transfers] + list(p.unused)) == sorted(official)
    assert p.loaded == set(model.state_dict())
    assert sum(v.numel() for v in model.parameters()) == \
        keys["total_params"] - keys["never_used_params"] == 395_453_326
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=generator).half() if dtype == "float32" else
                 torch.randint(0, 100, s, generator=generator))
             if torch.Size(s).numel() <= 2_000_000 else torch.empty(s, device="meta")
             for k, s, dtype in keys["state_dict"]}
    converted = materialize(p, state, model.state_dict())
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    checked = 0
    for t in p.transfers:
        if not state[t.official].is_meta:
            assert t.op == "copy" and torch.equal(converted[t.ours[0]],
                                                  state[t.official].to(converted[t.ours[0]].dtype))
            checked += 1
    assert checked > 450


@pytest.mark.parametrize("tasks, size", [("pascal", (512, 512)), (CUSTOM, (448, 576))])
def test_invpt_other_task_sets(tasks, size):
    profile, _ = _profile(tasks)
    official = on.invpt(profile, size)
    model, p = plan("invpt", tasks, official, input_size=size)
    assert p.problems(allow_partial=False) == []
    never = {k for k in official if k.startswith(("multi_task_decoder.scale_embed.2.",
                                                  "multi_task_decoder.invpt.redu_chan.0.",
                                                  "multi_task_decoder.invpt.norm_mt."))
             or k.startswith("multi_task_decoder.invpt.invpt_stages.0.blocks.0.attn.fuse_attn.")}
    assert set(p.unused) == never and p.loaded == set(model.state_dict())


# -- Swin backbones from mmsegmentation names ---------------------------------------------------

SWIN_T = "swin_tiny_patch4_window7_224"


@pytest.mark.parametrize("spec, head", [
    ("demt", lambda p: on.demt_head(p, on.SWIN_T_CHANNELS, 256)),
    ("tpanet", lambda p: on.tpanet_head(p, on.SWIN_T_CHANNELS, 107 * 140)),
    ("baseline_mt", lambda p: on.fcn_head(p, on.SWIN_T_CHANNELS, 96)),
])
def test_swin_checkpoints_of_the_official_code(spec, head):
    profile, _ = _profile("nyud")
    official = {**on.swin_mmseg(), **head(profile)}
    model, p = plan(spec, "nyud", official, preset="swin_t")
    index = {k: r for k, r in p.unused.items() if k.endswith("relative_position_index")}
    assert len(index) == 12  # one per Swin-T block: a constant timm recomputes
    rest = {k: r for k, r in p.unused.items() if k not in index}
    assert all(k.endswith(".offset") for k in rest)
    assert p.problems(allow_partial=False) == [] and p.loaded == set(model.state_dict())
    norms = {t.ours[0] for t in p.transfers if t.official.startswith("backbone.norm")}
    node = "x.feats" if spec == "baseline_mt" else "feats"
    assert norms == {f"{node}.output_norms.{i}.{w}" for i in range(4) for w in ("weight", "bias")}


def test_upernet_checkpoint_gives_the_swin_backbone_its_output_norms():
    official = {**on.swin_mmseg(),
                **{f"decode_head.{k}": s for k, s in on._conv("conv_seg", 150, 512).items()},
                **{f"auxiliary_head.{k}": s for k, s in on._conv("conv_seg", 150, 256).items()}}
    model, p = plan("demt", "nyud", official, map_name="upernet", preset="swin_t")
    assert p.problems(allow_partial=True) == []
    assert {k for k in p.unused if k.startswith(("decode_head", "auxiliary_head"))} == \
        {k for k in official if k.startswith(("decode_head", "auxiliary_head"))}
    backbone = {k for k in model.state_dict() if k.startswith("feats.")}
    assert backbone <= p.loaded and not p.loaded - backbone
    assert "feats.output_norms.3.weight" in p.loaded
