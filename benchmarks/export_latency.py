"""Deployment latency: each reference spec at its official input size, exported to ONNX with
`mtl_dsl.export.export_model` (and checked against eager PyTorch), then timed at batch 1 on the
CPU: ONNX Runtime against eager PyTorch (inference mode), the same number of threads for both,
repetitions interleaved in one run. Prints a Markdown table: the medians of N and their ratio
(ONNX Runtime time / eager time; below 1 = ONNX Runtime is faster).

    .venv/bin/python benchmarks/export_latency.py [--reps 5] [--threads N] [--only demt,invpt]
        [--preset invpt=vit_l]

Weights are random (seed 0): latency does not depend on them. InvPT runs with its ViT-B preset by
default, which keeps the whole table within a few minutes on a 2-core machine; `--preset
invpt=vit_l` gives the official ViT-L (the same graph with 24 blocks of width 1024 instead of 12
of width 768: about 3.5 times the parameters and the time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (spec, preset, task profile); the profile fixes the input size (NYUD 425x560; InvPT's spec pads
# to 448x576 as the official code).
ROWS = [
    ("baseline_mt", "hrnet18", "nyud"),
    ("demt", "hrnet18", "nyud"),
    ("tpanet", "hrnet18", "nyud"),
    ("atrc_nyud_hrnet18", None, "nyud"),
    ("atrc", "local", "nyud"),
    ("invpt", "vit_b", "nyud"),
]


def measure(label: str, spec: str, preset: str | None, tasks: str, reps: int, threads: int,
            folder: Path) -> dict:
    import onnxruntime as ort
    import torch

    from mtl_dsl.api import compile_model
    from mtl_dsl.export import ExportOptions, export_model
    from mtl_dsl.export.deploy import DeployModule, example_input, select_outputs

    torch.manual_seed(0)
    model = compile_model(spec, tasks=tasks, preset=preset).eval()
    path = folder / f"{spec}-{preset or 'default'}.onnx"
    result = export_model(model, path, ExportOptions(format="onnx"))
    eager = DeployModule(model, select_outputs(model, False)).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    images = example_input(1, tuple(model.input_size), True, seed=1)
    feed = {"images": images.numpy()}

    def run_eager() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            eager(images)
        return time.perf_counter() - t0

    def run_onnx() -> float:
        t0 = time.perf_counter()
        session.run(None, feed)
        return time.perf_counter() - t0

    run_eager(), run_onnx()  # warm-up: allocations, oneDNN / MLAS kernel selection
    eager_times, onnx_times = [], []
    for _ in range(reps):  # interleaved, so that a busy moment of the machine hits both
        eager_times.append(run_eager())
        onnx_times.append(run_onnx())
    size = sum(f.stat().st_size for f in result.files)
    for f in result.files:
        f.unlink()
    return {"label": label, "input": "x".join(map(str, model.input_size)),
            "params": sum(p.numel() for p in model.parameters()),
            "eager": statistics.median(eager_times), "onnx": statistics.median(onnx_times),
            "export": result.export_seconds, "mb": size / 1e6,
            "diff": max(d.max_abs for d in result.differences), "ok": result.ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median of N)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for both PyTorch and ONNX Runtime (default: all CPUs)")
    parser.add_argument("--only", default="", help="comma-separated specs to run (default: all)")
    parser.add_argument("--preset", action="append", default=[], metavar="SPEC=NAME",
                        help="another preset for a spec's row, e.g. invpt=vit_l (repeatable)")
    args = parser.parse_args()
    presets: dict[str, str] = {}
    for item in args.preset:
        spec, sep, name = item.partition("=")
        if not sep or not name or spec not in {r[0] for r in ROWS}:
            parser.error(f"--preset expects SPEC=NAME with SPEC one of the rows' specs, got "
                         f"'{item}'")
        presets[spec] = name

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    chosen = {s for s in args.only.split(",") if s}
    rows = [(spec, presets.get(spec, preset), tasks) for spec, preset, tasks in ROWS
            if not chosen or spec in chosen]
    print(f"batch 1, CPU, {args.threads} threads each; median of {args.reps}; torch "
          f"{torch.__version__}, ONNX Runtime {onnxruntime.__version__}\n")
    print("| spec | input | parameters | eager PyTorch | ONNX Runtime | ratio ORT / eager | "
          "export | ONNX file | max abs diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for spec, preset, tasks in rows:
            label = spec + (f" --preset {preset}" if preset else "")
            r = measure(label, spec, preset, tasks, args.reps, args.threads, Path(tmp))
            print(f"| `{r['label']}` | {r['input']} | {r['params']:,} | {r['eager'] * 1e3:,.0f} ms "
                  f"| {r['onnx'] * 1e3:,.0f} ms | {r['onnx'] / r['eager']:.2f} | "
                  f"{r['export']:.0f} s | {r['mb']:,.0f} MB | {r['diff']:.1e}"
                  f"{'' if r['ok'] else ' (FAILED)'} |", flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
