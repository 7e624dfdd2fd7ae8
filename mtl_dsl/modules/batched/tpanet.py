"""Batched forms of TPANet's per-task blocks (``tpanet_cross_attention``) and of the per-task
layers inside its task prior extractor and shared MLP (``TaskPriorExtractor.batched``,
``SharedMlp.batched``, set by the compiler when fusion is on).

The cross attention x = F_tp + F + MHA(F, F, F) + MHA(F_tp, F, F) calls one attention twice
with the same keys and values. With ``over = "self"`` (the released code at one image per GPU)
each call's softmax is over a single key: its weights are exactly 1, its result is
out_proj(v_proj(F)) whatever the query, and its query and key projections are idle. The batched
form computes that value path once per call and adds it twice, which is the same sum; the
separate module computes queries and keys as the released code does, so that its multiply-adds
match (the compiled model's figures are counted with fusion off).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..demt import map_tokens, token_map
from .layers import Maps, linear_each, run_layers


def cross_attentions(modules: Sequence[nn.Module], shared: tuple[bool, ...],
                     x: torch.Tensor | list[torch.Tensor],
                     prior: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """``CrossAttention`` of every call (the task's mixed map ``x``, its prior map ``prior``)."""
    n = len(modules)
    features = [x] * n if shared[0] else list(x)
    priors = [prior] * n if shared[1] else list(prior)
    h, w = features[0].shape[-2:]
    f = torch.stack([map_tokens(m) for m in features])  # [calls, B, N, D]
    p = torch.stack([map_tokens(m) for m in priors])
    calls, b, tokens, d = f.shape
    attentions = [m.attn for m in modules]
    if attentions[0].over == "self":
        v = linear_each([a.v_proj for a in attentions], f.view(calls, b * tokens, d))
        y = linear_each([a.out_proj for a in attentions], v).view(calls, b, tokens, d)
        total = p + f + y + y
    else:
        total = p + f + _attend(attentions, f, f) + _attend(attentions, p, f)
    return [token_map(total[i], h, w) for i in range(calls)]


def _attend(attentions: Sequence[nn.Module], query: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``TokenAttention`` with ``over = "all"`` of every call: ``[calls, B, N, D]`` queries
    attend over the call's ``[calls, B, N, D]`` keys and values."""
    calls, b, n, d = query.shape
    heads = attentions[0].heads
    hd = d // heads

    def project(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
        out = linear_each(layers, x.reshape(calls, b * n, d))
        return out.view(calls * b, n, heads, hd).transpose(1, 2)

    q = project([a.q_proj for a in attentions], query)
    k = project([a.k_proj for a in attentions], source)
    v = project([a.v_proj for a in attentions], source)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(calls, b * n, d)
    return linear_each([a.out_proj for a in attentions], y).view(calls, b, n, d)


def prior_extractor(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``TaskPriorExtractor``: the T task branches and the shared one as one convolution (+ one
    BatchNorm): F_tp^t = specific_t(x) + inject(x)."""
    branches = [*module.specific_tasks.values(), module.inject_prior]
    y = run_layers(branches, Maps.of(x, len(branches))).split()
    shared = y[-1]
    return {t: part + shared for t, part in zip(module.specific_tasks, y[:-1])}


def shared_mlp(module: nn.Module, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``SharedMlp``: the one MLP on the tokens of every task at once (batch-concatenated)."""
    first = next(iter(maps.values()))
    b = first.shape[0]
    h, w = first.shape[-2:]
    x = torch.cat([map_tokens(m) for m in maps.values()])  # [T*B, N, D]
    y = x + module.mlp(module.norm2(x))
    return {t: token_map(y[i * b:(i + 1) * b], h, w) for i, t in enumerate(maps)}
