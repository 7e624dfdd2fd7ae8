"""Shape inference over the IR, before any weight exists.

Every node's output types are inferred by its block's rule from its inputs' types, symbolically in
batch and input size (``H``, ``W``); where two symbolic sizes differ in form they are compared at the
input size the model is compiled for. Mismatches name both nodes and their source lines. Nodes
that no output depends on are rejected (dead branches). Pure Python: no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .blocks import REGISTRY
from .blocks.registry import Call, ShapeError
from .errors import Diagnostics
from .ir import IMAGES, CollectionRef, ModelIR, Node, Ref, SourceLoc
from .types import Dim, FeatureMap, H, TaskMap, Tokens, W, describe, kind_name


@dataclass
class CheckedGraph:
    """The IR with every node's output types: what the compiler builds from."""

    ir: ModelIR
    types: dict[str, tuple[Any, ...]]  # node -> output types
    calls: dict[str, Call] = field(default_factory=dict)

    def output_type(self, ref: Ref) -> Any:
        return self.types[ref.node][ref.index]

    def input_type(self, value: Ref | CollectionRef | None) -> Any:
        if value is None:
            return None
        if isinstance(value, Ref):
            return self.output_type(value)
        return TaskMap(items={k: self.input_type(v) for k, v in value.items.items()})


def image_type() -> FeatureMap:
    return FeatureMap(channels=3, h=H, w=W)


class _Checker:
    def __init__(self, ir: ModelIR, sink: Diagnostics):
        self.ir = ir
        self.sink = sink
        self.types: dict[str, tuple[Any, ...]] = {IMAGES: (image_type(),)}
        self.nodes = {n.name: n for n in ir.nodes}
        self._misuses: dict[tuple[str, str], tuple[int, SourceLoc, list[str]]] = {}
        self.calls: dict[str, Call] = {}

    def _misused_again(self, src: str, kind: str, loc: SourceLoc) -> bool:
        """One value of the wrong kind (`x = feats` for `x = upsample_concat(feats)`) given to
        several calls is one mistake: reported at its first use, the others listed there. (The
        same place again, once per task, is counted by the sink's folding.)"""
        first = self._misuses.get((src, kind))
        if first is None:
            self._misuses[(src, kind)] = (len(self.sink.items), loc, [])
            return False
        if (loc.file, loc.line, loc.column) == (first[1].file, first[1].line, first[1].column):
            return False
        first[2].append(f"{loc.file}:{loc.line}")
        return True

    def _note_misuses(self) -> None:
        for index, _, places in self._misuses.values():
            places = list(dict.fromkeys(places))
            if places and index < len(self.sink.items):
                d = self.sink.items[index]
                note = (f"the same value is given at {len(places)} more place"
                        f"{'s' if len(places) > 1 else ''}: {', '.join(places)}")
                self.sink.items[index] = replace(d, notes=d.notes + (note,))

    def error(self, loc: SourceLoc, message: str, hint: str = "", notes: tuple[str, ...] = ()):
        self.sink.error(loc, message, hint, notes)

    def where(self, node: str) -> str:
        if node == IMAGES:
            return "the model input 'images'"
        n = self.nodes[node]
        return f"node '{node}' ({n.block}) at {n.loc.file}:{n.loc.line}"

    def value_type(self, value: Ref | CollectionRef | None) -> Any:
        if value is None:
            return None
        if isinstance(value, Ref):
            outs = self.types.get(value.node)
            if outs is None:
                raise _Skip()
            return outs[value.index]
        return TaskMap(items={k: self.value_type(v) for k, v in value.items.items()})

    def producer(self, value: Ref | CollectionRef | None) -> str:
        if isinstance(value, Ref):
            return value.node
        if isinstance(value, CollectionRef):
            refs = value.refs()
            return refs[0].node if refs else ""
        return ""

    def producers(self, node: Node) -> dict[str, str]:
        """Input name -> the node that made it; a collection's entries also as ``NAME[key]``."""
        out = {}
        for k, v in node.inputs.items():
            out[k] = self.producer(v)
            if isinstance(v, CollectionRef):
                for key, item in v.items.items():
                    out[f"{k}[{key}]"] = self.producer(item)
        return out

    def check(self) -> CheckedGraph:
        size = tuple(self.ir.input_size)
        for node in self.ir.nodes:
            block = REGISTRY.get(node.block)
            if block is None:
                self.error(node.loc, f"unknown block '{node.block}' in the IR")
                continue
            try:
                inputs = {k: self.value_type(v) for k, v in node.inputs.items()}
            except _Skip:
                continue  # an input failed already; its error is reported
            bad = False
            for arg_name, spec in block.inputs().items():
                t = inputs.get(arg_name)
                if t is None:
                    continue
                if not spec.accepts(t):
                    src = self.producer(node.inputs[arg_name])
                    bad = True
                    if self._misused_again(src, kind_name(t), node.loc):
                        continue
                    self.error(node.loc, f"argument '{arg_name}' of '{node.block}' takes a "
                                         f"{spec.type_name()}, but gets a {kind_name(t)} "
                                         f"{t.shape_str()}",
                               notes=(f"the value comes from {self.where(src)}",))
            if bad:
                continue
            call = Call(node=node.name, block=node.block, inputs=inputs, params=dict(node.params),
                        tasks=tuple(self.ir.tasks), input_size=size,  # type: ignore[arg-type]
                        producers=self.producers(node))
            try:
                result = block.infer(call)
            except ShapeError as e:
                notes = tuple(f"'{a}' comes from {self.where(call.producers[a])}"
                              for a in e.args_involved if call.producers.get(a))
                self.error(node.loc, f"{node.block} '{node.name}': {e.message}", e.hint, notes)
                continue
            outs = result if isinstance(result, tuple) else (result,)
            if len(outs) != node.num_outputs:
                self.error(node.loc, f"block '{node.block}' returned {len(outs)} values, "
                                     f"declared {node.num_outputs}")
                continue
            self.types[node.name] = outs
            self.calls[node.name] = call
            if node.shape is not None:
                self._check_assertion(node, outs[0], size)
        self._check_outputs(size)
        self._check_dead()
        self._note_misuses()
        self.sink.raise_if_errors()
        return CheckedGraph(self.ir, self.types, self.calls)

    def _check_assertion(self, node: Node, t: Any, size: tuple[int, int]) -> None:
        assert node.shape is not None
        want = node.shape.dims
        if isinstance(t, FeatureMap):
            have: list[Any] = ["B", t.channels, t.h, t.w]
        elif isinstance(t, Tokens):
            have = ["B", t.groups * t.h.eval(*size) * t.w.eval(*size), t.channels]
        else:
            self.error(node.shape.loc, f"a shape assertion needs a feature map or tokens; "
                                       f"'{node.name}' is a {kind_name(t)}")
            return
        ok = len(want) == len(have)
        if ok:
            for w_dim, h_dim in zip(want, have):
                if w_dim == "_" or w_dim == "B" and h_dim == "B":
                    continue
                if isinstance(w_dim, int) and not isinstance(h_dim, Dim):
                    ok = ok and w_dim == h_dim
                elif isinstance(h_dim, Dim) and isinstance(w_dim, (int, Dim)):
                    expect = w_dim if isinstance(w_dim, Dim) else Dim.of(w_dim)
                    ok = ok and expect.eval(*size) == h_dim.eval(*size)
                else:
                    ok = False
        if not ok:
            shown = "[" + ", ".join(str(d) for d in want) + "]"
            self.error(node.shape.loc, f"shape assertion failed: '{node.name}' is "
                                       f"{t.shape_str()}, expected {shown}",
                       notes=(f"at input size {size[0]}x{size[1]}",))

    def _check_outputs(self, size: tuple[int, int]) -> None:
        tasks = {t.name: t for t in self.ir.tasks}
        for o in self.ir.outputs:
            outs = self.types.get(o.value.node)
            if outs is None:
                continue
            t = outs[o.value.index]
            if not isinstance(t, FeatureMap):
                self.error(o.loc, f"output '{o.name}' of task '{o.task}' must be a feature map, "
                                  f"got {describe(t)}",
                           notes=(f"it comes from {self.where(o.value.node)}",))
                continue
            want = tasks[o.task].aux_channels if o.name == "aux" else tasks[o.task].channels
            if t.channels != want:
                what = "auxiliary" if o.name == "aux" else "output"
                self.error(o.loc, f"output '{o.name}' of task '{o.task}' has {t.channels} "
                                  f"channels; the task's {what} has {want}",
                           notes=(f"it comes from {self.where(o.value.node)}",))

    def _check_dead(self) -> None:
        """Nodes no output depends on: one error per statement that made them (a call of a user
        block makes many), at that statement."""
        live: set[str] = set()
        stack = [o.value.node for o in self.ir.outputs]
        while stack:
            name = stack.pop()
            if name in live or name == IMAGES:
                continue
            live.add(name)
            stack.extend(r.node for r in self.nodes[name].refs())
        groups: dict[SourceLoc, list[Node]] = {}
        for n in self.ir.nodes:
            if n.name not in live and n.name in self.types:
                groups.setdefault(n.trace[0] if n.trace else n.loc, []).append(n)
        # a statement whose nodes only unused nodes of other statements read is a consequence of
        # those (`x = f(lo)` left unused leaves `lo` unused): named in their error, not its own
        statement = {n.name: loc for loc, nodes in groups.items() for n in nodes}
        read_elsewhere = {r.node for loc, nodes in groups.items() for n in nodes
                          for r in n.refs() if statement.get(r.node, loc) != loc}
        for loc, dead in groups.items():
            if all(n.name in read_elsewhere for n in dead):
                continue
            first = dead[0]
            notes: tuple[str, ...] = ()
            if len(dead) > 1:
                shown = ", ".join(f"{n.name} ({n.block})" for n in dead[1:4])
                more = f" and {len(dead) - 4} more" if len(dead) > 4 else ""
                notes = (f"{len(dead) - 1} more node{'s' if len(dead) > 2 else ''} of this "
                         f"statement {'are' if len(dead) > 2 else 'is'} unused too: {shown}{more}",)
            upstream = self._only_read_by(dead, statement, loc)
            if upstream:
                notes += ("so is what only it reads: " + ", ".join(upstream[:3]) +
                          (f" and {len(upstream) - 3} more" if len(upstream) > 3 else ""),)
            self.error(loc, f"node '{first.name}' ({first.block}) is never used: no output "
                            f"depends on it", "remove it, or feed it into an output", notes)

    def _only_read_by(self, dead: list[Node], statement: dict, loc: SourceLoc) -> list[str]:
        """The unused nodes of other statements that ``dead`` reads, transitively."""
        found: list[str] = []
        stack = [r.node for n in dead for r in n.refs()]
        while stack:
            name = stack.pop()
            if name not in statement or statement[name] == loc or name in found:
                continue
            found.append(name)
            stack.extend(r.node for r in self.nodes[name].refs())
        index = {n.name: i for i, n in enumerate(self.ir.nodes)}
        return [self.where(name) for name in sorted(found, key=index.__getitem__)]


class _Skip(Exception):
    """A node whose inputs already failed: it is not checked again (one error per mistake)."""


def check_ir(ir: ModelIR, sink: Diagnostics | None = None) -> CheckedGraph:
    """Infer every node's types; mistakes go to ``sink`` (the compilation's, which knows the
    sources to quote) and are raised together as one SpecError."""
    return _Checker(ir, sink if sink is not None else Diagnostics()).check()
