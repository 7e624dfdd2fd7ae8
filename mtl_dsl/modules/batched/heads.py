"""Batched forms of the prediction heads (``dense_head``, ``ratio_head``, ``conv_bn_act``): the
T bottlenecks as one convolution (one grouped convolution when each call reads its own map) and
one BatchNorm, the T logit convolutions as one grouped convolution when their widths agree."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import Maps, apply_layer, run_layers


def _maps(x: torch.Tensor | list[torch.Tensor], shared: bool, calls: int) -> Maps:
    return Maps.of(x if shared else list(x), calls)


def dense_heads(modules: Sequence[nn.Module], shared: tuple[bool, ...],
                x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """``DenseHead``: bottleneck (Conv-BN-ReLU, or none) -> 1x1 logits."""
    y = _maps(x, shared[0], len(modules))
    if not isinstance(modules[0].bottleneck, nn.Identity):
        y = run_layers([m.bottleneck for m in modules], y)
    return apply_layer([m.logits for m in modules], y).split()


def ratio_heads(modules: Sequence[nn.Module], shared: tuple[bool, ...],
                x: torch.Tensor | list[torch.Tensor], features: object) -> list[torch.Tensor]:
    """``RatioHead``: Conv-BN-ReLU bottleneck -> 1x1 logits (``features`` only set the width)."""
    y = run_layers([m.bottleneck for m in modules], _maps(x, shared[0], len(modules)))
    return apply_layer([m.final_logits for m in modules], y).split()


def conv_bn_acts(modules: Sequence[nn.Sequential], shared: tuple[bool, ...],
                 x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """``ConvBnAct`` (and any ``nn.Sequential`` block module): layer by layer."""
    return run_layers(modules, _maps(x, shared[0], len(modules))).split()
