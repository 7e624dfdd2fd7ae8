"""DDP scaling of the reference specs: gradient bytes all-reduced per step, the step time measured
here, and the data-parallel efficiency a ring all-reduce model implies (docs/scaling.md).

For each reference spec (NYUD-v2, 4 tasks, 425x560; InvPT 448x576) the compiled model gives the
bytes DDP all-reduces per step: every parameter that receives a gradient (``requires_grad``; the
idle parameters kept for parity are frozen and never reduced), 4 bytes each (fp32 gradients; DDP
reduces in the parameters' dtype). The step time is one forward + backward + SGD step at batch 1
on this machine's CPU (the fastest of ``--repeats`` after one warm-up: the least disturbed by
other processes on a shared machine).

The model (stated in docs/scaling.md): a ring all-reduce of S bytes over p ranks moves
2 (p-1)/p S bytes through each rank's slowest link and takes 2 (p-1) latency steps:

    t_comm = 2 (p-1)/p * S / B + 2 (p-1) * alpha

with B and alpha of the slowest link: NVLink inside a node (8 GPUs, B = 200 GB/s of NCCL bus
bandwidth, alpha = 10 us), a 100 Gb/s network between nodes (B = 10 GB/s achieved of 12.5,
alpha = 30 us; 8 GPUs per node behind one NIC, NCCL's hierarchical rings, so the inter-node term
has p = number of nodes and the intra-node term runs as well). DDP overlaps the reduction with
the backward pass (buckets of 25 MB, reduced as their gradients are ready): the exposed time is
what exceeds the backward pass, and at least the last bucket:

    exposed = max(t_comm - t_backward, t_comm * min(1, 25 MB / S)),  t_backward = 2/3 t_step

and the efficiency is t_step / (t_step + exposed) (the speed-up over one GPU: efficiency x
ranks). It reaches 90 % once t_step >= max(9 t_comm f, 9/7 t_comm) with f = min(1, 25 MB / S):
the "90 % from" figures. t_step on a GPU is not measured here (no GPU was lent to this work); the
efficiencies estimate it from the multiply-adds as 3 x MACs x 2 FLOPs at a sustained 100 TFLOP/s
(about a third of an A100's bf16 peak), faster than these batch-1 models run, so those
efficiencies are lower bounds. Prints markdown tables (docs/scaling.md quotes them).

    .venv/bin/python benchmarks/scaling.py [--specs baseline_mt,demt] [--repeats 3] [--no-step]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPECS = {  # label: (spec, preset, input size)
    "baseline_mt": ("baseline_mt", "hrnet18", (425, 560)),
    "demt": ("demt", "hrnet18", (425, 560)),
    "tpanet": ("tpanet", "hrnet18", (425, 560)),
    "atrc_nyud_hrnet18": ("atrc_nyud_hrnet18", None, (425, 560)),
    "invpt": ("invpt", "vit_l", (448, 576)),
}
NVLINK = (200e9, 10e-6)  # bytes/s of NCCL bus bandwidth, latency per ring step
NETWORK = (10e9, 30e-6)  # 100 Gb/s Ethernet/RoCE, achieved
GPUS_PER_NODE = 8
BUCKET = 25 * 2**20
GPU_FLOPS = 100e12
SETUPS = {"8 GPU": 1, "2x8": 2, "4x8": 4, "8x8": 8, "16x8": 16}  # name: nodes of 8 GPUs


def ring_time(size: float, ranks: int, link: tuple[float, float]) -> float:
    if ranks <= 1:
        return 0.0
    bandwidth, latency = link
    return 2 * (ranks - 1) / ranks * size / bandwidth + 2 * (ranks - 1) * latency


def comm_time(size: float, nodes: int) -> float:
    """One all-reduce over ``nodes`` x 8 GPUs (nodes = 1: 8 GPUs on NVLink)."""
    return ring_time(size, GPUS_PER_NODE, NVLINK) + ring_time(size, nodes, NETWORK)


def efficiency(step: float, comm: float, size: float) -> float:
    exposed = max(comm - 2 / 3 * step, comm * min(1.0, BUCKET / size))
    return step / (step + exposed)


def step_for(fraction: float, comm: float, size: float) -> float:
    """The shortest step time with at least ``fraction`` efficiency (the model above)."""
    k = fraction / (1 - fraction)
    return max(k * comm * min(1.0, BUCKET / size), k * comm / (1 + k * 2 / 3))


def measure(spec: str, preset, size, repeats: int, step: bool) -> dict:
    import torch

    from mtl_dsl.api import compile_model
    from mtl_dsl.summary import model_figures

    torch.manual_seed(0)
    model = compile_model(spec, tasks="nyud", preset=preset, input_size=size)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    figures = model_figures(model, count_flops=True)
    out = {"grad_bytes": grads, "params": figures["total"], "macs": figures["total_macs"],
           "cpu_step": None}
    if step:
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        images = torch.randn(1, 3, *size)
        times = []
        for i in range(repeats + 1):
            started = time.perf_counter()
            outputs = model(images)
            loss = sum(o["final"].float().mean() for t in outputs.values() for o in [t])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i:
                times.append(time.perf_counter() - started)
        out["cpu_step"] = min(times)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", default=",".join(SPECS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-step", action="store_true", help="skip the CPU step timing")
    parser.add_argument("--no-step-for", default="invpt",
                        help="specs not timed (default invpt: a 395 M-parameter step needs minutes "
                             "and ~10 GB here)")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    skip = set(args.no_step_for.split(",")) if args.no_step_for else set()
    measured = {}
    print("\n| spec | parameters (M) | all-reduced MB/step | GMACs/image | CPU step s (measured) "
          "| GPU step ms (est.) |\n|---|---:|---:|---:|---:|---:|")
    for label in args.specs.split(","):
        spec, preset, size = SPECS[label]
        m = measure(spec, preset, size, args.repeats, not args.no_step and label not in skip)
        m["gpu_step"] = 3 * 2 * m["macs"] / GPU_FLOPS
        measured[label] = m
        cpu = "-" if m["cpu_step"] is None else f"{m['cpu_step']:.2f}"
        print(f"| {label} | {m['params'] / 1e6:.1f} | {m['grad_bytes'] / 2**20:.1f} | "
              f"{m['macs'] / 1e9:.1f} | {cpu} | {m['gpu_step'] * 1e3:.1f} |", flush=True)
    print("\nPer setup: all-reduce time, the step time from which DDP keeps 90 %, and the efficiency"
          " (speed-up over one GPU) at the estimated GPU step.")
    print("\n| spec | " + " | ".join(SETUPS) + " |\n|---|" + "---:|" * len(SETUPS))
    for label, m in measured.items():
        s = m["grad_bytes"]
        cells = []
        for nodes in SETUPS.values():
            comm = comm_time(s, nodes)
            eff = efficiency(m["gpu_step"], comm, s)
            cells.append(f"{comm * 1e3:.1f} ms; 90 % from {step_for(0.9, comm, s) * 1e3:.0f} ms; "
                         f"{eff:.2f} ({eff * nodes * GPUS_PER_NODE:.0f}x)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, m in measured.items():
        if m["cpu_step"] is not None:
            s = m["grad_bytes"]
            comm16 = comm_time(s, 16)
            print(f"\n{label}: with the CPU step measured here, 16x8 ranks would spend "
                  f"{comm16 * 1e3:.1f} ms of {m['cpu_step'] * 1e3:.0f} ms in all-reduce "
                  f"(efficiency {efficiency(m['cpu_step'], comm16, s):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
