"""GPU check: the figures a GPU machine should confirm, in one prepared run (223 s on one H200).

    python benchmarks/gpu_check.py                    # on a GPU: every check at the official sizes
    python benchmarks/gpu_check.py --dry-run          # tiny sizes on the CPU (the default without a GPU)
    python benchmarks/gpu_check.py --only specs,ratio --json gpu_check.json

Sections (``--only`` selects some):

* ``specs``: for each reference spec at its official dataset, input size and batch, one training
  step (forward, the official losses, backward, SGD) under bf16 autocast, as the training loop
  runs it: images/s (median of timed steps after warm-up), peak GPU memory, and the model FLOP
  utilisation, MFU = (FLOPs of one forward+backward, counted by ``torch.utils.flop_counter`` with
  the formulas of ``mtl_dsl.flops``) x steps/s / the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``);
* ``ratio``: the compiled model's step time against the hand-written straight-line module of
  ``benchmarks/compile_overhead.py`` (``baseline_mt``), interleaved repetitions, median;
* ``demt_paper``: DeMT's global-attention variant (``variant = "paper"``) at NYUD size
  (``benchmarks/demt_paper_nyud.py``): time of one forward+backward and peak memory;
* ``fusion``: cross-task fusion's train-step speed-up per reference spec at its official size,
  batch 2 (``benchmarks/fusion.py --device cuda``: fused, tuned as training tunes it, vs unfused
  on one model, alternated, median of 5), where kernel launches are what fusion saves;
* ``fusion_exact``: fused against unfused per reference spec at its official size, float32 with
  TF32 off (outputs, gradients, BatchNorm statistics after a step): the grouped forms a GPU runs;
* ``ray``: Ray Train (one worker) against the plain loop on the same device
  (``benchmarks/train_throughput.py``'s measure of steady-state images/s);
* ``ddp``: a 2-worker Ray Train run with DDP and SyncBatchNorm over NCCL; with one GPU both workers
  share it (``NCCL_MULTI_RANK_GPU_ENABLE=1``, NCCL 2.30's multi-rank-per-GPU mode; with an older
  NCCL, which refuses two ranks on one GPU, over gloo: ``run.backend``). A probe in the
  loop reports the process group's backend, the world size and the SyncBatchNorm layers.

On a machine without a GPU (or with ``--dry-run``) every section runs at tiny sizes with small
backbones on the CPU and says so: the figures then only show that the script works.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mtl_dsl.runtime.callbacks import Callback  # noqa: E402

SECTIONS = ("specs", "ratio", "demt_paper", "fusion", "fusion_exact", "ray", "ddp")
# The datasets' own profiles: the ATRC genotype specs state theirs (`profile pascal`) and refuse
# another, and the built-in scenes draw PASCAL's 7 part labels.
NYUD, PASCAL = "nyud", "pascal"

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first entry
# whose name occurs in the device name wins (so "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = (("GH200", 989.4), ("H200 NVL", 835.5), ("H200", 989.4), ("H100 PCIe", 756.0),
                    ("H100 NVL", 835.5), ("H100", 989.4), ("B200", 2250.0), ("B100", 1750.0),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0),
                    ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2))


@dataclass
class Row:
    """A reference spec at its official size: (label, spec, tasks, input, batch, preset)."""

    label: str
    spec: str
    tasks: str
    size: tuple[int, int]
    batch: int
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    dry: dict = field(default_factory=lambda: {"backbone": "resnet18"})  # --dry-run overrides
    dry_size: tuple[int, int] = (32, 32)


NYUD_SIZE = (425, 560)
ROWS = (
    Row("MT baseline, HRNet18", "baseline_mt", NYUD, NYUD_SIZE, 8, "hrnet18"),
    Row("DeMT, HRNet18", "demt", NYUD, NYUD_SIZE, 8, "hrnet18"),
    Row("DeMT, Swin-T", "demt", NYUD, NYUD_SIZE, 8, "swin_t"),
    Row("TPANet, HRNet18", "tpanet", NYUD, NYUD_SIZE, 8, "hrnet18"),
    Row("ATRC (NYUD found), HRNet18", "atrc_nyud_hrnet18", NYUD, NYUD_SIZE, 8),
    Row("ATRC (PASCAL found), HRNet18", "atrc_pascal_hrnet18", PASCAL, (512, 512), 8),
    Row("InvPT, ViT-L", "invpt", NYUD, (448, 576), 2, "vit_l",
        dry={"backbone": "vit_tiny_patch16_384", "levels": [3, 6, 12]}, dry_size=(64, 64)),
)


def peak_tflops(device_name: str) -> float | None:
    for name, peak in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return peak
    return None


class Plan:
    """Sizes of this run: official on a GPU, tiny on a dry run."""

    def __init__(self, dry: bool):
        import torch

        self.dry = dry
        self.device = torch.device("cpu" if dry else "cuda")
        self.name = torch.cuda.get_device_name(0) if not dry else f"CPU ({os.cpu_count()} cores)"
        self.peak = None if dry else peak_tflops(self.name)
        self.amp = None if dry else torch.bfloat16
        self.steps = 1 if dry else 10
        self.warmup = 0 if dry else 3

    def row(self, row: Row) -> tuple[tuple[int, int], int, str | None, dict]:
        if self.dry:
            return row.dry_size, 2, None, {**row.overrides, **row.dry}  # BatchNorm needs 2 at 1x1
        return row.size, row.batch, row.preset, dict(row.overrides)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()


_BATCHES: dict = {}


def training_batch(tasks: str, size: tuple[int, int], batch: int, device) -> dict:
    """A batch of synthetic scenes with every label (one rendered scene, repeated)."""
    import torch

    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.datasets import collate_samples, open_dataset

    key = (tasks, size)
    if key not in _BATCHES:
        cfg = load_config(overrides={"tasks": tasks, "dataset": {"length": 1, "val_length": 1},
                                     "training": {"input_size": list(size), "augment": False}})
        _BATCHES[key] = collate_samples([open_dataset(cfg, "train", False)[0]])
    one = _BATCHES[key]
    return {k: torch.cat([v] * batch).to(device) for k, v in one.items() if isinstance(v, torch.Tensor)}


def _train_step_module(spec: str, tasks: str, size, preset, overrides):
    from mtl_dsl.api import build_model, resolve_profile
    from mtl_dsl.runtime.config import OFFICIAL_LOSS_WEIGHTS
    from mtl_dsl.runtime.loop import TrainStep
    from mtl_dsl.runtime.losses import MultiTaskCriterion
    from mtl_dsl.runtime.weighting import build_weighting

    profile = resolve_profile(tasks)
    model = build_model(spec, tasks=profile, overrides=overrides or None, preset=preset, input_size=size)
    names = profile.task_names
    criterion = MultiTaskCriterion(names, profile.edge_pos_weight, "nyu")
    weighting = build_weighting("fixed", names, {t: OFFICIAL_LOSS_WEIGHTS[t] for t in names})
    return TrainStep(model, criterion, weighting), names


def measure_row(row: Row, plan: Plan) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mtl_dsl.flops import extra_formulas
    from mtl_dsl.fusion_tuning import tune_fusion

    size, batch, preset, overrides = plan.row(row)
    step_module, names = _train_step_module(row.spec, row.tasks, size, preset, overrides)
    step_module = step_module.to(plan.device)
    optimizer = torch.optim.SGD([p for p in step_module.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)
    data = training_batch(row.tasks, size, batch, plan.device)
    targets = {t: data[t] for t in names}
    # as the training loop tunes on a GPU (a dry run tunes too, so that the path runs)
    with torch.autocast(plan.device.type, dtype=plan.amp, enabled=plan.amp is not None):
        tune_fusion(step_module.model, data["image"])

    def forward_backward():
        with torch.autocast(plan.device.type, dtype=plan.amp, enabled=plan.amp is not None):
            total, _ = step_module(data["image"], targets)
        total.backward()

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()
        plan.sync()
        return time.perf_counter() - started

    for _ in range(plan.warmup):
        step()
    counter = FlopCounterMode(display=False, custom_mapping=extra_formulas())
    with counter:
        forward_backward()
    optimizer.zero_grad(set_to_none=True)
    if plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(plan.steps)]
    seconds = statistics.median(times)
    flops = counter.get_total_flops()
    out = {"spec": row.spec, "preset": preset, "input": list(size), "batch": batch,
           "params": sum(p.numel() for p in step_module.model.parameters()),
           "step_ms": seconds * 1e3, "images_per_s": batch / seconds, "train_gflop_per_step": flops / 1e9,
           "achieved_tflops": flops / seconds / 1e12}
    if plan.device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if plan.peak:
        out["mfu"] = out["achieved_tflops"] / plan.peak
    return out


def compiled_vs_hand_written(plan: Plan) -> dict:
    import torch
    from compile_overhead import hand_written_baseline

    from mtl_dsl.api import compile_model

    row = ROWS[0]
    size, batch, preset, overrides = plan.row(row)
    model = compile_model("baseline_mt", tasks=row.tasks, preset=preset, overrides=overrides or None,
                          input_size=size).to(plan.device)
    hand = hand_written_baseline(model)
    images = training_batch(row.tasks, size, batch, plan.device)["image"]

    def step(fn) -> float:
        started = time.perf_counter()
        with torch.autocast(plan.device.type, dtype=plan.amp, enabled=plan.amp is not None):
            out = fn(images)
            loss = sum(v.float().mean() for d in out.values() for v in d.values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        plan.sync()
        return time.perf_counter() - started

    for _ in range(plan.warmup):
        step(model), step(hand)
    compiled, written = [], []
    for i in range(2 * plan.steps):  # interleaved: drift in the machine's speed hits both alike
        first, second = (model, hand) if i % 2 else (hand, model)
        a, b = step(first), step(second)
        (compiled if first is model else written).append(a)
        (compiled if second is model else written).append(b)
    c, h = statistics.median(compiled), statistics.median(written)
    return {"spec": "baseline_mt", "preset": preset, "input": list(size), "batch": batch,
            "compiled_ms": c * 1e3, "hand_written_ms": h * 1e3, "ratio": c / h}


def demt_paper(plan: Plan) -> dict:
    from demt_paper_nyud import measure

    if plan.dry:
        return measure("hrnet18", (64, 64), 1, 1, "off", "cpu", report=lambda line: None,
                       overrides={"backbone": "resnet18"})
    return measure("hrnet18", NYUD_SIZE, 1, 2, "bf16", "cuda", report=lambda line: None)


def _run_config(plan: Plan, storage: str, name: str, **run):
    from mtl_dsl.runtime.config import load_config

    size, batch, steps = ((32, 32), 2, 6) if plan.dry else ((256, 320), 8, 60)
    model = {"overrides": {"backbone": "resnet18", "levels": [1, 2]}} if plan.dry else {"preset": "hrnet18"}
    return load_config(overrides={
        "tasks": NYUD, "model": model, "dataset": {"length": 4 if plan.dry else 32, "val_length": 2, "cache": True},
        "optimizer": {"name": "sgd", "lr": 1e-3}, "schedule": {"warmup_iters": 0},
        "training": {"iterations": steps, "batch_size": batch, "input_size": list(size), "augment": False,
                     "log_interval": 2 if plan.dry else 10, "eval_interval": 0, "eval_batches": 1,
                     "checkpoint_interval": 0, "mixed_precision": "off" if plan.dry else "bf16"},
        "run": {"storage": storage, "name": name, **run}})


def ray_vs_plain(plan: Plan, storage: str) -> dict:
    from train_throughput import steady_images_per_s

    from mtl_dsl.runtime.launch import run_training

    out = {}
    for mode in ("ray", "plain"):  # Ray first: the plain loop then runs in this idle process
        cfg = _run_config(plan, storage, f"throughput-{mode}")
        started = time.perf_counter()
        result = run_training("baseline_mt", cfg, plain=mode == "plain", progress=lambda r: None,
                              check_data=False)
        warm = 2 if plan.dry else 20
        out[mode] = {"images_per_s": steady_images_per_s(result.history, warm, cfg.training.log_interval),
                     "wall_s": time.perf_counter() - started, "steps": result.step}
    out["plain_over_ray"] = out["plain"]["images_per_s"] / out["ray"]["images_per_s"]
    return out


class DDPProbe(Callback):
    """Writes, from rank 0 after the first step, what the run's DDP looks like."""

    def __init__(self, path: str):
        self.path = path

    def on_step_end(self, run) -> None:
        import torch
        import torch.distributed as dist

        if run.step != 1 or run.session.rank != 0:
            return
        Path(self.path).write_text(json.dumps({
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "world": run.session.world, "device": str(run.device),
            "sync_batchnorm_layers": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in run.model.modules()),
            "ddp": type(run.train_module).__name__}))


def ddp_two_workers(plan: Plan, storage: str) -> dict:
    import ray.cloudpickle

    from mtl_dsl.runtime.launch import run_training

    ray.cloudpickle.register_pickle_by_value(sys.modules[DDPProbe.__module__])  # workers lack benchmarks/
    probe = Path(storage) / "ddp-probe.json"
    gpus = None if plan.dry else (0.5 if _gpu_count() == 1 else 1.0)
    # Two ranks on one GPU: NCCL 2.30's multi-rank mode, else gloo (older NCCL refuses them).
    backend = "gloo" if gpus == 0.5 and _nccl_version() < (2, 30) else None
    cfg = _run_config(plan, storage, "ddp", workers=2, gpus_per_worker=gpus if gpus else 0.0,
                      backend=backend)
    started = time.perf_counter()
    result = run_training("baseline_mt", cfg, progress=lambda r: None, callbacks=[DDPProbe(str(probe))],
                          check_data=False)
    history = result.history
    return {"workers": 2, "gpus_per_worker": gpus or 0.0, "steps": result.step,
            "wall_s": time.perf_counter() - started,
            "images_per_s": history[-1]["images_per_s"] if history else None,
            **json.loads(probe.read_text())}


def _nccl_version() -> tuple[int, ...]:
    import torch

    version = torch.cuda.nccl.version()
    return tuple(version) if isinstance(version, tuple) else (version // 1000, version // 100 % 10)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def run(plan: Plan, sections: list[str], report=print) -> dict:
    figures: dict = {"device": plan.name, "dry_run": plan.dry, "peak_bf16_tflops": plan.peak}
    storage = tempfile.mkdtemp(prefix="mtl-dsl-gpu-check-")
    if "ddp" in sections and not plan.dry and _gpu_count() == 1:
        os.environ["NCCL_MULTI_RANK_GPU_ENABLE"] = "1"  # before Ray starts: its workers inherit it
    started = time.perf_counter()
    ray_started = False
    if "ray" in sections or "ddp" in sections:  # one Ray for both sections
        from mtl_dsl.runtime.ray_start import start_ray

        ray_started = start_ray(_run_config(plan, storage, "ray"), verbose=False, workers=2)
    for section in sections:
        t0 = time.perf_counter()
        try:
            if section == "specs":
                figures["specs"] = {}
                for row in rows_to_measure(plan):
                    figures["specs"][row.label] = _guarded(measure_row, row, plan)
                    report(_format_row(row.label, figures["specs"][row.label]))
                    _free(plan)
            elif section == "ratio":
                figures["ratio"] = compiled_vs_hand_written(plan)
            elif section == "demt_paper":
                figures["demt_paper"] = demt_paper(plan)
            elif section in ("fusion", "fusion_exact"):
                import fusion

                figures[section] = fusion.by_row(section, str(plan.device), plan.dry)
            elif section == "ray":
                figures["ray"] = ray_vs_plain(plan, storage)
            elif section == "ddp":
                figures["ddp"] = ddp_two_workers(plan, storage)
        except Exception as exc:  # noqa: BLE001 - report the section's failure and go on
            figures[section] = {"error": _error_text(exc)}
        _free(plan)
        if section != "specs":
            report(f"{section}: {json.dumps(_rounded(figures[section]))}")
        report(f"  ({section}: {time.perf_counter() - t0:.0f} s)")
    if ray_started:
        import ray

        ray.shutdown()
    figures["seconds"] = time.perf_counter() - started
    return figures


def rows_to_measure(plan: Plan) -> list[Row]:
    """Every row; on a dry run, one per distinct small model (Swin-T's DeMT is HRNet18's there)."""
    seen, rows = set(), []
    for row in ROWS:
        key = (row.spec, row.tasks, *plan.row(row)[:3], json.dumps(plan.row(row)[3], sort_keys=True))
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def _guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - an out-of-memory row must not stop the others
        return {"error": _error_text(exc)}


def _error_text(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _free(plan: Plan) -> None:
    import gc

    import torch

    gc.collect()
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _format_row(label: str, r: dict) -> str:
    if "error" in r:
        return f"{label:<30} failed: {r['error']}"
    mem = f"{r['peak_gib']:6.2f} GiB" if "peak_gib" in r else "      - "
    mfu = f"{100 * r['mfu']:5.1f} %" if "mfu" in r else "    - "
    return (f"{label:<30} {r['input'][0]}x{r['input'][1]} b{r['batch']:<2} {r['images_per_s']:8.2f} img/s "
            f"{r['step_ms']:9.1f} ms/step {r['train_gflop_per_step']:9.1f} GFLOP/step  {mem}  MFU {mfu}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (default without a GPU)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated ({', '.join(SECTIONS)})")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {unknown[0]} (sections: {', '.join(SECTIONS)})")
    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    plan = Plan(dry)
    if dry:
        print(f"DRY RUN on {plan.name}{'' if args.dry_run else ' (no GPU found)'}: tiny sizes and small "
              f"backbones; the figures only show that every check runs, they measure nothing official")
    else:
        peak = f"{plan.peak} TFLOP/s dense bf16" if plan.peak else "unknown peak (MFU not computed)"
        print(f"GPU check on {plan.name} ({_gpu_count()} GPU(s)), {peak}; bf16 autocast")
    figures = run(plan, sections)
    print(f"total {figures['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    failed = [s for s in sections if isinstance(figures.get(s), dict) and "error" in figures[s]]
    failed += [label for label, r in figures.get("specs", {}).items() if "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
