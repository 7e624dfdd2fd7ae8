"""Blocks of the backbones family: timm image encoders returning a multi-scale list of maps.

``check`` must know every level's channels and exact size without torch. Any timm model that
supports ``features_only`` can be a backbone; its geometry comes from, in order:

1. the table below (``BACKBONES``): the models of the reference specs, written out so that their
   ``check`` never waits (each entry is tested against timm and against the probe);
2. :func:`register_backbone` (a geometry given from Python);
3. timm itself: ``timm_geometry.describe`` reads timm's ``feature_info`` and probes the sizes on
   the meta device once per model and timm version, and caches the result (``timm_geometry``).

The families whose modules are built in a special way keep their exact rules: HRNet (size-exact
bilinear fusion), Swin (padding, output norms, mmseg windows), ViT (intermediate blocks), ResNet
(torchvision's init); every other model follows the sizes the probe measured. The nn.Modules are
in ``mtl_dsl.modules.backbones``.

Levels: for the convolutional and Swin families level ``k`` is the map at stride ``2**(k+1)``
(level 1 = stride 4 ... level 4 = stride 32; level 0 = the stride-2 stem where there is one). For
ViTs a level is a transformer block, counted from 1 (``[6, 12, 18, 24]`` for ViT-L as in InvPT), and
every level is at stride 16. A model whose strides repeat or are not powers of two numbers its
levels by timm's feature index, as does a CNN described with :func:`timm_features`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..types import Dim, FeatureMap, MultiScale
from ..weights.layout import UNFOLD_ORDER, Alias
from .registry import Block, Call, Input, Param, register
from .timm_geometry import BackboneProbeError, cache_file, cached, describe

Family = Literal["hrnet", "resnet", "swin", "vit", "timm"]
Step = tuple[int, int, int]  # (kernel, stride, padding) of a convolution or pooling window


@dataclass(frozen=True)
class BackboneGeometry:
    """What ``check`` knows about a backbone: its family (which fixes the rounding rules) and the
    channels of each level. ``depth`` is the number of blocks of a ViT (its levels are 1..depth)."""

    family: Family
    channels: dict[int, int]  # level -> channels
    depth: int = 0
    patch: int = 0  # patch size of a patch-embedding family (Swin 4, ViT 16)
    steps: dict[int, tuple[Step, ...]] | None = None  # family "timm": the strided ops per level
    # A probed model: level -> (a, r), its size is floor((d + a) / r) for an input side d; the
    # timm feature index of each level; the multiple its input sides must be (1: any), or the
    # one input size it takes; HRNet: the index of the last module of stage 4.
    offsets: dict[int, tuple[int, int]] | None = None
    indices: dict[int, int] | None = None
    multiple: int = 1
    fixed_size: tuple[int, int] | None = None
    last_module: int | None = None
    source: str = "table"  # "table", "registered", or "timm" (probed and cached)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted(self.channels))

    @property
    def default_levels(self) -> list[int]:
        if self.family in ("timm", "resnet") and not {1, 2, 3, 4} <= set(self.channels):
            return list(self.levels)
        if self.family == "vit":  # a quarter, half, three quarters and all of the depth, as InvPT
            return [self.depth * k // 4 for k in (1, 2, 3, 4)]
        return [1, 2, 3, 4]

    def level_size(self, level: int, d: Dim, pad_to_patch: bool) -> Dim:
        """The size of ``level`` along one axis of input size ``d``, rounded as the torch ops do."""
        if self.offsets is not None and self.family in ("timm", "resnet"):
            a, r = self.offsets[level]
            return d.add(a).fdiv(r)
        if self.family == "hrnet":  # two stride-2 3x3 stem convs, then a stride-2 3x3 per branch
            return _repeat(d, level + 1, lambda x: x.conv(3, 2, 1))
        if self.family == "resnet":  # 7x7/2 conv, 3x3/2 max-pool, then a stride-2 3x3 per stage
            out = d.conv(7, 2, 3)
            if level >= 1:
                out = out.pool(3, 2, padding=1)
            return _repeat(out, level - 1, lambda x: x.conv(3, 2, 1))
        if self.family == "swin":
            # padded: ceil(H/4); timm unpadded: the stride-4 patch conv floors. Patch merging pads
            # odd sizes, so every later stage halves with ceil.
            out = d.cdiv(self.patch) if pad_to_patch else d.conv(self.patch, self.patch)
            return _repeat(out, level - 1, lambda x: x.cdiv(2))
        if self.family == "vit":
            return d.cdiv(self.patch) if pad_to_patch else d.conv(self.patch, self.patch)
        if self.family == "timm" and self.steps is not None:
            for kernel, stride, padding in self.steps[level]:
                d = d.conv(kernel, stride, padding)
            return d
        raise ValueError(self.family)


def _repeat(d: Dim, times: int, step) -> Dim:
    for _ in range(times):
        d = step(d)
    return d


def _cnn(family: Family, channels: tuple[int, ...]) -> BackboneGeometry:
    return BackboneGeometry(family, dict(enumerate(channels)))


def _swin(embed: int) -> BackboneGeometry:
    return BackboneGeometry("swin", {k: embed * 2 ** (k - 1) for k in (1, 2, 3, 4)}, patch=4)


def _vit(width: int, depth: int) -> BackboneGeometry:
    return BackboneGeometry("vit", {k: width for k in range(1, depth + 1)}, depth=depth, patch=16)


# The backbones `check` knows. Channels checked against timm by tests/test_backbones.py.
BACKBONES: dict[str, BackboneGeometry] = {
    "hrnet_w18_small": _cnn("hrnet", (64, 16, 32, 64, 128)),
    "hrnet_w18_small_v2": _cnn("hrnet", (64, 18, 36, 72, 144)),
    "hrnet_w18": _cnn("hrnet", (64, 18, 36, 72, 144)),
    "hrnet_w32": _cnn("hrnet", (64, 32, 64, 128, 256)),
    "hrnet_w48": _cnn("hrnet", (64, 48, 96, 192, 384)),
    "resnet18": _cnn("resnet", (64, 64, 128, 256, 512)),
    "resnet34": _cnn("resnet", (64, 64, 128, 256, 512)),
    "resnet50": _cnn("resnet", (64, 256, 512, 1024, 2048)),
    "resnet101": _cnn("resnet", (64, 256, 512, 1024, 2048)),
    "swin_tiny_patch4_window7_224": _swin(96),
    "swin_small_patch4_window7_224": _swin(96),
    "swin_base_patch4_window7_224": _swin(128),
    "swin_base_patch4_window12_384": _swin(128),
    "swin_large_patch4_window7_224": _swin(192),
    "swin_large_patch4_window12_384": _swin(192),
    "vit_tiny_patch16_224": _vit(192, 12),
    "vit_tiny_patch16_384": _vit(192, 12),
    "vit_small_patch16_224": _vit(384, 12),
    "vit_small_patch16_384": _vit(384, 12),
    "vit_base_patch16_224": _vit(768, 12),
    "vit_base_patch16_384": _vit(768, 12),
    "vit_large_patch16_224": _vit(1024, 24),
    "vit_large_patch16_384": _vit(1024, 24),
    "test_vit": _vit(64, 6),  # timm's tiny test ViT, for fast tests
}


REGISTERED: dict[str, BackboneGeometry] = {}


def register_backbone(name: str, geometry: BackboneGeometry) -> None:
    """Describe a model from Python (its family fixes the rounding rules): it then needs no
    probe. Any timm model is found without this; it is for a geometry timm cannot give."""
    from dataclasses import replace

    REGISTERED[name] = replace(geometry, source="registered")


def timm_features(channels: dict[int, int], steps: dict[int, list[Step]]) -> BackboneGeometry:
    """The geometry of any timm ``features_only`` CNN: per feature index, its channels and the
    strided convolutions/poolings (kernel, stride, padding) from the image to it, in order.

    ConvNeXt: ``steps={0: [(4, 4, 0)], 1: [(4, 4, 0), (2, 2, 0)], ...}`` (all floor).
    """
    if set(channels) != set(steps):
        raise ValueError("channels and steps must describe the same levels")
    return BackboneGeometry("timm", dict(channels),
                            steps={lv: tuple(tuple(s) for s in st) for lv, st in steps.items()})


def lookup_backbone(name: str) -> BackboneGeometry | None:
    """The geometry of ``name`` from the table or registered from Python, without asking timm; a
    timm pretrained tag (``resnet50.a1_in1k``) is ignored."""
    for table in (REGISTERED, BACKBONES):
        found = table.get(name) or table.get(name.split(".")[0])
        if found is not None:
            return found
    return None


def find_backbone(name: str) -> BackboneGeometry:
    """The geometry of ``name``: the table, a registered one, or timm's (probed, cached).
    Raises ``BackboneProbeError``."""
    known = lookup_backbone(name)
    if known is not None:
        return known
    return geometry_of(describe(name))


def geometry_of(d: dict[str, Any]) -> BackboneGeometry:
    """A probe's description (``mtl_dsl.modules.timm_probe``) as a geometry."""
    family = d["family"]
    if family == "vit":
        return BackboneGeometry("vit", {k: d["width"] for k in range(1, d["depth"] + 1)},
                                depth=d["depth"], patch=d["patch"], source="timm")
    if family == "swin":
        return BackboneGeometry("swin", {k: d["width"] * 2 ** (k - 1)
                                         for k in range(1, d["depth"] + 1)},
                                patch=d["patch"], source="timm")
    channels = {int(k): v for k, v in d["channels"].items()}
    if family == "hrnet":
        return BackboneGeometry("hrnet", channels, last_module=d["hrnet_last_module"],
                                source="timm")
    fixed = d.get("fixed_size")
    return BackboneGeometry(
        family, channels, offsets={int(k): (v[0], v[1]) for k, v in d["offsets"].items()},
        indices={int(k): v for k, v in d["indices"].items()}, multiple=d.get("multiple", 1),
        fixed_size=tuple(fixed) if fixed else None, source="timm")


def _check_input_size(call: Call, name: str, geometry: BackboneGeometry) -> None:
    h, w = call.input_size
    if geometry.fixed_size is not None and (h, w) != geometry.fixed_size:
        fh, fw = geometry.fixed_size
        raise call.fail(f"timm's '{name}' takes {fh}x{fw} inputs only, not {h}x{w}", "name",
                        hint=f"compile with --input {fh}x{fw}, or choose another backbone")
    m = geometry.multiple
    if m > 1 and (h % m or w % m):
        raise call.fail(f"timm's '{name}' takes input sides that are multiples of {m}, not "
                        f"{h}x{w}", "name", hint=f"use --input {-(-h // m) * m}x{-(-w // m) * m}, "
                                                 f"or set input_multiple = {m} in the model")


@dataclass(frozen=True)
class BackboneOptions:
    """The block's parameters with the family defaults filled in."""

    geometry: BackboneGeometry
    levels: list[int]
    hrnet_fusion: str
    output_norms: bool
    pad_to_patch: bool
    swin_window: str
    vit_norm: list[int]


def resolve_options(call: Call) -> BackboneOptions:
    name = call["name"]
    try:
        geometry = find_backbone(name)
    except BackboneProbeError as e:
        raise call.fail(e.message, "name", hint=e.hint) from None
    _check_input_size(call, name, geometry)
    family = geometry.family
    levels = call["levels"] if call["levels"] is not None else geometry.default_levels
    if not levels:
        raise call.fail("levels must name at least one level", "levels")
    bad = [lv for lv in levels if lv not in geometry.channels]
    if bad:
        lo, hi = geometry.levels[0], geometry.levels[-1]
        raise call.fail(f"backbone '{name}' has no level {bad[0]} (its levels are {lo}..{hi})",
                        "levels")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise call.fail(f"levels must be increasing, got {levels}", "levels")
    if family == "hrnet" and levels == [0]:
        raise call.fail("an HRNet must return at least one of its branch levels 1..4 (level 0 "
                        "alone would leave the whole network after the stem unused)", "levels")

    def family_only(param: str, families: tuple[str, ...], default: Any) -> Any:
        value = call[param]
        if value is None:
            return default
        if family not in families:
            raise call.fail(f"'{param}' applies to {' and '.join(families)} backbones only; "
                            f"'{name}' is a {family} backbone", param)
        return value

    if call["drop_path"] and family == "hrnet":
        raise call.fail("timm's HRNet has no stochastic depth: drop_path must be 0", "drop_path")
    vit_norm = family_only("vit_norm", ("vit",), levels[-1:])
    if any(lv not in levels for lv in vit_norm):
        raise call.fail(f"vit_norm {vit_norm} must be a subset of levels {levels}", "vit_norm")
    return BackboneOptions(
        geometry=geometry,
        levels=list(levels),
        hrnet_fusion=family_only("hrnet_fusion", ("hrnet",), "bilinear"),
        output_norms=family_only("output_norms", ("swin",), family == "swin"),
        pad_to_patch=family_only("pad_to_patch", ("swin", "vit"), family == "swin"),
        swin_window=family_only("swin_window", ("swin",), "mmseg"),
        vit_norm=list(vit_norm),
    )


@register
class Backbone(Block):
    name = "backbone"
    family = "backbones"
    module = "mtl_dsl.modules.backbones.create_backbone"
    doc = ("Any timm image encoder that supports features_only, returning the maps of the chosen "
           "levels (NCHW, in level order). Weights are random unless `pretrained` is \"timm\" "
           "(timm's own pretrained weights) or names a local .safetensors file.")
    args = {
        "name": Param(str, doc="timm model name, e.g. hrnet_w18_small_v2, "
                               "swin_tiny_patch4_window7_224, vit_large_patch16_384, resnet50"),
        "levels": Param(list, None, "levels to return: 1..4 = strides 4..32 (0 = a stride-2 stem, "
                                    "5 = stride 64 where a model has them); ViT: block numbers "
                                    "from 1, all at stride 16; a model whose strides repeat: "
                                    "timm's feature indices. Default [1, 2, 3, 4] (every level "
                                    "where a model lacks one of those); ViT: depth/4, /2, 3/4, "
                                    "depth",
                        item_type=int, min=0),
        "pretrained": Param(str, "", "\"timm\": timm's pretrained weights for `name` "
                                     "(timm.create_model(pretrained=True): the Hugging Face "
                                     "cache, HF_HOME and HF_HUB_OFFLINE=1 honoured); or the path "
                                     "of a local .safetensors file holding this block's "
                                     "state_dict, or the whole timm model's "
                                     "(timm.create_model(name).state_dict(): what features_only "
                                     "does not build, the classifier, is left out as timm does); "
                                     "keys and shapes must match exactly, except a "
                                     "ViT position table, resampled to the input size. Empty: "
                                     "random init"),
        "hrnet_fusion": Param(str, None, "HRNet: \"bilinear\" (default) fuses branches with a "
                                         "bilinear x2^k upsample and a size-exact resize, as the "
                                         "official mmseg HRNet (any input size); \"timm\": timm's "
                                         "nearest x2^k (needs sizes divisible by 32)",
                              choices=("bilinear", "timm")),
        "output_norms": Param(bool, None, "Swin: one LayerNorm per output level, as the mmseg "
                                          "Swin of DeMT/TPANet (default true)"),
        "pad_to_patch": Param(bool, None, "Swin/ViT: zero-pad the input bottom/right to a "
                                          "multiple of the patch size (Swin default true, as "
                                          "mmseg: 425 -> 428 -> 107 rows; ViT default false: "
                                          "floor)"),
        "swin_window": Param(str, None, "Swin: \"mmseg\" (default) pads a map to whole windows "
                                        "before the cyclic shift, as the official Swin; \"timm\" "
                                        "shifts then pads. Identical when sizes are multiples of "
                                        "the window", choices=("mmseg", "timm")),
        "vit_norm": Param(list, None, "ViT: the levels that get the final LayerNorm (default: the "
                                      "last level only, as InvPT)", item_type=int, min=1),
        "drop_path": Param(float, 0.0, "stochastic depth rate (models that support it)",
                           min=0.0, max=1.0),
        "images": Input((FeatureMap,), "input images", default="images"),
    }
    outputs = ("feats",)

    def details(self) -> str:
        """How `check` knows a backbone's geometry (`mtl-dsl blocks backbone`)."""
        import textwrap

        def listing(names: list[str]) -> list[str]:
            return textwrap.wrap(", ".join(names), 92, initial_indent="       ",
                                 subsequent_indent="       ") or ["       (none)"]

        lines = [
            "Any timm model that supports features_only is a backbone. `check` knows its",
            "channels and exact sizes without torch, from:",
            f"  1. the table of the reference specs' models ({len(BACKBONES)}):",
            *listing(sorted(BACKBONES)),
            "  2. mtl_dsl.blocks.backbones.register_backbone(name, geometry), from Python:",
            *listing(sorted(REGISTERED)),
            "  3. timm itself, for any other name: channels and strides from timm's feature_info,",
            "     exact sizes from a shape probe on the meta device (a few seconds, once per model",
            f"     and timm version), cached in {cache_file()}:",
            *listing(sorted(cached())),
            "Exact rules kept per family: HRNet (size-exact bilinear fusion, mmseg), Swin (input",
            "padded to the patch, output norms, mmseg windows), ViT (intermediate blocks, stride",
            "16), ResNet (torchvision init). Levels: k = stride 2^(k+1) (1 = stride 4); ViT: block",
            "numbers; a model whose strides repeat: timm's feature indices.",
        ]
        return "\n".join(lines)

    def infer(self, call: Call) -> MultiScale:
        opts = resolve_options(call)
        images: FeatureMap = call.inputs["images"]
        geometry = opts.geometry
        return MultiScale(levels=tuple(
            FeatureMap(channels=geometry.channels[lv],
                       h=geometry.level_size(lv, images.h, opts.pad_to_patch),
                       w=geometry.level_size(lv, images.w, opts.pad_to_patch))
            for lv in opts.levels))

    def module_args(self, call: Call) -> dict:
        """Special: the family's defaults resolved, and the size the patch embedding sees."""
        opts = resolve_options(call)
        images: FeatureMap = call.inputs["images"]
        patch = opts.geometry.patch
        h, w = images.h.eval(*call.input_size), images.w.eval(*call.input_size)
        if patch:  # the size the patch embedding sees (pos-embed table of a ViT)
            rounding = (lambda d: -(-d // patch)) if opts.pad_to_patch else (lambda d: d // patch)
            h, w = rounding(h) * patch, rounding(w) * patch
        indices = opts.geometry.indices
        return dict(name=call["name"], family=opts.geometry.family, levels=opts.levels,
                    out_indices=[indices[lv] for lv in opts.levels] if indices else None,
                    in_chans=images.channels, img_size=(h, w), pretrained=call["pretrained"],
                    hrnet_fusion=opts.hrnet_fusion, output_norms=opts.output_norms,
                    pad_to_patch=opts.pad_to_patch, swin_window=opts.swin_window,
                    vit_norm=opts.vit_norm, drop_path=call["drop_path"])

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        """The official repositories' backbones: mmseg's HRNet (names equal timm's) and Swin
        (mmseg names, see ``SWIN_MMSEG``), timm 0.5's ViT (InvPT; names equal timm's): under
        our ``body``, plus the Swin output norms."""
        opts = resolve_options(call)
        family = opts.geometry.family
        aliases: list[Alias] = []
        if family == "swin":
            for k in range(4):
                if opts.output_norms and k + 1 in opts.levels:
                    aliases.append(Alias(f"norm{k}", (f"output_norms.{opts.levels.index(k + 1)}",)))
                else:
                    aliases.append(Alias(f"norm{k}", reason=f"mmseg's output norm of stage {k}, "
                                                            f"which this model does not return"))
            aliases += SWIN_MMSEG
        elif family == "vit":
            aliases += [Alias(f"blocks.{n}", reason="a ViT block after the last returned level "
                                                    "(not built)")
                        for n in range(max(opts.levels), opts.geometry.depth)]
            aliases.append(Alias("head", reason="the ImageNet classifier (not built)"))
        aliases.append(Alias("", ("body",)))
        return tuple(aliases)

    def draws_random(self, call: Call) -> bool:
        return call["drop_path"] > 0  # stochastic depth in training

    def idle(self, call: Call) -> dict[str, str]:
        opts = resolve_options(call)
        if opts.geometry.family != "hrnet":
            return {}
        # HRNet's last module fuses every branch into every output; the fusions into branches
        # that are not returned feed nothing.
        unused = [lv for lv in (1, 2, 3, 4) if lv not in opts.levels]
        last = opts.geometry.last_module
        if last is None:
            last = HRNET_LAST_MODULE[call["name"].split(".")[0]]
        return {f"body.stage4.{last}.fuse_layers.{lv - 1}":
                f"fuses into HRNet branch {lv}, which is not among the returned levels"
                for lv in unused}


# mmsegmentation's Swin (mmseg/models/backbones/swin.py, copied by DeMT and TPANet as
# src/model/backbones/swin.py) against timm's (features_only: stage i is `layers_i`). mmseg
# downsamples at the end of a stage, timm at the start of the next; mmseg merges patches with
# nn.Unfold (channel-major), so the merging LayerNorm and Linear see their inputs in another order.
SWIN_MMSEG: tuple[Alias, ...] = (
    Alias("patch_embed.projection", ("body.patch_embed.proj",)),
    Alias("patch_embed.norm", ("body.patch_embed.norm",)),
    Alias("stages.{s}.blocks.{b}.attn.w_msa.relative_position_index",
          reason="mmseg's window-attention index table: a constant timm recomputes"),
    Alias("stages.{s}.blocks.{b}.attn.w_msa", ("body.layers_{s}.blocks.{b}.attn",)),
    Alias("stages.{s}.blocks.{b}.ffn.layers.0.0", ("body.layers_{s}.blocks.{b}.mlp.fc1",)),
    Alias("stages.{s}.blocks.{b}.ffn.layers.1", ("body.layers_{s}.blocks.{b}.mlp.fc2",)),
    Alias("stages.{s}.blocks.{b}", ("body.layers_{s}.blocks.{b}",)),
    Alias("stages.{s}.downsample.reduction", ("body.layers_{s+1}.downsample.reduction",),
          UNFOLD_ORDER),
    Alias("stages.{s}.downsample.norm", ("body.layers_{s+1}.downsample.norm",), UNFOLD_ORDER),
    Alias("norm", reason="the final norm of the ImageNet model (the output norms replace it)"),
    Alias("head", reason="the ImageNet classifier"),
)

# Index of the last module of HRNet's stage 4 (its fusions are the outputs).
HRNET_LAST_MODULE = {"hrnet_w18_small": 0, "hrnet_w18_small_v2": 1, "hrnet_w18": 2, "hrnet_w32": 2,
                     "hrnet_w48": 2}
