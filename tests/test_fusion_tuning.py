"""Fusion tuning (``mtl_dsl.fusion_tuning``): groups measured slower batched run one by one; the
model stays exact whatever is kept, and tuning leaves no trace in the model's state."""
from __future__ import annotations

import pytest
import torch

from mtl_dsl.api import compile_model
from mtl_dsl.fusion_tuning import SLOWER, GroupTiming, describe, time_groups, tune_fusion
from mtl_dsl.runtime import loop
from mtl_dsl.runtime.checkpoints import load_checkpoint
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.launch import run_training
from test_fusion import assert_fusion_exact
from test_train import TINY_BASELINE


def _atrc():
    torch.manual_seed(0)
    return compile_model("atrc_nyud_hrnet18", tasks="nyud", input_size=(32, 32))


def test_every_subset_of_groups_is_exact_and_says_why_the_others_run_alone():
    model = _atrc()
    found = model.full_fusion.groups
    assert len(found) >= 4
    images = torch.randn(2, 3, 32, 32)
    for keep in ({0, 2}, {1, len(found) - 1}, set()):
        model.keep_fusion_groups(keep, SLOWER)
        assert model.fusion.groups == tuple(g for i, g in enumerate(found) if i in keep)
        dropped = [n for i, g in enumerate(found) if i not in keep for n in g.nodes]
        assert all(model.fusion.alone[n] == SLOWER for n in dropped)
        assert sorted(u for u in model.fusion.schedule if isinstance(u, int)) == list(range(len(keep)))
        assert_fusion_exact(model, images, grouped=True)
    model.keep_fusion_groups(set(range(len(found))), SLOWER)
    assert model.fusion.groups == found and model.fused


def test_tuning_keeps_what_the_decision_says_and_leaves_the_state_as_it_was():
    model = _atrc().train()
    images = torch.randn(2, 3, 32, 32)
    model(images)  # running statistics that are not the initial ones
    before = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()
    seen = []

    def decide(timings):
        seen.extend(timings)
        return {1, 3}

    timings = tune_fusion(model, images, reps=1, decide=decide)
    assert timings == seen and len(timings) == len(model.full_fusion.groups)
    assert all(t.separate_s > 0 and t.batched_s > 0 and t.calls >= 2 for t in timings)
    assert model.fusion.groups == tuple(model.full_fusion.groups[i] for i in (1, 3))
    assert model.training and model.fused
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert_fusion_exact(model, images, grouped=True)


def test_by_default_the_groups_faster_batched_are_kept():
    model = _atrc()
    timings = tune_fusion(model, torch.randn(2, 3, 32, 32), reps=1)
    kept = tuple(g for g, t in zip(model.full_fusion.groups, timings) if t.pays)
    assert model.fusion.groups == kept
    line = describe(timings, len(kept))
    assert line.startswith(f"fusion tuned on this device: {len(kept)} of {len(timings)} groups batched")
    slower = GroupTiming("dense_head x4", 4, 1.0, 2.0)
    assert not slower.pays and "faster one by one: dense_head x4" in describe([slower], 0)


def test_a_model_without_groups_is_left_alone():
    torch.manual_seed(0)
    model = compile_model("baseline_mt", tasks="depth", overrides=TINY_BASELINE, input_size=(32, 32))
    assert tune_fusion(model, torch.randn(2, 3, 32, 32)) == [] and not model.fusion.groups
    assert time_groups(model, torch.randn(2, 3, 32, 32)) == []


@pytest.mark.parametrize("keep", [set(), None], ids=["none-kept", "measured"])
def test_training_that_tunes_first_ends_with_the_weights_of_training_that_does_not(tmp_path, monkeypatch, keep):
    """``training.fusion_tuning = always`` tunes on the CPU too: with every group dropped (or what
    the clock says), the run's weights are those of an untuned run, and its log says what was
    kept; ``auto`` does not tune on a CPU."""
    def trained(name: str, mode: str):
        cfg = load_config(overrides={
            "tasks": "semseg,depth,normals,edge", "model": {"overrides": TINY_BASELINE},
            "dataset": {"length": 8, "val_length": 2, "cache": True},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "schedule": {"warmup_iters": 0},
            "training": {"iterations": 3, "batch_size": 2, "input_size": [32, 32], "augment": False,
                         "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 0,
                         "eval_batches": 1, "fusion_tuning": mode},
            "run": {"storage": str(tmp_path), "name": name}})
        records = []
        result = run_training("baseline_mt", cfg, plain=True, progress=records.append)
        state = load_checkpoint(result.checkpoint).model_state
        return state, [r["text"] for r in records if r.get("kind") == "note"]

    if keep is not None:
        import mtl_dsl.fusion_tuning as tuning
        real = tuning.tune_fusion
        monkeypatch.setattr(tuning, "tune_fusion",
                            lambda m, x, reps=3, decide=None: real(m, x, 1, lambda t: keep))
    plain, notes = trained("plain", "auto")
    tuned, tuned_notes = trained("tuned", "always")
    assert not any("fusion tuned" in n for n in notes)
    assert [n for n in tuned_notes if n.startswith("fusion tuned on this device: ")], tuned_notes
    if keep == set():
        assert any(" 0 of 1 " in n for n in tuned_notes if n.startswith("fusion tuned")), tuned_notes
    for k, v in plain.items():
        torch.testing.assert_close(tuned[k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_the_loop_tunes_on_gpus_by_default_and_as_the_config_says():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loop.fusion_is_tuned("auto", cuda) and not loop.fusion_is_tuned("auto", cpu)
    assert loop.fusion_is_tuned("always", cpu) and not loop.fusion_is_tuned("never", cuda)
    with pytest.raises(Exception, match="training.fusion_tuning"):
        load_config(overrides={"training": {"fusion_tuning": "sometimes"}})
