"""Common primitives: convolution/normalisation/activation, linear and layer norm on maps and
tokens, resizing, adding and concatenating, attention and MLP, and the collection operations that
turn per-task values into one value (``tokens``, ``concat``, ``stack``) and back (``split``)."""
from __future__ import annotations

from ..types import FeatureMap, MultiScale, TaskMap, Tokens
from .registry import Block, Call, Input, Param, register

ACTIVATIONS = ("relu", "gelu", "none")
NORMS = ("bn", "ln", "none")


@register
class ConvBnAct(Block):
    name = "conv_bn_act"
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

    def build(self, call: Call):
        from ..modules.common import ConvBnAct as Module

        x: FeatureMap = call.inputs["x"]
        bias = call["bias"] if call["bias"] is not None else call["norm"] == "none"
        return Module(x.channels, call["channels"], call["kernel"], call["stride"], call["dilation"],
                      call["groups"], call["norm"], call["act"], bias, call["init"])
