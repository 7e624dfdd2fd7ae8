"""Runs that meet trouble: resuming after an edit, concurrent runs, a full disk, unreadable data,
corrupt checkpoints, changed settings on resume, Ctrl-C. Each ends with one clear message."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl_dsl.errors import UsageError
from mtl_dsl.runtime.callbacks import CrashAfterStep, SimulatedCrash
from mtl_dsl.runtime.checkpoints import load_checkpoint, read_meta
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.failures import BadSample
from mtl_dsl.runtime.launch import run_training
from mtl_dsl.runtime.runlock import FileLock
from test_train import TinyNet, _config, _quiet

LIB = """\
# blocks shared by main.mtl
block feats(backbone: str) {
  f = backbone(backbone, levels = [1, 2])
  return upsample_concat(f)
}
"""
MAIN = """\
import "lib.mtl"

model tiny(backbone = "resnet18", dim = 8) {
  x = feats(backbone)
  for t in tasks {
    out[t] = dense_head(x, task = t, width = dim)
  }
}
"""


def _spec_config(tmp_path: Path, iterations: int, **model):
    return load_config(overrides={
        "tasks": "semseg,depth", "model": {"overrides": model},
        "dataset": {"length": 8, "val_length": 2, "cache": True},
        "training": {"iterations": iterations, "batch_size": 2, "input_size": [32, 32],
                     "augment": False, "eval_interval": 0, "checkpoint_interval": 2,
                     "log_interval": 2},
        "run": {"storage": str(tmp_path / "runs"), "name": "edit", "threads_per_worker": 1}})


def _cli(*argv: str) -> tuple[int, str, str]:
    from mtl_dsl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# --- resume after editing the spec (graph hash) -------------------------------------------------

def test_resume_accepts_a_comment_and_a_moved_spec_folder_but_not_a_changed_graph(tmp_path):
    first = tmp_path / "a"
    first.mkdir()
    (first / "lib.mtl").write_text(LIB)
    (first / "main.mtl").write_text(MAIN)
    run_training(str(first / "main.mtl"), _spec_config(tmp_path, 2), plain=True, progress=_quiet)
    moved = tmp_path / "b" / "moved"
    shutil.move(str(first), str(moved))  # absolute import paths change with the folder
    (moved / "main.mtl").write_text("# a comment moves every source location down a line\n" + MAIN)
    notes = []
    result = run_training(str(moved / "main.mtl"), _spec_config(tmp_path, 4), plain=True,
                          resume=True, progress=notes.append)
    assert result.step == 4 and {"kind": "note", "text": "resumed from step 2"} in notes
    with pytest.raises(UsageError) as info:
        run_training(str(moved / "main.mtl"), _spec_config(tmp_path, 6, dim=4), plain=True,
                     resume=True, progress=_quiet)
    message = str(info.value)
    assert "cannot resume: the model's graph changed since step 4" in message
    assert "changed nodes out.semseg, out.depth" in message and "x.f" not in message


# --- one run per folder (lock) --------------------------------------------------------------------

def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(tmp_path):
    cfg = _config(tmp_path, "busy", iterations=2, checkpoint_interval=2)
    holder = FileLock(tmp_path / "busy")
    holder.acquire()
    try:
        with pytest.raises(UsageError, match=rf"is in use by another run \(PID {os.getpid()} on "):
            run_training(TinyNet, cfg, plain=True, progress=_quiet)
    finally:
        holder.release()
    with pytest.raises(SimulatedCrash):  # released on any exit, an exception included
        run_training(TinyNet, cfg, plain=True, progress=_quiet,
                     callbacks=[CrashAfterStep(1, tmp_path / "crash.marker")])
    FileLock(tmp_path / "busy").acquire()


def test_a_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = ("import sys, time; from mtl_dsl.runtime.runlock import FileLock; "
            "FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"in use by another run \(PID {child.pid} "):
            FileLock(tmp_path / "run").acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    notes = []  # the OS dropped the dead process's lock; the new run takes the folder over
    run_training(TinyNet, _config(tmp_path, "run", iterations=1, checkpoint_interval=1), plain=True,
                 progress=notes.append)
    assert notes[0]["kind"] == "note"
    assert notes[0]["text"].startswith(f"took over run folder {tmp_path / 'run'} from a run that is "
                                       f"no longer running (PID {child.pid} on {socket.gethostname()}, since ")


# --- a full disk ------------------------------------------------------------------------------------

def test_disk_full_while_checkpointing_says_so_in_one_line_and_exits_1(tmp_path, monkeypatch):
    from mtl_dsl.runtime import checkpoints

    real, calls = checkpoints.save_file, []

    def full_on_the_second_checkpoint(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 2:  # model + optimizer files of the first checkpoint, then a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoints, "save_file", full_on_the_second_checkpoint)
    code, _, err = _cli("train", "baseline_mt", "--plain", "--tasks", "semseg,depth", "--input", "32x32",
                        "--set", "backbone=resnet18", "--set", "dim=8", "--set", "levels=[1, 2]",
                        "--set", "dataset.length=4", "--set", "dataset.val_length=2",
                        "--set", "training.batch_size=2", "--set", "training.checkpoint_interval=1",
                        "--set", "training.eval_interval=0", "--iterations", "3",
                        "--storage", str(tmp_path), "--run-name", "full")
    assert code == 1
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"error: no space left on device while writing {tmp_path / 'full' / 'step_00000002'} (")
    assert line.endswith(" MB needed)")
    assert read_meta(tmp_path / "full" / "step_00000001")["step"] == 1  # the previous one is intact
    assert sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith("step")) == ["step_00000001"]


def test_a_full_disk_met_by_ray_trains_copy_is_the_same_one_line(tmp_path):
    """On the Ray path, Ray Train (pyarrow) copies a checkpoint into the run folder; a full disk
    there failed the run with pyarrow's words and left a torn step folder."""
    from mtl_dsl.runtime.disk_full import disk_full_error
    from mtl_dsl.runtime.session import disk_full

    result = run_training(TinyNet, _config(tmp_path, "ray-full", iterations=2, checkpoint_interval=2),
                          plain=True, progress=_quiet)
    whole = result.run_dir / "step_00000002"
    torn = result.run_dir / "step_00000004"
    torn.mkdir()
    shutil.copy(whole / "optimizer.safetensors", torn / "optimizer.safetensors")
    (torn / "model.safetensors").write_bytes(b"")
    (torn / "meta.json").write_bytes(b"")
    pyarrow = OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert disk_full(pyarrow) and disk_full(RuntimeError(f"worker failed: {pyarrow}"))
    assert disk_full(OSError(errno.ENOSPC, "x")) and not disk_full(OSError(errno.EACCES, "denied"))
    size = sum(f.stat().st_size for f in whole.iterdir())
    error = disk_full_error(result.run_dir, RuntimeError(f"Training failed: {pyarrow}"))
    assert str(error) == (f"no space left on device while writing {torn} "
                          f"({-(-size // 2**20)} MB needed)")
    assert not torn.exists() and whole.exists()
    assert disk_full_error(result.run_dir, RuntimeError("worker died")) is None


# --- unreadable data ----------------------------------------------------------------------------------

def _nyud_config(tmp_path: Path, name: str, **dataset):
    return load_config(overrides={
        "dataset": {"name": "nyud", "root": str(tmp_path / "data"), **dataset},
        "training": {"iterations": 4, "batch_size": 1, "input_size": [32, 32], "augment": False,
                     "eval_interval": 0, "checkpoint_interval": 0, "log_interval": 2},
        "run": {"storage": str(tmp_path / "runs"), "name": name}})


def test_an_unreadable_image_is_named_before_the_first_step(tmp_path):
    from test_datasets import make_nyud

    base = make_nyud(tmp_path / "data")
    (base / "images" / "0002.jpg").write_bytes(b"not a jpeg at all")
    records = []
    with pytest.raises(UsageError) as info:
        run_training(TinyNet, _nyud_config(tmp_path, "bad"), plain=True, progress=records.append)
    message = str(info.value)
    assert message.startswith(f"{base / 'images' / '0002.jpg'}: error: unreadable file in the train split")
    assert "dataset.skip_bad_samples=true" in message and "\n" not in message
    assert not any(r.get("kind") == "start" for r in records)


def _truncate_after_header(path: Path) -> None:
    """Cut a PNG inside its pixel data: the header reads, the pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"IDAT") + 12])


def test_a_sample_that_fails_mid_run_is_named_or_skipped_and_counted(tmp_path):
    from test_datasets import make_nyud

    base = make_nyud(tmp_path / "data")
    _truncate_after_header(base / "segmentation" / "0002.png")
    with pytest.raises(BadSample) as info:
        run_training(TinyNet, _nyud_config(tmp_path, "midrun"), plain=True, progress=_quiet)
    message = str(info.value)
    assert message.startswith(f"cannot read label image {base / 'segmentation' / '0002.png'}: ")
    assert "\n" not in message and message.endswith("(set dataset.skip_bad_samples=true to skip such samples)")
    notes = []
    result = run_training(TinyNet, _nyud_config(tmp_path, "skip", skip_bad_samples=True), plain=True,
                          progress=notes.append)
    assert result.step == 4
    texts = [r["text"] for r in notes if r.get("kind") == "note"]
    assert sum(t.startswith("skipped an unreadable sample: cannot read label image") for t in texts) == 2
    assert "skipped 2 unreadable sample(s) in all (dataset.skip_bad_samples)" in texts


# --- corrupt checkpoints ------------------------------------------------------------------------------

def test_a_corrupt_latest_checkpoint_is_skipped_and_said_by_eval_and_resume(tmp_path):
    from mtl_dsl.runtime.evaluate import run_eval

    cfg = _config(tmp_path, "corrupt", iterations=4, checkpoint_interval=2)
    run_training(TinyNet, cfg, plain=True, progress=_quiet)
    latest = tmp_path / "corrupt" / "step_00000004"
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[:len(data) // 2])  # a torn write
    _, text = run_eval(TinyNet, tmp_path / "corrupt", max_batches=1)
    lines = text.splitlines()
    assert lines[0].startswith(f"skipped checkpoint {latest} (cannot be loaded: corrupt checkpoint file")
    assert lines[1].startswith(f"evaluated the checkpoint of step 2 ({tmp_path / 'corrupt' / 'step_00000002'}) on ")
    notes = []
    longer = _config(tmp_path, "corrupt", iterations=6, checkpoint_interval=2)
    result = run_training(TinyNet, longer, plain=True, resume=True, progress=notes.append)
    texts = [r["text"] for r in notes if r.get("kind") == "note"]
    assert texts[0].startswith(f"skipped checkpoint {latest} (cannot be loaded:")
    assert "resumed from step 2" in texts and result.step == 6


def test_eval_of_a_run_folder_says_which_step_it_evaluated(tmp_path):
    result = run_training(TinyNet, _config(tmp_path, "which", iterations=4, checkpoint_interval=2),
                          plain=True, progress=_quiet)
    from mtl_dsl.runtime.evaluate import run_eval

    _, text = run_eval(TinyNet, result.run_dir, max_batches=1)
    assert text.splitlines()[0] == (f"evaluated the checkpoint of step 4 ({result.run_dir / 'step_00000004'}) "
                                    f"on 4 synthetic val images")
    notes = []  # resuming a finished run trains nothing, and says why
    again = run_training(TinyNet, _config(tmp_path, "which", iterations=4, checkpoint_interval=2),
                         plain=True, resume=True, progress=notes.append)
    assert again.step == 4 and {"kind": "note", "text": "nothing to train: the checkpoint is at step 4, "
                                "training.iterations is 4 (raise --iterations to continue)"} in notes


# --- changed settings on resume ---------------------------------------------------------------------

def test_a_changed_learning_rate_on_resume_is_applied_and_reported(tmp_path):
    run_training(TinyNet, _config(tmp_path, "lr", iterations=4), plain=True, progress=_quiet)
    cfg = _config(tmp_path, "lr", iterations=6)
    cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"lr": 0.5})})
    records = []
    result = run_training(TinyNet, cfg, plain=True, resume=True, progress=records.append)
    notes = [r["text"] for r in records if r.get("kind") == "note"]
    assert ("run config changed since step 4, applied from here on: optimizer.lr 0.01 -> 0.5; "
            "training.iterations 4 -> 6") in notes
    from mtl_dsl.runtime.optim import learning_rate

    last = [r for r in records if r.get("kind") == "log"][-1]
    assert last["step"] == 6 and last["lr"] == pytest.approx(learning_rate(5, cfg))
    saved = load_checkpoint(result.checkpoint)
    assert saved.meta["run_config"]["optimizer"]["lr"] == 0.5
    assert {g["initial_lr"] for g in saved.meta["optimizer"]["main"]["param_groups"]} == {0.5}


def test_a_changed_seed_or_batch_on_resume_is_refused_naming_the_keys(tmp_path):
    run_training(TinyNet, _config(tmp_path, "fixed", iterations=3), plain=True, progress=_quiet)
    cfg = _config(tmp_path, "fixed", iterations=6, seed=1, batch_size=2)
    with pytest.raises(UsageError) as info:
        run_training(TinyNet, cfg, plain=True, resume=True, progress=_quiet)
    message = str(info.value)
    assert "cannot resume with a changed training.batch_size (4 -> 2), training.seed (0 -> 1)" in message
    assert "\n" not in message


# --- Ctrl-C on the Ray path -------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_on_the_ray_path_says_interrupted_and_exits_130(tmp_path):
    argv = [sys.executable, "-m", "mtl_dsl.cli", "train", "baseline_mt", "--tasks", "semseg,depth",
            "--input", "32x32", "--set", "backbone=resnet18", "--set", "dim=8",
            "--set", "levels=[1, 2]", "--set", "dataset.length=8", "--set", "training.batch_size=2",
            "--set", "training.log_interval=1", "--iterations", "100000",
            "--storage", str(tmp_path), "--run-name", "sigint"]
    # A shell starts a background job with SIGINT ignored, and Python then installs no Ctrl-C
    # handler; a terminal's Ctrl-C never meets that, so the child gets the default disposition.
    # Its own session, so that whatever is left (Ray's processes) is killed with the group.
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in child.stdout:  # wait until the workers train
            if line.startswith("step "):
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    FileLock(tmp_path / "sigint").acquire()  # the run folder was released
