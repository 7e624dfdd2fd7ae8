"""``benchmarks/gpu_check.py``: its dry run on the CPU runs every check, and the GPU peaks table."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import ROWS, Plan, peak_tflops, rows_to_measure  # noqa: E402


def test_the_peak_of_a_gpu_is_looked_up_by_its_name():
    assert peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0  # before the SXM entry
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores: no MFU


@pytest.mark.slow
def test_the_dry_run_runs_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--json", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("DRY RUN on CPU")
    figures = json.loads(out.read_text())
    assert figures["dry_run"] is True and figures["peak_bf16_tflops"] is None
    assert list(figures["specs"]) == [row.label for row in rows_to_measure(Plan(dry=True))]
    assert len(figures["specs"]) == len(ROWS) - 1  # DeMT Swin-T is DeMT HRNet18 with small backbones
    for label, row in figures["specs"].items():
        assert row["images_per_s"] > 0 and row["train_gflop_per_step"] > 0, label
        assert "mfu" not in row and "peak_gib" not in row  # no GPU: neither is measured
    ratio = figures["ratio"]
    assert ratio["compiled_ms"] > 0 and math.isclose(ratio["ratio"], ratio["compiled_ms"] / ratio["hand_written_ms"])
    assert figures["demt_paper"]["step_s"] > 0 and figures["demt_paper"]["tokens"] == 4 * 16 * 16
    fusion = figures["fusion"]
    assert list(fusion) == ["baseline_mt", "tpanet"]
    for name, row in fusion.items():
        assert row["groups"] >= 1, name
        assert math.isclose(row["speedup"], row["unfused_s"] / row["fused_s"]), name
    ray = figures["ray"]
    assert ray["ray"]["steps"] == ray["plain"]["steps"] == 6
    assert math.isclose(ray["plain_over_ray"], ray["plain"]["images_per_s"] / ray["ray"]["images_per_s"])
    ddp = figures["ddp"]
    assert (ddp["world"], ddp["backend"], ddp["ddp"], ddp["steps"]) == (2, "gloo", "DistributedDataParallel", 6)
    assert ddp["sync_batchnorm_layers"] == 0  # SyncBatchNorm is for CUDA runs only
