"""Blocks of the tpanet family: TPANet's task prior extractor, adaptive task mixing, cross attention
and shared MLP (Xu et al.; the released ``AdaptHead``,
github.com/yangyangxu0/TPANet, src/model/heads/adapthead.py).

The adaptive task mixing's spatial MLP maps the S positions of the stride-4 grid to S: its size is
fixed by the input size the model is compiled for (the released code hard-codes NYUD's 14,980).
The cross attention's ``over = "self"`` is the released code at one image per GPU: a softmax over a
single key, whose query/key projections never get a gradient.
"""
from __future__ import annotations

from ..types import FeatureMap, TaskMap, same_dim
from ..weights.layout import Alias, multihead_attention, renames
from .demt import QK_IDLE, _check_heads, _positions, _task_maps
from .registry import Block, Call, Fusion, Input, Param, register


@register
class TaskPriorExtractor(Block):
    name = "task_prior_extractor"
    module = "mtl_dsl.modules.tpanet.TaskPriorExtractor"
    fusion = Fusion(within="the task branches and the shared branch as one convolution")
    family = "tpanet"
    doc = ("TPANet task prior extractor (paper eqs. 1-3): per task F_tp^t = specific_t(x) + inject(x) "
           "with 1x1 convolutions. Released code: groups 2, no BatchNorm; paper: groups 1 + "
           "BatchNorm.")
    args = {
        "x": Input((FeatureMap,), "aggregated features"),
        "dim": Param(int, doc="output channels D", min=1),
        "groups": Param(int, 2, "groups of every 1x1 convolution", min=1),
        "norm": Param(str, "none", "normalisation after each convolution", choices=("none", "bn")),
    }

    def infer(self, call: Call) -> TaskMap:
        x: FeatureMap = call.inputs["x"]
        g = call["groups"]
        if x.channels % g or call["dim"] % g:
            raise call.fail(f"groups = {g} must divide the input channels ({x.channels}) and dim "
                            f"({call['dim']})", "x")
        out = FeatureMap(channels=call["dim"], h=x.h, w=x.w)
        return TaskMap(items={t: out for t in call.task_names})

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # AdaptHead (yangyangxu0/TPANet src/model/heads/adapthead.py): specific_tasks is a
        # ModuleList in task order, each branch (and inject_prior) a bare Conv2d.
        pairs = {f"specific_tasks.{i}": f"specific_tasks.{t}.0"
                 for i, t in enumerate(call.task_names)}
        pairs["inject_prior"] = "inject_prior.0"
        return renames(pairs)


@register
class AdaptiveTaskMixing(Block):
    name = "adaptive_task_mixing"
    module = "mtl_dsl.modules.tpanet.AdaptiveTaskMixing"
    family = "tpanet"
    doc = ("TPANet adaptive task mixing (paper eqs. 4-7) on the channel concat of the task maps: "
           "spatial MLP over the S positions (hidden int(S * ratio), or S where that is 0, as released) and channel MLP "
           "over T*D, each residual after the one shared LayerNorm; split back per task. The "
           "spatial MLP is built for the input size the model is compiled for.")
    args = {
        "x": Input((TaskMap,), "per-task maps F_tp^t"),
        "ratio": Param(float, 0.0005, "spatial MLP hidden width per position", min=0.0, max=1.0),
    }

    def infer(self, call: Call) -> TaskMap:
        _task_maps(call, "x")
        return call.inputs["x"]

    def extra_args(self, call: Call) -> dict:
        maps = _task_maps(call, "x")
        return {"positions": _positions(maps[0], call)}

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # AdaptTaskMixing: its one LayerNorm `LN`; fc_s / fc_c are Mlp(norm, fc1, act, fc2).
        pairs = {"LN": "norm"}
        for mlp in ("fc_s", "fc_c"):
            pairs.update({f"{mlp}.norm": f"{mlp}.0", f"{mlp}.fc1": f"{mlp}.1",
                          f"{mlp}.fc2": f"{mlp}.3"})
        return renames(pairs)


@register
class TpanetCrossAttention(Block):
    name = "tpanet_cross_attention"
    module = "mtl_dsl.modules.tpanet.CrossAttention"
    fusion = Fusion("mtl_dsl.modules.batched.tpanet.cross_attentions")
    family = "tpanet"
    doc = ("TPANet cross attention (paper eqs. 9-11): F_tp + F + MHA(F, F, F) + MHA(F_tp, F, F) with "
           "one attention for both calls. over \"self\": the released code at one image per GPU "
           "(softmax over a single key: both terms are out_proj(v_proj(F))); \"all\": global "
           "attention over the task's N tokens.")
    args = {
        "x": Input((FeatureMap,), "the task's mixed map F^t (keys and values)"),
        "prior": Input((FeatureMap,), "the task's prior map F_tp^t (second query)"),
        "heads": Param(int, 2, "attention heads", min=1),
        "over": Param(str, "self", "token set each query attends over", choices=("self", "all")),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        p: FeatureMap = call.inputs["prior"]
        if p.channels != x.channels or not (same_dim(p.h, x.h, call.input_size)
                                            and same_dim(p.w, x.w, call.input_size)):
            raise call.fail(f"x {x.shape_str()} and prior {p.shape_str()} must have the same shape",
                            "x", "prior")
        _check_heads(call, "x", x.channels)
        return x

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        return multihead_attention("attn")  # AdaptHead.cross_atts[i]: nn.MultiheadAttention

    def idle(self, call: Call) -> dict[str, str]:
        if call["over"] == "self" or _positions(call.inputs["x"], call) == 1:
            return {"attn.q_proj": QK_IDLE, "attn.k_proj": QK_IDLE}
        return {}


@register
class TpanetMlp(Block):
    name = "tpanet_mlp"
    module = "mtl_dsl.modules.tpanet.SharedMlp"
    fusion = Fusion(within="one MLP call on the tokens of every task")
    family = "tpanet"
    doc = ("TPANet's MLP with residual (paper eq. 12), one module shared by all tasks as released: "
           "x + mlp(norm2(x)), mlp = [LayerNorm, Linear(D -> ratio*D), GELU, Linear(-> D)].")
    args = {
        "x": Input((TaskMap,), "per-task maps"),
        "ratio": Param(int, 2, "hidden width / D", min=1),
    }

    def infer(self, call: Call) -> TaskMap:
        _task_maps(call, "x")
        return call.inputs["x"]

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        return renames({"mlp.norm": "mlp.0", "mlp.fc1": "mlp.1", "mlp.fc2": "mlp.3"})
