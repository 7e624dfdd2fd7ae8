"""nn.Modules behind the aggregation blocks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class UpsampleConcat(nn.Module):
    def __init__(self, indices: Sequence[int], mode: str = "bilinear"):
        super().__init__()
        self.indices = list(indices)
        self.mode = mode

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        chosen = [levels[i] for i in self.indices]
        size = chosen[0].shape[-2:]
        align = False if self.mode == "bilinear" else None
        return torch.cat([m if m.shape[-2:] == size else
                          F.interpolate(m, size=size, mode=self.mode, align_corners=align)
                          for m in chosen], dim=1)


class SelectLevel(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return levels[self.index]
