"""nn.Modules behind the head blocks."""
from __future__ import annotations

import torch
from torch import nn

from .common import ConvBnAct, init_weight


class DenseHead(nn.Module):
    """bottleneck (kxk Conv-BN-ReLU of width ``width``, or in_channels // reduction when it is 0;
    none when ``bottleneck`` is false) -> 1x1 logits conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 0, reduction: int = 4,
                 kernel: int = 3, bottleneck: bool = True):
        super().__init__()
        cin = in_channels
        width = (width or cin // reduction) if bottleneck else 0
        self.bottleneck = ConvBnAct(cin, width, kernel) if width else nn.Identity()
        self.logits = nn.Conv2d(width or cin, out_channels, 1)
        init_weight(self.logits, "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.bottleneck(x))
