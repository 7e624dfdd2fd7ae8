"""Value types of the graph, symbolic in batch and input size.

Every node's output has one of these types: a feature map ``[B, C, h, w]``, a token sequence
``[B, groups*h*w, C]`` (``groups`` = number of tasks when task maps are stacked as tokens), a
multi-scale list of feature maps, an attention-score map, or a per-task collection of any of them.
Spatial sizes are ``Dim`` expressions of the input height ``H`` and width ``W``: ``H/4`` is
``ceil(H/4)`` (what a stride-4 CNN or a padded patch embedding gives), ``H//16`` is ``floor(H/16)``.
Pure Python: the shape checker uses these without torch.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

# -- spatial dimensions ---------------------------------------------------------------------------

# An op is (name, k): "cdiv" ceil(d/k), "fdiv" floor(d/k), "mul" d*k, "add" d+k.
Op = tuple[str, int]


class Dim(BaseModel):
    """A spatial size: ``base`` (``H``, ``W`` or a constant) followed by integer ops."""

    model_config = ConfigDict(frozen=True)

    base: str  # "H", "W", or a decimal constant
    ops: tuple[Op, ...] = ()

    # construction ------------------------------------------------------------------------------
    @staticmethod
    def of(base: str | int) -> "Dim":
        return Dim(base=str(base))

    def _then(self, op: str, k: int) -> "Dim":
        ops = list(self.ops)
        if self.base.lstrip("-").isdigit():  # constants fold at once
            return Dim(base=str(_apply(int(self.base), op, k)))
        if op in ("cdiv", "fdiv", "mul") and k == 1 or op == "add" and k == 0:
            return self
        if ops:
            last, j = ops[-1]
            if last == op and op in ("cdiv", "fdiv", "mul"):
                # ceil(ceil(x/a)/b) == ceil(x/(a*b)) for integers; floor likewise.
                ops[-1] = (op, j * k)
                return Dim(base=self.base, ops=tuple(ops))
            if last == op == "add":
                ops[-1] = ("add", j + k)
                return Dim(base=self.base, ops=tuple(ops) if j + k else tuple(ops[:-1]))
            if last == "add" and op == "fdiv" and j == k - 1:
                # floor((x + k - 1) / k) == ceil(x / k)
                return Dim(base=self.base, ops=tuple(ops[:-1]))._then("cdiv", k)
            if last == "mul" and op in ("cdiv", "fdiv") and j % k == 0:
                ops[-1] = ("mul", j // k)
                return Dim(base=self.base, ops=tuple(o for o in ops if o != ("mul", 1)))
        return Dim(base=self.base, ops=tuple(ops) + ((op, k),))

    def cdiv(self, k: int) -> "Dim":
        return self._then("cdiv", k)

    def fdiv(self, k: int) -> "Dim":
        return self._then("fdiv", k)

    def mul(self, k: int) -> "Dim":
        return self._then("mul", k)

    def add(self, k: int) -> "Dim":
        return self._then("add", k)

    def pad_to(self, k: int) -> "Dim":
        """Round up to a multiple of k."""
        return self.cdiv(k).mul(k)

    def conv(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> "Dim":
        """Output size of a convolution or pooling window (floor mode)."""
        # floor((d + 2p - dil*(k-1) - 1) / s) + 1 == floor((d + 2p - dil*(k-1) - 1 + s) / s)
        return self.add(2 * padding - dilation * (kernel - 1) - 1 + stride).fdiv(stride)

    def pool(self, kernel: int, stride: int, ceil_mode: bool = False, padding: int = 0) -> "Dim":
        if not ceil_mode:
            return self.conv(kernel, stride, padding)
        return self.add(2 * padding - kernel + stride).cdiv(stride)

    # evaluation --------------------------------------------------------------------------------
    def eval(self, h: int, w: int) -> int:
        if self.base == "H":
            v = h
        elif self.base == "W":
            v = w
        else:
            v = int(self.base)
        for op, k in self.ops:
            v = _apply(v, op, k)
        return v

    @property
    def is_const(self) -> bool:
        return not self.ops and self.base.lstrip("-").isdigit()

    def __str__(self) -> str:
        s = self.base
        for op, k in self.ops:
            if op == "cdiv":
                s = f"{s}/{k}"
            elif op == "fdiv":
                s = f"{s}//{k}"
            elif op == "mul":
                s = f"{k}*({s})" if ("/" in s or "+" in s or "-" in s) else f"{k}*{s}"
            elif op == "add":
                s = f"({s}{k:+d})"
        return s


def _apply(v: int, op: str, k: int) -> int:
    if op == "cdiv":
        return -(-v // k)
    if op == "fdiv":
        return v // k
    if op == "mul":
        return v * k
    if op == "add":
        return v + k
    raise ValueError(op)


H = Dim.of("H")
W = Dim.of("W")


def same_dim(a: Dim, b: Dim, size: tuple[int, int] | None) -> bool:
    """Equal symbolically, or (when symbolic forms differ) equal at the size compiled for."""
    if a == b:
        return True
    if size is None:
        return False
    return a.eval(*size) == b.eval(*size)


# -- value types ----------------------------------------------------------------------------------

class FeatureMap(BaseModel):
    """``[B, channels, h, w]``."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["map"] = "map"
    channels: int
    h: Dim
    w: Dim

    def shape_str(self) -> str:
        return f"[B, {self.channels}, {self.h}, {self.w}]"

    def concrete(self, size: tuple[int, int]) -> tuple[int, ...]:
        return (self.channels, self.h.eval(*size), self.w.eval(*size))


class Tokens(BaseModel):
    """``[B, groups*h*w, channels]``: a feature map (or ``groups`` of them) flattened to tokens."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["tokens"] = "tokens"
    channels: int
    h: Dim
    w: Dim
    groups: int = 1

    def shape_str(self) -> str:
        n = f"{self.h}*{self.w}"
        if self.groups != 1:
            n = f"{self.groups}*{n}"
        return f"[B, {n}, {self.channels}]"

    def concrete(self, size: tuple[int, int]) -> tuple[int, ...]:
        return (self.groups * self.h.eval(*size) * self.w.eval(*size), self.channels)


class MultiScale(BaseModel):
    """A list of feature maps (backbone levels)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["multiscale"] = "multiscale"
    levels: tuple[FeatureMap, ...]

    def shape_str(self) -> str:
        return "[" + ", ".join(lv.shape_str() for lv in self.levels) + "]"


class TokenGrid(BaseModel):
    model_config = ConfigDict(frozen=True)
    groups: int
    h: Dim
    w: Dim

    def __str__(self) -> str:
        return f"{self.groups}*{self.h}*{self.w}" if self.groups != 1 else f"{self.h}*{self.w}"


class AttentionMap(BaseModel):
    """Attention scores ``[B, heads, queries, keys]`` with the token grids they came from."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["attention"] = "attention"
    heads: int
    queries: TokenGrid
    keys: TokenGrid

    def shape_str(self) -> str:
        return f"[B, {self.heads}, {self.queries}, {self.keys}]"


class TaskMap(BaseModel):
    """A per-task collection: ``{task: value}`` (the fan-out of a ``for t in tasks`` loop)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["taskmap"] = "taskmap"
    items: dict[str, "ValueType"]

    def shape_str(self) -> str:
        return "{" + ", ".join(f"{k}: {v.shape_str()}" for k, v in self.items.items()) + "}"


ValueType = Annotated[
    Union[FeatureMap, Tokens, MultiScale, AttentionMap, TaskMap], Field(discriminator="kind")
]
TaskMap.model_rebuild()

KIND_NAMES = {
    FeatureMap: "feature map",
    Tokens: "token sequence",
    MultiScale: "multi-scale list",
    AttentionMap: "attention map",
    TaskMap: "per-task collection",
}


def kind_name(t: object) -> str:
    return KIND_NAMES.get(type(t), type(t).__name__)


def describe(t: object) -> str:
    return f"{kind_name(t)} {t.shape_str()}"  # type: ignore[attr-defined]


def numel_hint(t: FeatureMap, size: tuple[int, int]) -> int:
    return math.prod(t.concrete(size))
