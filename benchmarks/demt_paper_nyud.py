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

    import torch

    from mtl_dsl.api import compile_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = compile_model("demt", tasks="nyud", preset=args.preset, overrides={"variant": "paper"},
                          input_size=(height, width)).to(device)
    tasks = len(model.profile.tasks)
    tokens = math.ceil(height / 4) * math.ceil(width / 4)
    heads = next(m.heads for m in model.modules() if type(m).__name__ == "TokenAttention")
    scores_gib = heads * (tasks * tokens) ** 2 * 4 * args.batch / 2**30
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"demt --preset {args.preset} variant=paper: {params:,} parameters; input {height}x{width}, batch "
          f"{args.batch}, {tasks} tasks -> {tasks * tokens:,} tokens attend to {tasks * tokens:,}; device {name}")
    print(f"materialised fp32 scores of the task interaction: {scores_gib:.1f} GiB (never built)")

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if device.type == "cuda" else None
    x = torch.randn(args.batch, 3, height, width, device=device)

    def step() -> float:
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
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
    times = [step() for _ in range(args.steps)]
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU memory (max allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process RSS (max)"
    print(f"forward+backward: first {first:.2f} s, then {min(times):.2f} s (best of {len(times)}); peak {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
