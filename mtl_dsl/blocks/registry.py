"""The block registry: every name a spec can call is a ``Block`` registered here.

A block declares, without importing torch, its ordered arguments (graph ``Input``s and constant
``Param``s with types, defaults and docs), its output names, its output-shape rule ``infer``, and
the module it builds (``module``: a dotted path such as ``"mtl_dsl.modules.common.ConvBnAct"``,
imported only when a model is built). The front-end and shape checker use only the declarations,
so ``mtl-dsl check`` never imports torch. ``build`` constructs the module from the call by one
rule for every block (``mtl_dsl.blocks.construct``: constructor parameters bound by name to the
block's parameters and the facts of its inputs); the module's ``forward`` takes the inputs in
declared order.

Conventions for a block's module ``forward``:
* a ``FeatureMap`` or ``Tokens`` input is a tensor; a ``MultiScale`` input a list of tensors; a
  ``TaskMap`` input a ``dict[str, Tensor]`` in task order; an omitted optional input is ``None``;
  the model's images are ``[B, 3, H, W]``.
* one output: a tensor (or list / dict for MultiScale / TaskMap); several outputs: a tuple.

A block may also declare how several of its calls run as one batched computation (``fusion``, a
``Fusion``): the fusion pass (``mtl_dsl.passes.fuse``) groups calls by that declaration alone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from ..tasks import TaskSpec
from ..types import AttentionMap, FeatureMap, MultiScale, TaskMap, Tokens
from .construct import BlockDefinitionError, bind, call_facts, resolve_module

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..weights.layout import Alias


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
DEFAULT_INT_MAX = 65_536  # no channel count or width beyond this; stops a 1e9-channel spec early

PARAM_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list",
                    dict: "dict", "task": "task"}


@dataclass(frozen=True)
class Input:
    """A graph value argument (a node's output)."""

    kinds: tuple[type, ...] = (FeatureMap,)
    doc: str = ""
    default: str | None = None  # "images": the model's input images when omitted
    optional: bool = False

    def accepts(self, value_type: object) -> bool:
        return isinstance(value_type, self.kinds)

    def type_name(self) -> str:
        return " | ".join(kind_name_of(k) for k in self.kinds)


def kind_name_of(cls: type) -> str:
    return {FeatureMap: "map", Tokens: "tokens", MultiScale: "multiscale", AttentionMap: "attention",
            TaskMap: "taskmap"}.get(cls, cls.__name__)


@dataclass(frozen=True)
class Param:
    """A constant argument. ``type`` is int, float, str, bool, list, dict or "task"."""

    type: Any
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    item_type: Any = None  # for lists: the type of every item

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        name = PARAM_TYPE_NAMES.get(self.type, str(self.type))
        if self.type is list and self.item_type is not None:
            name = f"list[{PARAM_TYPE_NAMES.get(self.item_type, str(self.item_type))}]"
        return name

    def check(self, value: Any) -> str | None:
        """Coerce-free validation: None if ``value`` is acceptable, else what is wrong."""
        if value is None and self.default is None:
            return None
        if not _is_type(value, self.type):
            got = "none" if value is None else f"{_value_type_name(value)} {_short(value)}"
            return f"expected {self.type_name()}, got {got}"
        if self.type is list and self.item_type is not None:
            for item in value:
                if not _is_type(item, self.item_type):
                    return (f"expected {self.type_name()}, but an item is "
                            f"{_value_type_name(item)} {_short(item)}")
        if self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(repr(c) for c in self.choices)}, got {value!r}"
        lo = self.min
        hi = self.max
        if self.type is int and hi is None:
            hi = DEFAULT_INT_MAX
        nums = value if isinstance(value, list) else [value]
        for v in nums:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if lo is not None and v < lo:
                    return f"value {v} is below the minimum {lo:g}"
                if hi is not None and v > hi:
                    return f"value {v} is above the maximum {hi:g}"
        return None


def _is_type(value: Any, t: Any) -> bool:
    if t == "task":
        return isinstance(value, str)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is Any or t is None:
        return True
    return isinstance(value, t)


_SPELLING = {True: "true", False: "false", None: "none"}


def _value_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "none"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value),
                                                                               type(value).__name__)


def _short(value: Any) -> str:
    """A value as a message quotes it, spelt as in a spec (true, false, none)."""
    text = _SPELLING.get(value, repr(value)) if isinstance(value, (bool, type(None))) else repr(value)
    return f"({text[:40]}...)" if len(text) > 43 else f"({text})"


@dataclass(frozen=True)
class Fusion:
    """What lets the fusion pass (``mtl_dsl.passes.fuse``) run calls of a block as one batched
    computation. Plain data: the batched code is imported only when a model is built.

    * ``batched``: dotted path of ``fn(modules, shared, *inputs) -> list``, which computes what the
      calls' modules compute one after another: ``modules`` are the calls' modules in order;
      ``inputs`` follow the block's declared inputs, each either the one value every call reads
      (``shared[i]`` true) or a list with one value per call. It returns one result per call, as
      the module's ``forward`` would. It must equal the separate calls to float32 rounding,
      gradients and BatchNorm statistics included, and draw random numbers (dropout) in the order
      the separate calls would.
    * ``vary``: parameters whose values may differ between the calls of one group (``task``: heads
      of different tasks, whose last layers differ in width); every other parameter and the types
      of all inputs must be equal.
    * ``within``: the module batches per-task layers of its own (one node whose forward loops over
      tasks): the compiler sets its ``batched`` attribute; the text says what it batches.
    """

    batched: str | None = None
    vary: tuple[str, ...] = ()
    within: str = ""


class ShapeError(Exception):
    """Raised by ``Block.infer``; the checker turns it into a located ``SpecError``.

    ``args`` names the inputs involved: the checker reports the nodes that produced them and
    their source lines, so a mismatch names both nodes.
    """

    def __init__(self, message: str, args: Sequence[str] = (), hint: str = ""):
        super().__init__(message)
        self.message = message
        self.args_involved = tuple(args)
        self.hint = hint


@dataclass
class Call:
    """One call of a block, as ``infer``, ``build`` and ``idle`` see it."""

    node: str  # the node's name in the graph (also its module path, dotted)
    block: str
    inputs: dict[str, Any]  # input name -> ValueType (None when an optional input is omitted)
    params: dict[str, Any]  # param name -> constant (defaults filled in)
    tasks: tuple[TaskSpec, ...]
    input_size: tuple[int, int]
    producers: dict[str, str] = field(default_factory=dict)  # input name -> producing node

    def __getitem__(self, name: str) -> Any:
        if name in self.params:
            return self.params[name]
        return self.inputs[name]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ShapeError(f"unknown task '{name}'")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def fail(self, message: str, *args: str, hint: str = "") -> "ShapeError":
        return ShapeError(message, args, hint)


class Block(ABC):
    """Base class of every registered block. Subclasses set the class attributes below."""

    name: ClassVar[str]
    family: ClassVar[str] = "common"
    doc: ClassVar[str] = ""
    args: ClassVar[dict[str, Input | Param]] = {}
    outputs: ClassVar[tuple[str, ...]] = ("out",)
    # What the block builds: "package.module.Name" (imported at build time) or the callable.
    module: ClassVar[str | Callable[..., Any] | None] = None
    # How calls of this block run batched (see ``Fusion``); None: always one call at a time.
    fusion: ClassVar[Fusion | None] = None

    @abstractmethod
    def infer(self, call: Call) -> Any:
        """The output type (a tuple of types when the block has several outputs)."""

    def extra_args(self, call: Call) -> dict[str, Any]:
        """Constructor arguments the standard facts do not give (see ``construct``); most
        blocks need none."""
        return {}

    def module_target(self) -> Callable[..., Any]:
        """The class or factory this block builds (imports it: torch is loaded here)."""
        spec = type(self).module
        if spec is None:
            raise BlockDefinitionError(f"block '{self.name}' names no module")
        return resolve_module(spec)

    def module_args(self, call: Call) -> dict[str, Any]:
        """The constructor's keyword arguments for this call, bound by name from the call's
        facts and ``extra_args`` (``mtl_dsl.blocks.construct``)."""
        facts = call_facts(self, call)
        facts.update(self.extra_args(call))
        return bind(self.module_target(), facts, self.name)

    def construction(self, call: Call) -> tuple[Callable[..., Any], dict[str, Any]]:
        """(what is built, with which arguments): equal pairs build modules of one structure."""
        return self.module_target(), self.module_args(call)

    def build(self, call: Call) -> "nn.Module":
        """The block's module for this call."""
        target, kwargs = self.construction(call)
        return target(**kwargs)

    def unfusable(self, call: Call) -> str | None:
        """Why this call cannot join a batched group although the block declares ``fusion`` (a
        variant without a batched implementation), else None."""
        return None

    def draws_random(self, call: Call) -> bool:
        """Whether the module draws random numbers in training (dropout, drop path, Gumbel
        noise): the fusion pass keeps the order of such calls."""
        return False

    def idle(self, call: Call) -> dict[str, str]:
        """Parameters (names relative to the module, prefix match) that can never receive a
        gradient by construction, with the reason. Reported by the compiler, frozen at build."""
        return {}

    def official_layout(self, call: Call) -> "tuple[Alias, ...]":
        """How the official implementation names this module's tensors where its names differ
        from ours (``mtl_dsl.weights.layout``): read by ``mtl-dsl convert`` and ``--init``."""
        return ()

    # helpers -----------------------------------------------------------------------------------
    @classmethod
    def inputs(cls) -> dict[str, Input]:
        return {k: v for k, v in cls.args.items() if isinstance(v, Input)}

    @classmethod
    def params(cls) -> dict[str, Param]:
        return {k: v for k, v in cls.args.items() if isinstance(v, Param)}

    @classmethod
    def signature(cls) -> str:
        parts = []
        for name, arg in cls.args.items():
            if isinstance(arg, Input):
                s = f"{name}: {arg.type_name()}"
                if arg.default:
                    s += f" = {arg.default}"
                elif arg.optional:
                    s += " = none"
            else:
                s = f"{name}: {arg.type_name()}"
                if not arg.required:
                    s += f" = {_render_default(arg.default)}"
            parts.append(s)
        outs = ", ".join(cls.outputs)
        return f"{cls.name}({', '.join(parts)}) -> {outs}"


def _render_default(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if v is None:
        return "none"
    return repr(v)


REGISTRY: dict[str, Block] = {}


def register(cls: type[Block]) -> type[Block]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    name = cls.name
    if name in REGISTRY:
        raise RuntimeError(f"block '{name}' registered twice ({type(REGISTRY[name]).__module__} "
                           f"and {cls.__module__})")
    if cls.module is None and cls.build is Block.build:
        raise RuntimeError(f"block '{name}' names no module (set `module` to a dotted path or "
                           f"a class) and does not override build")
    for arg_name, arg in cls.args.items():
        if isinstance(arg, Param) and not arg.required and arg.default is not None:
            problem = arg.check(arg.default)
            if problem:
                raise RuntimeError(f"block '{name}': default of '{arg_name}': {problem}")
    REGISTRY[name] = cls()
    return cls
