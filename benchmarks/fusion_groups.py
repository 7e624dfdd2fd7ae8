"""Cross-task fusion, group by group: where a fused step gains or loses time.

    .venv/bin/python benchmarks/fusion_groups.py --rows tpanet,atrc_nyud_hrnet18 --reps 7
    .venv/bin/python benchmarks/fusion_groups.py --rows tpanet --grouped   # as a GPU would run them

``benchmarks/fusion.py`` times whole training steps, where the backbone dilutes the effect; this
times each fusion group of a reference spec on its own, at the official size, batch 2: the
group's inputs are captured from one unfused forward, then forward + backward of the T separate
calls and of the one batched call are timed alternately (the fastest of ``--reps``: on a shared machine the least disturbed run is the best estimate of
what the computation costs). Modules that batch
their own per-task layers (``within``) are timed with batching on and off. One table row per
group: which block, how many calls, the two medians and their ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusion import ROWS  # noqa: E402  (the same rows and sizes as the whole-step table)


def _detached(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.is_floating_point())
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


def _tensors(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def capture_inputs(model, images, names: list[str]) -> dict[str, tuple]:
    """Each named node's positional inputs in one unfused forward (detached leaves)."""
    seen: dict[str, tuple] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=name: seen.setdefault(name, _detached(args))))
    with model.fusion_off():
        model(images)
    for h in handles:
        h.remove()
    return seen


def _timed(run) -> float:
    t0 = time.perf_counter()
    outputs = _tensors(run())
    loss = sum(o.float().mean() for o in outputs if o.requires_grad)
    loss.backward()
    return time.perf_counter() - t0


def time_groups(model, images, reps: int) -> list[tuple[str, int, float, float]]:
    from mtl_dsl.blocks import REGISTRY
    from mtl_dsl.blocks.construct import resolve_module

    plan = model.fusion
    names = [n for g in plan.groups for n in g.nodes] + list(plan.within)
    inputs = capture_inputs(model, images, names)
    rows = []
    for group in plan.groups:
        block = REGISTRY[group.block]
        modules = tuple(model.get_submodule(n) for n in group.nodes)
        shared = tuple(name in group.shared for name in block.inputs())
        per_input = list(zip(*(inputs[n] for n in group.nodes)))
        batched_args = [calls[0] if s else list(calls) for s, calls in zip(shared, per_input)]
        batched = resolve_module(group.batched)

        def separate(modules=modules, group=group):
            return [m(*inputs[n]) for m, n in zip(modules, group.nodes)]

        def fused(modules=modules, shared=shared, args=batched_args, batched=batched):
            return batched(modules, shared, *args)

        rows.append((group.describe().split(":")[0], len(group.nodes),
                     *_alternate(model, separate, fused, reps)))
    for name in plan.within:
        module = model.get_submodule(name)

        def run(on: bool, module=module, name=name):
            module.batched = on
            return module(*inputs[name])

        rows.append((f"{name} (inside)", 1, *_alternate(model, lambda: run(False),
                                                         lambda: run(True), reps)))
        module.batched = model.fused
    return rows


def _alternate(model, separate, fused, reps: int) -> tuple[float, float]:
    times: dict[bool, list[float]] = {False: [], True: []}
    for run in (separate, fused):
        _timed(run)  # warm-up
    for i in range(reps):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            times[on].append(_timed(fused if on else separate))
            model.zero_grad(set_to_none=True)
    return min(times[False]), min(times[True])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="baseline_mt,demt,tpanet,atrc_nyud_hrnet18")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grouped", action="store_true",
                   help="calls on their own maps as grouped convolutions, as on a GPU (on a CPU "
                        "they run one by one: mtl_dsl.modules.batched.layers.grouping_pays)")
    args = p.parse_args(argv)

    import torch

    from mtl_dsl.api import compile_model
    from mtl_dsl.modules.batched.layers import grouping_everywhere

    if args.grouped:
        grouping_everywhere().__enter__()  # for the whole run

    print(f"forward + backward of each fusion group, batch {args.batch}, CPU, "
          f"{torch.get_num_threads()} threads, fastest of {args.reps}")
    print(f"{'spec':18s} {'group':58s} {'separate s':>10s} {'batched s':>10s} {'speed-up':>9s}")
    for row in ROWS:
        if row.name not in args.rows.split(","):
            continue
        torch.manual_seed(0)
        model = compile_model(row.spec, tasks="nyud", preset=row.preset, input_size=row.input)
        model.train()
        images = torch.randn(args.batch, 3, *row.input)
        for what, _, off, on in time_groups(model, images, args.reps):
            print(f"{row.name:18s} {what[:58]:58s} {off:10.4f} {on:10.4f} {off / on:8.2f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
