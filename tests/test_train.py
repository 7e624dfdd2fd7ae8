"""Training end to end: learning, exact resume, hooks, NaN stop, and a 2-worker Ray Train run."""
from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtl_dsl.errors import UsageError
from mtl_dsl.runtime.checkpoints import load_checkpoint, read_meta
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.callbacks import CrashAfterStep, PoisonLoss, SimulatedCrash
from mtl_dsl.runtime.failures import NonFiniteLoss, TrainingError
from mtl_dsl.runtime.launch import run_training

TINY_BASELINE = {"backbone": "resnet18", "levels": [1, 2], "dim": 16}


class TinyNet(nn.Module):
    """The CompiledModel interface on a two-conv net; dropout so the per-step RNG matters."""

    def __init__(self, profile, input_size):
        super().__init__()
        self.profile = profile
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2))
        self.heads = nn.ModuleDict({t.name: nn.Conv2d(8, t.channels, 1) for t in profile.tasks})
        self.idle_parameters: dict = {}
        self.output_names = {t.name: ["final"] for t in profile.tasks}
        self.ir = None

    def forward(self, x):
        f = self.body(x)
        return {t: {"final": F.interpolate(h(f), size=x.shape[-2:], mode="bilinear", align_corners=False)}
                for t, h in self.heads.items()}


def _config(tmp_path: Path, name: str, **training):
    base = {"iterations": 12, "batch_size": 4, "input_size": [32, 32], "log_interval": 3,
            "eval_interval": 0, "checkpoint_interval": 3, "eval_batches": 1, "augment": True}
    base.update(training)
    return load_config(overrides={
        "tasks": "semseg,depth,normals,edge",
        "dataset": {"length": 20, "val_length": 4, "cache": True},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"warmup_iters": 2},
        "loss": {"weighting": "uncertainty"},
        "training": base, "run": {"storage": str(tmp_path), "name": name, "keep_checkpoints": 5}})


def _quiet(_record):
    pass


def test_plain_training_lowers_every_task_loss(tmp_path):
    cfg = load_config(overrides={
        "model": {"overrides": TINY_BASELINE},
        "dataset": {"length": 16, "val_length": 4, "cache": True},
        "optimizer": {"lr": 2e-3}, "schedule": {"warmup_iters": 0},
        "training": {"iterations": 16, "batch_size": 4, "input_size": [32, 32], "augment": False,
                     "log_interval": 4, "eval_interval": 0, "checkpoint_interval": 0, "eval_batches": 1},
        "run": {"storage": str(tmp_path), "name": "learn", "threads_per_worker": 1}})
    threads_before = torch.get_num_threads()
    records = []
    result = run_training("baseline_mt", cfg, plain=True, progress=records.append)
    start = next(r for r in records if r.get("kind") == "start")
    assert start["threads"] == 1 and torch.get_num_threads() == threads_before
    first, last = result.history[0]["losses"], result.history[-1]["losses"]
    assert set(first) == {"semseg", "human_parts", "sal", "normals", "depth", "edge"}
    for task in first:
        assert last[task] < first[task], (task, first[task], last[task])
    assert result.step == 16 and result.checkpoint is not None
    meta = read_meta(result.checkpoint)
    assert meta["step"] == 16 and meta["spec"] == "baseline_mt" and len(meta["ir_hash"]) == 64
    assert "model baseline_mt" in meta["spec_source"] and meta["profile"]["name"] == "synthetic"
    assert set(result.metrics) >= {"semseg/mIoU", "depth/rmse", "normals/mean", "edge/odsF"}
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path):
    straight = run_training(TinyNet, _config(tmp_path, "straight"), plain=True, progress=_quiet)
    crashed_cfg = _config(tmp_path, "crashed")
    with pytest.raises(SimulatedCrash):  # dies after step 8; the last checkpoint is step 6
        run_training(TinyNet, crashed_cfg, plain=True, progress=_quiet,
                     callbacks=[CrashAfterStep(8, tmp_path / "crashed.marker", rank=0)])
    with pytest.raises(UsageError, match="already has checkpoints; pass --resume"):
        run_training(TinyNet, crashed_cfg, plain=True, progress=_quiet)
    notes = []
    resumed = run_training(TinyNet, crashed_cfg, plain=True, resume=True, progress=notes.append)
    assert any(r.get("text") == "resumed from step 6" for r in notes)
    assert resumed.step == straight.step == 12
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    for key, value in a.state_tensors.items():  # momentum buffers, uncertainty log-variances
        assert torch.equal(value, b.state_tensors[key]), key
    assert a.meta["data_state"] == b.meta["data_state"]


class NaNDepthNet(TinyNet):
    """Uses the training hooks: a learnable arch parameter, an extra loss and a step callback."""

    def __init__(self, profile, input_size):
        super().__init__(profile, input_size)
        self.alpha = nn.Parameter(torch.zeros(2))
        self.steps_seen: list = []

    def arch_parameters(self):
        return [self.alpha]

    def on_train_step(self, step, total_steps):
        self.steps_seen.append((step, total_steps))

    def extra_loss(self):
        return (self.alpha - 1.0).pow(2).sum()

    def forward(self, x):
        out = super().forward(x)
        if self.training and len(self.steps_seen) >= 5:
            out["depth"]["final"] = out["depth"]["final"] * float("nan")
        return out


def test_nan_loss_stops_naming_task_and_step_and_keeps_last_checkpoint(tmp_path):
    cfg = _config(tmp_path, "nan", checkpoint_interval=2)
    with pytest.raises(NonFiniteLoss, match=r"loss of task 'depth' is nan at step 5"):
        run_training(NaNDepthNet, cfg, plain=True, progress=_quiet)
    last = load_checkpoint(tmp_path / "nan" / "step_00000004")
    assert all(torch.isfinite(v).all() for v in last.model_state.values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "step_00000006").exists()
    # the architecture parameter was trained by its own Adam (lr 5e-4), not by SGD
    assert "arch" in last.meta["optimizer"]
    assert last.model_state["alpha"].tolist() == pytest.approx([4 * 5e-4] * 2, rel=0.05)
    assert all(len(g["params"]) for g in last.meta["optimizer"]["main"]["param_groups"])


class PooledNet(TinyNet):
    """TinyNet whose BatchNorm sees a 1x1 map (a stride-32 level of a 32x32 input)."""

    def __init__(self, profile, input_size):
        super().__init__(profile, input_size)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 32, 32), nn.BatchNorm2d(8), nn.ReLU())


def test_one_image_per_worker_on_a_1x1_batchnorm_is_one_error_naming_the_key(tmp_path):
    """PyTorch's 'Expected more than 1 value per channel when training' escaped as a traceback
    (`mtl-dsl train SPEC --plain --input 8x8 --set training.batch_size=1`)."""
    cfg = _config(tmp_path, "one", batch_size=1, iterations=2)
    with pytest.raises(TrainingError) as info:
        run_training(PooledNet, cfg, plain=True, progress=_quiet)
    assert str(info.value) == (
        "training.batch_size: a BatchNorm of the model got one value per channel at step 1 "
        "(1 image per worker at 32x32: a map of 1x1), which it cannot normalise in training; use "
        "training.batch_size >= 2 per worker or a larger training.input_size")
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.slow
def test_ray_two_workers_recover_from_a_worker_crash_and_eval_loads_the_checkpoint(tmp_path, capsys):
    """One Ray start: 2 CPU workers (gloo DDP), rank 1 killed after step 5 -> Ray Train restarts the
    group from the last registered checkpoint; then ``mtl-dsl eval`` loads the final checkpoint."""
    cfg = load_config(overrides={
        "model": {"overrides": TINY_BASELINE},
        "dataset": {"length": 16, "val_length": 4},
        "training": {"iterations": 8, "batch_size": 2, "input_size": [32, 32], "augment": False,
                     "log_interval": 2, "eval_interval": 4, "checkpoint_interval": 2, "eval_batches": 1,
                     "fusion_tuning": "always"},  # tuned on the CPU too: rank 0's choice for both
        "run": {"storage": str(tmp_path), "name": "ray", "workers": 2, "max_failures": 1}})
    import ray

    from mtl_dsl.runtime.ray_start import start_ray

    start_ray(cfg, verbose=False, workers=2)  # one Ray instance for both runs below
    try:
        records = []
        result = run_training("baseline_mt", cfg, progress=records.append,
                              callbacks=[CrashAfterStep(5, tmp_path / "crash.marker", rank=1, hard=True)])
        # A NaN seen by rank 0 only reaches rank 1 through the all-reduced losses: both stop at
        # the same step, and Ray's failure handling does not retry the run.
        nan_cfg = cfg.model_copy(update={"run": cfg.run.model_copy(
            update={"name": "nan", "max_failures": 2, "backend": "gloo"})})  # gloo, as chosen
        with pytest.raises(TrainingError, match=r"^loss of task 'depth' is nan at step 3; training stopped"):
            run_training("baseline_mt", nan_cfg, progress=_quiet,
                         callbacks=[PoisonLoss("depth", step=3, rank=0)])
        assert read_meta(tmp_path / "nan" / "step_00000002")["step"] == 2  # the last good one
        # NCCL needs GPUs: refused, naming the key, before any worker starts
        nccl = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": "nccl", "backend": "nccl"})})
        with pytest.raises(UsageError, match=r"run.backend is nccl, but the workers get no GPU"):
            run_training("baseline_mt", nccl, progress=_quiet)
        assert not (tmp_path / "nccl").exists() or not any((tmp_path / "nccl").glob("step_*"))
    finally:
        ray.shutdown()
    assert (tmp_path / "crash.marker").exists()
    # Ray Train registers a checkpoint when its controller has processed the report, which may lag
    # the crash by a poll interval: the restart continues from step 4 or from step 2.
    notes = [r["text"] for r in records if r.get("kind") == "note"]
    tuned = [n for n in notes if n.startswith("fusion tuned on this device: ")]
    assert len(tuned) == 2, notes  # before the first step, and again after the restart
    notes = [n for n in notes if n not in tuned]
    assert notes in (["resumed from step 4"], ["resumed from step 2"]), notes
    cores = os.cpu_count() or 1
    assert {r["threads"] for r in records if r.get("kind") == "start"} == {max(1, cores // 2)}
    assert result.step == 8 and result.checkpoint is not None
    assert result.checkpoint.parent == tmp_path / "ray"
    meta = read_meta(result.checkpoint)
    assert meta["step"] == 8 and meta["data_state"]["world_size"] == 2
    assert {r["step"] for r in result.history} == {2, 4, 6, 8} and result.history[-1]["step"] == 8
    assert "semseg/mIoU" in result.metrics

    from mtl_dsl.cli import main

    capsys.readouterr()
    assert main(["eval", "baseline_mt", "--checkpoint", str(result.checkpoint), "--max-batches", "1"]) == 0
    table = capsys.readouterr().out
    assert "semseg/mIoU" in table and "depth/rmse" in table and "delta_m: not computed" in table
    # a checkpoint of another graph is refused with the differing keys
    assert main(["eval", "baseline_mt", "--checkpoint", str(result.checkpoint), "--set", "dim=8"]) == 2
    assert "does not match the spec's graph" in capsys.readouterr().err


def test_predict_writes_one_png_per_task_per_image(tmp_path):
    from PIL import Image

    from mtl_dsl.runtime.evaluate import run_predict

    result = run_training(TinyNet, _config(tmp_path, "predict", iterations=2, checkpoint_interval=2),
                          plain=True, progress=_quiet)
    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "a.jpg")
    Image.new("RGB", (20, 20), (0, 200, 30)).save(tmp_path / "b.png")
    written = run_predict(TinyNet, result.run_dir, [tmp_path / "a.jpg", tmp_path / "b.png"], tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(
        f"{s}_{t}.png" for s in ("a", "b") for t in ("semseg", "depth", "normals", "edge"))
    with Image.open(tmp_path / "out" / "a_normals.png") as img:
        assert img.size == (40, 30) and img.mode == "RGB"
    with Image.open(tmp_path / "out" / "b_depth.png") as img:
        assert img.size == (20, 20) and img.mode == "L"
    with pytest.raises(UsageError, match="cannot read image"):
        (tmp_path / "bad.png").write_bytes(b"not a png")
        run_predict(TinyNet, result.run_dir, [tmp_path / "bad.png"], tmp_path / "out")


def test_a_short_run_validates_a_short_set_by_default(tmp_path):
    cfg = load_config(overrides={
        "tasks": "semseg,depth", "dataset": {"length": 12, "cache": True},
        "training": {"iterations": 3, "batch_size": 4, "input_size": [32, 32], "augment": False,
                     "eval_interval": 0, "checkpoint_interval": 0, "log_interval": 3},
        "run": {"storage": str(tmp_path), "name": "short"}})
    assert cfg.dataset.val_length is None and cfg.training.eval_batches is None
    result = run_training(TinyNet, cfg, plain=True, progress=_quiet)
    assert [e["images"] for e in result.evaluations] == [4]  # one batch, not the 200-image split
    longer = cfg.model_copy(update={"training": cfg.training.model_copy(update={"iterations": 100})})
    assert longer.synthetic_val_length() == 40 and longer.validation_images() == 40
    assert longer.model_copy(update={"training": cfg.training.model_copy(
        update={"iterations": 40000})}).synthetic_val_length() == 200


def test_the_keys_a_user_turns_most_are_documented():
    from mtl_dsl.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    for key in ("dataset.val_length", "training.eval_batches", "training.iterations",
                "training.batch_size", "dataset.skip_bad_samples", "optimizer.lr"):
        assert key in text, key
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "dataset.val_length" in readme and "training.eval_batches" in readme


def test_tpanet_trains_on_the_built_in_scenes_for_the_pascal_profile(tmp_path):
    cfg = load_config(overrides={
        "tasks": "pascal", "model": {"overrides": {"backbone": "resnet18", "dim": 12}},
        "dataset": {"length": 2, "val_length": 1},
        "training": {"iterations": 1, "batch_size": 2, "input_size": [32, 32], "augment": False,
                     "eval_interval": 0, "checkpoint_interval": 0},
        "run": {"storage": str(tmp_path), "name": "pascal", "threads_per_worker": 1}})
    result = run_training("tpanet", cfg, plain=True, progress=_quiet)
    assert result.step == 1 and set(result.history[-1]["losses"]) == {
        "semseg", "human_parts", "sal", "normals", "edge"}
    assert read_meta(result.checkpoint)["profile"]["tasks"][1] == {
        "name": "human_parts", "channels": 7, "aux_channels": 7}


def test_predict_scales_16_bit_and_palette_images_to_8_bits(tmp_path):
    import numpy as np
    from PIL import Image

    from mtl_dsl.runtime.evaluate import load_image

    ramp = (np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)  # 0 .. 57,300
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode == "I;16"
    eight = np.rint(ramp * (255 / 65535)).astype(np.uint8)
    Image.fromarray(np.repeat(eight[..., None], 3, axis=2)).save(tmp_path / "eight.png")
    deep, size = load_image(tmp_path / "deep.png", (12, 16))
    assert size == (16, 12) and torch.equal(deep, load_image(tmp_path / "eight.png", (12, 16))[0])
    assert float(deep.std()) > 0.5  # not saturated to white
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.array([[[10, 20, 30], [200, 100, 50]], [[0, 255, 0], [200, 100, 50]]],
                             dtype=np.uint8)).save(tmp_path / "rgb.png")
    assert torch.equal(load_image(tmp_path / "palette.png", (2, 2))[0],
                       load_image(tmp_path / "rgb.png", (2, 2))[0])
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UsageError, match=r"cannot use image .*float.tif: floating-point image \(mode F\)"):
        load_image(tmp_path / "float.tif", (4, 4))
    bomb = tmp_path / "bomb.png"  # a header claiming 40,000 x 40,000 pixels: refused, not decoded
    Image.new("1", (1, 1)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = (40_000).to_bytes(4, "big") * 2  # IHDR width and height, then its CRC
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    bomb.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=rf"^{re.escape(str(bomb))}: error: cannot use image .*decompression bomb"):
        load_image(bomb, (4, 4))
