"""Runs whose storage fails them: a full disk outside the checkpoints (metrics.jsonl), a run folder
that cannot be written (read-only, a file in the way), pruning beside a corrupt checkpoint, Ray
Train's own record of a run folder disagreeing with its checkpoints, Ctrl-C while a checkpoint is
replaced, object storage that does not answer. Each ends with one line and
keeps every usable checkpoint."""
from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
from pathlib import Path

import pytest

from mtl_dsl.errors import UsageError
from mtl_dsl.runtime import checkpoints, run_log, runlock
from mtl_dsl.runtime.checkpoints import checkpoint_problem, newest_usable, prune_checkpoints
from mtl_dsl.runtime.failures import CheckpointWriteError
from mtl_dsl.runtime.launch import run_training
from mtl_dsl.runtime.ray_snapshot import SNAPSHOT_FILE, reconcile_snapshot, snapshot_problem
from mtl_dsl.runtime.storage import open_location
from test_train import TinyNet, _config, _quiet

TINY = ["--tasks", "semseg,depth", "--input", "32x32", "--set", "backbone=resnet18", "--set", "dim=8",
        "--set", "levels=[1, 2]", "--set", "dataset.length=4", "--set", "dataset.val_length=2",
        "--set", "training.batch_size=2", "--set", "training.eval_interval=0",
        "--set", "training.log_interval=1", "--set", "run.threads_per_worker=1"]


def _cli(*argv: str) -> tuple[int, str, str]:
    from mtl_dsl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _train(storage: Path, name: str, *extra: str) -> tuple[int, str, str]:
    return _cli("train", "baseline_mt", "--plain", *TINY, "--iterations", "2",
                "--storage", str(storage), "--run-name", name, *extra)


def _one_line(err: str) -> str:
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    return line


# --- a full disk where no checkpoint is written -------------------------------------------------------

def test_a_full_disk_met_by_metrics_jsonl_is_one_line_and_exit_1(tmp_path, monkeypatch):
    """The driver appends a line to metrics.jsonl at every log interval: a full disk there ended
    the run with an OSError traceback."""

    def full(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(run_log, "open", full, raising=False)
    code, _, err = _train(tmp_path, "full")
    assert code == 1
    assert _one_line(err) == f"error: no space left on device while writing {tmp_path / 'full' / 'metrics.jsonl'}"


# --- a run folder that cannot be written -------------------------------------------------------------

def test_storage_that_is_a_file_is_one_error_naming_the_folder(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    code, _, err = _train(tmp_path / "afile", "x")
    assert code == 2
    line = _one_line(err)
    assert line.startswith(f"{tmp_path / 'afile' / 'x'}: error: run folder {tmp_path / 'afile' / 'x'} "
                           f"cannot be written (")
    assert line.endswith("choose another --storage")


def test_read_only_storage_is_one_error_and_a_read_only_checkpoint_folder_one_line(tmp_path, monkeypatch):
    """A read-only filesystem (EROFS: root cannot write there either) as the run folder: the lock
    file cannot be created; the run is refused naming the folder, before any step."""
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path / "ro")) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    (tmp_path / "ro" / "r").mkdir(parents=True)
    monkeypatch.setattr(runlock.os, "open", read_only)
    code, out, err = _train(tmp_path / "ro", "r")
    monkeypatch.setattr(runlock.os, "open", real_open)
    assert code == 2 and "step" not in out
    assert f"run folder {tmp_path / 'ro' / 'r'} cannot be written (Read-only file system: " in _one_line(err)

    def refused(tensors, filename, metadata=None):
        raise OSError(errno.EROFS, "Read-only file system", filename)

    monkeypatch.setattr(checkpoints, "save_file", refused)
    with pytest.raises(CheckpointWriteError) as info:
        checkpoints.save_checkpoint(tmp_path / "ck" / "step_1", {}, {}, {"step": 1})
    assert str(info.value) == f"cannot write checkpoint {tmp_path / 'ck' / 'step_1'}: Read-only file system"
    assert not list((tmp_path / "ck").iterdir())  # no temporary folder left


# --- pruning beside a corrupt checkpoint ---------------------------------------------------------------

def _torn(folder: Path) -> None:
    model = folder / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def test_pruning_never_keeps_a_corrupt_checkpoint_in_place_of_a_usable_one(tmp_path):
    """A corrupt newest checkpoint counted as one of the ``keep`` newest: with keep=1, writing a
    new checkpoint deleted it and every usable one, leaving only the corrupt one."""
    run_training(TinyNet, _config(tmp_path, "p", iterations=6, checkpoint_interval=2), plain=True,
                 progress=_quiet)
    run = tmp_path / "p"
    _torn(run / "step_00000006")
    prune_checkpoints(run, keep=1)
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000004", "step_00000006"]
    assert newest_usable(run)[0] == run / "step_00000004"
    # a resumed run with a coarser interval writes step 5 below the corrupt step 6, and keeps it
    cfg = _config(tmp_path, "p", iterations=5, checkpoint_interval=5)
    cfg.run.keep_checkpoints = 1
    result = run_training(TinyNet, cfg, plain=True, resume=True, progress=_quiet)
    assert result.step == 5
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000005", "step_00000006"]
    assert checkpoint_problem(run / "step_00000005") is None
    assert newest_usable(run)[0] == run / "step_00000005"
    _torn(run / "step_00000005")  # nothing usable left: corrupt checkpoints alone are never deleted
    prune_checkpoints(run, keep=1)
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000005", "step_00000006"]


# --- Ray Train's record of the run folder ---------------------------------------------------------------

def _snapshot(names: list[str], latest: str) -> str:
    """A checkpoint manager snapshot as Ray Train writes it (its own model)."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState, _TrainingResultState)

    results = [_TrainingResultState(checkpoint_dir_name=n, metrics={"step": i}) for i, n in enumerate(names)]
    state = _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=list(range(len(names))),
        latest_checkpoint_result=next(r for r in results if r.checkpoint_dir_name == latest),
        pending_training_results=[], pending_validation_specs=[], current_report_index=len(names),
        validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[])
    return state.model_dump_json() if hasattr(state, "model_dump_json") else state.json()


def test_ray_trains_record_that_disagrees_with_the_checkpoints_is_set_aside(tmp_path):
    """Ray Train restores a run folder from its snapshot: one that lists a checkpoint pruned by a
    --plain resume stopped the resumed Ray run ("a corrupted run directory"), and one whose latest
    checkpoint is older than the newest usable one restarted the workers from that older one."""
    run_training(TinyNet, _config(tmp_path, "r", iterations=6, checkpoint_interval=2), plain=True,
                 progress=_quiet)
    run = tmp_path / "r"
    where = open_location(run)
    snapshot = run / SNAPSHOT_FILE
    newest = run / "step_00000006"
    snapshot.write_text(_snapshot(["step_00000004", "step_00000006"], "step_00000006"))
    assert snapshot_problem(where, newest) is None  # agrees: left to Ray Train
    reconcile_snapshot(where, newest, _quiet)
    assert snapshot.is_file()
    cases = {
        "gone": (_snapshot(["step_00000001", "step_00000006"], "step_00000006"),
                 "it lists checkpoint step_00000001, which is no longer there"),
        "older": (_snapshot(["step_00000002", "step_00000004"], "step_00000004"),
                  "its latest checkpoint is step_00000004, the newest usable one is step_00000006"),
        "torn": ('{"ray_version": "2.', "it cannot be read (torn)"),
        "other ray": (json.dumps(dict(json.loads(_snapshot(["step_00000006"], "step_00000006")),
                                      ray_version="1.0.0")), "it was written by Ray 1.0.0"),
    }
    for text, reason in cases.values():
        snapshot.write_text(text)
        notes = []
        reconcile_snapshot(where, newest, notes.append)
        assert not snapshot.exists() and (run / f".{SNAPSHOT_FILE}.stale").read_text() == text
        assert notes[0]["text"].startswith(f"set aside Ray Train's record of the run ({reason}")
        assert notes[0]["text"].endswith(f"as {run / ('.' + SNAPSHOT_FILE + '.stale')}; resuming from {newest}")
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000002", "step_00000004", "step_00000006"]


# --- Ctrl-C while a checkpoint replaces one of the same step ------------------------------------------

def test_ctrl_c_between_the_renames_of_a_replaced_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    """A checkpoint written over one of the same step (a resume past a corrupt one) moves the old
    one aside, then renames the new one into place: Ctrl-C between the two left the step only
    under a hidden name that every reader ignores."""
    import torch

    target = tmp_path / "step_00000002"
    checkpoints.save_checkpoint(target, {"w": torch.ones(2)}, {}, {"step": 2})
    real, calls = os.rename, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old one moved aside, the new one not yet in place
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(checkpoints.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(target, {"w": torch.zeros(2)}, {}, {"step": 2})
    monkeypatch.setattr(checkpoints.os, "rename", real)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000002"]
    assert torch.equal(checkpoints.load_checkpoint(target).model_state["w"], torch.ones(2))


# --- object storage that does not answer ----------------------------------------------------------------

def test_an_unreachable_object_store_is_one_error_for_eval_not_a_traceback(monkeypatch):
    """``eval --checkpoint s3://...`` with the store down ended in pyarrow's OSError traceback;
    a store that does not answer is also never taken for a corrupt checkpoint to skip."""
    import socket

    from mtl_dsl.runtime.checkpoints import resolve_checkpoint
    from mtl_dsl.runtime.storage import StorageUnreachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"),
                       ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(StorageUnreachable, match=r"^s3://bucket/runs/u/meta\.json: error: cannot reach "
                                                 r"storage s3://bucket/runs/u/meta\.json: .*NETWORK_CONNECTION"):
        resolve_checkpoint(open_location("s3://bucket/runs/u", endpoint))
    code, out, err = _cli("eval", "baseline_mt", "--checkpoint", "s3://bucket/runs/u",
                          "--storage-endpoint", endpoint)
    assert code == 2 and out == ""
    assert _one_line(err).startswith("s3://bucket/runs/u/meta.json: error: cannot reach storage ")


# --- SIGTERM on the Ray path ------------------------------------------------------------------------

def test_sigterm_stops_a_ray_run_as_ctrl_c_does_and_the_command_line_says_terminated(monkeypatch, tmp_path):
    """SIGTERM (a scheduler ending the job) to a Ray run's driver met Ray's own handler: a C stack
    dump on stderr and exit 15, Ray's shutdown skipped. The run's fit now ends as on Ctrl-C."""
    import signal
    import time

    from mtl_dsl.runtime import launch
    from mtl_dsl.runtime.failures import Terminated, sigterm_stops_the_run

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_stops_the_run():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises here, at once
    assert signal.getsignal(signal.SIGTERM) == before

    def terminated(*args, **kwargs):
        raise Terminated()

    monkeypatch.setattr(launch, "run_training", terminated)
    code, _, err = _train(tmp_path, "t")
    assert code == 143 and err == "terminated\n"


# --- --init with a file of other tensors --------------------------------------------------------------

def test_init_from_a_file_of_other_tensors_names_it_without_a_made_up_position(tmp_path):
    """--init with a safetensors file whose tensors are not the model's (a checkpoint folder's
    optimizer file): the error pointed at line 1, column 1 of a binary file."""
    assert _train(tmp_path, "src")[0] == 0
    other = tmp_path / "src" / "step_00000002" / "optimizer.safetensors"
    code, _, err = _train(tmp_path, "dst", "--init", str(other))
    assert code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"{other}: error: cannot load optimizer.safetensors into 'baseline_mt'"), first
    assert ":1:1" not in err
