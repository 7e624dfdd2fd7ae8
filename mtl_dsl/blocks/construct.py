"""How a block's module is built from a call: ONE rule for every block.

A block declares the module it builds (``Block.module``): a dotted path such as
``"mtl_dsl.modules.common.ConvBnAct"``, imported only when a model is built (so ``check`` never
imports torch), or the class or factory function itself. The module's constructor is called with
keyword arguments bound **by name** from the call's *facts*:

==========================  ==============================================================
fact                        value
==========================  ==============================================================
every block parameter       its value (defaults filled in): ``kernel``, ``heads``, ``task``...
``NAME_channels``           the width of input ``NAME`` (a map's channels, tokens' channels, or
                            the one width every map of a per-task collection shares)
``NAME_size``               ``(h, w)`` of input ``NAME`` at the compiled input size (tokens:
                            their grid; a per-task collection: the one grid its maps share)
``NAME_groups``             tokens: how many maps are stacked (T for ``tokens(d)``)
``NAME_keys``               a per-task collection: its entry names, in order
``in_channels``, ...        ``in_*``: the facts of the block's first input
``out_channels``            the width of the block's (single) result
``out_size``                ``(h, w)`` of the block's (single) result
``channels_first``          the first input is an NCHW map (``False``: ``[B, N, C]`` tokens)
``tasks``                   the tasks the call is about: the entries of its first per-task
                            collection input, else the model's task names
``input_size``              the model's input size ``(H, W)``
==========================  ==============================================================

A fact that does not apply (the width of an omitted optional input, the size of a multi-scale
list) is ``None`` or absent. A constructor parameter that is no fact must have a default; one
without is a definition error naming the block, the module and the facts on offer. A block
whose module needs a value computed otherwise supplies it from ``Block.extra_args`` (small, a
few blocks), and the rare block built in a truly special way overrides ``Block.module_args``.

Because the arguments are a plain dict computed by one rule, two calls with the same module and
equal arguments build modules of identical structure: what a pass that batches per-task copies
of a block needs to know (``Block.construction``). A user block written as an ``nn.Module`` whose
constructor names its parameters after the block's gets built by the same rule.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from ..types import FeatureMap, TaskMap, Tokens

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Block, Call

# The names every call offers besides its parameters and its inputs' NAME_* facts.
STANDARD_FACTS = ("in_channels", "in_size", "in_groups", "in_keys", "out_channels", "out_size",
                  "channels_first", "tasks", "input_size")
INPUT_FACTS = ("channels", "size", "groups", "keys")


class BlockDefinitionError(TypeError):
    """A block's declaration and its module do not fit together (a bug in the block, not in the
    spec): an unknown module path, or a constructor parameter no fact supplies."""


@lru_cache(maxsize=None)
def _import_path(path: str) -> Callable[..., Any]:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise BlockDefinitionError(f"module path '{path}' must be dotted: 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BlockDefinitionError(f"cannot import '{module_name}' for '{path}': {e}") from e
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise BlockDefinitionError(f"'{module_name}' has no '{attribute}' (from '{path}')") from None


def resolve_module(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """The class or factory a block's ``module`` names (importing it on first use)."""
    if isinstance(spec, str):
        return _import_path(spec)
    if callable(spec):
        return spec
    raise BlockDefinitionError(f"a block's module must be a dotted path or a callable, got {spec!r}")


@lru_cache(maxsize=None)
def _parameters(target: Callable[..., Any]) -> tuple[Any, ...]:
    import inspect  # at build time only: `check` never needs it

    params = []
    for p in inspect.signature(target).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise BlockDefinitionError(f"{_qualname(target)}: parameter '{p.name}' is positional-"
                                       f"only; the block rule passes arguments by name")
        params.append(p)
    return tuple(params)


def _qualname(target: Callable[..., Any]) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


def bind(target: Callable[..., Any], facts: dict[str, Any], block: str) -> dict[str, Any]:
    """The keyword arguments of ``target`` that ``facts`` supply; every required one must be."""
    kwargs: dict[str, Any] = {}
    for p in _parameters(target):
        if p.name in facts:
            kwargs[p.name] = facts[p.name]
        elif p.default is p.empty:
            offered = ", ".join(sorted(facts))
            raise BlockDefinitionError(
                f"block '{block}': {_qualname(target)} needs '{p.name}', which is neither a "
                f"parameter of the block nor a fact of its call (offered: {offered}); rename the "
                f"constructor parameter, give it a default, or supply it from extra_args")
    return kwargs


def _shared(values: list[Any]) -> Any:
    """The one value every item has, else None."""
    if values and all(v == values[0] for v in values[1:]):
        return values[0]
    return None


def value_facts(value: Any, size: tuple[int, int]) -> dict[str, Any]:
    """channels / size / groups / keys of one graph value (None where they do not apply)."""
    facts: dict[str, Any] = dict.fromkeys(INPUT_FACTS)
    if isinstance(value, (FeatureMap, Tokens)):
        facts["channels"] = value.channels
        facts["size"] = (value.h.eval(*size), value.w.eval(*size))
        if isinstance(value, Tokens):
            facts["groups"] = value.groups
    elif isinstance(value, TaskMap):
        facts["keys"] = list(value.items)
        items = [value_facts(v, size) for v in value.items.values()]
        facts["channels"] = _shared([f["channels"] for f in items])
        facts["size"] = _shared([f["size"] for f in items])
    return facts


def call_facts(block: "Block", call: "Call", with_result: bool = True) -> dict[str, Any]:
    """Everything the block rule can pass to a module constructor for this call
    (``with_result=False``: without ``out_channels``/``out_size``, for a block whose result is
    only known by building it)."""
    size = call.input_size
    facts: dict[str, Any] = {}
    first = None
    first_taskmap = None
    for name in block.inputs():
        value = call.inputs.get(name)
        if first is None and value is not None:
            first = value
        if first_taskmap is None and isinstance(value, TaskMap):
            first_taskmap = value
        for key, v in value_facts(value, size).items():
            facts[f"{name}_{key}"] = v
    for key, v in value_facts(first, size).items():
        facts[f"in_{key}"] = v
    if with_result:
        result = block.infer(call)
        out = value_facts(result if not isinstance(result, tuple) else None, size)
        facts["out_channels"], facts["out_size"] = out["channels"], out["size"]
    facts["channels_first"] = isinstance(first, FeatureMap) or (
        isinstance(first, TaskMap) and all(isinstance(v, FeatureMap) for v in first.items.values()))
    facts["tasks"] = list(first_taskmap.items) if first_taskmap is not None else call.task_names
    facts["input_size"] = tuple(size)
    facts.update(call.params)  # a parameter is always what the spec said
    return facts
