"""Per-task prediction heads: their output channels come from the task profile."""
from __future__ import annotations

from ..types import FeatureMap
from .registry import Block, Call, Fusion, Input, Param, register


@register
class DenseHead(Block):
    name = "dense_head"
    module = "mtl_dsl.modules.heads.DenseHead"
    fusion = Fusion("mtl_dsl.modules.batched.heads.dense_heads", vary=("task",))
    doc = ("The multi-task baseline head (ATRC's FCNHead): 3x3 Conv(no bias)-BN-ReLU bottleneck, "
           "then 1x1 Conv to the task's channels (N(0, 0.01) init). The model resizes the logits "
           "to the input size.")
    args = {
        "x": Input((FeatureMap,), "features"),
        "task": Param("task", doc="the task whose channels the head predicts"),
        "width": Param(int, 0, "bottleneck width; 0 = input channels // reduction", min=0),
        "reduction": Param(int, 4, "bottleneck width = input channels // reduction when width=0",
                           min=1),
        "kernel": Param(int, 3, "bottleneck kernel size", min=1, max=7),
        "bottleneck": Param(bool, True, "false: the head is the 1x1 logits conv only"),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        if call["bottleneck"] and not (call["width"] or x.channels // call["reduction"]):
            raise call.fail(f"bottleneck width {x.channels} // {call['reduction']} is 0", "x")
        return FeatureMap(channels=call.task(call["task"]).channels, h=x.h, w=x.w)
