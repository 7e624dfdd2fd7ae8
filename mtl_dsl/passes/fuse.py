"""Cross-task fusion: which calls of a checked graph run as one batched computation.

Multi-task models repeat one block per task (or per task pair) on one input or on inputs of one
shape: the baseline's heads on the shared features, DeMT's deformable mixers, ATRC's context
blocks. Run one after another they are many small kernels; batched they are one grouped
convolution or one batched matmul. This pass is a function from the checked graph to a
``FusionPlan``; the compiler applies it (``mtl_dsl.compiler``). Pure Python, no torch: ``render``
shows the plan without building anything.

Calls form a group when

* their block declares a batched implementation (``Block.fusion``, see
  ``mtl_dsl.blocks.registry.Fusion``) and does not exclude the call (``Block.unfusable``);
* their parameters are equal except those the declaration lets vary (``task``), and their inputs
  have equal types (widths and symbolic sizes), so that their modules have one structure;
* they sit at the same depth of the graph (the longest path from the images): no call of a group
  can read another's result, and groups ordered by depth never wait on each other in a cycle;
* running them together keeps the order in which the model draws random numbers (dropout), so
  that a fused and an unfused model given the same seed compute the same thing.

The plan also says, for every call whose block could be batched but that runs alone, why; lists
the modules that batch their own per-task layers (``Fusion.within``); and gives the order in
which the compiled model runs its calls and groups (``schedule``).
"""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from typing import Any

from ..blocks import REGISTRY
from ..checker import CheckedGraph
from ..ir import IMAGES, ModelIR, Node
from ..types import FeatureMap, TaskMap, Tokens


@dataclass(frozen=True)
class Group:
    """Calls of one block that run as one batched computation."""

    block: str
    nodes: tuple[str, ...]  # in graph order
    shared: tuple[str, ...]  # the inputs every call reads as one value
    batched: str  # dotted path of the batched function (``Fusion.batched``)

    def describe(self) -> str:
        shared = f", sharing {', '.join(self.shared)}" if self.shared else ""
        return f"{self.block} x{len(self.nodes)}{shared}: {', '.join(self.nodes)}"


@dataclass(frozen=True)
class FusionPlan:
    """What the compiler batches: ``groups``, the nodes whose module batches its own per-task
    layers (``within``), why each other batchable call runs alone (``alone``), and the order of
    execution (``schedule``: node names and group indices)."""

    groups: tuple[Group, ...] = ()
    within: dict[str, str] = field(default_factory=dict)
    alone: dict[str, str] = field(default_factory=dict)
    schedule: tuple[str | int, ...] = ()

    def group_of(self, node: str) -> Group | None:
        for g in self.groups:
            if node in g.nodes:
                return g
        return None

    @property
    def fused_nodes(self) -> int:
        return sum(len(g.nodes) for g in self.groups)

    def note(self, node: str) -> str:
        """One line about ``node`` for ``render`` (empty when there is nothing to say)."""
        g = self.group_of(node)
        if g is not None:
            others = [n for n in g.nodes if n != node]
            return f"fused with {', '.join(others)} ({g.block} x{len(g.nodes)})"
        if node in self.within:
            return f"batched inside: {self.within[node]}"
        if node in self.alone:
            return f"not fused: {self.alone[node]}"
        return ""

    def describe(self) -> list[str]:
        """The plan for people: one line per group, per batching module and per lone call."""
        lines = [f"fused {self.fused_nodes} calls into {len(self.groups)} batched "
                 f"computation{'s' if len(self.groups) != 1 else ''}"]
        lines += [f"  {g.describe()}" for g in self.groups]
        lines += [f"  {n}: batched inside ({why})" for n, why in self.within.items()]
        if self.alone:
            lines.append("not fused:")
            lines += [f"  {n}: {why}" for n, why in self.alone.items()]
        return lines


def plan_fusion(graph: CheckedGraph) -> FusionPlan:
    """The fusion plan of a checked graph (see the module doc)."""
    ir = graph.ir
    nodes = {n.name: n for n in ir.nodes}
    depth = _depths(ir)
    alone: dict[str, str] = {}
    keys: dict[str, tuple] = {}
    candidates: dict[tuple, list[str]] = {}
    for node in ir.nodes:
        block = REGISTRY[node.block]
        if block.fusion is None or block.fusion.batched is None:
            continue
        reason = block.unfusable(graph.calls[node.name])
        if reason:
            alone[node.name] = reason
            continue
        key = _key(node, graph, depth[node.name], block.fusion.vary)
        keys[node.name] = key
        candidates.setdefault(key, []).append(node.name)

    random = _random_calls(graph)
    groups: list[Group] = []
    for members in candidates.values():
        if len(members) < 2:
            continue
        group = _group(members, nodes)
        trial = groups + [group]
        if random and _random_order(ir, trial, random) != random:
            for n in members:
                alone[n] = ("batching it with its peers would change the order in which the "
                            "model draws random numbers")
            continue
        groups = trial

    grouped = {n for g in groups for n in g.nodes}
    for name, key in keys.items():
        if name not in grouped and name not in alone:
            alone[name] = _why_alone(name, key, keys, nodes, graph, depth)
    # Equal calls of a block without a batched form could have been batched: say so.
    equal: dict[tuple, list[str]] = {}
    for n in ir.nodes:
        fusion = REGISTRY[n.block].fusion
        if fusion is None or fusion.batched is None:
            equal.setdefault(_key(n, graph, depth[n.name], ()), []).append(n.name)
    for names in equal.values():
        if len(names) > 1:
            for name in names:
                alone[name] = f"'{nodes[name].block}' has no batched implementation"
    within = {n.name: REGISTRY[n.block].fusion.within for n in ir.nodes  # type: ignore[union-attr]
              if REGISTRY[n.block].fusion is not None and REGISTRY[n.block].fusion.within}
    return FusionPlan(groups=tuple(groups), within=within, alone=_in_graph_order(alone, ir),
                      schedule=tuple(_schedule(ir, groups)))


def keep_groups(plan: FusionPlan, graph: CheckedGraph, keep: set[int], why: str) -> FusionPlan:
    """``plan`` with only the groups at the indices ``keep``; the calls of the others run alone
    because of ``why`` (e.g. measured slower batched). If running only those groups would change
    the order in which the model draws random numbers, none is kept."""
    ir = graph.ir
    groups = [g for i, g in enumerate(plan.groups) if i in keep]
    random = _random_calls(graph)
    if random and _random_order(ir, groups, random) != random:
        groups = []
    kept = {n for g in groups for n in g.nodes}
    alone = dict(plan.alone)
    for g in plan.groups:
        for n in g.nodes:
            if n not in kept:
                alone[n] = why
    return FusionPlan(groups=tuple(groups), within=dict(plan.within),
                      alone=_in_graph_order(alone, ir), schedule=tuple(_schedule(ir, groups)))


def _random_calls(graph: CheckedGraph) -> list[str]:
    """The calls that draw random numbers (dropout), in graph order."""
    return [n.name for n in graph.ir.nodes if REGISTRY[n.block].draws_random(graph.calls[n.name])]


def _in_graph_order(alone: dict[str, str], ir: ModelIR) -> dict[str, str]:
    ordered = {n.name: i for i, n in enumerate(ir.nodes)}
    return dict(sorted(alone.items(), key=lambda kv: ordered[kv[0]]))


def _depths(ir: ModelIR) -> dict[str, int]:
    """Longest path from the images to each node (the IR is in topological order)."""
    depth = {IMAGES: 0}
    for n in ir.nodes:
        depth[n.name] = 1 + max((depth[r.node] for r in n.refs()), default=0)
    return depth


def _type_key(t: Any) -> str:
    return "none" if t is None else t.model_dump_json()


def _key(node: Node, graph: CheckedGraph, depth: int, vary: tuple[str, ...]) -> tuple:
    call = graph.calls[node.name]
    params = {k: v for k, v in call.params.items() if k not in vary}
    inputs = tuple((k, _type_key(v)) for k, v in call.inputs.items())
    return (node.block, depth, json.dumps(params, sort_keys=True, default=repr), inputs)


def _group(members: list[str], nodes: dict[str, Node]) -> Group:
    block = REGISTRY[nodes[members[0]].block]
    shared = tuple(name for name in block.inputs()
                   if all(nodes[m].inputs.get(name) == nodes[members[0]].inputs.get(name)
                          for m in members[1:]))
    assert block.fusion is not None and block.fusion.batched is not None
    return Group(block=block.name, nodes=tuple(members), shared=shared,
                 batched=block.fusion.batched)


def _schedule(ir: ModelIR, groups: list[Group]) -> list[str | int]:
    """A topological order of the calls with each group as one step; among the steps that are
    ready, the one earliest in the graph's own order runs first."""
    unit: dict[str, str | int] = {n.name: n.name for n in ir.nodes}
    for i, g in enumerate(groups):
        for n in g.nodes:
            unit[n] = i
    index = {n.name: i for i, n in enumerate(ir.nodes)}
    priority: dict[str | int, int] = {}
    needs: dict[str | int, set[str | int]] = {}
    users: dict[str | int, set[str | int]] = {}
    for n in ir.nodes:
        u = unit[n.name]
        priority[u] = min(priority.get(u, index[n.name]), index[n.name])
        needs.setdefault(u, set())
        for r in n.refs():
            if r.node != IMAGES and unit[r.node] != u:
                needs[u].add(unit[r.node])
                users.setdefault(unit[r.node], set()).add(u)
    waiting = {u: len(v) for u, v in needs.items()}
    ready = [(priority[u], str(u), u) for u, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    order: list[str | int] = []
    while ready:
        _, _, u = heapq.heappop(ready)
        order.append(u)
        for v in users.get(u, ()):
            waiting[v] -= 1
            if waiting[v] == 0:
                heapq.heappush(ready, (priority[v], str(v), v))
    if len(order) != len(waiting):  # pragma: no cover - same-depth groups cannot form a cycle
        raise RuntimeError("fusion groups form a cycle")
    return order


def _random_order(ir: ModelIR, groups: list[Group], random: list[str]) -> list[str]:
    """The order in which the calls that draw random numbers run under ``groups``."""
    chosen = set(random)
    out: list[str] = []
    for u in _schedule(ir, groups):
        members = groups[u].nodes if isinstance(u, int) else (u,)
        out += [m for m in members if m in chosen]
    return out


def _why_alone(name: str, key: tuple, keys: dict[str, tuple], nodes: dict[str, Node],
               graph: CheckedGraph, depth: dict[str, int]) -> str:
    block = nodes[name].block
    peers = [n for n, k in keys.items() if n != name and k[0] == block]
    if not peers:
        return f"the only call of '{block}' that could be batched"
    other = peers[0]
    mine, theirs = graph.calls[name], graph.calls[other]
    vary = REGISTRY[block].fusion.vary  # type: ignore[union-attr]
    for p, v in mine.params.items():
        if p not in vary and theirs.params.get(p) != v:
            return (f"its {p} = {json.dumps(v)} differs from '{other}' "
                    f"({json.dumps(theirs.params.get(p))})")
    for arg, t in mine.inputs.items():
        u = theirs.inputs.get(arg)
        if _type_key(t) != _type_key(u):
            return (f"its input '{arg}' is {_shape(t)}, that of '{other}' {_shape(u)}")
    return (f"it runs at another step of the graph than '{other}' (depth {depth[name]} vs "
            f"{depth[other]}): one may need the other's result")


def _shape(t: Any) -> str:
    if t is None:
        return "omitted"
    if isinstance(t, (FeatureMap, Tokens, TaskMap)):
        return t.shape_str()
    return t.shape_str() if hasattr(t, "shape_str") else str(t)
