"""The typed intermediate representation: the contract between the front-end and the compiler.

A ``ModelIR`` is a flat graph: every node is one call of a registered block with its constant
arguments resolved and its graph inputs named; loops are unrolled, user blocks inlined, imports
resolved. It is plain data (pydantic v2) and round-trips exactly through JSON.
"""
from __future__ import annotations

import hashlib
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .tasks import TaskSpec
from .types import Dim

IMAGES = "images"  # the model input, a pseudo-node every block may read


class SourceLoc(BaseModel):
    """Where a value was written: line, column and underlined length for messages; the
    character offsets of the whole construct (end exclusive; -1 when not from a file) for tools
    that edit the text."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    file: str
    line: int
    column: int
    length: int = 1
    start: int = -1
    end: int = -1


class Ref(BaseModel):
    """Output ``index`` of node ``node`` (``images`` is the model input)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["ref"] = "ref"
    node: str
    index: int = 0


class CollectionRef(BaseModel):
    """A per-task (or per-key) collection of graph values, ``{key: value}`` in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["collection"] = "collection"
    items: dict[str, Union[Ref, "CollectionRef"]]

    def refs(self) -> list[Ref]:
        out: list[Ref] = []
        for v in self.items.values():
            out.extend(v.refs() if isinstance(v, CollectionRef) else [v])
        return out


InputValue = Annotated[Union[Ref, CollectionRef], Field(discriminator="kind")]
CollectionRef.model_rebuild()


ShapeDim = Union[int, Literal["B", "_"], Dim]


class ShapeAssertion(BaseModel):
    """Expected dims of a node's first output (``:: [B, 64, H/4, W/4]``): "B" (the batch), "_"
    (any), an int, or a symbolic spatial size ``Dim`` (``H/4`` = ceil(H/4))."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dims: list[ShapeDim]
    loc: SourceLoc


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # unique, dotted: also the module path in the compiled model
    block: str
    inputs: dict[str, InputValue | None]
    params: dict[str, JsonValue]
    loc: SourceLoc
    trace: list[SourceLoc] = []  # the calls of user blocks this node was inlined through
    num_outputs: int = 1
    shape: ShapeAssertion | None = None
    defaulted: list[str] = []  # params the spec did not give (the block's defaults)

    def refs(self) -> list[Ref]:
        out: list[Ref] = []
        for v in self.inputs.values():
            if isinstance(v, Ref):
                out.append(v)
            elif isinstance(v, CollectionRef):
                out.extend(v.refs())
        return out


class Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    task: str
    name: str  # "final", "aux", or another supervised output
    value: Ref
    loc: SourceLoc


ParamOrigin = Literal["default", "preset", "set"]


class ParamValue(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    value: JsonValue
    type: str
    origin: ParamOrigin
    loc: SourceLoc  # where the default was written


class TableEntryIR(BaseModel):
    """A context-table entry as written, with the location of its value (for search rewrite)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    table: str
    target: str
    source: str
    value: JsonValue
    loc: SourceLoc


class WeightRule(BaseModel):
    """One entry of a ``weights NAME { ... }`` map of the spec, expanded to plain data: the official
    checkpoint's tensors whose names start with ``official`` are this model's tensors under
    ``target`` (the rest of the name carried over, or renamed by the block's declared official
    layout), or, with no ``target``, they are deliberately not used, for ``reason``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    official: str  # a dotted prefix of official key names ("head.bottleneck.semseg")
    target: str | None  # a dotted prefix of this model's state_dict names; None: not used
    reason: str = ""  # why the official tensors under ``official`` are not used
    via: list[str] = []  # the import aliases / spec names the entry came through (``--init demt=``)
    loc: SourceLoc


class ModelIR(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["mtl-dsl-ir/1"] = "mtl-dsl-ir/1"
    name: str
    file: str
    tasks: list[TaskSpec]
    profile: str
    input_size: tuple[int, int]
    params: dict[str, ParamValue]
    preset: str | None = None
    presets: list[str] = []
    nodes: list[Node]
    outputs: list[Output]
    tables: list[TableEntryIR] = []
    imports: list[str] = []
    # ``weights NAME { ... }``: how checkpoints of the official implementations name this model's
    # tensors, one list of entries per map name ("official", ...).
    weight_maps: dict[str, list[WeightRule]] = {}

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelIR":
        return cls.model_validate_json(text)

    def graph_hash(self) -> str:
        """Hash of what decides the weights' names and shapes (not locations or comments)."""
        payload = self.model_dump_json(include={"tasks", "input_size", "nodes", "outputs"},
                                       exclude={"nodes": {"__all__": {"loc", "trace", "shape"}},
                                                "outputs": {"__all__": {"loc"}}})
        return hashlib.sha256(payload.encode()).hexdigest()
