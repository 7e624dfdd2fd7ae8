"""Checked graph -> one ``nn.Module``.

Each node's module is built by its block and placed at the node's dotted name (``d.semseg`` is
``model.d.semseg``), so ``state_dict`` keys follow the spec's names and stay the same between
compiles. ``forward`` is generated once with ``torch.fx`` as straight-line code (one call per node,
in topological order): no interpretation cost per call beyond hand-written code, and
``torch.compile`` sees ordinary Python.

Fusion (``mtl_dsl.passes.fuse``): the model holds two such graphs over the same modules. The fused
one runs each group of the fusion plan as one call of its block's batched function, which reads
the calls' own modules (``get_attr``): parameter names, ``state_dict`` and checkpoints are the
same with fusion on or off, and ``set_fusion`` switches between the two at any time.
"""
from __future__ import annotations

import linecache
import operator
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .blocks import REGISTRY
from .blocks.construct import resolve_module
from .blocks.user import ModuleBlock
from .checker import CheckedGraph
from .errors import Diagnostic, SpecError
from .ir import IMAGES, CollectionRef, ModelIR, Ref
from .modules.grad_layout import guard_norm_gradients
from .modules.shape_probe import guard
from .passes.fuse import FusionPlan, Group, plan_fusion
from .tasks import PROFILES, TaskProfile


def resize_to_input(x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Every task output is a dense prediction at the input resolution (bilinear, as the
    official heads upsample their logits)."""
    if x.shape[-2:] == images.shape[-2:]:
        return x
    return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)


class CompiledModel(fx.GraphModule):
    """The model a spec compiles to: ``forward(images) -> {task: {output: tensor}}``."""

    ir: ModelIR
    checked: CheckedGraph
    profile: TaskProfile
    idle_parameters: dict[str, str]
    output_names: dict[str, list[str]]
    input_size: tuple[int, int]
    fusion: FusionPlan  # what runs batched when fusion is on
    full_fusion: FusionPlan  # every group the pass found (``fusion`` may keep fewer: tuning)
    fused: bool  # whether it is on
    _graphs: dict[bool, fx.Graph]

    def node_modules(self) -> dict[str, nn.Module]:
        return {n.name: self.get_submodule(n.name) for n in self.ir.nodes}

    def set_fusion(self, enabled: bool) -> None:
        """Run the fusion plan's groups batched (``True``) or every call on its own. The
        parameters are the same objects either way; only ``forward`` changes."""
        enabled = bool(enabled)
        if self.graph is not self._graphs[enabled]:
            self.graph = self._graphs[enabled]  # the setter regenerates forward
        for name in self.fusion.within:
            self.get_submodule(name).batched = enabled
        self.fused = enabled

    def keep_fusion_groups(self, keep: set[int], why: str) -> None:
        """Batch only the groups of the full fusion plan (``full_fusion``) at the indices
        ``keep``; the others' calls run one by one, noted with ``why``. Exact either way: this
        only chooses what is faster (``mtl_dsl.fusion_tuning``)."""
        from .passes.fuse import keep_groups

        plan = keep_groups(self.full_fusion, self.checked, keep, why)
        self._graphs[True] = _build_graph(self.checked, plan) if plan.groups else self._graphs[False]
        self.fusion = plan
        self.set_fusion(self.fused)  # a new graph object: forward is regenerated

    @contextmanager
    def fusion_off(self) -> Iterator["CompiledModel"]:
        """Every call on its own for the duration (e.g. to count multiply-adds per node)."""
        was = self.fused
        self.set_fusion(False)
        try:
            yield self
        finally:
            self.set_fusion(was)


def compile_graph(checked: CheckedGraph, fuse: bool = True) -> CompiledModel:
    """The model of a checked graph; ``fuse`` whether it starts with fusion on."""
    ir = checked.ir
    root, idle = _build_modules(checked)
    guard_norm_gradients(root)  # a PyTorch backward defect at batch one (see grad_layout)
    plan = plan_fusion(checked)
    unfused = _build_graph(checked, None)
    # Built from the unfused graph, so modules are registered (and state_dict ordered) as always.
    model = CompiledModel(root, unfused, class_name=f"Compiled_{ir.name}")
    model._graphs = {False: unfused, True: _build_graph(checked, plan) if plan.groups else unfused}
    model.fusion = model.full_fusion = plan
    model.fused = False
    model.ir = ir
    model.checked = checked
    known = PROFILES.get(ir.profile)
    model.profile = TaskProfile(name=ir.profile, tasks=tuple(ir.tasks),
                                input_size=tuple(ir.input_size),  # type: ignore[arg-type]
                                edge_pos_weight=known.edge_pos_weight if known else 0.95)
    model.idle_parameters = idle
    names: dict[str, list[str]] = {}
    for o in ir.outputs:
        names.setdefault(o.task, []).append(o.name)
    model.output_names = {t.name: names[t.name] for t in ir.tasks if t.name in names}
    model.input_size = tuple(ir.input_size)  # type: ignore[assignment]
    model.set_fusion(fuse)
    return model


def _build_modules(checked: CheckedGraph) -> tuple[nn.Module, dict[str, str]]:
    """Every node's module at its dotted name, idle parameters frozen (and named with why)."""
    root = nn.Module()
    idle: dict[str, str] = {}
    for node in checked.ir.nodes:
        block = REGISTRY[node.block]
        call = checked.calls[node.name]
        try:
            module = block.build(call)
        except (ValueError, OSError, RuntimeError) as e:
            # Building can still fail on things only torch/timm know (a weights file, memory).
            loc = node.loc
            line = linecache.getline(loc.file, loc.line).rstrip("\n")
            raise SpecError(Diagnostic(loc.file, loc.line, loc.column,
                                       f"cannot build '{node.name}' ({node.block}): {e}",
                                       source_line=line, length=loc.length)) from None
        if isinstance(block, ModuleBlock):  # a user's module: its errors point at the spec
            guard(module, block, node)
        _place(root, node.name, module)
        for prefix, reason in block.idle(call).items():
            matched = False
            for pname, p in module.named_parameters():
                if pname == prefix or pname.startswith(prefix + "."):
                    p.requires_grad_(False)
                    idle[f"{node.name}.{pname}"] = reason
                    matched = True
            if not matched:
                raise RuntimeError(f"block '{node.block}' declares idle parameter '{prefix}' "
                                   f"that its module does not have")
    return root, idle


def _build_graph(checked: CheckedGraph, plan: FusionPlan | None) -> fx.Graph:
    """``forward`` as straight-line code: one call per node, or (with a plan) per group."""
    ir = checked.ir
    graph = fx.Graph()
    images = graph.placeholder(IMAGES)
    values: dict[tuple[str, int], fx.Node] = {(IMAGES, 0): images}
    nodes = {n.name: n for n in ir.nodes}

    def arg(v: Ref | CollectionRef | None) -> Any:
        if v is None:
            return None
        if isinstance(v, Ref):
            return values[(v.node, v.index)]
        return {k: arg(x) for k, x in v.items.items()}

    def bind(name: str, out: fx.Node) -> None:
        if nodes[name].num_outputs == 1:
            values[(name, 0)] = out
        else:
            for i in range(nodes[name].num_outputs):
                values[(name, i)] = graph.call_function(operator.getitem, (out, i))

    schedule = plan.schedule if plan is not None else [n.name for n in ir.nodes]
    for step in schedule:
        if isinstance(step, str):
            node = nodes[step]
            block = REGISTRY[node.block]
            args = tuple(arg(node.inputs.get(name)) for name in block.inputs())
            bind(step, graph.call_module(node.name, args))
            continue
        group: Group = plan.groups[step]  # type: ignore[union-attr]
        block = REGISTRY[group.block]
        modules = tuple(graph.get_attr(name) for name in group.nodes)
        shared = tuple(name in group.shared for name in block.inputs())
        inputs = []
        for name in block.inputs():
            per_call = [arg(nodes[n].inputs.get(name)) for n in group.nodes]
            inputs.append(per_call[0] if name in group.shared else per_call)
        batched = graph.call_function(resolve_module(group.batched), (modules, shared, *inputs))
        for i, name in enumerate(group.nodes):
            bind(name, graph.call_function(operator.getitem, (batched, i)))

    result: dict[str, dict[str, fx.Node]] = {}
    for o in ir.outputs:
        v = graph.call_function(resize_to_input, (values[(o.value.node, o.value.index)], images))
        result.setdefault(o.task, {})[o.name] = v
    # Tasks in profile order, outputs in declaration order.
    graph.output({t.name: result[t.name] for t in ir.tasks if t.name in result})
    graph.lint()
    return graph


class _Namespace(nn.Module):
    """A container for the modules of a dotted name prefix (``d`` holds ``d.semseg``)."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("namespace modules are not callable")


def _place(root: nn.Module, name: str, module: nn.Module) -> None:
    parts = name.split(".")
    parent = root
    for p in parts[:-1]:
        child = parent._modules.get(p)
        if child is None:
            child = _Namespace()
            parent.add_module(p, child)
        parent = child
    parent.add_module(parts[-1], module)
