"""The table ``mtl-dsl compile`` prints: one row per node, then exact totals."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checker import CheckedGraph
from .compiler import CompiledModel, compile_graph


def _concrete(t: Any, size: tuple[int, int], batch: int) -> str:
    kind = getattr(t, "kind", "")
    if kind == "map":
        return f"[{batch}, {t.channels}, {t.h.eval(*size)}, {t.w.eval(*size)}]"
    if kind == "tokens":
        return f"[{batch}, {t.groups * t.h.eval(*size) * t.w.eval(*size)}, {t.channels}]"
    if kind == "multiscale":
        return " ".join(_concrete(lv, size, batch) for lv in t.levels)
    if kind == "attention":
        q = t.queries.groups * t.queries.h.eval(*size) * t.queries.w.eval(*size)
        k = t.keys.groups * t.keys.h.eval(*size) * t.keys.w.eval(*size)
        return f"[{batch}, {t.heads}, {q}, {k}]"
    if kind == "taskmap":
        return "{" + ", ".join(f"{k}: {_concrete(v, size, batch)}" for k, v in t.items.items()) + "}"
    return "?"


_ATRC = "ATRC's official head (github.com/brdav/atrc, src/model/heads/relationalcontext.py)"
# The built-in specs that reproduce an official implementation, with it: where one of them is
# compiled as shipped, its idle parameters are there for parity with that implementation.
OFFICIAL_IMPLEMENTATIONS = {
    "baseline_mt.mtl": "the ATRC code's multi-task baseline (github.com/brdav/atrc, "
                       "src/model/heads/fcn.py)",
    "baseline_st.mtl": "the ATRC code's single-task baseline (github.com/brdav/atrc, "
                       "src/model/heads/fcn.py)",
    "demt.mtl": "DeMT's official head (github.com/yangyangxu0/DeMT, src/model/heads/demt_head.py)",
    "tpanet.mtl": "TPANet's released head (github.com/yangyangxu0/TPANet, "
                  "src/model/heads/adapthead.py)",
    "invpt.mtl": "InvPT's official model (github.com/prismformore/Multi-Task-Transformer, "
                 "InvPT/models/transformers/invpt.py)",
    "atrc.mtl": _ATRC, "atrc_nyud_hrnet18.mtl": _ATRC, "atrc_nyud_hrnet48.mtl": _ATRC,
    "atrc_pascal_hrnet18.mtl": _ATRC,
}


def official_implementation(file: str) -> str | None:
    """The official implementation a spec reproduces: only for a built-in reference spec, or a
    byte-identical copy of one; a user's own (or edited) spec reproduces nothing."""
    from .api import resolve_spec_path
    from .errors import SpecError
    from .frontend import iter_builtin_specs

    name = Path(file).name
    if name not in OFFICIAL_IMPLEMENTATIONS:
        return None
    builtin = next((p for p in iter_builtin_specs() if p.name == name), None)
    try:
        path, _ = resolve_spec_path(file)
        same = builtin is not None and path.read_bytes() == builtin.read_bytes()
    except (SpecError, OSError):
        return None
    return OFFICIAL_IMPLEMENTATIONS[name] if same else None


def model_figures(model: CompiledModel, batch: int = 1, count_flops: bool = True) -> dict[str, Any]:
    """Parameters per node and in total; multiply-adds per node and in total (eval mode)."""
    params = {n.name: sum(p.numel() for p in model.get_submodule(n.name).parameters())
              for n in model.ir.nodes}
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs: dict[str, int] = {}
    total_macs = None
    uncounted: tuple[str, ...] = ()
    if count_flops:
        from .flops import count_macs

        was_training = model.training
        model.eval()
        h, w = model.input_size
        with model.fusion_off():  # every node's own module runs, so its MACs are its own
            report = count_macs(model, torch.zeros(batch, 3, h, w))
        model.train(was_training)
        total_macs = report.total
        uncounted = report.uncounted
        for n in model.ir.nodes:
            macs[n.name] = report.per_module.get(n.name, 0)
    return dict(params=params, total=total, trainable=trainable, macs=macs,
                total_macs=total_macs, uncounted=uncounted)


def print_summary(graph: CheckedGraph, batch: int = 1, count_flops: bool = True,
                  model: CompiledModel | None = None, fuse: bool = True) -> CompiledModel:
    model = model or compile_graph(graph, fuse=fuse)
    ir = graph.ir
    size = tuple(ir.input_size)
    figures = model_figures(model, batch, count_flops)
    tasks = ", ".join(f"{t.name}:{t.channels}" for t in ir.tasks)
    print(f"model '{ir.name}' from {ir.file}" + (f", preset {ir.preset}" if ir.preset else ""))
    print(f"tasks ({ir.profile}): {tasks}; input {size[0]}x{size[1]}, batch {batch}")
    print()
    _print_node_table(graph, figures, batch, count_flops)
    print()
    idle = sum(p.numel() for name, p in model.named_parameters() if name in model.idle_parameters)
    print(f"parameters: {figures['total']:,} total ({figures['total'] / 1e6:.2f} M), "
          f"{figures['trainable']:,} trainable, {idle:,} idle")
    if count_flops:
        m = figures["total_macs"]
        print(f"multiply-adds: {m / 1e9:.2f} G MACs at batch {batch} "
              f"({2 * m / 1e9:.2f} GFLOPs; 1 MAC = 2 FLOPs). The papers' tables count "
              f"multiply-adds (GFLOPs in their text), as fvcore's conv+mm count does; their "
              f"printed figures came from a module-hook counter (see benchmarks/paper_tables.py).")
        if figures["uncounted"]:
            print(f"NOT COUNTED (ops without a formula, the total may be low): "
                  f"{', '.join(figures['uncounted'])}")
        else:
            print("every op that does multiply-adds was counted.")
    print_fusion(model)
    _print_idle_parameters(model)
    return model


def _print_node_table(graph: CheckedGraph, figures: dict, batch: int, count_flops: bool) -> None:
    size = tuple(graph.ir.input_size)
    rows = []
    for n in graph.ir.nodes:
        shape = " ".join(_concrete(t, size, batch) for t in graph.types[n.name])
        gmacs = f"{figures['macs'][n.name] / 1e9:.3f}" if count_flops else "-"
        rows.append((n.name, n.block, shape, f"{figures['params'][n.name]:,}", gmacs))
    headers = ("node", "block", "output shape", "params", "GMACs")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    widths[2] = min(widths[2], 60)

    def line(cells: tuple[str, ...]) -> str:
        out = []
        for i, c in enumerate(cells):
            c = c if len(c) <= widths[i] else c[:widths[i] - 3] + "..."
            out.append(c.rjust(widths[i]) if i >= 3 else c.ljust(widths[i]))
        return "  ".join(out)

    print(line(headers))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))


def _print_idle_parameters(model: CompiledModel) -> None:
    if not model.idle_parameters:
        return
    official = official_implementation(model.ir.file)
    if official:
        print(f"idle parameters (never receive a gradient, frozen; built for parameter parity "
              f"with {official}):")
    else:
        print("idle parameters (never receive a gradient, frozen):")
    reasons: dict[str, list[str]] = {}
    for name, reason in model.idle_parameters.items():
        reasons.setdefault(reason, []).append(name)
    for reason, names in reasons.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        print(f"  {shown}: {reason}")


def print_fusion(model: CompiledModel) -> None:
    """Which calls run batched (``mtl_dsl.passes.fuse``) and why the others do not."""
    plan = model.fusion
    lines = plan.describe()
    if model.fused:
        print(f"fusion on (--set fuse=false turns it off): {lines[0]}; per-node figures are "
              f"each call's own")
    else:
        print(f"fusion off (--set fuse=false); on, it would have {lines[0]}")
    for line in lines[1:]:
        print(f"  {line}")
