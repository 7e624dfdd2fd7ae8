"""Blocks of the aggregation family: turning a backbone's multi-scale list into one map.

``upsample_concat`` is the feature extractor of ATRC, DeMT and TPANet (``BaseHead._transform_inputs``
of the ATRC code): every selected level resized bilinearly (align_corners=False) to the size of the
first selected level, then concatenated in order (HRNet18: 18+36+72+144 = 270 channels at stride 4;
Swin-T: 1440). ``select_level`` takes one level as it is.
"""
from __future__ import annotations

from ..types import FeatureMap, MultiScale
from .registry import Block, Call, Input, Param, register


def _chosen_levels(call: Call, x: MultiScale) -> list[int]:
    """The 0-based positions in ``x`` that ``levels`` names (1-based, like ``in_index + 1``)."""
    levels = call["levels"]
    if levels is None:
        return list(range(len(x.levels)))
    if not levels:
        raise call.fail("levels must name at least one level", "levels")
    bad = [lv for lv in levels if not 1 <= lv <= len(x.levels)]
    if bad:
        raise call.fail(f"level {bad[0]} does not exist: the input has {len(x.levels)} levels "
                        f"(1..{len(x.levels)}, in the order the backbone returns them)", "x", "levels")
    if len(set(levels)) != len(levels):
        raise call.fail(f"levels {levels} name a level twice", "levels")
    return [lv - 1 for lv in levels]


@register
class UpsampleConcat(Block):
    name = "upsample_concat"
    module = "mtl_dsl.modules.aggregation.UpsampleConcat"
    family = "aggregation"
    doc = ("Resize every selected level bilinearly (align_corners=false) to the size of the first "
           "selected level and concatenate them in the order given (ATRC/DeMT/TPANet features).")
    args = {
        "x": Input((MultiScale,), "backbone levels"),
        "levels": Param(list, None, "which of the input's levels, counted from 1 in the input's "
                                    "order (default: all); the first one sets the output size",
                        item_type=int, min=1),
        "mode": Param(str, "bilinear", "interpolation of the resize", choices=("bilinear", "nearest")),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: MultiScale = call.inputs["x"]
        chosen = _chosen_levels(call, x)
        first = x.levels[chosen[0]]
        return FeatureMap(channels=sum(x.levels[i].channels for i in chosen), h=first.h, w=first.w)


@register
class SelectLevel(Block):
    name = "select_level"
    module = "mtl_dsl.modules.aggregation.SelectLevel"
    family = "aggregation"
    doc = "One level of a multi-scale list, unchanged."
    args = {
        "x": Input((MultiScale,), "backbone levels"),
        "level": Param(int, doc="which level, counted from 1 in the input's order", min=1),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: MultiScale = call.inputs["x"]
        level = call["level"]
        if level > len(x.levels):
            raise call.fail(f"level {level} does not exist: the input has {len(x.levels)} levels "
                            f"(1..{len(x.levels)}, in the order the backbone returns them)", "x")
        return x.levels[level - 1]
