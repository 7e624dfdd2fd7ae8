"""Blocks of the demt family: DeMT's deformable mixer encoder and task-aware decoder (Xu et al.,
AAAI 2023; official code:
github.com/yangyangxu0/DeMT, src/model/heads/demt_head.py), and the per-task prediction head
that DeMT and TPANet size from the aggregated backbone features.

The two attentions name their token set (``over``) because the official code, run at one image per
GPU, computes something other than the paper's global attention: the task interaction attends
each token to itself only (``over = "self"``: a value/output projection whose q/k never get a
gradient) and the task query attends, at each pixel, over the T tasks' tokens at that pixel
(``over = "tasks"``). ``over = "all"`` is the paper's global attention over all T*N tokens.
"""
from __future__ import annotations

from ..types import FeatureMap, TaskMap, same_dim
from ..weights.layout import Alias, multihead_attention, renames
from .registry import Block, Call, Fusion, Input, Param, register

QK_IDLE = "its softmax is over a single key, so the query/key projections never get a gradient"


def _task_maps(call: Call, arg: str) -> list[FeatureMap]:
    """The maps of a per-task collection input, all of one shape."""
    value: TaskMap = call.inputs[arg]
    maps = list(value.items.values())
    if not maps:
        raise call.fail(f"'{arg}' is an empty collection", arg)
    first = maps[0]
    for name, m in value.items.items():
        if not isinstance(m, FeatureMap):
            raise call.fail(f"'{arg}' must hold feature maps; its item '{name}' is a "
                            f"{type(m).__name__}", arg)
        if m.channels != first.channels or not (same_dim(m.h, first.h, call.input_size)
                                                and same_dim(m.w, first.w, call.input_size)):
            raise call.fail(f"all maps of '{arg}' must have one shape: {m.shape_str()} "
                            f"vs {first.shape_str()}", arg)
    return maps


def _check_heads(call: Call, arg: str, channels: int) -> None:
    if channels % call["heads"]:
        raise call.fail(f"width {channels} is not divisible by heads = {call['heads']}", arg)


def _positions(m: FeatureMap, call: Call) -> int:
    return m.h.eval(*call.input_size) * m.w.eval(*call.input_size)


@register
class DemtLinearNorm(Block):
    name = "demt_linear_norm"
    module = "mtl_dsl.modules.demt.LinearNorm"
    family = "demt"
    doc = ("Per-position Linear to `dim` channels with a LayerNorm: Linear then LayerNorm as the "
           "official DeMT (`linear1`), or LayerNorm then Linear (`norm_first`, paper eq. 1).")
    args = {
        "x": Input((FeatureMap,), "aggregated features"),
        "dim": Param(int, doc="output channels", min=1),
        "norm_first": Param(bool, False, "LayerNorm on the input, then Linear (paper eq. 1)"),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        return FeatureMap(channels=call["dim"], h=x.h, w=x.w)

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # DemtHead.linear1 (yangyangxu0/DeMT src/model/heads/demt_head.py): Sequential(Linear, LN)
        order = ("norm", "linear") if call["norm_first"] else ("linear", "norm")
        return renames({"0": order[0], "1": order[1]})


@register
class DeformableMixer(Block):
    name = "deformable_mixer"
    module = "mtl_dsl.modules.demt.DeformableMixer"
    fusion = Fusion("mtl_dsl.modules.batched.demt.deformable_mixers")
    family = "demt"
    doc = ("DeMT deformable mixer (paper eqs. 2-5): 1x1 conv-GELU-BN channel mixing, then a residual "
           "branch of a 1x1 deformable conv (one offset per channel, from absolute pixel coordinates "
           "through the official offset network)-GELU-BN.")
    args = {"x": Input((FeatureMap,), "input map")}

    def infer(self, call: Call) -> FeatureMap:
        return call.inputs["x"]

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # DeMT's DefMixer block (demt_head.py): Sequential(conv, GELU, BN, Residual(Sequential(
        # ChlSpl, GELU, BN))); the residual's module is `fn`.
        return (Alias("3.fn.0.offset", reason="DeMT's `offset` buffer: filled from the kernel "
                                              "size at construction, never read by the forward"),
                *renames({"0": "channel_mix.0", "2": "channel_mix.2", "3.fn.0": "spatial.0",
                          "3.fn.2": "spatial.2"}))


@register
class TaskInteraction(Block):
    name = "task_interaction"
    module = "mtl_dsl.modules.demt.TaskInteraction"
    family = "demt"
    doc = ("DeMT task interaction (paper eqs. 7-9): attention over the tokens of all tasks' maps, "
           "then Linear+LayerNorm shared by all tasks, no residual. over \"self\": official code at "
           "one image per GPU (each token attends to itself only); \"all\": the paper's global "
           "attention over all T*N tokens.")
    args = {
        "x": Input((TaskMap,), "per-task maps (the deformed features)"),
        "heads": Param(int, 4, "attention heads", min=1),
        "over": Param(str, "self", "token set each query attends over", choices=("self", "all")),
        "prenorm": Param(bool, False, "LayerNorm before the attention (paper eq. 8)"),
    }

    def infer(self, call: Call) -> TaskMap:
        maps = _task_maps(call, "x")
        _check_heads(call, "x", maps[0].channels)
        return call.inputs["x"]

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        return multihead_attention("task_fusion")  # DemtHead.task_fusion: nn.MultiheadAttention

    def idle(self, call: Call) -> dict[str, str]:
        maps = _task_maps(call, "x")
        if call["over"] == "self" or len(maps) * _positions(maps[0], call) == 1:
            return {"task_fusion.q_proj": QK_IDLE, "task_fusion.k_proj": QK_IDLE}
        return {}


@register
class TaskQuery(Block):
    name = "task_query"
    module = "mtl_dsl.modules.demt.TaskQuery"
    fusion = Fusion("mtl_dsl.modules.batched.demt.task_queries")
    family = "demt"
    doc = ("DeMT task query (paper eqs. 10-12): the task's deformed map queries the interacted maps "
           "of all tasks; Linear+LayerNorm; residual on the query. over \"tasks\": official code at "
           "one image per GPU (each pixel attends over the T tasks' tokens at that pixel); \"all\": "
           "the paper's global attention over all T*N tokens.")
    args = {
        "x": Input((FeatureMap,), "the task's deformed map (query and residual)"),
        "context": Input((TaskMap,), "the interacted maps of all tasks (keys and values)"),
        "heads": Param(int, 4, "attention heads", min=1),
        "over": Param(str, "tasks", "token set each query attends over", choices=("tasks", "all")),
        "prenorm": Param(bool, False, "LayerNorms on query and keys/values (paper eq. 10)"),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        maps = _task_maps(call, "context")
        m = maps[0]
        if m.channels != x.channels or not (same_dim(m.h, x.h, call.input_size)
                                            and same_dim(m.w, x.w, call.input_size)):
            raise call.fail(f"query {x.shape_str()} and context maps {m.shape_str()} must have the "
                            f"same shape", "x", "context")
        _check_heads(call, "x", x.channels)
        return x

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        return multihead_attention("task_query")  # DemtHead.task_querys[i]: nn.MultiheadAttention

    def idle(self, call: Call) -> dict[str, str]:
        maps = _task_maps(call, "context")
        keys = len(maps) if call["over"] == "tasks" else len(maps) * _positions(maps[0], call)
        if keys == 1:
            return {"task_query.q_proj": QK_IDLE, "task_query.k_proj": QK_IDLE}
        return {}


@register
class RatioHead(Block):
    name = "ratio_head"
    module = "mtl_dsl.modules.demt.RatioHead"
    fusion = Fusion("mtl_dsl.modules.batched.heads.ratio_heads", vary=("task",))
    family = "demt"
    doc = ("Per-task prediction of the ATRC code base's heads (DeMT, TPANet): 3x3 conv (no bias)-BN-"
           "ReLU bottleneck whose width is the channels of `features` (the aggregated backbone "
           "features) // ratio, then 1x1 logits with N(0, 0.01) weights. `features` only sets the "
           "width; its values are not read.")
    args = {
        "x": Input((FeatureMap,), "the task's decoded features"),
        "features": Input((FeatureMap,), "aggregated backbone features (sets the width)"),
        "task": Param("task", doc="the task predicted (its channels)"),
        "ratio": Param(int, 8, "bottleneck width = features.channels // ratio (DeMT 8, TPANet 4)",
                       min=1),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        if call.inputs["features"].channels // call["ratio"] < 1:
            raise call.fail(f"bottleneck width {call.inputs['features'].channels} // "
                            f"{call['ratio']} is 0", "features")
        return FeatureMap(channels=call.task(call["task"]).channels, h=x.h, w=x.w)

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # The heads' bottleneck[t] is the ATRC code base's ConvBNReLU (modules `conv`, `bn`).
        return renames({"bottleneck.conv": "bottleneck.0", "bottleneck.bn": "bottleneck.1"})
