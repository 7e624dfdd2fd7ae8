"""Cross-task fusion: one training step of each reference spec with fusion on and off.

    .venv/bin/python benchmarks/fusion.py                     # every row, 5 steps each way
    .venv/bin/python benchmarks/fusion.py --rows baseline_mt,demt --reps 9
    .venv/bin/python benchmarks/fusion.py --device cuda       # the same table on a GPU (tuned)

Each row is a reference spec at its official size (NYUD-v2, 4 tasks, 425x560; InvPT 448x576) with
batch 2. One model is built per row; its two forwards (``set_fusion(True/False)``) share the same
parameters. A step is forward + a loss over every output + backward + zeroing the gradients, in
training mode (BatchNorm updates its statistics). After one warm-up step each way, the two are
timed alternately (off/on, then on/off, ...) so that drifting load on a shared machine hits both
alike; the table shows the median of each and their ratio (speed-up = unfused / fused), the
ratio of the fastest steps (on a shared machine the least disturbed step is the steadier estimate
of what a step costs), and the fusion plan (calls batched into groups).

On a GPU the fused model is first tuned as training tunes it (``mtl_dsl.fusion_tuning``: the
groups measured slower batched run one by one), ``--no-tune`` times every group batched.

Targets (issue 13): at least 1.2x on DeMT and TPANet, 1.1x on the baseline, no spec slower.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Row:
    name: str
    spec: str
    preset: str | None
    input: tuple[int, int]


NYUD = (425, 560)
ROWS = [
    Row("baseline_mt", "baseline_mt", "hrnet18", NYUD),
    Row("demt", "demt", "hrnet18", NYUD),
    Row("tpanet", "tpanet", "hrnet18", NYUD),
    Row("atrc_nyud_hrnet18", "atrc_nyud_hrnet18", None, NYUD),
    Row("invpt", "invpt", "vit_l", (448, 576)),
]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def step_time(model, images, fused: bool, clock: str = "wall") -> float:
    import torch

    model.set_fusion(fused)
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    now = CLOCKS[clock]
    sync()
    t0 = now()
    out = model(images)
    loss = sum(v.float().mean() for task in out.values() for v in task.values())
    loss.backward()
    model.zero_grad(set_to_none=True)
    sync()
    return now() - t0


def measure(row: Row, reps: int, batch: int, device: str, clock: str = "wall",
            tune: bool | None = None) -> dict:
    """``tune`` (default: on a GPU, as training does): keep batched only the groups measured
    faster so (``mtl_dsl.fusion_tuning``) before timing."""
    import torch

    from mtl_dsl.api import compile_model
    from mtl_dsl.fusion_tuning import tune_fusion

    torch.manual_seed(0)
    model = compile_model(row.spec, tasks="nyud", preset=row.preset, input_size=row.input)
    model.to(device).train()
    images = torch.randn(batch, 3, *row.input, device=device)
    if tune if tune is not None else device.startswith("cuda"):
        tune_fusion(model, images)
    for fused in (False, True):
        step_time(model, images, fused, clock)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(reps):
        for fused in ((False, True) if i % 2 == 0 else (True, False)):
            times[fused].append(step_time(model, images, fused, clock))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    plan = model.fusion
    return dict(row=row, off=off, on=on, fastest=min(times[False]) / min(times[True]),
                groups=len(plan.groups), found=len(model.full_fusion.groups),
                calls=plan.fused_nodes,
                within=len(plan.within), spread=(min(times[False]), max(times[False]),
                                                 min(times[True]), max(times[True])))


def agreement(row: Row, batch: int, device: str, size: tuple[int, int] | None = None) -> dict:
    """Fused against unfused on one model, float32 (TF32 off): the largest output difference
    relative to the output's scale (at least 1), the largest gradient difference relative to that
    gradient's scale (floored at 1 % of the largest gradient: biases that a BatchNorm follows have
    gradients of rounding noise), and the largest BatchNorm running-statistics difference after
    one training step each way from the same state (the issue's bounds: 1e-5 on outputs, 1e-4
    relative on gradients)."""
    import torch

    from mtl_dsl.api import compile_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    size = size or row.input
    torch.manual_seed(0)
    model = compile_model(row.spec, tasks="nyud", preset=row.preset, input_size=size).to(device).train()
    images = torch.randn(batch, 3, *size, device=device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {}
    for fused in (True, False):
        model.load_state_dict(start)
        model.set_fusion(fused)
        torch.manual_seed(1)  # the same dropout draws both ways
        out = model(images)
        flat = {f"{t}.{k}": v for t, d in out.items() for k, v in d.items()}
        sum(v.float().square().mean() for v in flat.values()).backward()
        flat = {k: v.detach().float() for k, v in flat.items()}
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}
        runs[fused] = (flat, grads, buffers)
        model.zero_grad(set_to_none=True)
    model.load_state_dict(start)
    (out_on, g_on, b_on), (out_off, g_off, b_off) = runs[True], runs[False]

    largest = max(g.abs().max().item() for g in g_off.values())

    def out_err(a, b):  # relative to the output's scale, at least 1 (tests/test_fusion.py's bound)
        return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()

    def grad_err(a, b):  # relative to the gradient's scale, with a floor of 1 % of the largest
        return ((a - b).abs().max() / (b.abs().max() + 1e-2 * largest)).item()

    return {"outputs_rel": max(out_err(out_on[k], out_off[k]) for k in out_off),
            "grads_rel": max(grad_err(g_on[n], g_off[n]) for n in g_off),
            "grads_missing": sorted(set(g_off) ^ set(g_on)),
            "buffers_abs": max(((b_on[n] - b_off[n]).abs().max().item() for n in b_off), default=0.0),
            "input": list(size), "batch": batch}


def by_row(section: str, device: str, dry: bool) -> dict:
    """``benchmarks/gpu_check.py``'s sections ``fusion`` (``measure``, median of 5) and
    ``fusion_exact`` (``agreement``), row by row; a dry run takes two rows with their default
    (small) backbones at 32x32. A row that fails is reported and the others go on."""
    import gc

    import torch

    rows = ROWS if not dry else [Row(r.name, r.spec, None, (32, 32)) for r in ROWS
                                 if r.name in ("baseline_mt", "tpanet")]
    figures = {}
    for row in rows:
        try:
            if section == "fusion_exact":
                figures[row.name] = agreement(row, 2, device)
            else:
                r = measure(row, 1 if dry else 5, 2, device)
                figures[row.name] = {"unfused_s": r["off"], "fused_s": r["on"],
                                     "speedup": r["off"] / r["on"], "groups": r["groups"],
                                     "groups_found": r["found"]}
        except Exception as exc:  # noqa: BLE001 - one row's failure must not stop the others
            figures[row.name] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(r.name for r in ROWS),
                   help="comma-separated: " + ", ".join(r.name for r in ROWS))
    p.add_argument("--reps", type=int, default=5, help="timed steps each way (median)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-tune", action="store_true", help="on a GPU too, every group batched")
    p.add_argument("--no-tf32", action="store_true",
                   help="on a GPU, float32 convolutions and matmuls without TF32 (cuDNN then "
                        "picks other kernels)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: the process's CPU time, which other load on a "
                        "shared machine disturbs less (use with --threads 1: idle OpenMP threads "
                        "spin and count as CPU time)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    chosen = args.rows.split(",")
    unknown = [r for r in chosen if r not in {row.name for row in ROWS}]
    if unknown:
        p.error(f"unknown rows: {', '.join(unknown)}")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    how = ", TF32 off" if args.no_tf32 else ""
    how += (", every group batched" if args.no_tune else ", tuned") if args.device.startswith("cuda") else ""
    print(f"train step (forward + backward), batch {args.batch}, {where}{how}, median of {args.reps} "
          f"({args.clock} clock)")
    print(f"{'spec':20s} {'input':>8s} {'unfused s':>10s} {'fused s':>9s} {'speed-up':>9s} "
          f"{'fastest':>8s}  fusion plan")
    for row in ROWS:
        if row.name not in chosen:
            continue
        r = measure(row, args.reps, args.batch, args.device, args.clock,
                    tune=False if args.no_tune else None)
        size = f"{row.input[0]}x{row.input[1]}"
        slower = r["found"] - r["groups"]
        kept = f" (tuned: {slower} of {r['found']} slower)" if slower else ""
        plan = f"{r['calls']} calls in {r['groups']} groups{kept}, {r['within']} modules batched inside"
        print(f"{row.name:20s} {size:>8s} {r['off']:10.3f} {r['on']:9.3f} "
              f"{r['off'] / r['on']:8.2f}x {r['fastest']:7.2f}x  {plan}", flush=True)
        lo_off, hi_off, lo_on, hi_on = r["spread"]
        print(f"{'':20s} {'range':>8s} {lo_off:.3f}-{hi_off:.3f} {lo_on:.3f}-{hi_on:.3f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
