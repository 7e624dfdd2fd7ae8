"""DeMT's `paper` variant at NYUD-v2 size: global attention over all T*N tokens, forward + backward.

    python benchmarks/demt_paper_nyud.py                       # HRNet18, D=128, batch 1, 425x560
    python benchmarks/demt_paper_nyud.py --preset swin_t --batch 2 --amp bf16

The paper's task interaction attends from every one of the T*N tokens (NYUD, 4 tasks, stride 4 at
425x560: 4 * 107 * 140 = 59,920) to all of them, and each task query attends from N tokens to all
T*N. Materialised, one 59,920 x 59,920 score matrix per head is 13.4 GiB in fp32; the blocks call
``scaled_dot_product_attention``, whose fused kernels (flash / memory-efficient on CUDA, the flash
kernel on CPU) never build it. This script runs the compiled model on the GPU if there is one (else
the CPU), with the official input size and one image per device (the DeMT recipe), and prints the
time of one forward+backward and the peak memory, next to the size the score matrices would take.
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(preset: str = "hrnet18", size: tuple[int, int] = (425, 560), batch: int = 1, steps: int = 1,
            amp: str = "off", device: str | None = None, report=print, overrides: dict | None = None) -> dict:
    """One warm-up forward+backward, then ``steps`` timed ones; returns the figures (and prints
    them through ``report``)."""
    import torch

    from mtl_dsl.api import compile_model

    height, width = size
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = compile_model("demt", tasks="nyud", preset=preset, overrides={"variant": "paper", **(overrides or {})},
                          input_size=(height, width)).to(device)
    tasks = len(model.profile.tasks)
    tokens = math.ceil(height / 4) * math.ceil(width / 4)
    heads = next(m.heads for m in model.modules() if type(m).__name__ == "TokenAttention")
    scores_gib = heads * (tasks * tokens) ** 2 * 4 * batch / 2**30
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report(f"demt --preset {preset} variant=paper: {params:,} parameters; input {height}x{width}, batch "
           f"{batch}, {tasks} tasks -> {tasks * tokens:,} tokens attend to {tasks * tokens:,}; device {name}")
    report(f"materialised fp32 scores of the task interaction: {scores_gib:.1f} GiB (never built)")

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
    x = torch.randn(batch, 3, height, width, device=device)

    def step() -> float:
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(x)
            loss = sum(v.float().mean() for per_task in outputs.values() for v in per_task.values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    first = step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [step() for _ in range(steps)]
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        peak = f"{peak_gib:.2f} GiB GPU memory (max allocated)"
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak = f"{peak_gib:.2f} GiB process RSS (max)"
    report(f"forward+backward: first {first:.2f} s, then {min(times):.2f} s (best of {len(times)}); peak {peak}")
    return {"preset": preset, "input": [height, width], "batch": batch, "tokens": tasks * tokens,
            "device": name, "amp": amp if dtype is not None else "off", "first_s": first,
            "step_s": min(times), "peak_gib": peak_gib, "peak_kind": "gpu" if device.type == "cuda" else "rss",
            "scores_gib_if_materialised": scores_gib, "params": params}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="hrnet18", help="demt preset (hrnet18, swin_t, swin_s, swin_b)")
    p.add_argument("--input", default="425x560")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="timed forward+backward steps (after one warm-up)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast on CUDA")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    args = p.parse_args(argv)
    height, width = (int(v) for v in args.input.lower().split("x"))
    measure(args.preset, (height, width), args.batch, args.steps, args.amp, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
