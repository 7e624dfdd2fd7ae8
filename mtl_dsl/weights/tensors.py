"""Turning official tensors into the model's, by a plan's transfers (copy, split, permutation),
cast to the model's dtypes (float16/bfloat16 files into a float32 model)."""
from __future__ import annotations

from typing import Any

import torch

from .layout import COPY, SPLIT, UNFOLD_ORDER
from .plan import Plan

# nn.Unfold(kernel 2) orders the 4C inputs channel-major with the 2x2 positions (row, column) in
# row-major order: index c * 4 + (2 * row + column). The original Swin code (and timm) puts the
# positions first, in the order (0, 0), (1, 0), (0, 1), (1, 1): index p * C + c. Position p of
# Swin's order is position UNFOLD_POSITIONS[p] of nn.Unfold's (mmsegmentation's
# tools/model_converters/swin2mmseg.py applies the same permutation the other way).
UNFOLD_POSITIONS = (0, 2, 1, 3)


def unfold_to_swin_order(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim (4 x C, nn.Unfold's order) into Swin's patch-merging order."""
    *lead, width = x.shape
    channels = width // 4
    grouped = x.reshape(*lead, channels, 4)[..., list(UNFOLD_POSITIONS)]
    return grouped.transpose(-1, -2).reshape(*lead, width)


def swin_to_unfold_order(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``unfold_to_swin_order`` (the permutation is its own inverse)."""
    *lead, width = x.shape
    channels = width // 4
    grouped = x.reshape(*lead, 4, channels)[..., list(UNFOLD_POSITIONS), :]
    return grouped.transpose(-1, -2).reshape(*lead, width)


def materialize(plan: Plan, official: dict[str, torch.Tensor],
                reference: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model tensors the plan gives values, each in the dtype of ``reference[name]`` (a
    tensor or anything with a ``dtype``)."""
    out: dict[str, torch.Tensor] = {}
    for t in plan.transfers:
        value = official[t.official]
        if t.op == COPY:
            pieces = [value]
        elif t.op == SPLIT:
            sizes = [int(reference[name].shape[0]) for name in t.ours]
            pieces = list(torch.split(value, sizes, dim=0))
        elif t.op == UNFOLD_ORDER:
            pieces = [unfold_to_swin_order(value)]
        else:  # pragma: no cover - Alias refuses unknown ops
            raise ValueError(t.op)
        for name, piece in zip(t.ours, pieces):
            dtype = reference[name].dtype
            out[name] = piece.detach().to(dtype=dtype).contiguous().clone()
    return out
