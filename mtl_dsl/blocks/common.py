"""Common primitives: convolution/normalisation/activation, linear and layer norm on maps and
tokens, resizing, adding and concatenating, attention and MLP, and the collection operations that
turn per-task values into one value (``tokens``, ``concat``, ``stack``) and back (``split``)."""
from __future__ import annotations

from ..types import FeatureMap, TaskMap, Tokens
from .registry import Block, Call, Fusion, Input, Param, register

ACTIVATIONS = ("relu", "gelu", "none")
NORMS = ("bn", "ln", "none")


@register
class ConvBnAct(Block):
    name = "conv_bn_act"
    module = "mtl_dsl.modules.common.ConvBnAct"
    fusion = Fusion("mtl_dsl.modules.batched.heads.conv_bn_acts", vary=("channels", "init"))
    doc = "Conv2d (no bias when a norm follows) -> norm -> activation."
    args = {
        "x": Input((FeatureMap,), "input map"),
        "channels": Param(int, doc="output channels", min=1),
        "kernel": Param(int, 3, "kernel size", min=1, max=15),
        "stride": Param(int, 1, "stride", min=1, max=8),
        "dilation": Param(int, 1, "dilation", min=1, max=16),
        "groups": Param(int, 1, "groups", min=1),
        "norm": Param(str, "bn", "normalisation", choices=NORMS),
        "act": Param(str, "relu", "activation", choices=ACTIVATIONS),
        "bias": Param(bool, None, "conv bias (default: only when norm is none)"),
        "init": Param(str, "default", "weight init", choices=("default", "logits", "xavier", "trunc_normal")),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        k, s, d, g = call["kernel"], call["stride"], call["dilation"], call["groups"]
        if x.channels % g or call["channels"] % g:
            raise call.fail(f"groups={g} must divide the input channels ({x.channels}) and the output "
                            f"channels ({call['channels']})", "x")
        pad = d * (k - 1) // 2
        return FeatureMap(channels=call["channels"], h=x.h.conv(k, s, pad, d), w=x.w.conv(k, s, pad, d))


@register
class Linear(Block):
    name = "linear"
    module = "mtl_dsl.modules.common.PositionwiseLinear"
    fusion = Fusion("mtl_dsl.modules.batched.common.linears", vary=("init",))
    doc = "A per-position Linear layer on a feature map's channels or on tokens."
    args = {
        "x": Input((FeatureMap, Tokens), "map or tokens"),
        "channels": Param(int, doc="output channels", min=1),
        "bias": Param(bool, True, "with bias"),
        "init": Param(str, "default", "weight init", choices=("default", "trunc_normal", "xavier")),
    }

    def infer(self, call: Call):
        return call.inputs["x"].model_copy(update={"channels": call["channels"]})


@register
class LayerNorm(Block):
    name = "layer_norm"
    module = "mtl_dsl.modules.common.PositionwiseLayerNorm"
    doc = "LayerNorm over the channels of a feature map (per position) or of tokens."
    args = {
        "x": Input((FeatureMap, Tokens), "map or tokens"),
        "eps": Param(float, 1e-5, "epsilon", min=0),
    }

    def infer(self, call: Call):
        return call.inputs["x"]


@register
class LinearNorm(Block):
    name = "linear_norm"
    module = "mtl_dsl.modules.common.LinearNorm"
    doc = "Linear to `channels` then LayerNorm (or LayerNorm then Linear with order=\"norm_first\")."
    args = {
        "x": Input((FeatureMap, Tokens), "map or tokens"),
        "channels": Param(int, doc="output channels", min=1),
        "order": Param(str, "linear_first", "which comes first", choices=("linear_first", "norm_first")),
    }

    def infer(self, call: Call):
        return call.inputs["x"].model_copy(update={"channels": call["channels"]})


@register
class Mlp(Block):
    name = "mlp"
    module = "mtl_dsl.modules.common.Mlp"
    fusion = Fusion("mtl_dsl.modules.batched.common.mlps")
    doc = "Linear -> GELU -> Linear on every position (hidden = ratio * channels)."
    args = {
        "x": Input((FeatureMap, Tokens), "map or tokens"),
        "ratio": Param(float, 4.0, "hidden width / input width", min=0.01, max=64),
        "channels": Param(int, 0, "output channels (0: same as input)", min=0),
        "residual": Param(bool, False, "add the input (pre-norm residual when norm is true)"),
        "norm": Param(bool, False, "LayerNorm before the MLP"),
    }

    def infer(self, call: Call):
        x = call.inputs["x"]
        out = call["channels"] or x.channels
        if call["residual"] and out != x.channels:
            raise call.fail("a residual MLP keeps the channel count", "x")
        return x.model_copy(update={"channels": out})


@register
class Attention(Block):
    name = "attention"
    module = "mtl_dsl.modules.common.Attention"
    fusion = Fusion("mtl_dsl.modules.batched.common.attentions")
    doc = ("Multi-head attention with an explicit token set. `over`: \"all\" = every query attends "
           "to every key token (global MHSA; memory-efficient scaled_dot_product_attention); "
           "\"tasks\" = at each position, a query attends to the T tasks' tokens at that position "
           "(the official DeMT task query); \"self\" = each token attends only to itself, i.e. "
           "out_proj(v_proj(x)) (the official DeMT/TPANet attention at one image per GPU; q/k "
           "weights are built for parity but idle).")
    args = {
        "q": Input((Tokens,), "queries"),
        "kv": Input((Tokens,), "keys and values (default: the queries)", optional=True),
        "heads": Param(int, 4, "attention heads", min=1, max=256),
        "over": Param(str, "all", "which key tokens each query sees", choices=("all", "tasks", "self")),
        "residual": Param(bool, False, "add the queries to the output"),
    }

    def infer(self, call: Call) -> Tokens:
        q: Tokens = call.inputs["q"]
        kv: Tokens = call.inputs["kv"] or q
        if q.channels % call["heads"]:
            raise call.fail(f"{call['heads']} heads do not divide {q.channels} channels", "q")
        if kv.channels != q.channels:
            raise call.fail(f"queries have {q.channels} channels, keys {kv.channels}", "q", "kv")
        over = call["over"]
        size = call.input_size
        same_grid = q.h.eval(*size) == kv.h.eval(*size) and q.w.eval(*size) == kv.w.eval(*size)
        if over == "tasks" and not same_grid:
            raise call.fail("over=\"tasks\" needs queries and keys on the same grid", "q", "kv")
        if over == "self" and not (same_grid and q.groups == kv.groups):
            raise call.fail("over=\"self\" pairs every query with its own key token", "q", "kv")
        return q

    def idle(self, call: Call) -> dict[str, str]:
        if call["over"] == "self":
            reason = "softmax over a single key: query and key projections get no gradient"
            return {"attn.q_proj": reason, "attn.k_proj": reason}
        return {}


@register
class TaskTokens(Block):
    name = "tokens"
    module = "mtl_dsl.modules.common.StackTokens"
    doc = ("Stack per-task feature maps (or one map) as tokens: {t: [B, C, h, w]} -> "
           "[B, T*h*w, C], tasks in order.")
    args = {"x": Input((TaskMap, FeatureMap), "per-task maps or one map")}

    def infer(self, call: Call) -> Tokens:
        x = call.inputs["x"]
        if isinstance(x, FeatureMap):
            return Tokens(channels=x.channels, h=x.h, w=x.w, groups=1)
        maps = list(x.items.values())
        if not maps or not all(isinstance(m, FeatureMap) for m in maps):
            raise call.fail("tokens() stacks feature maps", "x")
        first = maps[0]
        size = call.input_size
        for m in maps[1:]:
            if m.concrete(size) != first.concrete(size):
                raise call.fail(f"all maps must have one shape to be stacked: {first.shape_str()} "
                                f"vs {m.shape_str()}", "x")
        return Tokens(channels=first.channels, h=first.h, w=first.w, groups=len(maps))


@register
class SplitTokens(Block):
    name = "split"
    module = "mtl_dsl.modules.common.SplitTokens"
    doc = "Split stacked task tokens back into per-task feature maps (the inverse of tokens())."
    args = {
        "x": Input((Tokens,), "tokens of T stacked maps"),
        "like": Input((TaskMap,), "the per-task collection whose keys name the parts"),
    }

    def infer(self, call: Call) -> TaskMap:
        x: Tokens = call.inputs["x"]
        like: TaskMap = call.inputs["like"]
        if x.groups != len(like.items):
            raise call.fail(f"{x.groups} token groups but {len(like.items)} tasks", "x", "like")
        return TaskMap(items={k: FeatureMap(channels=x.channels, h=x.h, w=x.w) for k in like.items})


@register
class ToMap(Block):
    name = "to_map"
    module = "mtl_dsl.modules.common.TokensToMap"
    doc = "Tokens of one map [B, h*w, C] back to the map [B, C, h, w]."
    args = {"x": Input((Tokens,), "tokens of one map")}

    def infer(self, call: Call) -> FeatureMap:
        x: Tokens = call.inputs["x"]
        if x.groups != 1:
            raise call.fail("to_map takes tokens of one map; use split() for stacked tasks", "x")
        return FeatureMap(channels=x.channels, h=x.h, w=x.w)


@register
class Concat(Block):
    name = "concat"
    module = "mtl_dsl.modules.common.ChannelConcat"
    doc = "Channel concatenation of per-task maps ({t: map}) or of two or three maps."
    args = {
        "a": Input((FeatureMap, TaskMap), "a map or a per-task collection of maps"),
        "b": Input((FeatureMap,), "second map", optional=True),
        "c": Input((FeatureMap,), "third map", optional=True),
    }

    def infer(self, call: Call) -> FeatureMap:
        a = call.inputs["a"]
        maps = list(a.items.values()) if isinstance(a, TaskMap) else [a]
        maps += [m for m in (call.inputs["b"], call.inputs["c"]) if m is not None]
        if not maps or not all(isinstance(m, FeatureMap) for m in maps):
            raise call.fail("concat joins feature maps", "a")
        size = call.input_size
        first = maps[0]
        for m in maps[1:]:
            if m.concrete(size)[1:] != first.concrete(size)[1:]:
                raise call.fail(f"maps of different sizes: {first.shape_str()} vs {m.shape_str()}",
                                "a", "b")
        return FeatureMap(channels=sum(m.channels for m in maps), h=first.h, w=first.w)


@register
class Resize(Block):
    name = "resize"
    module = "mtl_dsl.modules.common.Resize"
    doc = ("Bilinear (align_corners=False) or nearest resizing by an integer `scale` (> 1 up, "
           "`down` > 1 down) or to the size of `like`.")
    args = {
        "x": Input((FeatureMap,), "map"),
        "like": Input((FeatureMap,), "resize to this map's size", optional=True),
        "scale": Param(int, 1, "upsampling factor", min=1, max=64),
        "down": Param(int, 1, "downsampling factor (output = ceil(size / down))", min=1, max=64),
        "mode": Param(str, "bilinear", "interpolation", choices=("bilinear", "nearest")),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        like = call.inputs["like"]
        if like is not None:
            if call["scale"] != 1 or call["down"] != 1:
                raise call.fail("give either `like` or `scale`/`down`", "x", "like")
            return FeatureMap(channels=x.channels, h=like.h, w=like.w)
        h, w = x.h.mul(call["scale"]).cdiv(call["down"]), x.w.mul(call["scale"]).cdiv(call["down"])
        return FeatureMap(channels=x.channels, h=h, w=w)


@register
class Activation(Block):
    name = "activation"
    module = "mtl_dsl.modules.common.activation"
    doc = "An element-wise activation."
    args = {
        "x": Input((FeatureMap, Tokens), "input"),
        "fn": Param(str, "relu", "which", choices=("relu", "gelu", "sigmoid", "tanh", "softplus")),
    }

    def infer(self, call: Call):
        return call.inputs["x"]


@register
class Dropout(Block):
    name = "dropout"
    module = "mtl_dsl.modules.common.dropout"
    doc = "Dropout (per channel on maps: Dropout2d)."
    args = {
        "x": Input((FeatureMap, Tokens), "input"),
        "p": Param(float, 0.1, "drop probability", min=0, max=1),
    }

    def infer(self, call: Call):
        return call.inputs["x"]

    def draws_random(self, call: Call) -> bool:
        return call["p"] > 0


@register
class Detach(Block):
    name = "detach"
    module = "mtl_dsl.modules.common.Detach"
    doc = ("The value with its gradient stopped (ATRC's auxiliary heads read the backbone features "
           "without training the backbone).")
    args = {"x": Input((FeatureMap, Tokens), "input")}

    def infer(self, call: Call):
        return call.inputs["x"]


@register
class Select(Block):
    name = "select"
    module = "mtl_dsl.modules.common.SelectKey"
    doc = "One entry of a per-task collection (what `g[t]` on a block's per-task result means)."
    args = {
        "x": Input((TaskMap,), "per-task collection"),
        "key": Param(str, doc="the task (entry) to take"),
    }

    def infer(self, call: Call):
        x: TaskMap = call.inputs["x"]
        if call["key"] not in x.items:
            from ..errors import did_you_mean

            raise call.fail(f"no entry '{call['key']}' (entries: {', '.join(x.items)})", "x",
                            hint=did_you_mean(call["key"], x.items))
        return x.items[call["key"]]
