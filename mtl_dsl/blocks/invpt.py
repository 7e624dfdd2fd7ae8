"""Blocks of the InvPT family (Ye & Xu, ECCV 2022, "Inverted Pyramid Multi-task Transformer").

The decoder, as the official code builds it (github.com/prismformore/Multi-Task-Transformer, InvPT/models/transformers/
transformer_decoder.py): per task a preliminary decoder
and an intermediate prediction mixed into the decoder input; stages of one transformer block each
over the tokens of all tasks, whose pre-softmax scores are passed to the next stage (attention
message passing, an ``attention`` value in the graph); per-task up-embeddings between stages plus
encoder features (EFA); a LayerNorm over all tasks' channels after each stage; the stages summed at
stride 4. ``specs/invpt.mtl`` composes these. The nn.Modules are in ``mtl_dsl.modules.invpt``.
"""
from __future__ import annotations

from ..types import AttentionMap, FeatureMap, MultiScale, TaskMap, TokenGrid, same_dim
from ..weights.layout import Alias, renames
from .registry import Block, Call, Fusion, Input, Param, register


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


LEVEL_DOC = "which map of a multi-scale input (an index into the list; -1 = the last)"


def _picked(call: Call, name: str = "x") -> FeatureMap:
    """The input map, or the chosen level of a multi-scale input."""
    x = call.inputs[name]
    if isinstance(x, FeatureMap):
        return x
    k = call["level"]
    if not -len(x.levels) <= k < len(x.levels):
        raise call.fail(f"level {k} is out of range for a multi-scale input of {len(x.levels)} "
                        f"maps", name, "level")
    return x.levels[k]


@register
class EfaEmbed(Block):
    name = "invpt_efa_embed"
    module = "mtl_dsl.modules.invpt.EfaEmbed"
    family = "invpt"
    doc = ("Encoder-feature aggregation input: a 3x3 conv of an encoder map to a stage's width "
           "(up=1), or a 3x3 stride-2 transposed conv (padding 1, output padding 1) that also "
           "doubles the grid (up=2; InvPT's ViT block-6 features to stride 8); up=4: a 4x4 "
           "stride-4 transposed conv (our choice for the paper variant, which does not say).")
    args = {
        "x": Input((FeatureMap, MultiScale), "encoder map (or the encoder's maps)"),
        "channels": Param(int, doc="output channels (the width of the stage it feeds)", min=1),
        "up": Param(int, 1, "grid enlargement: 1, 2 or 4", choices=(1, 2, 4)),
        "level": Param(int, -1, LEVEL_DOC, min=-64, max=64),
    }

    def infer(self, call: Call) -> FeatureMap:
        x = _picked(call)
        k = call["up"]
        return FeatureMap(channels=call["channels"], h=x.h.mul(k), w=x.w.mul(k))

    def extra_args(self, call: Call) -> dict:
        return {"in_channels": _picked(call).channels}


@register
class DecoderInput(Block):
    name = "invpt_decoder_input"
    module = "mtl_dsl.modules.invpt.DecoderInput"
    family = "invpt"
    doc = ("The encoder map bilinearly resized to floor(h/factor) x floor(w/factor): the official "
           "decoder starts at half the ViT grid (stride 32); factor=1 keeps the encoder grid, as "
           "the paper describes.")
    args = {
        "x": Input((FeatureMap, MultiScale), "encoder map (or the encoder's maps)"),
        "factor": Param(int, 2, "downsampling factor", min=1, max=8),
        "level": Param(int, -1, LEVEL_DOC, min=-64, max=64),
    }

    def infer(self, call: Call) -> FeatureMap:
        x = _picked(call)
        k = call["factor"]
        out = FeatureMap(channels=x.channels, h=x.h.fdiv(k), w=x.w.fdiv(k))
        if min(out.h.eval(*call.input_size), out.w.eval(*call.input_size)) < 1:
            raise call.fail(f"the map {x.shape_str()} is too small to downsample by {k} at input "
                            f"size {call.input_size[0]}x{call.input_size[1]}", "x")
        return out


@register
class PreliminaryDecoder(Block):
    name = "invpt_preliminary_decoder"
    module = "mtl_dsl.modules.invpt.preliminary_decoder"
    fusion = Fusion("mtl_dsl.modules.batched.heads.conv_bn_acts")
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

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # prismformore/Multi-Task-Transformer InvPT/models/transformers/invpt.py: each layer is a
        # ConvBlock whose BatchNorm is `bn1`.
        return (Alias("{k}.bn1", ("{k}.bn",)),)


@register
class TaskMix(Block):
    name = "invpt_task_mix"
    module = "mtl_dsl.modules.invpt.TaskMix"
    fusion = Fusion("mtl_dsl.modules.batched.invpt.task_mixes")
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

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        return renames({"0": "proj"})  # InvPT's mix_proj[t] = Sequential(Conv2d)


def _task_entry(call: Call, name: str = "x") -> FeatureMap:
    """The input map, or task `task`'s map of a per-task collection."""
    x = call.inputs[name]
    if isinstance(x, FeatureMap):
        return x
    task = call["task"]
    if not task:
        raise call.fail(f"'{name}' is a per-task collection: name the task, task = t", name)
    if task not in x.items:
        raise call.fail(f"'{name}' has no entry for task '{task}' (it has "
                        f"{', '.join(x.items) or 'none'})", name, "task")
    value = x.items[task]
    if not isinstance(value, FeatureMap):
        raise call.fail(f"task '{task}' of '{name}' is {value.shape_str()}, not a feature map", name)
    return value


TASK_DOC = "the task to take from a per-task collection input"


@register
class UpEmbed(Block):
    name = "invpt_up_embed"
    module = "mtl_dsl.modules.invpt.UpEmbed"
    fusion = Fusion("mtl_dsl.modules.batched.invpt.up_embeds", vary=("task",))
    family = "invpt"
    doc = ("Reshape & Up of one task's map between decoder stages: bilinear x2, then two 3x3 "
           "Conv(no bias)-BN-ReLU with dilation 2 (padding 2), as the official code; plus the "
           "encoder-feature (EFA) map when `efa` is given.")
    args = {
        "x": Input((FeatureMap, TaskMap), "the task's map from the previous stage (or the "
                                          "stage's per-task maps, with `task`)"),
        "channels": Param(int, doc="output channels (the next stage's width)", min=1),
        "efa": Input((FeatureMap,), "encoder-feature map added after the convs", optional=True),
        "task": Param(str, "", TASK_DOC),
        "dilation": Param(int, 2, "dilation (= padding) of both 3x3 convs", min=1, max=8),
    }

    def infer(self, call: Call) -> FeatureMap:
        x = _task_entry(call)
        out = FeatureMap(channels=call["channels"], h=x.h.mul(2), w=x.w.mul(2))
        efa: FeatureMap | None = call.inputs.get("efa")
        if efa is not None and (efa.channels != out.channels or not _same_grid(efa, out, call)):
            size = call.input_size
            raise call.fail(
                f"the encoder-feature map {efa.shape_str()} must match the up-embedded map "
                f"{out.shape_str()} (at input size {size[0]}x{size[1]}: "
                f"{efa.concrete(size)} vs {out.concrete(size)}); the official decoder halves "
                f"the encoder grid, so it needs an even grid", "efa", "x",
                hint="use an input size whose encoder grid is even (ViT/16: a multiple of 32; "
                     "InvPT pads NYUD to 448x576)")
        return out

    def extra_args(self, call: Call) -> dict:
        return {"in_channels": _task_entry(call).channels}


@register
class TransformerBlock(Block):
    name = "invpt_transformer"
    module = "mtl_dsl.modules.invpt.InvPTTransformerBlock"
    fusion = Fusion(within="the tasks' depthwise query convolutions as one")
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

    def extra_args(self, call: Call) -> dict:
        # the first stage gets no message: no message-passing layer
        return {"amp": call["amp"] if call.inputs.get("attn") is not None else None}

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # InvPT's transformer_decoder.py Block: attn.conv_proj_q is a ModuleList in task order of
        # Sequential-like conv/bn pairs; proj_q/k/v; fuse_attn mixes the stacked heads (AMP).
        pairs = {f"attn.conv_proj_q.{call.task_names.index(t)}.{theirs}":
                 f"attn.query_embed.{t}.{ours}"
                 for t in _task_maps(call, "x") for theirs, ours in (("conv", "0"), ("bn", "1"))}
        pairs.update({"attn.proj_q": "attn.q", "attn.proj_k": "attn.k", "attn.proj_v": "attn.v"})
        if call.inputs.get("attn") is not None and call["amp"] == "conv":
            pairs["attn.fuse_attn"] = "attn.amp.fuse"
        return renames(pairs)


@register
class JointNorm(Block):
    name = "invpt_joint_norm"
    module = "mtl_dsl.modules.invpt.JointTaskNorm"
    family = "invpt"
    doc = ("LayerNorm over the channels of all tasks jointly at each position (T*C features), "
           "split back per task: the official `norm_mts` after each decoder stage.")
    args = {"x": Input((TaskMap,), "one map per task, all of one width and grid")}

    def infer(self, call: Call) -> TaskMap:
        return TaskMap(items=dict(_task_maps(call, "x")))


@register
class FuseStages(Block):
    name = "invpt_fuse_stages"
    module = "mtl_dsl.modules.invpt.FuseStages"
    fusion = Fusion("mtl_dsl.modules.batched.invpt.fuse_stages", vary=("task",))
    family = "invpt"
    doc = ("One task's decoder output from all stages (official `redu_chan` + resize + sum): every "
           "stage after the first is projected by a 1x1 conv (with bias) to `channels`, each is "
           "resized bilinearly to `scale` times the last stage's grid, and they are summed.")
    args = {
        "stages": Input((TaskMap, MultiScale), "the stages' outputs in order: per-task "
                                               "collections (with `task`) or maps"),
        "channels": Param(int, doc="output channels (the first stage's width)", min=1),
        "task": Param(str, "", TASK_DOC),
        "scale": Param(int, 2, "output grid / last stage's grid", min=1, max=16),
    }

    @staticmethod
    def _stages(call: Call) -> list[FeatureMap]:
        value = call.inputs["stages"]
        items = list(value.levels) if isinstance(value, MultiScale) else list(value.items.values())
        if not items:
            raise call.fail("no stages to fuse", "stages")
        out = []
        for item in items:
            if isinstance(item, TaskMap):
                task = call["task"]
                if task not in item.items:
                    raise call.fail(f"a stage has no map for task '{task or '(none given)'}'",
                                    "stages", "task")
                item = item.items[task]
            if not isinstance(item, FeatureMap):
                raise call.fail(f"a stage is {item.shape_str()}, not a feature map", "stages")
            out.append(item)
        if out[0].channels != call["channels"]:
            raise call.fail(f"the first stage has {out[0].channels} channels; it is not projected, "
                            f"so it must have `channels` = {call['channels']}", "stages", "channels")
        return out

    def infer(self, call: Call) -> FeatureMap:
        last = self._stages(call)[-1]
        k = call["scale"]
        return FeatureMap(channels=call["channels"], h=last.h.mul(k), w=last.w.mul(k))

    def extra_args(self, call: Call) -> dict:
        widths = [m.channels for m in self._stages(call)]
        value = call.inputs["stages"]
        keys = list(range(len(widths))) if isinstance(value, MultiScale) else list(value.items)
        return {"keys": keys, "widths": widths}


@register
class Upsample(Block):
    name = "invpt_upsample"
    module = "mtl_dsl.modules.invpt.Upsample"
    family = "invpt"
    doc = "Bilinear upsampling by an integer factor (the MT baseline's 8x before its prediction)."
    args = {
        "x": Input((FeatureMap,), "map"),
        "scale": Param(int, 2, "factor", min=1, max=64),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        k = call["scale"]
        return FeatureMap(channels=x.channels, h=x.h.mul(k), w=x.w.mul(k))
