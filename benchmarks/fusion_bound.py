"""The most cross-task fusion can gain on a training step, from each group's arithmetic.

    .venv/bin/python benchmarks/fusion_bound.py                        # the baseline, CPU
    .venv/bin/python benchmarks/fusion_bound.py --rows baseline_mt,demt --reps 9

Batching T calls into one computation removes what the calls cost apart from their arithmetic:
per-call overhead and kernel launches, the T-fold reads (and layout reorders) of a shared input,
the T-fold accumulation of its gradient. It removes no multiply-add: the T convolutions' products
are all still computed. So a group, batched, costs at least its FLOPs (forward + backward, counted
by ``torch.utils.flop_counter`` as ``mtl_dsl.flops`` counts them) at the fastest rate this
machine's convolution library reaches, and a step can at best save, per group, its one-by-one
time minus that floor:

    ceiling = step / (step - sum over groups of (one-by-one time - FLOPs / peak rate))

The peak rate is the fastest of a large dense 3x3 convolution (256 -> 256 channels, forward and
backward) and of every batched group, measured in the same run. Where a step's groups are
compute-bound (the baseline's four 3x3 heads on a CPU: the same FLOPs one by one or stacked), the
ceiling sits close to 1.0x whatever batching does; where they are overhead-bound (small per-task
layers, attention on few tokens, a GPU's launches), it lies far above the measured speed-up.

Per row: the measured step speed-up (``benchmarks/fusion.py``'s median of ``--reps``, alternated),
then each group's share of the unfused step, its one-by-one and batched times (fastest of
``--reps``), its GFLOPs, the rate it runs at batched, and the ceiling for the whole step.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusion import ROWS, measure  # noqa: E402  (the same rows, sizes and whole-step timing)


def group_flops(run) -> int:
    """FLOPs of ``run`` forward + backward (multiply-adds x 2, as FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mtl_dsl.flops import extra_formulas
    from mtl_dsl.fusion_tuning import run_with_backward

    with FlopCounterMode(display=False, custom_mapping=extra_formulas()) as counter:
        run_with_backward(run)
    return counter.get_total_flops()


def peak_conv_rate(reps: int, device: str) -> float:
    """FLOP/s of the fastest of ``reps`` forward + backward passes of a large dense convolution."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(2, 256, 96, 96, device=device, requires_grad=True)
    w = torch.randn(256, 256, 3, 3, device=device, requires_grad=True)
    flops = group_flops(lambda: F.conv2d(x, w, padding=1))
    best = float("inf")
    for _ in range(reps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        F.conv2d(x, w, padding=1).mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return flops / best


def bound(row, reps: int, batch: int, device: str) -> dict:
    import torch

    from mtl_dsl.api import compile_model
    from mtl_dsl.fusion_tuning import fastest_each_way, group_runs

    step = measure(row, reps, batch, device)
    torch.manual_seed(0)
    model = compile_model(row.spec, tasks="nyud", preset=row.preset, input_size=row.input)
    model.to(device).train()
    images = torch.randn(batch, 3, *row.input, device=device)
    groups = []
    for group, separate, together in group_runs(model, images):
        flops = group_flops(separate)
        model.zero_grad(set_to_none=True)
        off, on = fastest_each_way(model, separate, together, reps, images.device)
        groups.append(dict(group=group.describe().split(":")[0], flops=flops, off=off, on=on))
    peak = max([peak_conv_rate(reps, device)] + [g["flops"] / g["on"] for g in groups])
    saving = sum(max(0.0, g["off"] - g["flops"] / peak) for g in groups)
    # groups timed alone longer than the whole step (noise on a tiny step): no bound to give
    ceiling = step["off"] / (step["off"] - saving) if saving < step["off"] else float("inf")
    return dict(step=step, groups=groups, peak=peak, ceiling=ceiling)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="baseline_mt")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"train step, batch {args.batch}, {where}; steps: median of {args.reps}, groups: "
          f"fastest of {args.reps}")
    for row in ROWS:
        if row.name not in args.rows.split(","):
            continue
        r = bound(row, args.reps, args.batch, args.device)
        s = r["step"]
        print(f"\n{row.name} {row.input[0]}x{row.input[1]}: step {s['off']:.3f} s unfused, "
              f"{s['on']:.3f} s fused: measured {s['off'] / s['on']:.2f}x; peak convolution rate "
              f"{r['peak'] / 1e9:.0f} GFLOP/s")
        print(f"  {'group':52s} {'share':>6s} {'one by one s':>12s} {'batched s':>10s} "
              f"{'GFLOP':>7s} {'GFLOP/s':>8s}")
        for g in r["groups"]:
            print(f"  {g['group'][:52]:52s} {g['off'] / s['off']:6.0%} {g['off']:12.4f} "
                  f"{g['on']:10.4f} {g['flops'] / 1e9:7.1f} {g['flops'] / g['on'] / 1e9:8.0f}")
        print(f"  ceiling for the step (every group at the peak rate, nothing else): "
              f"{r['ceiling']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
