"""Batched forms of the common per-position blocks (``linear``, ``mlp``, ``attention``).

On a shared input, the T calls' Linear layers are one matmul with the weights stacked as output
features; on T inputs of one shape, one batched matmul (``torch.baddbmm``). The T attentions run
as one ``scaled_dot_product_attention`` call with the calls stacked along the batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .layers import linear, linear_each


def _positions(x: torch.Tensor, channels_first: bool) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if channels_first else x


def _layout(y: torch.Tensor, channels_first: bool) -> torch.Tensor:
    return y.permute(0, 3, 1, 2) if channels_first else y


def _project(layers: Sequence[nn.Linear], x, shared: bool) -> torch.Tensor:
    """Layer i of ``layers`` on call i's input (the one shared input, or a list or a ``[T, ...]``
    stack of inputs): ``[T, *batch, out]``."""
    if shared:
        y = linear(layers, x)
        return torch.stack(y.split(layers[0].out_features, dim=-1)) \
            if len({m.out_features for m in layers}) == 1 else \
            torch.stack([F.linear(x, m.weight, m.bias) for m in layers])
    xs = x if isinstance(x, torch.Tensor) else torch.stack(list(x))
    flat = linear_each(layers, xs.reshape(len(layers), -1, xs.shape[-1]))
    return flat.view(*xs.shape[:-1], -1)


def linears(modules: Sequence[nn.Module], shared: tuple[bool, ...], x) -> list[torch.Tensor]:
    """``PositionwiseLinear`` on maps or tokens."""
    cf = modules[0].channels_first
    inputs = _positions(x, cf) if shared[0] else [_positions(v, cf) for v in x]
    layers = [m.linear for m in modules]
    if shared[0]:
        y = linear(layers, inputs)
        parts = y.split([m.out_features for m in layers], dim=-1)
    else:
        parts = list(_project(layers, inputs, False).unbind(0))
    return [_layout(p, cf) for p in parts]


def mlps(modules: Sequence[nn.Module], shared: tuple[bool, ...], x) -> list[torch.Tensor]:
    """``Mlp``: norm -> fc1 -> GELU -> fc2 (+ residual) of every call."""
    first = modules[0]
    n = len(modules)
    cf = first.channels_first
    inputs = [x] * n if shared[0] else list(x)
    ys = [_positions(v, cf) for v in inputs]
    normed_shared = shared[0] and isinstance(first.norm, nn.Identity)
    if not isinstance(first.norm, nn.Identity):
        ys = [m.norm(y) for m, y in zip(modules, ys)]
    h = _project([m.fc1 for m in modules], ys[0] if normed_shared else ys, normed_shared)
    h = first.act(h)
    out = _project([m.fc2 for m in modules], h, False)
    results = [_layout(o, cf) for o in out.unbind(0)]
    if first.residual:
        results = [v + r for v, r in zip(inputs, results)]
    return results


def attentions(modules: Sequence[nn.Module], shared: tuple[bool, ...], q, kv) -> list[torch.Tensor]:
    """``Attention`` (common block) of every call, as one attention over the stacked calls."""
    first = modules[0]
    n = len(modules)
    queries = [q] * n if shared[0] else list(q)
    if shared[1] and kv is None:
        keys, kv_shared = (q, shared[0])
    else:
        keys, kv_shared = (kv, shared[1])
    projections = [m.attn for m in modules]
    if first.over == "self":
        v = _project([a.v_proj for a in projections], keys, kv_shared)
        out = _project([a.out_proj for a in projections], v, False)
    else:
        out = _attend(modules, queries, keys, kv_shared, shared[0])
    results = list(out.unbind(0))
    if first.residual:
        results = [a + r for a, r in zip(queries, results)]
    return results


def _attend(modules: Sequence[nn.Module], queries: list[torch.Tensor], keys, kv_shared: bool,
            q_shared: bool) -> torch.Tensor:
    first = modules[0]
    projections = [m.attn for m in modules]
    n = len(modules)
    qh = _project([a.q_proj for a in projections], queries[0] if q_shared else queries, q_shared)
    kh = _project([a.k_proj for a in projections], keys, kv_shared)
    vh = _project([a.v_proj for a in projections], keys, kv_shared)
    _, b, nq, c = qh.shape
    h = first.heads
    d = c // h
    if first.over == "tasks":
        t = first.key_groups
        npos = kh.shape[2] // t
        tq = nq // npos
        qh = qh.reshape(n * b, tq, npos, h, d).permute(0, 2, 3, 1, 4)
        kh = kh.reshape(n * b, t, npos, h, d).permute(0, 2, 3, 1, 4)
        vh = vh.reshape(n * b, t, npos, h, d).permute(0, 2, 3, 1, 4)
        y = F.scaled_dot_product_attention(qh, kh, vh).permute(0, 3, 1, 2, 4).reshape(n, b * nq, c)
    else:
        qh = qh.reshape(n * b, nq, h, d).transpose(1, 2)
        kh = kh.reshape(n * b, -1, h, d).transpose(1, 2)
        vh = vh.reshape(n * b, -1, h, d).transpose(1, 2)
        y = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(n, b * nq, c)
    return linear_each([a.out_proj for a in projections], y).view(n, b, nq, c)
