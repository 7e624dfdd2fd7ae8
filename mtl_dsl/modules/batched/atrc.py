"""Batched forms of ATRC's per-task and per-pair blocks (``context_pool``, ``context_fusion``).

The Context Pooling blocks of one kind (global, local or label) whose inputs have one shape run
as one: their query, key and value projections (1x1 Conv-BN-act stacks) as grouped convolutions
with one BatchNorm each, their attention products as one batched matmul (local attention: the
pairs stacked along the batch). The fusion blocks of the targets run their 1x1 Conv-BN stacks
as grouped convolutions; their Dropout2d draws per target in target order, as the separate blocks
do. (The search supergraph's blocks are not batched.)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..atrc import GLOBAL_EPS, GlobalContext, LabelContext, LocalContext, local_attention, \
    region_prototypes
from .layers import Maps, apply_layer, run_layers

Value = torch.Tensor | list[torch.Tensor] | None


def _per_call(value: Value, shared: bool, n: int) -> list:
    return [value] * n if shared else list(value)  # type: ignore[arg-type]


def _by_call(x: Maps) -> torch.Tensor:
    """Channel-concatenated ``[B, T*C, ...]`` -> ``[B, T, C, ...]`` (a view)."""
    b = x.data.shape[0]
    return x.data.view(b, x.calls, -1, *x.data.shape[2:])


def context_pools(modules: Sequence[nn.Module], shared: tuple[bool, ...], target: Value,
                  source: Value, target_aux: Value, source_aux: Value) -> list[torch.Tensor]:
    """Context Pooling blocks of one kind (``GlobalContext``, ``LocalContext``, ``LabelContext``)."""
    n = len(modules)
    first = modules[0]
    q = run_layers([m.query for m in modules], Maps.of(target, n))  # type: ignore[arg-type]
    if isinstance(first, LabelContext):
        return _label(modules, shared, q, source, target_aux, source_aux)
    src = Maps.of(source, n)  # type: ignore[arg-type]
    k = run_layers([m.key for m in modules], src)
    v = run_layers([m.value for m in modules], src)
    b, _, h, w = q.data.shape
    if isinstance(first, GlobalContext):
        qf, kf, vf = (_by_call(t).flatten(3) for t in (q, k, v))  # B, T, C, N
        summary = torch.matmul(vf, kf.transpose(2, 3))  # B, T, C, C
        normaliser = torch.matmul(kf.sum(dim=3, keepdim=True).transpose(2, 3), qf)  # B, T, 1, N
        out = torch.matmul(summary, qf) / normaliser.clamp_min(GLOBAL_EPS)
        return list(out.view(b, n, -1, h, w).unbind(1))
    assert isinstance(first, LocalContext)

    def stacked(t: Maps) -> torch.Tensor:  # [T*B, C, h, w], call after call
        return _by_call(t).transpose(0, 1).reshape(n * b, -1, h, w)

    out = local_attention(stacked(q), stacked(k), stacked(v), first.window, first.chunk_elements)
    return list(out.view(n, b, -1, h, w).unbind(0))


def _label(modules: Sequence[nn.Module], shared: tuple[bool, ...], q: Maps, source: Value,
           target_aux: Value, source_aux: Value) -> list[torch.Tensor]:
    n = len(modules)
    regions = modules[0].regions
    logits = _per_call(target_aux, shared[2], n) if regions == "target" else \
        _per_call(source_aux, shared[3], n)
    sources = _per_call(source, shared[1], n)
    prototypes = Maps.of([region_prototypes(s, a) for s, a in zip(sources, logits)], n)
    k = _by_call(run_layers([m.key for m in modules], prototypes)).flatten(3)  # B, T, C, R
    v = _by_call(run_layers([m.value for m in modules], prototypes)).flatten(3).transpose(2, 3)
    b, _, h, w = q.data.shape
    qf = _by_call(q).flatten(3).transpose(2, 3)  # B, T, N, C
    attention = torch.softmax(torch.matmul(qf, k) * qf.shape[-1] ** -0.5, dim=-1)
    out = torch.matmul(attention, v).transpose(2, 3)  # B, T, C, N
    return list(out.reshape(b, n, -1, h, w).unbind(1))


def context_fusions(modules: Sequence[nn.Module], shared: tuple[bool, ...], x: Value,
                    contexts: dict | list[dict] | None) -> list[torch.Tensor]:
    """``ContextFusion``: the targets' context projections and bottlenecks as grouped
    convolutions; dropout per target, in order."""
    n = len(modules)
    features = _per_call(x, shared[0], n)
    if modules[0].out_proj is not None:
        joined = [torch.cat(list(c.values()), dim=1) for c in _per_call(contexts, shared[1], n)]
        context = run_layers([m.out_proj for m in modules], Maps.of(joined, n)).split()
        features = [torch.cat([f, c], dim=1) for f, c in zip(features, context)]
    y = run_layers([m.bottleneck for m in modules], Maps.of(features, n))
    return apply_layer([m.dropout for m in modules], y).split()
