"""nn.Modules behind the head blocks."""
from __future__ import annotations

import torch
from torch import nn

from .common import ConvBnAct, init_weight


class DenseHead(nn.Module):
    """bottleneck (kxk Conv-BN-ReLU, optional) -> 1x1 logits conv."""

    def __init__(self, cin: int, width: int, cout: int, kernel: int = 3):
        super().__init__()
        self.bottleneck = ConvBnAct(cin, width, kernel) if width else nn.Identity()
        self.logits = nn.Conv2d(width or cin, cout, 1)
        init_weight(self.logits, "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.bottleneck(x))
