"""nn.Modules behind the aggregation blocks. Levels are counted from 1, as in the specs."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class UpsampleConcat(nn.Module):
    """The chosen levels (all when ``levels`` is None) resized to the first one's size and
    concatenated in order."""

    def __init__(self, levels: Sequence[int] | None = None, mode: str = "bilinear"):
        super().__init__()
        self.indices = None if levels is None else [lv - 1 for lv in levels]
        self.mode = mode

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        chosen = list(levels) if self.indices is None else [levels[i] for i in self.indices]
        size = chosen[0].shape[-2:]
        align = False if self.mode == "bilinear" else None
        return torch.cat([m if m.shape[-2:] == size else
                          F.interpolate(m, size=size, mode=self.mode, align_corners=align)
                          for m in chosen], dim=1)


class SelectLevel(nn.Module):
    def __init__(self, level: int):
        super().__init__()
        self.index = level - 1

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return levels[self.index]
