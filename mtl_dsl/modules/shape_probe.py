"""The torch side of blocks written as plain modules (``mtl_dsl.block``): their output shape found
by running them on meta tensors, and the guard that turns an error raised inside them into a
``SpecError`` at the spec line that called the block.

The probe builds the module on the meta device (no memory, no compute) with the constructor
arguments the block rule gives, calls it on meta tensors of the call's input shapes (batch 2) and
reads the shapes of what it returns: a 4-d tensor is a feature map, a 3-d tensor tokens, a list a
multi-scale list, a dict a per-task collection. A size equal to an input's keeps that input's
symbolic form (``H/4``), a size of 1 is 1, any other is the number at this input size. A module
that cannot run on the meta device is probed on the CPU instead (zeros).
"""
from __future__ import annotations

import linecache
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..blocks.construct import BlockDefinitionError
from ..errors import Diagnostic, SpecError
from ..ir import Node
from ..types import AttentionMap, Dim, FeatureMap, MultiScale, TaskMap, Tokens

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.registry import Call
    from ..blocks.user import ModuleBlock

BATCH = 2
_PACKAGE = Path(__file__).resolve().parent.parent
_TORCH = Path(torch.__file__).resolve().parent
_PROBED: dict[Any, Any] = {}


class UserBlockError(RuntimeError):
    """An error raised by the module of a user block while it was built (the compiler turns it
    into a located ``SpecError``)."""


def user_code(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of the error outside torch and mtl_dsl."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if _PACKAGE not in path.parents and _TORCH not in path.parents:
            return f"{frame.filename}:{frame.lineno}"
    return ""


def describe_error(block: "ModuleBlock", exc: BaseException, when: str) -> str:
    target = block.module
    qualname = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
    where = user_code(exc)
    return (f"the module of block '{block.name}' ({qualname}) raised {type(exc).__name__} "
            f"{when}: {exc}" + (f" (at {where})" if where else ""))


# -- the probe --------------------------------------------------------------------------------------

def _example(t: Any, size: tuple[int, int], device: str) -> Any:
    """A tensor (or list, dict) of zeros with the shape of value type ``t``."""
    if t is None:
        return None
    if isinstance(t, FeatureMap):
        return torch.zeros(BATCH, *t.concrete(size), device=device)
    if isinstance(t, Tokens):
        return torch.zeros(BATCH, *t.concrete(size), device=device)
    if isinstance(t, MultiScale):
        return [_example(lv, size, device) for lv in t.levels]
    if isinstance(t, TaskMap):
        return {k: _example(v, size, device) for k, v in t.items.items()}
    if isinstance(t, AttentionMap):
        q = t.queries.groups * t.queries.h.eval(*size) * t.queries.w.eval(*size)
        k = t.keys.groups * t.keys.h.eval(*size) * t.keys.w.eval(*size)
        return torch.zeros(BATCH, t.heads, q, k, device=device)
    raise TypeError(f"no example for {t!r}")


def _spatial(inputs: list[Any], size: tuple[int, int]) -> list[tuple[Dim, Dim]]:
    """The (h, w) of every map and token grid among the inputs, in order."""
    out: list[tuple[Dim, Dim]] = []
    for t in inputs:
        if isinstance(t, (FeatureMap, Tokens)):
            out.append((t.h, t.w))
        elif isinstance(t, MultiScale):
            out.extend((lv.h, lv.w) for lv in t.levels)
        elif isinstance(t, TaskMap):
            out.extend(_spatial(list(t.items.values()), size))
    return out


def _dim(value: int, axis: int, grids: list[tuple[Dim, Dim]], size: tuple[int, int]) -> Dim:
    """An output size as the spec reads it: an input's size, 1, an input's size divided or
    multiplied by a power of two, or (at this input size only) the number."""
    for grid in grids:
        if grid[axis].eval(*size) == value:
            return grid[axis]
    if value == 1:
        return Dim.of(1)
    for grid in grids:
        d = grid[axis]
        for k in (2, 4, 8, 16, 32, 64):
            for candidate in (d.cdiv(k), d.mul(k)):
                if candidate.eval(*size) == value:
                    return candidate
    return Dim.of(value)


def _type_of(out: Any, block: "ModuleBlock", call: "Call") -> Any:
    size = call.input_size
    inputs = [call.inputs.get(k) for k in block.inputs()]
    grids = _spatial(inputs, size)
    if isinstance(out, torch.Tensor):
        if out.shape[0] != BATCH:
            raise call.fail(f"the module of '{block.name}' returned a batch of {out.shape[0]} for "
                            f"a batch of {BATCH}")
        if out.dim() == 4:
            return FeatureMap(channels=out.shape[1], h=_dim(out.shape[2], 0, grids, size),
                              w=_dim(out.shape[3], 1, grids, size))
        if out.dim() == 3:
            for t in inputs:
                if isinstance(t, Tokens) and t.groups * t.h.eval(*size) * t.w.eval(*size) == \
                        out.shape[1]:
                    return t.model_copy(update={"channels": out.shape[2]})
            for h, w in grids:
                if h.eval(*size) * w.eval(*size) == out.shape[1]:
                    return Tokens(channels=out.shape[2], h=h, w=w)
            raise call.fail(f"cannot tell the token grid of the {tuple(out.shape)} tokens that "
                            f"'{block.name}' returns", hint="declare the shape: infer=...")
        raise call.fail(f"'{block.name}' returns a {out.dim()}-d tensor; blocks pass feature maps "
                        f"[B, C, H, W] and tokens [B, N, C]", hint="declare the shape: infer=...")
    if isinstance(out, list) and out and all(isinstance(o, torch.Tensor) and o.dim() == 4
                                             for o in out):
        return MultiScale(levels=tuple(_type_of(o, block, call) for o in out))
    if isinstance(out, dict):
        return TaskMap(items={str(k): _type_of(v, block, call) for k, v in out.items()})
    raise call.fail(f"'{block.name}' returns {type(out).__name__}, which is not a tensor, list "
                    f"of maps or dict")


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _run(target: Any, kwargs: dict, block: "ModuleBlock", call: "Call", device: str) -> Any:
    args = [_example(call.inputs.get(k), call.input_size, device) for k in block.inputs()]
    with torch.device(device):
        module = target(**kwargs)
    with torch.no_grad():
        return module(*args)


def probe_types(block: "ModuleBlock", call: "Call") -> Any:
    """The output type(s) of the block's module for this call, by running it."""
    try:
        target = block.module_target()
        kwargs = block.module_args(call)
    except BlockDefinitionError as e:
        raise call.fail(str(e)) from None
    key = (block.name, id(target), _freeze(kwargs), tuple(call.input_size),
           _freeze({k: v.model_dump_json() if v is not None else None
                    for k, v in call.inputs.items()}))
    if key not in _PROBED:
        try:
            out = _run(target, kwargs, block, call, "meta")
        except Exception:  # an op without a meta kernel, or the user's own error: run for real
            try:
                out = _run(target, kwargs, block, call, "cpu")
            except Exception as e:
                raise call.fail(describe_error(block, e, "while its output shape was probed"))
        n = len(block.outputs)
        if n > 1:
            if not isinstance(out, tuple) or len(out) != n:
                raise call.fail(f"'{block.name}' declares {n} outputs {block.outputs} but its "
                                f"module returned {type(out).__name__}")
            _PROBED[key] = tuple(_type_of(o, block, call) for o in out)
        else:
            _PROBED[key] = _type_of(out, block, call)
    return _PROBED[key]


# -- building and running --------------------------------------------------------------------------

def build_guarded(block: "ModuleBlock", call: "Call") -> nn.Module:
    target, kwargs = block.construction(call)
    try:
        module = target(**kwargs)
    except Exception as e:
        raise UserBlockError(describe_error(block, e, "while it was built")) from e
    if not isinstance(module, nn.Module):
        raise UserBlockError(f"the module of block '{block.name}' is not an nn.Module "
                             f"({type(module).__name__})")
    return module


def guard(module: nn.Module, block: "ModuleBlock", node: Node) -> None:
    """Make an error raised in ``module.forward`` a ``SpecError`` at ``node``'s spec line (the
    class is swapped for a subclass: parameters and state_dict keys stay the module's)."""
    cls = type(module)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        try:
            return cls.forward(self, *args, **kwargs)
        except (SpecError, torch.OutOfMemoryError):
            raise
        except Exception as e:
            loc = node.loc
            line = linecache.getline(loc.file, loc.line).rstrip("\n")
            raise SpecError(Diagnostic(loc.file, loc.line, loc.column,
                                       f"{block.name} '{node.name}': "
                                       + describe_error(block, e, "while it ran"),
                                       source_line=line, length=loc.length)) from e

    module.__class__ = type(cls.__name__, (cls,), {"forward": forward,
                                                   "__module__": cls.__module__,
                                                   "__qualname__": cls.__qualname__})
