"""nn.Modules behind the algebra blocks: the torch operations a hand-written model calls.

One module per graph node, none with a loop over pixels: an operator is one ``torch`` call
(``a * b`` broadcasts a gate over its map without copying it); a sum of N terms is N - 1 adds, the
first out of place and the rest in place into that fresh tensor; a weighted sum
``sum(w[k] * x[k])`` is a fold of ``torch.addcmul``, one fused multiply-add per term with no
product tensor in between (``mtl_dsl.flops`` counts it as one MAC per term and element, as the
matrix product over the terms that it is).
"""
from __future__ import annotations

import operator

import torch
from torch import nn


class _Arithmetic(nn.Module):
    """``left (op) right``, or with a constant on the side whose input is omitted."""

    op = staticmethod(operator.add)

    def __init__(self, const: float | None = None):
        super().__init__()
        self.const = const

    def extra_repr(self) -> str:
        return "" if self.const is None else f"const={self.const}"

    def forward(self, left: torch.Tensor | None = None, right: torch.Tensor | None = None):
        return self.op(self.const if left is None else left,
                       self.const if right is None else right)


class Add(_Arithmetic):
    def forward(self, left=None, right=None, third: torch.Tensor | None = None):
        out = super().forward(left, right)
        return out if third is None else out + third


class Sub(_Arithmetic):
    op = staticmethod(operator.sub)


class Mul(_Arithmetic):
    op = staticmethod(operator.mul)


class Div(_Arithmetic):
    op = staticmethod(operator.truediv)


class Softmax(nn.Module):
    def __init__(self, dim: str, channels_first: bool = True):
        super().__init__()
        self.dim = dim
        self.channels_first = channels_first

    def extra_repr(self) -> str:
        return f"dim={self.dim!r}"

    def forward(self, x):
        if self.dim == "tasks":
            keys = list(x)
            weights = torch.stack([x[k] for k in keys]).softmax(dim=0)
            return dict(zip(keys, weights.unbind(0)))
        if self.dim == "channels":
            return x.softmax(dim=1 if self.channels_first else -1)
        if self.channels_first:  # space: every channel's h*w positions
            return x.flatten(2).softmax(dim=-1).view_as(x)
        return x.softmax(dim=1)  # tokens: over the tokens


class GlobalPool(nn.Module):
    def __init__(self, mode: str = "avg"):
        super().__init__()
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3), keepdim=True)
        return x.amax(dim=(2, 3), keepdim=True)


class LearnedScale(nn.Module):
    """A learned ``[1, channels, 1, 1]`` value, expanded (not copied) to the batch."""

    def __init__(self, channels: int = 1, init: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(like.shape[0], -1, -1, -1)


def _fits(out: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the others broadcast into ``out``'s shape (so they can be added in place)."""
    return torch.broadcast_shapes(out.shape, *(o.shape for o in others)) == out.shape


def weighted_sum(xs: list[torch.Tensor], ws: list | None) -> torch.Tensor:
    """sum(xs) or sum(w * x): the first step makes a fresh tensor, the others add into it."""
    if ws is None:
        if len(xs) == 1:
            return xs[0]
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out.add_(x) if _fits(out, x) else out + x
        return out
    zero = xs[0].new_zeros(())
    out = torch.addcmul(zero, ws[0], xs[0])
    for w, x in zip(ws[1:], xs[1:]):
        out = out.addcmul_(w, x) if _fits(out, w, x) else torch.addcmul(out, w, x)
    return out


class Sum(nn.Module):
    """sum(x) or sum(w * x) over the entries of ``x`` (``coeffs``: constant weights)."""

    scale_by_count = False

    def __init__(self, coeffs: list[float] | None = None):
        super().__init__()
        self.constant_weights = coeffs is not None
        # Not part of the state_dict: the coefficients are the spec's, not learned.
        self.register_buffer("coeffs", torch.tensor([float(c) for c in coeffs or []]),
                             persistent=False)

    def forward(self, x: dict, w: dict | None = None) -> torch.Tensor:
        xs = list(x.values())
        ws = list(w.values()) if w is not None else None
        if ws is None and self.constant_weights:
            ws = list(self.coeffs.unbind())
        out = weighted_sum(xs, ws)
        if self.scale_by_count and len(xs) > 1:
            out = out.mul_(1.0 / len(xs))  # a fresh tensor: weighted_sum made it
        return out

    def multiply_adds(self, output: torch.Tensor, x: dict, w: dict | None = None) -> int:
        """One multiply-add per term and output element when the terms are weighted (what
        ``mtl_dsl.flops`` adds: ``torch.addcmul`` is an op it counts as free)."""
        weighted = w is not None or self.constant_weights
        return len(x) * output.numel() if weighted else 0


class Mean(Sum):
    scale_by_count = True


class Max(nn.Module):
    reduce = staticmethod(torch.maximum)

    def forward(self, x: dict) -> torch.Tensor:
        xs = list(x.values())
        out = xs[0]
        for other in xs[1:]:
            out = self.reduce(out, other)
        return out


class Min(Max):
    reduce = staticmethod(torch.minimum)
