"""nn.Modules of DeMT (Xu et al., AAAI 2023) as the official ``DemtHead`` computes them.

Official code: github.com/yangyangxu0/DeMT, src/model/heads/demt_head.py (``DemtHead``,
``DefMixer``, ``ChlSpl``, ``Offset``). Two things decide parity with the official model:
the "deformable" operator is a 1x1 DCNv1 whose per-channel offsets are an affine function of the
absolute pixel coordinates (``PixelOffsets``), and the official attentions, called with
``batch_first=False`` on ``(B, tokens, D)`` tensors at one image per GPU, degenerate into a
per-token value/output projection (task interaction) and a per-pixel attention over the T tasks
(task query). ``TokenAttention`` names that token set explicitly (``over``) so the computation does
not depend on the batch size.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

KERNEL_ROWS = (-1, -1, -1, 0, 0, 0, 1, 1, 1)  # 3x3 kernel offsets, torch.meshgrid 'ij' order
KERNEL_COLS = (-1, 0, 1, -1, 0, 1, -1, 0, 1)


def kernel_coordinates(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``[1, 18, h, w]``: the 1-based row (channels 0-8) and column (9-17) of each 3x3 kernel tap."""
    rows = torch.arange(1, h + 1, dtype=like.dtype, device=like.device).view(1, 1, h, 1)
    cols = torch.arange(1, w + 1, dtype=like.dtype, device=like.device).view(1, 1, 1, w)
    dr = torch.tensor(KERNEL_ROWS, dtype=like.dtype, device=like.device).view(1, 9, 1, 1)
    dc = torch.tensor(KERNEL_COLS, dtype=like.dtype, device=like.device).view(1, 9, 1, 1)
    return torch.cat([(rows + dr).expand(1, 9, h, w), (cols + dc).expand(1, 9, h, w)], 1)


class PixelOffsets(nn.Module):
    """The official ``Offset``: ``opt(p0 + pn + p_conv(x))``, one (dy, dx) per input channel.

    ``opt`` has groups 2, so its outputs 0..D-1 depend on the row coordinates and D..2D-1 on the
    columns, while ``deform_conv2d`` reads channel 2i as dy and 2i+1 as dx of channel i: the
    official pairing, kept as is.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.p_conv = nn.Conv2d(dim, 18, 3, padding=1)
        nn.init.zeros_(self.p_conv.weight)
        self.opt = nn.Conv2d(18, 2 * dim, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p_conv(x) + kernel_coordinates(x.shape[-2], x.shape[-1], x)
        return self.opt(p)


class ChannelDeformConv(nn.Module):
    """The official ``ChlSpl``: a 1x1 deformable convolution, each input channel sampled at its own
    offset (offset groups = channels), without modulation."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim, 1, 1))
        self.bias = nn.Parameter(torch.empty(dim))
        self.get_offset = PixelOffsets(dim)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, self.get_offset(x), self.weight, self.bias)


class DeformableMixer(nn.Module):
    """One deformable mixer (paper eqs. 2-5): channel mixing, then the residual deformable branch."""

    def __init__(self, in_channels: int):
        super().__init__()
        dim = in_channels
        self.channel_mix = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
        self.spatial = nn.Sequential(ChannelDeformConv(dim), nn.GELU(), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_mix(x)
        return x + self.spatial(x)


class LinearNorm(nn.Module):
    """Per-position Linear and LayerNorm on a map: official order Linear -> LN, the paper's
    (eq. 1) LN -> Linear."""

    def __init__(self, in_channels: int, dim: int, norm_first: bool = False):
        super().__init__()
        cin = in_channels
        self.norm_first = norm_first
        self.norm = nn.LayerNorm(cin if norm_first else dim)
        self.linear = nn.Linear(cin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1)
        y = self.linear(self.norm(y)) if self.norm_first else self.norm(self.linear(y))
        return y.permute(0, 3, 1, 2)


def small_mlp(dim: int) -> nn.Sequential:
    """The paper's sMLP: Linear + LayerNorm."""
    return nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))


class TokenAttention(nn.Module):
    """Multi-head attention over an explicit token set.

    ``query`` is ``[B, N, D]``, ``keys`` (also the values) ``[B, T, N, D]``: T key tokens per query
    position.
    * ``over="tasks"``: the query at position n attends over the T key tokens at position n (the
      official DeMT task query at one image per GPU).
    * ``over="self"``: T must be 1; each query attends to the one key at its own position: the
      softmax is over a single key, so the result is ``out_proj(v_proj(key))`` and q/k never get a
      gradient (the official DeMT task interaction and TPANet cross attention at one image per GPU).
      q and k are still computed, as the official code computes them, so that multiply-adds match.
    * ``over="all"``: global attention of every query over all T*N keys (the papers' equations),
      through memory-efficient ``scaled_dot_product_attention``.
    Batch items never mix. Initialised as ``nn.MultiheadAttention`` (Xavier over the joint q/k/v
    matrix, zero biases).
    """

    def __init__(self, dim: int, heads: int, over: str):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.over = over
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, n, d = query.shape
        t = keys.shape[1]
        h, hd = self.heads, d // self.heads
        q, k, v = self.q_proj(query), self.k_proj(keys), self.v_proj(keys)
        if self.over == "all":
            q = q.view(b, n, h, hd).transpose(1, 2)
            k = k.reshape(b, t * keys.shape[2], h, hd).transpose(1, 2)
            v = v.reshape(b, t * keys.shape[2], h, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        else:
            if self.over == "self" and t != 1:
                raise ValueError("over='self' takes one key token per query")
            q = q.view(b, n, h, 1, hd)
            k = k.view(b, t, n, h, hd).permute(0, 2, 3, 4, 1)  # [b, n, h, hd, t]
            v = v.view(b, t, n, h, hd).permute(0, 2, 3, 1, 4)  # [b, n, h, t, hd]
            weights = torch.softmax((q @ k) / math.sqrt(hd), dim=-1)
            y = (weights @ v).reshape(b, n, d)
        return self.out_proj(y)


def map_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, h*w, C]``."""
    return x.flatten(2).transpose(1, 2)


def token_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, h*w, C]`` -> ``[B, C, h, w]``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def stack_tasks(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-task maps ``[B, C, h, w]`` -> tokens ``[B, T, h*w, C]`` in task order."""
    return torch.stack([map_tokens(m) for m in maps.values()], 1)


class TaskInteraction(nn.Module):
    """Task interaction block (paper eqs. 7-9): attention over the concatenated deformed tokens,
    then sMLP (shared by all tasks); no residual. ``prenorm`` adds the paper's LayerNorm."""

    def __init__(self, in_channels: int, heads: int, over: str = "self", prenorm: bool = False):
        super().__init__()
        dim = in_channels
        self.norm = nn.LayerNorm(dim) if prenorm else None
        self.task_fusion = TokenAttention(dim, heads, over)
        self.smlp = small_mlp(dim)

    def forward(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first = next(iter(maps.values()))
        h, w = first.shape[-2:]
        x = stack_tasks(maps)  # [B, T, N, D]
        b, t, n, d = x.shape
        if self.norm is not None:
            x = self.norm(x)
        tokens = x.reshape(b, t * n, d)
        keys = tokens.unsqueeze(1) if self.task_fusion.over == "self" else x
        y = self.smlp(self.task_fusion(tokens, keys)).view(b, t, n, d)
        return {name: token_map(y[:, i], h, w) for i, name in enumerate(maps)}


class TaskQuery(nn.Module):
    """Task query block (paper eqs. 10-12): the task's deformed tokens query the interacted tokens
    of all tasks; sMLP; residual on the deformed tokens. ``prenorm`` adds the paper's LayerNorms."""

    def __init__(self, in_channels: int, heads: int, over: str = "tasks", prenorm: bool = False):
        super().__init__()
        dim = in_channels
        self.norm_q = nn.LayerNorm(dim) if prenorm else None
        self.norm_kv = nn.LayerNorm(dim) if prenorm else None
        self.task_query = TokenAttention(dim, heads, over)
        self.smlp = small_mlp(dim)

    def forward(self, query: torch.Tensor, keys: dict[str, torch.Tensor]) -> torch.Tensor:
        h, w = query.shape[-2:]
        q = map_tokens(query)
        kv = stack_tasks(keys)
        if self.norm_q is not None:
            attended = self.task_query(self.norm_q(q), self.norm_kv(kv))
        else:
            attended = self.task_query(q, kv)
        return token_map(q + self.smlp(attended), h, w)


class RatioHead(nn.Module):
    """The official per-task prediction: 3x3 Conv(no bias)-BN-ReLU bottleneck, 1x1 logits with
    N(0, 0.01) weights and zero bias. The bottleneck is ``features_channels // ratio`` wide:
    ``features`` (the aggregated backbone map) only sets that width when the model is built."""

    def __init__(self, in_channels: int, features_channels: int, out_channels: int, ratio: int = 8):
        super().__init__()
        cin, width, channels = in_channels, features_channels // ratio, out_channels
        self.bottleneck = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU())
        self.final_logits = nn.Conv2d(width, channels, 1)
        nn.init.normal_(self.final_logits.weight, 0.0, 0.01)
        nn.init.zeros_(self.final_logits.bias)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return self.final_logits(self.bottleneck(x))

