"""Batched forms of DeMT's per-task blocks (``deformable_mixer``, ``task_query``).

The T deformable mixers run as one: their channel mixing as one convolution (T grouped
convolutions when each reads its own map), their offset networks as grouped convolutions, and
their deformable convolutions as one bilinear sampling of every channel at its own offsets
(``F.grid_sample`` over the T*D channel planes) followed by one grouped 1x1 convolution. That is
what ``torchvision.ops.deform_conv2d`` computes for a 1x1 kernel with one offset group per input
channel (zero outside the map, the same corner weights), and on a CPU its backward is several
times faster than ``deform_conv2d``'s, which dominated DeMT's training step. The T task queries read one set of keys: the
keys are stacked once, and the T key and value projections of a shared input are one matmul each.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..demt import kernel_coordinates, map_tokens, stack_tasks, token_map
from .layers import Maps, apply_layer, conv2d, linear, run_layers


def deformable_mixers(modules: Sequence[nn.Module], shared: tuple[bool, ...],
                      x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """``DeformableMixer``: x = channel_mix(x); x + GELU-BN(deform_conv(x))."""
    n = len(modules)
    mixed = run_layers([m.channel_mix for m in modules], Maps.of(x, n)).expanded()
    convs = [m.spatial[0] for m in modules]
    offsets = [c.get_offset for c in convs]
    h, w = mixed.data.shape[-2:]
    p = conv2d([o.p_conv for o in offsets], mixed)
    p = Maps(p.data + kernel_coordinates(h, w, p.data).repeat(1, n, 1, 1), n, p.widths)
    offset = conv2d([o.opt for o in offsets], p)
    weight = torch.cat([c.weight for c in convs])
    bias = torch.cat([c.bias for c in convs])
    y = Maps(_deform_conv_1x1(mixed.data, offset.data, weight, bias, n), n, mixed.widths)
    for layers in zip(*(list(m.spatial)[1:] for m in modules)):
        y = apply_layer(layers, y)
    return Maps(mixed.data + y.data, n, mixed.widths).split()


def _deform_conv_1x1(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor, groups: int) -> torch.Tensor:
    """``deform_conv2d(x, offset, weight, bias)`` for a 1x1 kernel, stride 1, no padding and one
    offset group per input channel (offset channel 2c moves channel c down, 2c+1 right)."""
    b, c, h, w = x.shape
    # grid_sample's coordinates are normalised by h - 1 and w - 1. An exported program keeps the
    # one operator deployment runtimes know as the deformable convolution (ONNX DeformConv).
    if h < 2 or w < 2 or torch.compiler.is_exporting():
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, offset, weight, bias)
    moves = offset.view(b, c, 2, h, w)
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
    grid = torch.stack(((cols + moves[:, :, 1]) * (2 / (w - 1)) - 1,
                        (rows + moves[:, :, 0]) * (2 / (h - 1)) - 1), -1)
    sampled = F.grid_sample(x.reshape(b * c, 1, h, w), grid.view(b * c, h, w, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=True)
    return F.conv2d(sampled.view(b, c, h, w), weight, bias, groups=groups)


def task_queries(modules: Sequence[nn.Module], shared: tuple[bool, ...],
                 x: torch.Tensor | list[torch.Tensor],
                 context: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """``TaskQuery``: each call's map queries the stacked context tokens; sMLP; residual."""
    n = len(modules)
    maps = [x] * n if shared[0] else list(x)
    h, w = maps[0].shape[-2:]
    queries = [map_tokens(m) for m in maps]
    attentions = [m.task_query for m in modules]
    prenorm = modules[0].norm_q is not None
    if shared[1] and not prenorm:
        kv = stack_tasks(context)  # [B, T', N, D], stacked once for all calls
        d = kv.shape[-1]
        keys = linear([a.k_proj for a in attentions], kv).split(d, -1)
        values = linear([a.v_proj for a in attentions], kv).split(d, -1)
        qs = queries
    else:
        contexts = [context] * n if shared[1] else list(context)
        kvs = [stack_tasks(c) for c in contexts]
        if prenorm:
            qs = [m.norm_q(q) for m, q in zip(modules, queries)]
            kvs = [m.norm_kv(kv) for m, kv in zip(modules, kvs)]
        else:
            qs = queries
        keys = [a.k_proj(kv) for a, kv in zip(attentions, kvs)]
        values = [a.v_proj(kv) for a, kv in zip(attentions, kvs)]
    q = torch.stack([a.q_proj(t) for a, t in zip(attentions, qs)], 1)  # [B, calls, N, D]
    attended = _attend(attentions[0], q, torch.stack(keys, 1), torch.stack(values, 1))
    out = []
    for i, (m, a) in enumerate(zip(modules, attentions)):
        y = a.out_proj(attended[:, i])
        out.append(token_map(queries[i] + m.smlp(y), h, w))
    return out


def _attend(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``TokenAttention`` of every call at once, before its output projection.

    ``q``: ``[B, calls, N, D]``; ``k``, ``v``: ``[B, calls, T', N, D]``. Returns ``[B, calls, N, D]``.
    """
    b, c, n, d = q.shape
    t = k.shape[2]
    h = attention.heads
    hd = d // h
    if attention.over == "all":
        qh = q.view(b * c, n, h, hd).transpose(1, 2)
        kh = k.reshape(b * c, t * n, h, hd).transpose(1, 2)
        vh = v.reshape(b * c, t * n, h, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(qh, kh, vh)
        return y.transpose(1, 2).reshape(b, c, n, d)
    qh = q.view(b, c, n, h, 1, hd)
    kh = k.view(b, c, t, n, h, hd).permute(0, 1, 3, 4, 5, 2)  # [b, c, n, h, hd, t]
    vh = v.view(b, c, t, n, h, hd).permute(0, 1, 3, 4, 2, 5)  # [b, c, n, h, t, hd]
    weights = torch.softmax((qh @ kh) / math.sqrt(hd), dim=-1)
    return (weights @ vh).reshape(b, c, n, d)
