"""nn.Modules behind the common blocks.

Constructor parameters are named after the block's parameters and the facts of its call
(``in_channels``, ``channels_first``, ...): the block registry builds each one by that rule
(``mtl_dsl.blocks.construct``)."""
from __future__ import annotations

import torch
from torch import nn


def init_weight(conv: nn.Module, how: str) -> None:
    """"logits": N(0, 0.01) weights and zero bias, as the official heads initialise predictions."""
    if how == "logits":
        nn.init.normal_(conv.weight, 0.0, 0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    elif how == "xavier":
        nn.init.xavier_uniform_(conv.weight)
    elif how == "trunc_normal":
        nn.init.trunc_normal_(conv.weight, std=0.02)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


class ConvBnAct(nn.Sequential):
    """Conv2d -> norm -> activation; ``bias=None``: a conv bias only when no norm follows."""

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, norm: str = "bn", act: str = "relu",
                 bias: bool | None = None, init: str = "default"):
        cin, cout = in_channels, channels
        if bias is None:
            bias = norm == "none"
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                              groups, bias=bias)
        }
        init_weight(layers["conv"], init)
        if norm == "bn":
            layers["bn"] = nn.BatchNorm2d(cout)
        elif norm == "ln":
            layers["ln"] = LayerNorm2d(cout)
        if act != "none":
            layers["act"] = activation(act)
        super().__init__()
        for k, v in layers.items():
            self.add_module(k, v)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def activation(fn: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity, "sigmoid": nn.Sigmoid,
            "tanh": nn.Tanh, "softplus": nn.Softplus}[fn]()


def dropout(p: float, channels_first: bool) -> nn.Module:
    """Dropout2d (whole channels) on a map, Dropout on tokens."""
    return nn.Dropout2d(p) if channels_first else nn.Dropout(p)


class PositionwiseLinear(nn.Module):
    def __init__(self, in_channels: int, channels: int, bias: bool = True, init: str = "default",
                 channels_first: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_channels, channels, bias)
        if init == "trunc_normal":
            nn.init.trunc_normal_(self.linear.weight, std=0.02)
            if bias:
                nn.init.zeros_(self.linear.bias)
        elif init == "xavier":
            nn.init.xavier_uniform_(self.linear.weight)
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.linear(x)


class PositionwiseLayerNorm(nn.Module):
    def __init__(self, in_channels: int, eps: float = 1e-5, channels_first: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(in_channels, eps=eps)
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(x)


class LinearNorm(nn.Module):
    """Linear then LayerNorm, or (``order="norm_first"``) LayerNorm then Linear."""

    def __init__(self, in_channels: int, channels: int, order: str = "linear_first",
                 channels_first: bool = False):
        super().__init__()
        self.norm_first = norm_first = order == "norm_first"
        self.linear = nn.Linear(in_channels, channels)
        self.norm = nn.LayerNorm(in_channels if norm_first else channels)
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        x = self.linear(self.norm(x)) if self.norm_first else self.norm(self.linear(x))
        return x.permute(0, 3, 1, 2) if self.channels_first else x


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, hidden width max(1, int(ratio * in_channels)); ``channels`` 0
    keeps the input width."""

    def __init__(self, in_channels: int, ratio: float = 4.0, channels: int = 0, norm: bool = False,
                 residual: bool = False, channels_first: bool = False):
        super().__init__()
        cin, cout = in_channels, channels or in_channels
        hidden = max(1, int(in_channels * ratio))
        self.norm = nn.LayerNorm(cin) if norm else nn.Identity()
        self.fc1 = nn.Linear(cin, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cout)
        self.residual = residual
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1) if self.channels_first else x
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        y = y.permute(0, 3, 1, 2) if self.channels_first else y
        return x + y if self.residual else y


class _MultiheadProjections(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)


class Attention(nn.Module):
    """Multi-head attention whose key set is explicit (see the `attention` block's doc)."""

    def __init__(self, q_channels: int, heads: int, over: str, residual: bool = False,
                 q_groups: int = 1, kv_groups: int | None = None):
        super().__init__()
        self.attn = _MultiheadProjections(q_channels)
        self.heads = heads
        self.over = over
        self.residual = residual
        self.query_groups = q_groups
        self.key_groups = q_groups if kv_groups is None else kv_groups  # keys default to queries

    def forward(self, q: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        kv = q if kv is None else kv
        a = self.attn
        if self.over == "self":
            # softmax over one key is 1: the output is the projected value of the token itself.
            if kv.shape[1] != q.shape[1]:
                raise RuntimeError("over='self' needs as many key tokens as queries")
            out = a.out_proj(a.v_proj(kv))
            return q + out if self.residual else out
        b, nq, c = q.shape
        h = self.heads
        d = c // h
        qh = a.q_proj(q)
        kh = a.k_proj(kv)
        vh = a.v_proj(kv)
        if self.over == "tasks":
            # [B, T*N, C] -> per position, the T task tokens are the keys
            t = self.key_groups
            n = kv.shape[1] // t
            tq = nq // n
            qh = qh.view(b, tq, n, h, d).permute(0, 2, 3, 1, 4)  # B, N, h, Tq, d
            kh = kh.view(b, t, n, h, d).permute(0, 2, 3, 1, 4)
            vh = vh.view(b, t, n, h, d).permute(0, 2, 3, 1, 4)
            out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
            out = out.permute(0, 3, 1, 2, 4).reshape(b, nq, c)
        else:
            qh = qh.view(b, nq, h, d).transpose(1, 2)
            kh = kh.view(b, -1, h, d).transpose(1, 2)
            vh = vh.view(b, -1, h, d).transpose(1, 2)
            out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
            out = out.transpose(1, 2).reshape(b, nq, c)
        out = a.out_proj(out)
        return q + out if self.residual else out


class StackTokens(nn.Module):
    def forward(self, x) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.flatten(2).transpose(1, 2)
        return torch.cat([m.flatten(2).transpose(1, 2) for m in x.values()], dim=1)


class SplitTokens(nn.Module):
    """Stacked task tokens back into per-task maps, named after the entries of ``like``."""

    def __init__(self, like_keys: list[str]):
        super().__init__()
        self.keys = list(like_keys)

    def forward(self, x: torch.Tensor, like: dict) -> dict[str, torch.Tensor]:
        b, n, c = x.shape
        h, w = like[self.keys[0]].shape[-2:]
        parts = x.transpose(1, 2).reshape(b, c, len(self.keys), h, w).unbind(2)
        return dict(zip(self.keys, parts))


class TokensToMap(nn.Module):
    def __init__(self, in_size: tuple[int, int]):
        super().__init__()
        self.h, self.w = in_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.transpose(1, 2).reshape(b, c, self.h, self.w)


class ChannelConcat(nn.Module):
    def forward(self, a, b: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        maps = list(a.values()) if isinstance(a, dict) else [a]
        maps += [m for m in (b, c) if m is not None]
        return torch.cat(maps, dim=1)


class Resize(nn.Module):
    def __init__(self, mode: str = "bilinear", scale: int = 1, down: int = 1):
        super().__init__()
        self.mode = mode
        self.scale, self.down = scale, down

    def forward(self, x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        if like is not None:
            size = like.shape[-2:]
        else:
            h, w = x.shape[-2:]
            size = (-(-h * self.scale // self.down), -(-w * self.scale // self.down))
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return torch.nn.functional.interpolate(x, size=size, mode=self.mode, **kwargs)


class Detach(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()


class SelectKey(nn.Module):
    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def forward(self, x: dict) -> torch.Tensor:
        return x[self.key]
