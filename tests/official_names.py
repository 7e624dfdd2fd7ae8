"""Official state_dicts by name and shape, written from the official code's module structure
(not from the specs' weights maps or our modules), for any task set and input size.

Each generator follows the class that builds the official model: brdav/atrc
``src/model/heads/{fcn,relationalcontext,relationalcontextsearch,attention}.py`` (FCNHead,
RelationalContextHead, RelationalContextSearchHead), yangyangxu0/DeMT
``src/model/heads/demt_head.py`` (DemtHead), yangyangxu0/TPANet ``src/model/heads/adapthead.py``
(AdaptHead), prismformore/Multi-Task-Transformer ``InvPT/models/transformers/`` (TransformerNet),
and mmsegmentation's ``mmseg/models/backbones/swin.py`` (the Swin DeMT and TPANet copy). They are
anchored to the official code by ``tests/test_official_names.py``: for NYUD-v2 they reproduce the
golden fixtures' key lists and shapes exactly (and InvPT's ``keys.json``), and the Swin-T backbone
holds the published 27,520,698 parameters. Tensors are on the meta device: names and shapes are
what a map is checked on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from mtl_dsl.tasks import TaskProfile

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "nyud"
Shapes = dict[str, tuple[int, ...]]


def hrnet18_backbone() -> Shapes:
    """The repositories' HRNetV2-W18-small (mmseg names), from the golden NYUD file."""
    out: Shapes = {}
    for file in (GOLDEN / "shared_weights.safetensors", GOLDEN / "baseline_mt" / "weights.safetensors"):
        with safe_open(str(file), "pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()
                        if k.startswith("backbone.")})
    return out


def _bn(prefix: str, width: int, affine: bool = True) -> Shapes:
    out = {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)} if affine else {}
    out.update({f"{prefix}.running_mean": (width,), f"{prefix}.running_var": (width,),
                f"{prefix}.num_batches_tracked": ()})
    return out


def _ln(prefix: str, width: int) -> Shapes:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _linear(prefix: str, cout: int, cin: int, bias: bool = True) -> Shapes:
    out = {f"{prefix}.weight": (cout, cin)}
    if bias:
        out[f"{prefix}.bias"] = (cout,)
    return out


def _conv(prefix: str, cout: int, cin: int, k: int = 1, bias: bool = True) -> Shapes:
    out = {f"{prefix}.weight": (cout, cin, k, k)}
    if bias:
        out[f"{prefix}.bias"] = (cout,)
    return out


def _conv_bn(prefix: str, cout: int, cin: int, k: int = 1, affine: bool = True) -> Shapes:
    """utils_heads.ConvBNReLU: ``conv`` (no bias) and ``bn``."""
    return {**_conv(f"{prefix}.conv", cout, cin, k, bias=False), **_bn(f"{prefix}.bn", cout, affine)}


def _mha(prefix: str, dim: int) -> Shapes:
    return {f"{prefix}.in_proj_weight": (3 * dim, dim), f"{prefix}.in_proj_bias": (3 * dim,),
            **_linear(f"{prefix}.out_proj", dim, dim)}


def _logits(profile: TaskProfile, width: int) -> Shapes:
    out: Shapes = {}
    for t in profile.tasks:
        out.update(_conv(f"head.final_logits.{t.name}", t.channels, width))
    return out


def _bottlenecks(profile: TaskProfile, width: int, cin: int) -> Shapes:
    out: Shapes = {}
    for t in profile.task_names:
        out.update(_conv_bn(f"head.bottleneck.{t}", width, cin, 3))
    return out


# -- heads ------------------------------------------------------------------------------------------

def fcn_head(profile: TaskProfile, cin: int, width: int = 0) -> Shapes:
    """ATRC's FCNHead: the multi-task (and single-task) baseline."""
    width = width or cin // 4
    return {**_bottlenecks(profile, width, cin), **_logits(profile, width)}


def demt_head(profile: TaskProfile, cin: int, dim: int) -> Shapes:
    width = cin // 8
    out = {**_bottlenecks(profile, width, dim), **_logits(profile, width)}
    for i, _ in enumerate(profile.tasks):
        p = f"head.defor_mixers.{i}.blocks.0"
        out.update({**_conv(f"{p}.0", dim, dim), **_bn(f"{p}.2", dim),
                    f"{p}.3.fn.0.weight": (dim, dim, 1, 1), f"{p}.3.fn.0.bias": (dim,),
                    f"{p}.3.fn.0.offset": (1, 2 * dim, 1, 1),
                    **_conv(f"{p}.3.fn.0.get_offset.p_conv", 18, dim, 3),
                    f"{p}.3.fn.0.get_offset.opt.weight": (2 * dim, 9, 3, 3),
                    f"{p}.3.fn.0.get_offset.opt.bias": (2 * dim,), **_bn(f"{p}.3.fn.2", dim)})
    out.update({**_linear("head.linear1.0", dim, cin), **_ln("head.linear1.1", dim),
                **_mha("head.task_fusion", dim), **_linear("head.smlp.0", dim, dim),
                **_ln("head.smlp.1", dim)})
    for i, _ in enumerate(profile.tasks):
        out.update({**_linear(f"head.smlp2.{i}.0", dim, dim), **_ln(f"head.smlp2.{i}.1", dim)})
    for i, _ in enumerate(profile.tasks):
        out.update(_mha(f"head.task_querys.{i}", dim))
    return out


def tpanet_head(profile: TaskProfile, cin: int, positions: int, dim: int = 108) -> Shapes:
    width, tasks = cin // 4, len(profile.tasks)
    hidden = int(positions * 0.0005) or positions  # the released Mlp: int(hidden) or in_features
    out = {**_bottlenecks(profile, width, dim), **_logits(profile, width)}
    for i in range(tasks):
        out.update(_conv(f"head.specific_tasks.{i}", dim, cin // 2))
    out.update(_conv("head.inject_prior", dim, cin // 2))
    a = "head.adapt_task_mixing"
    out.update({**_ln(f"{a}.fc_s.norm", positions), **_linear(f"{a}.fc_s.fc1", hidden, positions),
                **_linear(f"{a}.fc_s.fc2", positions, hidden),
                **_ln(f"{a}.fc_c.norm", tasks * dim),
                **_linear(f"{a}.fc_c.fc1", tasks * dim, tasks * dim),
                **_linear(f"{a}.fc_c.fc2", tasks * dim, tasks * dim), **_ln(f"{a}.LN", tasks * dim)})
    for i in range(tasks):
        out.update(_mha(f"head.cross_atts.{i}", dim))
    out.update({**_ln("head.mlp.norm", dim), **_linear("head.mlp.fc1", 2 * dim, dim),
                **_linear("head.mlp.fc2", dim, 2 * dim), **_ln("head.norm2", dim)})
    return out


def _cp_block(prefix: str, channels: int, inter: int, value_affine: bool = True) -> Shapes:
    """attention.py: every context block has two-layer query/key projections and a value one."""
    out: Shapes = {}
    for proj in ("query_project", "key_project"):
        out.update({**_conv_bn(f"{prefix}.{proj}.0", inter, channels),
                    **_conv_bn(f"{prefix}.{proj}.1", inter, inter)})
    out.update(_conv_bn(f"{prefix}.value_project", inter, channels, affine=value_affine))
    return out


def atrc_head(profile: TaskProfile, cin: int, genotype: dict[str, dict[str, int]]) -> Shapes:
    """RelationalContextHead with a genotype {target: {source: 0..4}}."""
    tasks = profile.task_names
    width, inter = cin // 4, cin // 8
    aux = [t for t in tasks if 3 in genotype[t].values()
           or any(genotype[s][t] == 4 for s in tasks)]
    out = _bottlenecks(profile, width, cin)
    for t in aux:
        out.update(_conv_bn(f"head.aux_conv.{t}", cin, cin))
    for t in aux:
        out.update(_conv(f"head.aux_logits.{t}", profile.task(t).aux_channels, cin))
    m = "head.atrc_module"
    for t in tasks:
        for s in tasks:
            if genotype[t][s]:
                out.update(_cp_block(f"{m}.cp_blocks.{t}.{s}", width, inter))
    for t in tasks:
        sources = sum(1 for s in tasks if genotype[t][s])
        if sources:
            out.update(_conv_bn(f"{m}.out_proj.{t}", width, inter * sources))
    for t in tasks:
        sources = sum(1 for s in tasks if genotype[t][s])
        out.update(_conv_bn(f"{m}.bottleneck.{t}.0", width, 2 * width if sources else width))
    return {**out, **_logits(profile, width)}


def atrc_search_head(profile: TaskProfile, cin: int) -> Shapes:
    """RelationalContextSearchHead: every pair a ConvexCombination of the context types."""
    tasks = profile.task_names
    width, inter = cin // 4, cin // 8
    out = _bottlenecks(profile, width, cin)
    for t in tasks:
        out.update(_conv_bn(f"head.aux_conv.{t}", cin, cin))
    for t in tasks:
        out.update(_conv(f"head.aux_logits.{t}", profile.task(t).aux_channels, cin))
    m = "head.atrc_module"
    for t in tasks:
        for s in tasks:
            ops = 3 if s == t else 4
            out[f"{m}.cp_blocks.{t}.{s}.arch_param"] = (ops + 1,)
            for k in range(ops):
                out.update(_cp_block(f"{m}.cp_blocks.{t}.{s}.op_list.{k}", width, inter,
                                     value_affine=False))
    for t in tasks:
        out.update(_conv_bn(f"{m}.out_proj.{t}", width, inter * len(tasks)))
    for t in tasks:
        out.update(_conv_bn(f"{m}.bottleneck.{t}", width, 2 * width))
    return {**out, **_logits(profile, width)}


# -- Swin (mmseg names) -----------------------------------------------------------------------------

def swin_mmseg(embed: int = 96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window: int = 7,
               prefix: str = "backbone.") -> Shapes:
    out: Shapes = {**_conv(f"{prefix}patch_embed.projection", embed, 3, 4),
                   **_ln(f"{prefix}patch_embed.norm", embed)}
    for s, (depth, head) in enumerate(zip(depths, heads)):
        c = embed * 2 ** s
        for b in range(depth):
            p = f"{prefix}stages.{s}.blocks.{b}"
            out.update({**_ln(f"{p}.norm1", c),
                        f"{p}.attn.w_msa.relative_position_bias_table": ((2 * window - 1) ** 2, head),
                        f"{p}.attn.w_msa.relative_position_index": (window ** 2, window ** 2),
                        **_linear(f"{p}.attn.w_msa.qkv", 3 * c, c),
                        **_linear(f"{p}.attn.w_msa.proj", c, c), **_ln(f"{p}.norm2", c),
                        **_linear(f"{p}.ffn.layers.0.0", 4 * c, c),
                        **_linear(f"{p}.ffn.layers.1", c, 4 * c)})
        if s < len(depths) - 1:
            out.update({**_ln(f"{prefix}stages.{s}.downsample.norm", 4 * c),
                        **_linear(f"{prefix}stages.{s}.downsample.reduction", 2 * c, 4 * c,
                                  bias=False)})
    for s in range(len(depths)):
        out.update(_ln(f"{prefix}norm{s}", embed * 2 ** s))
    return out


SWIN_T_CHANNELS = 96 + 192 + 384 + 768


# -- InvPT ------------------------------------------------------------------------------------------

def invpt(profile: TaskProfile, input_size: tuple[int, int], embed: int = 512,
          pred: int = 64) -> Shapes:
    """TransformerNet with the ViT-L/16 backbone (InvPT/models/transformers/invpt.py,
    transformer_decoder.py, vit.py) for its default configuration."""
    gh, gw = input_size[0] // 16, input_size[1] // 16
    tasks = profile.task_names
    dims = [embed + pred, (embed + pred) // 2, (embed + pred) // 4]
    out: Shapes = {"backbone.cls_token": (1, 1, 1024), "backbone.pos_embed": (1, 1 + gh * gw, 1024),
                   **_conv("backbone.patch_embed.proj", 1024, 3, 16)}
    for n in range(24):
        p = f"backbone.blocks.{n}"
        out.update({**_ln(f"{p}.norm1", 1024), **_linear(f"{p}.attn.qkv", 3072, 1024),
                    **_linear(f"{p}.attn.proj", 1024, 1024), **_ln(f"{p}.norm2", 1024),
                    **_linear(f"{p}.mlp.fc1", 4096, 1024), **_linear(f"{p}.mlp.fc2", 1024, 4096)})
    out.update(_ln("backbone.norm", 1024))
    d = "multi_task_decoder"
    for t in profile.tasks:
        out.update(_conv(f"{d}.intermediate_head.{t.name}", t.channels, embed))
    for s, c in enumerate(dims):
        out.update(_ln(f"{d}.invpt.norm_mts.{s}", len(tasks) * c))
    for s, c in enumerate(dims):
        for i in range(len(tasks)):
            out.update(_conv(f"{d}.invpt.redu_chan.{s}.{i}", dims[0], c))
    for s, c in enumerate(dims):
        if s:
            for i in range(len(tasks)):
                p = f"{d}.invpt.invpt_stages.{s}.patch_embed.{i}.proj"
                out.update({**_conv(f"{p}.1", c, dims[s - 1], 3, bias=False), **_bn(f"{p}.2", c),
                            **_conv(f"{p}.4", c, c, 3, bias=False), **_bn(f"{p}.5", c)})
        p = f"{d}.invpt.invpt_stages.{s}.blocks.0"
        out.update({**_ln(f"{p}.norm1", c), **_ln(f"{p}.norm2", c),
                    **_linear(f"{p}.mlp.fc1", 4 * c, c), **_linear(f"{p}.mlp.fc2", c, 4 * c)})
        for i in range(len(tasks)):
            out.update({f"{p}.attn.conv_proj_q.{i}.conv.weight": (c, 1, 3, 3),
                        **_bn(f"{p}.attn.conv_proj_q.{i}.bn", c)})
        for proj in ("proj_q", "proj_k", "proj_v", "proj"):
            out.update(_linear(f"{p}.attn.{proj}", c, c))
        out.update(_conv(f"{p}.attn.fuse_attn", 2, 4))
    out.update(_ln(f"{d}.invpt.norm_mt", dims[0]))
    for t in tasks:
        out.update({**_conv(f"{d}.invpt.mt_proj.{t}.0", dims[0], dims[0], 3),
                    **_bn(f"{d}.invpt.mt_proj.{t}.1", dims[0])})
    for t in profile.tasks:
        out.update(_conv(f"{d}.invpt.mix_proj.{t.name}.0", dims[0], embed + t.channels))
    for t in tasks:
        for k, (cout, cin) in enumerate(((1024, 1024), (embed, 1024))):
            out.update({**_conv(f"{d}.preliminary_decoder.{t}.{k}.conv", cout, cin, 3, bias=False),
                        **_bn(f"{d}.preliminary_decoder.{t}.{k}.bn1", cout)})
    out.update({f"{d}.scale_embed.0.weight": (1024, dims[2], 3, 3), f"{d}.scale_embed.0.bias": (dims[2],),
                **_conv(f"{d}.scale_embed.1", dims[1], 1024, 3),
                **_conv(f"{d}.scale_embed.2", dims[0], 1024, 3)})
    for t in profile.tasks:
        out.update(_conv(f"heads.{t.name}.linear_pred", t.channels, dims[0]))
    return out


def invpt_keys() -> dict:
    return json.loads((GOLDEN / "invpt" / "keys.json").read_text())


# -- building a file --------------------------------------------------------------------------------

def meta_state(shapes: Shapes) -> dict[str, torch.Tensor]:
    """Meta tensors (no memory) of these shapes; ``num_batches_tracked`` and index tables int64."""
    def dtype(name: str):
        return torch.int64 if name.endswith(("num_batches_tracked", "relative_position_index")) \
            else torch.float16
    return {k: torch.empty(s, dtype=dtype(k), device="meta") for k, s in shapes.items()}


def parameter_count(shapes: Shapes) -> int:
    def count(shape: tuple[int, ...]) -> int:
        n = 1
        for d in shape:
            n *= d
        return n
    return sum(count(s) for k, s in shapes.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked",
                                  "relative_position_index", ".offset")))


def golden_shapes(model: str) -> Shapes:
    out: Shapes = {}
    for file in (GOLDEN / "shared_weights.safetensors", GOLDEN / model / "weights.safetensors"):
        with safe_open(str(file), "pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


def tasks_order(profile: TaskProfile) -> Iterator[str]:
    return iter(profile.task_names)
