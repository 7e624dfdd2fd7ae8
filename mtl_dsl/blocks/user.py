"""Blocks written as a plain ``nn.Module``: the ``mtl_dsl.block`` decorator.

A user writes the module and documents its arguments; the decorator derives the rest::

    from torch import nn
    import mtl_dsl

    @mtl_dsl.block("se_gate", doc="Squeeze-and-excitation gate (Hu et al. 2018).",
                   inputs={"x": "the features to gate"},
                   params={"reduction": "how much the bottleneck narrows the channels"})
    class SEGate(nn.Module):
        def __init__(self, in_channels: int, reduction: int = 16): ...
        def forward(self, x): ...

* inputs: the parameters of ``forward`` (a default of ``None`` makes one optional); each is a
  feature map unless ``inputs`` says otherwise (``"map|tokens: doc"``, or an ``Input``);
* parameters: the constructor's parameters that are not facts of the call (``in_channels``,
  ``x_channels``, ``x_size``, ``tasks``, ... as in ``construct``): their type is the annotation
  (or the default's type), their default the constructor's; ``params`` documents each (a doc
  string, or a ``Param`` for choices and bounds);
* the output shape: ``infer="same"`` (the first input's type), a function ``infer(call)`` returning
  a type (then ``check`` never imports torch), or by default a shape probe: the module is built on
  the meta device and run on meta tensors of the call's input shapes (``mtl_dsl.modules.shape_probe``);
* an error raised by the module, while it is built, probed or run, is a ``SpecError`` at the
  spec line that called the block, with the module's own message and the line of the user's code.

The decorator registers the block and returns the class unchanged. Everything here is torch-free.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence, get_type_hints

from ..types import AttentionMap, FeatureMap, MultiScale, TaskMap, Tokens
from .construct import INPUT_FACTS, STANDARD_FACTS, BlockDefinitionError, bind, call_facts
from .registry import REGISTRY, REQUIRED, Block, Call, Input, Param, ShapeError, register

KINDS = {"map": FeatureMap, "tokens": Tokens, "multiscale": MultiScale, "attention": AttentionMap,
         "taskmap": TaskMap}
PARAM_TYPES = {int: int, float: float, str: str, bool: bool, list: list, dict: dict}


class ModuleBlock(Block):
    """A block made by ``mtl_dsl.block`` from an ``nn.Module``; one subclass per block."""

    declared_infer: Any = None  # "same", a function of the call, or None (the shape probe)
    plugin: str = ""  # the module (or entry point) that defined it, for messages

    def infer(self, call: Call) -> Any:
        if self.declared_infer == "same":
            first = next((call.inputs[k] for k in self.inputs() if call.inputs.get(k) is not None),
                         None)
            if first is None:
                raise call.fail(f"'{self.name}' returns its first input's type, but got none")
            return first
        if callable(self.declared_infer):
            try:
                return self.declared_infer(call)
            except ShapeError:
                raise
            except Exception as e:  # the user's shape rule itself failed
                raise call.fail(f"the shape rule (infer) of block '{self.name}' raised "
                                f"{type(e).__name__}: {e}") from e
        from ..modules.shape_probe import probe_types

        return probe_types(self, call)

    def module_args(self, call: Call) -> dict[str, Any]:
        """The constructor's arguments. A probed block's own result is not known before it is
        built, so its facts leave out ``out_channels`` and ``out_size``."""
        facts = call_facts(self, call, with_result=self.declared_infer is not None)
        facts.update(self.extra_args(call))
        return bind(self.module_target(), facts, self.name)

    def build(self, call: Call) -> Any:
        from ..modules.shape_probe import build_guarded

        return build_guarded(self, call)


def block(name: str, *, doc: str = "", inputs: dict[str, Any] | None = None,
          params: dict[str, Any] | None = None, outputs: Sequence[str] = ("out",),
          infer: str | Callable[[Call], Any] | None = None,
          family: str = "user") -> Callable[[Any], Any]:
    """Class (or factory) decorator: register ``name`` as a block built from the decorated module.

    ``doc``: what the block does (default: the class docstring); ``inputs``/``params``: a doc
    string (or an ``Input``/``Param``) for every input of ``forward`` and every parameter of the
    constructor that is not a fact; ``outputs``: the names of several results (``forward`` returns
    a tuple); ``infer``: ``"same"`` or ``infer(call) -> type`` (default: the meta-device probe);
    ``family``: the heading ``mtl-dsl blocks`` lists it under.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise BlockDefinitionError(f"a block name is an identifier, got {name!r}")
    if infer is not None and infer != "same" and not callable(infer):
        raise BlockDefinitionError(f"block '{name}': infer is \"same\", a function or None")

    def decorate(target: Any) -> Any:
        if name in REGISTRY:
            other = REGISTRY[name]
            where = getattr(other, "plugin", "") or type(other).__module__
            raise BlockDefinitionError(f"block '{name}' is defined twice (in {where} and in "
                                       f"{getattr(target, '__module__', '?')})")
        forward = getattr(target, "forward", None) if inspect.isclass(target) else None
        if forward is None:
            raise BlockDefinitionError(f"block '{name}': {target!r} is not an nn.Module class "
                                       f"(it has no forward)")
        text = doc or inspect.cleandoc(target.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        if not text:
            raise BlockDefinitionError(f"block '{name}': say what it does (doc=..., or a "
                                       f"docstring on {target.__name__})")
        block_inputs = _inputs(name, forward, inputs or {})
        block_params = _params(name, target, block_inputs, params or {})
        attrs = {"name": name, "family": family, "doc": text, "module": target,
                 "args": {**block_inputs, **block_params}, "outputs": tuple(outputs),
                 "declared_infer": staticmethod(infer) if callable(infer) else infer,
                 "plugin": getattr(target, "__module__", ""),
                 "__module__": getattr(target, "__module__", __name__)}
        register(type(f"{target.__name__}Block", (ModuleBlock,), attrs))
        return target

    return decorate


def _parse_input(name: str, arg: str, spec: Any, optional: bool) -> Input:
    if isinstance(spec, Input):
        return spec if spec.optional == optional else Input(spec.kinds, spec.doc, spec.default,
                                                            optional)
    if not isinstance(spec, str) or not spec.strip():
        raise BlockDefinitionError(f"block '{name}': document input '{arg}' "
                                   f"(inputs={{'{arg}': 'what it is'}})")
    kinds: tuple[type, ...] = (FeatureMap,)
    head, sep, rest = spec.partition(":")
    if sep and all(k.strip() in KINDS for k in head.split("|")):
        kinds = tuple(KINDS[k.strip()] for k in head.split("|"))
        spec = rest.strip()
    return Input(kinds, spec, optional=optional)


def _inputs(name: str, forward: Callable, docs: dict[str, Any]) -> dict[str, Input]:
    params = list(inspect.signature(forward).parameters.values())[1:]  # without self
    out: dict[str, Input] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise BlockDefinitionError(f"block '{name}': forward takes named inputs, not *{p.name}")
        out[p.name] = _parse_input(name, p.name, docs.get(p.name), p.default is None)
    unknown = set(docs) - set(out)
    if unknown:
        raise BlockDefinitionError(f"block '{name}': inputs documents {sorted(unknown)}, which "
                                   f"forward does not take (it takes {list(out)})")
    if not out:
        raise BlockDefinitionError(f"block '{name}': forward takes no input")
    return out


def _facts(inputs: dict[str, Input]) -> set[str]:
    return set(STANDARD_FACTS) | {f"{i}_{k}" for i in inputs for k in INPUT_FACTS}


def _params(name: str, target: Any, inputs: dict[str, Input],
            docs: dict[str, Any]) -> dict[str, Param]:
    try:
        hints = get_type_hints(target.__init__)
    except Exception:  # annotations that do not resolve: fall back to the defaults' types
        hints = {}
    facts = _facts(inputs)
    out: dict[str, Param] = {}
    for p in list(inspect.signature(target.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in facts:
            continue
        if p.name in inputs:
            raise BlockDefinitionError(f"block '{name}': '{p.name}' is both an input of forward "
                                       f"and a constructor parameter")
        spec = docs.get(p.name)
        if isinstance(spec, Param):
            out[p.name] = spec
            continue
        if not isinstance(spec, str) or not spec.strip():
            raise BlockDefinitionError(f"block '{name}': document parameter '{p.name}' "
                                       f"(params={{'{p.name}': 'what it sets'}})")
        default = p.default if p.default is not p.empty else REQUIRED
        kind = PARAM_TYPES.get(hints.get(p.name)) or (
            PARAM_TYPES.get(type(p.default)) if p.default not in (p.empty, None) else None)
        if kind is None:
            raise BlockDefinitionError(f"block '{name}': give parameter '{p.name}' a type "
                                       f"(int, float, str, bool, list, dict annotation), or a "
                                       f"Param in params=")
        out[p.name] = Param(kind, default, spec)
    unknown = set(docs) - set(out)
    if unknown:
        raise BlockDefinitionError(f"block '{name}': params documents {sorted(unknown)}, which "
                                   f"the constructor does not take (or which are facts of the "
                                   f"call: {', '.join(sorted(unknown & facts)) or 'none'})")
    return out

