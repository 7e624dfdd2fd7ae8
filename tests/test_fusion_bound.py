"""``benchmarks/fusion_bound.py``: the arithmetic floor of a fusion group and the step's ceiling
(what batching could gain at best) are computed from real counts and timings."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from mtl_dsl.api import compile_model
from mtl_dsl.flops import count_macs
from mtl_dsl.fusion_tuning import group_runs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fusion  # noqa: E402
import fusion_bound  # noqa: E402


def test_a_groups_flops_are_its_forward_and_both_gradients():
    torch.manual_seed(0)
    model = compile_model("baseline_mt", tasks="nyud", input_size=(32, 32)).train()
    images = torch.randn(2, 3, 32, 32)
    (group, separate, together), = group_runs(model, images)
    with model.fusion_off():  # per node: each call on its own
        forward_macs = count_macs(model, images).per_module
    heads = sum(forward_macs[n] for n in group.nodes)
    assert heads > 0
    # backward computes the input's and the weights' gradients: twice the forward's products
    assert fusion_bound.group_flops(separate) == 3 * 2 * heads
    assert fusion_bound.group_flops(together) == 3 * 2 * heads  # batching removes no product


def test_the_ceiling_is_computed_from_the_measured_step():
    row = fusion.Row("baseline_mt", "baseline_mt", None, (32, 32))
    r = fusion_bound.bound(row, reps=1, batch=2, device="cpu")
    assert r["peak"] > 0 and len(r["groups"]) == 1
    g = r["groups"][0]
    floor = g["flops"] / r["peak"]
    assert floor <= g["on"] * (1 + 1e-9)  # the peak is at least the batched group's own rate
    saving = max(0.0, g["off"] - floor)
    off = r["step"]["off"]
    # a group timed alone may exceed a tiny step's median (noise): then no ceiling is claimed
    assert r["ceiling"] == (off / (off - saving) if saving < off else float("inf"))
    assert r["ceiling"] >= 1.0
