"""Training throughput of the reference specs, and Ray Train's overhead over a plain PyTorch loop.

    python benchmarks/train_throughput.py                    # every specs/*.mtl, then the Ray ratio
    python benchmarks/train_throughput.py --specs baseline_mt atrc --input 64x64 --batch 2
    python benchmarks/train_throughput.py --ratio-only --ratio-spec baseline_mt

Each spec trains on the synthetic scenes at one fixed small config (default 64x64, batch 2,
``--steps`` iterations, Adam, no evaluation or checkpoints, a cached set of ``--images`` synthetic
scenes) with the in-process loop (``run_training(..., plain=True)``). Images/s is measured per log
interval and the first ``--warmup`` steps (at least one epoch, while scenes are generated) are
discarded. Then one spec (``--ratio-spec``) is trained once more through
Ray Train (``TorchTrainer``, 1 worker, same device, same threads) and the steady-state images/s of
the two runs are compared: ratio = plain / Ray (target <= 1.05). Specs whose task set is fixed by
their dataset (``*_nyud_*``, ``*_pascal_*``) run with that dataset's tasks on synthetic images.

The ratio is measured at each of ``--ratio-threads`` torch threads (default: every core, then one
core fewer). Ray keeps a dozen processes of its own (GCS, raylet, the Train controller and its
helper actors), each waking about 100 times a second; when torch's threads fill every core of a
small machine those wake-ups stall its lock-step OpenMP teams, and the ratio measures that CPU
contention more than Ray Train's own work per step. With one core left to Ray's processes the
ratio is Ray Train's own overhead. Both are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_dsl.runtime.config import load_config  # noqa: E402
from mtl_dsl.runtime.launch import run_training  # noqa: E402


def tasks_for(spec: str) -> str:
    if "nyud" in spec:
        return "semseg:40,depth,normals,edge"
    if "pascal" in spec:
        return "semseg:21,human_parts:4,sal,normals,edge"  # the synthetic scenes have 4 part labels
    return "synthetic"


def config_for(spec: str, args, storage: str, name: str, overrides: dict):
    return load_config(overrides={
        "tasks": tasks_for(spec),
        "model": {"overrides": overrides},
        # A small cached set: after the first epoch the loop, not scene generation, is measured.
        "dataset": {"length": args.images, "val_length": 2, "cache": True},
        "optimizer": {"name": "adam", "lr": 1e-4},
        "schedule": {"warmup_iters": 0},
        "training": {"iterations": args.steps, "batch_size": args.batch, "input_size": list(args.input),
                     "augment": False, "log_interval": args.interval, "eval_interval": 0,
                     "checkpoint_interval": args.steps + 1, "eval_batches": 1},
        "run": {"storage": storage, "name": name, "workers": 1, "threads_per_worker": args.threads}})


def steady_images_per_s(history: list[dict], warmup: int, interval: int) -> float:
    """Images over seconds of the log intervals that start at or after the warm-up steps."""
    kept = [r for r in history if r["step"] - interval >= warmup]
    images = sum(r["images_per_s"] * r["seconds"] for r in kept)
    seconds = sum(r["seconds"] for r in kept)
    return images / seconds if seconds else float("nan")


def measure(spec: str, args, storage: str, plain: bool, overrides: dict) -> dict:
    name = f"{Path(spec).stem}-{'plain' if plain else 'ray'}-{int(time.time() * 1000) % 10**8}"
    cfg = config_for(spec, args, storage, name, overrides)
    started = time.perf_counter()
    result = run_training(spec, cfg, plain=plain, progress=lambda r: None, check_data=False)
    wall = time.perf_counter() - started
    return {"images_per_s": steady_images_per_s(result.history, args.warmup, args.interval), "wall_s": wall,
            "intervals": [round(r["images_per_s"], 2) for r in result.history]}


def parse_overrides(items):
    from mtl_dsl.api import parse_override

    return dict(parse_override(o) for o in items or [])


def ratio_runs(args, storage: str, overrides) -> list[dict]:
    """The plain loop against Ray Train on ``--ratio-spec``, at each thread count."""
    if args.ratio_steps:
        args.steps = args.ratio_steps
    cores = os.cpu_count() or 1
    counts = args.ratio_threads or ([cores, cores - 1] if cores > 1 else [1])
    rows = []
    for threads in counts:
        args.threads = threads
        # Ray first: the plain loop afterwards runs in this (by then idle) driver process.
        ray = measure(args.ratio_spec, args, storage, False, overrides)
        plain = measure(args.ratio_spec, args, storage, True, overrides)
        ratio = plain["images_per_s"] / ray["images_per_s"]
        rows.append({"spec": args.ratio_spec, "threads": threads, "cores": cores,
                     "plain": plain, "ray": ray, "plain_over_ray": ratio})
        print(f"ratio on {args.ratio_spec}, {threads} of {cores} cores: plain {plain['images_per_s']:.2f} "
              f"img/s, Ray Train {ray['images_per_s']:.2f} img/s -> plain/Ray = {ratio:.3f} "
              f"(target <= 1.05); intervals plain {plain['intervals']} ray {ray['intervals']}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--specs", nargs="*", default=None, help="spec names (default: every specs/*.mtl)")
    p.add_argument("--input", default="64x64", help="HxW (default 64x64)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--warmup", type=int, default=16, help="steps discarded (>= one epoch of --images)")
    p.add_argument("--images", type=int, default=32, help="synthetic training images (cached)")
    p.add_argument("--interval", type=int, default=8, help="steps per measured interval")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="model parameter for every spec, e.g. backbone=resnet18")
    p.add_argument("--ratio-spec", default="baseline_mt")
    p.add_argument("--ratio-steps", type=int, default=None, help="steps of the two ratio runs (default --steps)")
    p.add_argument("--ratio-only", action="store_true")
    p.add_argument("--ratio-threads", type=int, nargs="*", default=None,
                   help="torch threads of the ratio runs (default: all cores, then one fewer)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the per-spec runs")
    p.add_argument("--no-ratio", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.input = tuple(int(v) for v in args.input.lower().split("x"))
    overrides = parse_overrides(args.overrides)
    import torch

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {device}; input {args.input[0]}x{args.input[1]}, batch {args.batch}, {args.steps} steps "
          f"(first {args.warmup} discarded)")
    figures: dict = {"device": device, "input": list(args.input), "batch": args.batch, "specs": {}}
    storage = tempfile.mkdtemp(prefix="mtl-dsl-bench-")
    specs = args.specs if args.specs is not None else sorted(p.stem for p in (ROOT / "specs").glob("*.mtl"))
    if not args.ratio_only:
        for spec in specs:
            try:
                row = measure(spec, args, storage, True, overrides)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next spec
                print(f"{spec:<24} failed: {str(exc).splitlines()[0][:160]}")
                figures["specs"][spec] = {"error": str(exc).splitlines()[0]}
                continue
            figures["specs"][spec] = row
            print(f"{spec:<24} {row['images_per_s']:8.2f} img/s  (intervals {row['intervals']}, "
                  f"run {row['wall_s']:.0f} s)")
    if not args.no_ratio:
        figures["ratio"] = ratio_runs(args, storage, overrides)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
