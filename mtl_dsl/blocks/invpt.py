"""Blocks of the InvPT family (Ye & Xu, ECCV 2022, "Inverted Pyramid Multi-task Transformer").

The decoder, as the official code builds it (models.md section 7): per task a preliminary decoder
and an intermediate prediction mixed into the decoder input; stages of one transformer block each
over the tokens of all tasks, whose pre-softmax scores are passed to the next stage (attention
message passing, an ``attention`` value in the graph); per-task up-embeddings between stages plus
encoder features (EFA); a LayerNorm over all tasks' channels after each stage; the stages summed at
stride 4. ``specs/invpt.mtl`` composes these. The nn.Modules are in ``mtl_dsl.modules.invpt``.
"""
from __future__ import annotations

from ..types import AttentionMap, FeatureMap, MultiScale, TaskMap, TokenGrid, same_dim
from .registry import Block, Call, Input, Param, register


def _same_grid(a: FeatureMap, b: FeatureMap, call: Call) -> bool:
    return same_dim(a.h, b.h, call.input_size) and same_dim(a.w, b.w, call.input_size)


def _task_maps(call: Call, name: str) -> dict[str, FeatureMap]:
    """The feature maps of a per-task collection, all of one width and one grid."""
    x: TaskMap = call.inputs[name]
    maps = dict(x.items)
    if not maps:
        raise call.fail(f"'{name}' is an empty collection", name)
    first_task, first = next(iter(maps.items()))
    for task, value in maps.items():
        if not isinstance(value, FeatureMap):
            raise call.fail(f"'{name}' must hold one feature map per task; '{task}' holds "
                            f"{value.shape_str()}", name)
        if value.channels != first.channels or not _same_grid(value, first, call):
            raise call.fail(f"every task's map of '{name}' must have one shape: '{first_task}' is "
                            f"{first.shape_str()}, '{task}' is {value.shape_str()}", name)
    return maps


@register
class EfaEmbed(Block):
    name = "invpt_efa_embed"
    family = "invpt"
    doc = ("Encoder-feature aggregation input: a 3x3 conv of an encoder map to a stage's width "
           "(up=1), or a 3x3 stride-2 transposed conv (padding 1, output padding 1) that also "
           "doubles the grid (up=2; InvPT's ViT block-6 features to stride 8).")
    args = {
        "x": Input((FeatureMap,), "encoder map"),
        "channels": Param(int, doc="output channels (the width of the stage it feeds)", min=1),
        "up": Param(int, 1, "1: same grid; 2: twice the grid", choices=(1, 2)),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        k = call["up"]
        return FeatureMap(channels=call["channels"], h=x.h.mul(k), w=x.w.mul(k))

    def build(self, call: Call):
        from ..modules.invpt import EfaEmbed as Module

        return Module(call.inputs["x"].channels, call["channels"], call["up"])


@register
class DecoderInput(Block):
    name = "invpt_decoder_input"
    family = "invpt"
    doc = ("The encoder map bilinearly resized to floor(h/factor) x floor(w/factor): the official "
           "decoder starts at half the ViT grid (stride 32); factor=1 keeps the encoder grid, as "
           "the paper describes.")
    args = {
        "x": Input((FeatureMap,), "encoder map"),
        "factor": Param(int, 2, "downsampling factor", min=1, max=8),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        k = call["factor"]
        out = FeatureMap(channels=x.channels, h=x.h.fdiv(k), w=x.w.fdiv(k))
        if min(out.h.eval(*call.input_size), out.w.eval(*call.input_size)) < 1:
            raise call.fail(f"the map {x.shape_str()} is too small to downsample by {k} at input "
                            f"size {call.input_size[0]}x{call.input_size[1]}", "x")
        return out

    def build(self, call: Call):
        from ..modules.invpt import DecoderInput as Module

        return Module(call["factor"])


@register
class PreliminaryDecoder(Block):
    name = "invpt_preliminary_decoder"
    family = "invpt"
    doc = ("A task's preliminary decoder: 3x3 Conv(no bias)-BN-ReLU keeping the input width, then "
           "3x3 Conv(no bias)-BN-ReLU to `channels` (F_t^d of the paper).")
    args = {
        "x": Input((FeatureMap,), "decoder input"),
        "channels": Param(int, doc="output channels (512 in the official ViT configs)", min=1),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        return FeatureMap(channels=call["channels"], h=x.h, w=x.w)

    def build(self, call: Call):
        from torch import nn

        from ..modules.common import ConvBnAct

        cin = call.inputs["x"].channels
        return nn.Sequential(ConvBnAct(cin, cin, 3), ConvBnAct(cin, call["channels"], 3))


@register
class TaskMix(Block):
    name = "invpt_task_mix"
    family = "invpt"
    doc = ("1x1 conv (with bias) of the channel concat [feature, prediction] of one task: the "
           "decoder's input F_t^c from F_t^d and the raw preliminary logits P_t.")
    args = {
        "feature": Input((FeatureMap,), "task feature F_t^d"),
        "pred": Input((FeatureMap,), "preliminary prediction P_t"),
        "channels": Param(int, doc="output channels (576 = 512 + 64 officially)", min=1),
    }

    def infer(self, call: Call) -> FeatureMap:
        f: FeatureMap = call.inputs["feature"]
        p: FeatureMap = call.inputs["pred"]
        if not _same_grid(f, p, call):
            raise call.fail(f"feature {f.shape_str()} and prediction {p.shape_str()} must share "
                            f"a grid", "feature", "pred")
        return FeatureMap(channels=call["channels"], h=f.h, w=f.w)

    def build(self, call: Call):
        from ..modules.invpt import TaskMix as Module

        return Module(call.inputs["feature"].channels, call.inputs["pred"].channels,
                      call["channels"])


@register
class UpEmbed(Block):
    name = "invpt_up_embed"
    family = "invpt"
    doc = ("Reshape & Up of one task's map between decoder stages: bilinear x2, then two 3x3 "
           "Conv(no bias)-BN-ReLU with dilation 2 (padding 2), as the official code; plus the "
           "encoder-feature (EFA) map when `efa` is given.")
    args = {
        "x": Input((FeatureMap,), "the task's map from the previous stage"),
        "channels": Param(int, doc="output channels (the next stage's width)", min=1),
        "efa": Input((FeatureMap,), "encoder-feature map added after the convs", optional=True),
        "dilation": Param(int, 2, "dilation (= padding) of both 3x3 convs", min=1, max=8),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        out = FeatureMap(channels=call["channels"], h=x.h.mul(2), w=x.w.mul(2))
        efa: FeatureMap | None = call.inputs.get("efa")
        if efa is not None and (efa.channels != out.channels or not _same_grid(efa, out, call)):
            raise call.fail(
                f"the encoder-feature map {efa.shape_str()} must match the up-embedded map "
                f"{out.shape_str()} (at input size {call.input_size[0]}x{call.input_size[1]}: "
                f"{efa.concrete(call.input_size)} vs {out.concrete(call.input_size)}); the official "
                f"decoder needs an encoder grid divisible by 2 per stage", "efa", "x")
        return out

    def build(self, call: Call):
        from ..modules.invpt import UpEmbed as Module

        return Module(call.inputs["x"].channels, call["channels"], call["dilation"])


@register
class TransformerBlock(Block):
    name = "invpt_transformer"
    family = "invpt"
    doc = ("One InvPT decoder stage's transformer block over the tokens of all tasks: pre-norm "
           "attention with per-task depthwise stride-2 conv + BN queries and per-task average-"
           "pooled keys/values, the attention output resized back and added, then a pre-norm MLP. "
           "With `attn` (the previous stage's scores) it applies attention message passing. "
           "Returns the per-task maps and the fused pre-softmax scores.")
    args = {
        "x": Input((TaskMap,), "one map per task, all of one width and grid"),
        "attn": Input((AttentionMap,), "previous stage's pre-softmax scores (AMP)", optional=True),
        "heads": Param(int, 2, "attention heads", min=1),
        "kv_pool": Param(int, 2, "average-pooling kernel = stride for keys and values (2, 4, 8 "
                                 "for stages 0, 1, 2)", min=1, max=64),
        "query_stride": Param(int, 2, "stride of the depthwise 3x3 query conv", min=1, max=8),
        "mlp_ratio": Param(float, 4.0, "MLP hidden width / width", min=0.0625, max=16.0),
        "amp": Param(str, "conv", "message passing: \"conv\" (official: 1x1 conv over the stacked "
                                  "heads, with bias) or \"scalars\" (paper Eq. 3: a1*A + a2*M)",
                     choices=("conv", "scalars")),
        "scale": Param(str, "stage", "score scale: \"stage\" (official: width^-0.5) or \"head\" "
                                     "(paper Eq. 2: (width/heads)^-0.5)", choices=("stage", "head")),
    }
    outputs = ("x", "attn")

    def infer(self, call: Call):
        maps = _task_maps(call, "x")
        first = next(iter(maps.values()))
        heads, qs, k = call["heads"], call["query_stride"], call["kv_pool"]
        if first.channels % heads:
            raise call.fail(f"heads={heads} must divide the width {first.channels}", "x")
        tasks = len(maps)
        queries = TokenGrid(groups=tasks, h=first.h.conv(3, qs, 1), w=first.w.conv(3, qs, 1))
        keys = TokenGrid(groups=tasks, h=first.h.pool(k, k, ceil_mode=True),
                         w=first.w.pool(k, k, ceil_mode=True))
        prev: AttentionMap | None = call.inputs.get("attn")
        if prev is not None:
            self._check_message(call, prev, first, tasks, keys)
        scores = AttentionMap(heads=heads, queries=queries, keys=keys)
        return TaskMap(items=dict(maps)), scores

    @staticmethod
    def _check_message(call: Call, prev: AttentionMap, x: FeatureMap, tasks: int,
                       keys: TokenGrid) -> None:
        size = call.input_size
        if prev.heads != call["heads"]:
            raise call.fail(f"the attention message has {prev.heads} heads, this block "
                            f"{call['heads']}", "attn")
        if prev.queries.groups != tasks or prev.keys.groups != tasks:
            raise call.fail(f"the attention message is over {prev.queries.groups} tasks, this "
                            f"block over {tasks}", "attn", "x")
        if not (same_dim(prev.keys.h, keys.h, size) and same_dim(prev.keys.w, keys.w, size)):
            raise call.fail(f"the attention message has keys {prev.keys}, this block {keys} (at "
                            f"input size {size[0]}x{size[1]}: {prev.keys.h.eval(*size)}x"
                            f"{prev.keys.w.eval(*size)} vs {keys.h.eval(*size)}x"
                            f"{keys.w.eval(*size)}); choose kv_pool so every stage pools to one "
                            f"key grid", "attn", "x")
        # The message's queries must come from a stage at half this grid (one up-embedding).
        qs = call["query_stride"]
        ph, pw = x.h.fdiv(2).conv(3, qs, 1), x.w.fdiv(2).conv(3, qs, 1)
        if not (same_dim(prev.queries.h, ph, size) and same_dim(prev.queries.w, pw, size)):
            raise call.fail(f"the attention message's queries {prev.queries} do not come from a "
                            f"stage at half of this grid {x.h}x{x.w} (expected "
                            f"{TokenGrid(groups=tasks, h=ph, w=pw)})", "attn", "x")

    def build(self, call: Call):
        from ..modules.invpt import InvPTTransformerBlock as Module

        maps = _task_maps(call, "x")
        dim = next(iter(maps.values())).channels
        amp = call["amp"] if call.inputs.get("attn") is not None else None
        return Module(list(maps), dim, call["heads"], call["kv_pool"], call["query_stride"],
                      call["mlp_ratio"], amp, call["scale"])


@register
class JointNorm(Block):
    name = "invpt_joint_norm"
    family = "invpt"
    doc = ("LayerNorm over the channels of all tasks jointly at each position (T*C features), "
           "split back per task: the official `norm_mts` after each decoder stage.")
    args = {"x": Input((TaskMap,), "one map per task, all of one width and grid")}

    def infer(self, call: Call) -> TaskMap:
        return TaskMap(items=dict(_task_maps(call, "x")))

    def build(self, call: Call):
        from ..modules.invpt import JointTaskNorm as Module

        maps = _task_maps(call, "x")
        return Module(list(maps), next(iter(maps.values())).channels)


@register
class SumScales(Block):
    name = "invpt_sum_scales"
    family = "invpt"
    doc = ("Resizes every level bilinearly to `scale` times the grid of the finest level and sums "
           "them: the official decoder output at stride 4 (twice the last stage's grid).")
    args = {
        "levels": Input((MultiScale, TaskMap), "maps of one width (a list, or a collection such "
                                               "as one task's stages)"),
        "scale": Param(int, 2, "output grid / finest level's grid", min=1, max=8),
    }

    @staticmethod
    def _levels(call: Call) -> list[FeatureMap]:
        value = call.inputs["levels"]
        levels = list(value.levels) if isinstance(value, MultiScale) else list(value.items.values())
        if not levels:
            raise call.fail("no levels to sum", "levels")
        for lv in levels:
            if not isinstance(lv, FeatureMap):
                raise call.fail(f"every level must be a feature map, got {lv.shape_str()}", "levels")
            if lv.channels != levels[0].channels:
                raise call.fail(f"levels to sum must have one width, got {levels[0].channels} and "
                                f"{lv.channels}", "levels")
        return levels

    @classmethod
    def _finest(cls, call: Call) -> int:
        levels = cls._levels(call)
        sizes = [lv.h.eval(*call.input_size) * lv.w.eval(*call.input_size) for lv in levels]
        return max(range(len(levels)), key=sizes.__getitem__)

    def infer(self, call: Call) -> FeatureMap:
        levels = self._levels(call)
        finest = levels[self._finest(call)]
        k = call["scale"]
        return FeatureMap(channels=finest.channels, h=finest.h.mul(k), w=finest.w.mul(k))

    def build(self, call: Call):
        from ..modules.invpt import SumScales as Module

        return Module(self._finest(call), call["scale"])
