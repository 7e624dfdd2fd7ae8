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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusion import ROWS  # noqa: E402  (the same rows and sizes as the whole-step table)


def time_groups(model, images, reps: int) -> list[tuple[str, int, float, float]]:
    """The fusion groups (``mtl_dsl.fusion_tuning.time_groups``, what training tunes with on a
    GPU), then the modules that batch their own per-task layers, batching on and off."""
    from mtl_dsl.fusion_tuning import capture_inputs, fastest_each_way
    from mtl_dsl.fusion_tuning import time_groups as time_fusion_groups

    rows = [(t.group, t.calls, t.separate_s, t.batched_s) for t in time_fusion_groups(model, images, reps)]
    inputs = capture_inputs(model, images, list(model.fusion.within))
    for name in model.fusion.within:
        module = model.get_submodule(name)

        def run(on: bool, module=module, name=name):
            module.batched = on
            return module(*inputs[name])

        rows.append((f"{name} (inside)", 1, *fastest_each_way(
            model, lambda: run(False), lambda: run(True), reps, images.device)))
        module.batched = model.fused
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="baseline_mt,demt,tpanet,atrc_nyud_hrnet18,invpt")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (where calls on their own maps are "
                   "grouped anyway)")
    p.add_argument("--grouped", action="store_true",
                   help="calls on their own maps as grouped convolutions, as on a GPU (on a CPU "
                        "they run one by one: mtl_dsl.modules.batched.layers.grouping_pays)")
    args = p.parse_args(argv)

    import torch

    from mtl_dsl.api import compile_model
    from mtl_dsl.modules.batched.layers import grouping_everywhere

    if args.grouped:
        grouping_everywhere().__enter__()  # for the whole run

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"forward + backward of each fusion group, batch {args.batch}, {where}, fastest of {args.reps}")
    print(f"{'spec':18s} {'group':58s} {'separate s':>10s} {'batched s':>10s} {'speed-up':>9s}")
    for row in ROWS:
        if row.name not in args.rows.split(","):
            continue
        torch.manual_seed(0)
        model = compile_model(row.spec, tasks="nyud", preset=row.preset, input_size=row.input)
        model.to(args.device).train()
        images = torch.randn(args.batch, 3, *row.input, device=args.device)
        for what, _, off, on in time_groups(model, images, args.reps):
            print(f"{row.name:18s} {what[:58]:58s} {off:10.4f} {on:10.4f} {off / on:8.2f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
