"""nn.Modules behind the common blocks."""
from __future__ import annotations

import torch
from torch import nn


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity}[name]()


def init_weight(conv: nn.Module, how: str) -> None:
    """"logits": N(0, 0.01) weights and zero bias, as the official heads initialise predictions."""
    if how == "logits":
        nn.init.normal_(conv.weight, 0.0, 0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    elif how == "xavier":
        nn.init.xavier_uniform_(conv.weight)
    elif how == "trunc_normal":
        nn.init.trunc_normal_(conv.weight, std=0.02)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


class ConvBnAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, norm: str = "bn", act: str = "relu", bias: bool = False,
                 init: str = "default"):
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                              groups, bias=bias)
        }
        init_weight(layers["conv"], init)
        if norm == "bn":
            layers["bn"] = nn.BatchNorm2d(cout)
        elif norm == "ln":
            layers["ln"] = LayerNorm2d(cout)
        if act != "none":
            layers["act"] = activation(act)
        super().__init__()
        for k, v in layers.items():
            self.add_module(k, v)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
