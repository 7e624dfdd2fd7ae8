"""The example designs of specs/examples (PAD-Net, an SE-gated baseline, a cross-stitch task mix),
written with the language's operators alone: each compiles for NYUD and PASCAL with exactly the
parameters of its convolutions (counted here from the widths), counts the MACs of its weighted
sums, and trains."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch

from mtl_dsl.api import check_spec, compile_model
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.launch import run_training
from mtl_dsl.summary import model_figures
from mtl_dsl.tasks import PROFILES

EXAMPLES = Path(__file__).resolve().parent.parent / "specs" / "examples"
HRNET_CONCAT = 18 + 36 + 72 + 144  # HRNet-W18-small-v2, levels 1..4 (timm feature_info)


def conv(cin: int, cout: int, k: int = 3, norm: bool = True) -> int:
    """A conv_bn_act: weights, then BN's scale and shift, or the conv's bias without a norm."""
    return k * k * cin * cout + (2 * cout if norm else cout)


@pytest.fixture(scope="module")
def hrnet_params() -> int:
    """The backbone's parameters, from timm directly (levels 1..4, no classifier)."""
    with torch.device("meta"):
        body = timm.create_model("hrnet_w18_small_v2", features_only=True, feature_location="",
                                 out_indices=[1, 2, 3, 4])
    assert body.feature_info.channels() == [18, 36, 72, 144]
    return sum(p.numel() for p in body.parameters())


def padnet_params(channels: list[int], dim: int) -> int:
    tasks = len(channels)
    return (tasks * conv(HRNET_CONCAT, dim)                           # task features
            + 2 * sum(conv(dim, c, 1, norm=False) for c in channels)  # intermediate + final heads
            + tasks * (tasks - 1) * 2 * conv(dim, dim, norm=False))   # gate and message per pair


def se_params(channels: list[int], dim: int, reduction: int) -> int:
    squeeze = dim // reduction
    return sum(conv(HRNET_CONCAT, dim) + conv(dim, squeeze, 1, norm=False)
               + conv(squeeze, dim, 1, norm=False) + conv(dim, c, 1, norm=False)
               for c in channels)


def cross_stitch_params(channels: list[int], dim: int, stages: int) -> int:
    tasks = len(channels)
    return (conv(HRNET_CONCAT, dim) + tasks * conv(dim, dim)
            + stages * (tasks * tasks * 1 + tasks * conv(dim, dim))  # one scalar per pair
            + sum(conv(dim, c, 1, norm=False) for c in channels))


CASES = {
    "padnet": (lambda ch: padnet_params(ch, 64)),
    "se_baseline": (lambda ch: se_params(ch, 64, 4)),
    "cross_stitch": (lambda ch: cross_stitch_params(ch, 64, 2)),
}


@pytest.mark.parametrize("profile", ["nyud", "pascal"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_parameters_are_those_of_the_convolutions(hrnet_params, name, profile):
    with torch.device("meta"):
        model = compile_model(EXAMPLES / f"{name}.mtl", tasks=profile)
    channels = [t.channels for t in PROFILES[profile].tasks]
    assert model.input_size == PROFILES[profile].input_size
    assert sum(p.numel() for p in model.parameters()) == hrnet_params + CASES[name](channels)
    assert not model.idle_parameters


def test_padnet_is_the_distillation_written_out(tmp_path):
    graph = check_spec(EXAMPLES / "padnet.mtl", tasks="nyud")
    sums = [n for n in graph.ir.nodes if n.block == "sum"]
    assert [n.name for n in sums] == ["d.semseg_sum", "d.depth_sum", "d.normals_sum",
                                      "d.edge_sum"]
    edge = sums[-1]
    assert list(edge.inputs["x"].items) == ["semseg", "depth", "normals"]
    assert [r.node for r in edge.inputs["w"].refs()] == ["gate.edge.semseg", "gate.edge.depth",
                                                         "gate.edge.normals"]
    assert graph.ir.node("gate.edge.semseg_conv_bn_act").inputs["x"].node == "f.semseg"
    target = check_spec(EXAMPLES / "padnet.mtl", tasks="nyud", overrides={"gate_from": "target"})
    assert target.ir.node("gate.edge.semseg_conv_bn_act").inputs["x"].node == "f.edge"
    outputs = {(o.task, o.name) for o in graph.ir.outputs}
    assert ("semseg", "inter") in outputs and ("semseg", "final") in outputs


def test_weighted_sums_count_their_multiply_adds():
    model = compile_model(EXAMPLES / "padnet.mtl", tasks="semseg:5,depth,edge",
                          overrides={"backbone": "resnet18", "dim": 8}, input_size=(32, 48))
    figures = model_figures(model)
    elements = 8 * math.ceil(32 / 4) * math.ceil(48 / 4)
    for t in ("semseg", "depth", "edge"):
        assert figures["macs"][f"d.{t}_sum"] == 2 * elements  # two other tasks, one MAC each
    assert figures["total_macs"] == sum(figures["macs"].values())


# NYUD's tasks, and PASCAL's with the synthetic scenes' 4 part labels (PASCAL-Part has 7).
TRAIN_TASKS = {"nyud": ("nyud", {"semseg", "depth", "normals", "edge"}),
               "pascal": ("semseg:21,human_parts:4,sal,normals,edge",
                          {"semseg", "human_parts", "sal", "normals", "edge"})}


@pytest.mark.parametrize("profile", sorted(TRAIN_TASKS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_examples_train(tmp_path, name, profile):
    tasks, names = TRAIN_TASKS[profile]
    cfg = load_config(overrides={
        "tasks": tasks,
        "model": {"overrides": {"backbone": "resnet18", "dim": 8}},
        "dataset": {"length": 4, "val_length": 2, "cache": True},
        "training": {"iterations": 3, "batch_size": 2, "input_size": [32, 32],
                     "augment": False, "log_interval": 1, "eval_interval": 0,
                     "checkpoint_interval": 0, "eval_batches": 1},
        "run": {"storage": str(tmp_path), "name": name, "threads_per_worker": 1}})
    result = run_training(str(EXAMPLES / f"{name}.mtl"), cfg, plain=True,
                          progress=lambda record: None)
    assert result.step == 3 and len(result.history) == 3
    for record in result.history:
        assert all(math.isfinite(v) for v in record["losses"].values())
    assert set(result.history[-1]["losses"]) == names
