"""Checked graph -> one ``nn.Module``.

Each node's module is built by its block and placed at the node's dotted name (``d.semseg`` is
``model.d.semseg``), so ``state_dict`` keys follow the spec's names and stay the same between
compiles. ``forward`` is generated once with ``torch.fx`` as straight-line code (one call per node,
in topological order): no interpretation cost per call beyond hand-written code, and
``torch.compile`` sees ordinary Python.
"""
from __future__ import annotations

import linecache
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .blocks import REGISTRY
from .blocks.user import ModuleBlock
from .checker import CheckedGraph
from .errors import Diagnostic, SpecError
from .ir import IMAGES, CollectionRef, ModelIR, Ref
from .modules.shape_probe import guard
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

    def node_modules(self) -> dict[str, nn.Module]:
        return {n.name: self.get_submodule(n.name) for n in self.ir.nodes}


def compile_graph(checked: CheckedGraph) -> CompiledModel:
    ir = checked.ir
    root = nn.Module()
    idle: dict[str, str] = {}
    for node in ir.nodes:
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

    graph = fx.Graph()
    images = graph.placeholder(IMAGES)
    values: dict[tuple[str, int], fx.Node] = {(IMAGES, 0): images}

    def arg(v: Ref | CollectionRef | None) -> Any:
        if v is None:
            return None
        if isinstance(v, Ref):
            return values[(v.node, v.index)]
        return {k: arg(x) for k, x in v.items.items()}

    for node in ir.nodes:
        block = REGISTRY[node.block]
        args = tuple(arg(node.inputs.get(name)) for name in block.inputs())
        out = graph.call_module(node.name, args)
        if node.num_outputs == 1:
            values[(node.name, 0)] = out
        else:
            for i in range(node.num_outputs):
                values[(node.name, i)] = graph.call_function(operator.getitem, (out, i))

    result: dict[str, dict[str, fx.Node]] = {}
    output_names: dict[str, list[str]] = {}
    for o in ir.outputs:
        v = graph.call_function(resize_to_input, (values[(o.value.node, o.value.index)], images))
        result.setdefault(o.task, {})[o.name] = v
        output_names.setdefault(o.task, []).append(o.name)
    # Tasks in profile order, outputs in declaration order.
    ordered = {t.name: result[t.name] for t in ir.tasks if t.name in result}
    graph.output(ordered)
    graph.lint()

    model = CompiledModel(root, graph, class_name=f"Compiled_{ir.name}")
    model.ir = ir
    model.checked = checked
    known = PROFILES.get(ir.profile)
    model.profile = TaskProfile(name=ir.profile, tasks=tuple(ir.tasks),
                                input_size=tuple(ir.input_size),  # type: ignore[arg-type]
                                edge_pos_weight=known.edge_pos_weight if known else 0.95)
    model.idle_parameters = idle
    model.output_names = {t: output_names[t] for t in ordered}
    model.input_size = tuple(ir.input_size)  # type: ignore[assignment]
    return model


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
