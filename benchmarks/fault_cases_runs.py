"""Fault campaign cases: a run meeting trouble (kill -9 and resume on both paths, signals,
corrupt checkpoints, a full disk, concurrent runs, NaN). Registered with ``@case``; run by
``fault_campaign.py``."""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import time

from fault_harness import (LEFT_BEHIND, STEPS, Context, Verdict, case, judge_error, judge_ok,
                           plain_train, reap, same_state, step_dir)


# --- kill -9 and resume, both paths -----------------------------------------------------------------

def _kill_then_resume(ctx: Context, v: Verdict, name: str, plain: bool, resume_plain: bool,
                      after: str, group_kill: bool = True) -> None:
    run = ctx.start(*ctx.train_argv(name, plain=plain))
    reached = run.wait_for(after)
    run.kill9(group=group_kill)
    killed = run.finish()
    v.need(reached, f"never reached {after!r}: {killed.err_lines()[-1:]}")
    v.need(killed.rc == -signal.SIGKILL, f"exit {killed.rc} after kill -9")
    left = reap(ctx.token)
    v.need(left == 0, f"{left} processes outlived the killed run by 20 s: {LEFT_BEHIND[-left:]}")
    done = ctx.train(name, STEPS, "--resume", plain=resume_plain)
    judge_ok(v, done, "resumed from step")
    ok, text = same_state(step_dir(ctx.runs / name, STEPS), step_dir(ctx.reference(), STEPS))
    v.need(ok, text)
    v.fact(f"killed after {after!r}; resumed to step {STEPS}: {text}")


@case("kill -9", "kill9-plain-after-checkpoint",
      "resume continues from step 2; final weights and optimiser bit-identical")
def _(ctx, v):
    _kill_then_resume(ctx, v, "k1", True, True, r"^checkpoint @ step 2")


@case("kill -9", "kill9-plain-mid-epoch",
      "resume from the last checkpoint (step 4) mid-epoch; bit-identical")
def _(ctx, v):
    _kill_then_resume(ctx, v, "k2", True, True, r"^step +5/")


@case("kill -9", "kill9-plain-twice",
      "killed twice, resumed twice; bit-identical")
def _(ctx, v):
    run = ctx.start(*ctx.train_argv("k3"))
    run.wait_for(r"^checkpoint @ step 2")
    run.kill9()
    run.finish()
    run = ctx.start(*ctx.train_argv("k3", STEPS, "--resume"))
    v.need(run.wait_for(r"^checkpoint @ step 4"), "the first resume did not reach step 4")
    run.kill9()
    run.finish()
    done = ctx.train("k3", STEPS, "--resume")
    judge_ok(v, done, "resumed from step 4")
    ok, text = same_state(step_dir(ctx.runs / "k3", STEPS), step_dir(ctx.reference(), STEPS))
    v.need(ok, text)
    v.fact(text)


@case("kill -9", "kill9-before-first-checkpoint",
      "--resume says there is nothing to resume (exit 2); a fresh run is bit-identical")
def _(ctx, v):
    run = ctx.start(*ctx.train_argv("k4"))
    v.need(run.wait_for(r"^step +1/"), "never reached step 1")
    run.kill9()
    run.finish()
    judge_error(v, ctx.train("k4", STEPS, "--resume"), 2, "nothing to resume")
    done = ctx.train("k4")
    judge_ok(v, done)
    ok, text = same_state(step_dir(ctx.runs / "k4", STEPS), step_dir(ctx.reference(), STEPS))
    v.need(ok, text)


@case("kill -9", "kill9-then-train-without-resume",
      "a fresh run over the killed run's checkpoints is refused: pass --resume (exit 2)")
def _(ctx, v):
    run = ctx.start(*ctx.train_argv("k5"))
    run.wait_for(r"^checkpoint @ step 2")
    run.kill9()
    run.finish()
    judge_error(v, ctx.train("k5"), 2, "already has checkpoints", "--resume")


@case("kill -9", "kill9-torn-checkpoint-write",
      "a half-written checkpoint (temporary folder, step folder without meta.json) is ignored")
def _(ctx, v):
    run = ctx.copy_of_reference("k6")
    shutil.rmtree(step_dir(run, 6))
    torn = run / f".step_00000006.tmp-999999-0123abcd"  # a writer killed mid-write (dead PID)
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\0" * 100)
    half = step_dir(run, 6)
    half.mkdir()
    shutil.copy(step_dir(run, 4) / "model.safetensors", half / "model.safetensors")
    done = ctx.train("k6", STEPS, "--resume")
    judge_ok(v, done, "resumed from step 4")
    ok, text = same_state(step_dir(run, STEPS), step_dir(ctx.reference(), STEPS))
    v.need(ok, text)
    v.fact(text)


@case("kill -9", "kill9-ray-driver-resume-ray",
      "Ray path: kill -9 of the driver ends its Ray; resume on Ray; bit-identical")
def _(ctx, v):
    _kill_then_resume(ctx, v, "kr1", False, False, r"^checkpoint @ step 2", group_kill=False)


@case("kill -9", "kill9-ray-resume-plain",
      "Ray run killed (whole group), resumed with --plain; bit-identical")
def _(ctx, v):
    _kill_then_resume(ctx, v, "kr2", False, True, r"^checkpoint @ step 4")


@case("kill -9", "kill9-plain-resume-ray",
      "plain run killed, resumed on Ray; bit-identical")
def _(ctx, v):
    _kill_then_resume(ctx, v, "kr3", True, False, r"^checkpoint @ step 2")


# --- signals ------------------------------------------------------------------------------------------

def _interrupt(ctx: Context, v: Verdict, name: str, plain: bool, sig: int, when: str, rc: int) -> None:
    run = ctx.start(*ctx.train_argv(name, 10_000, plain=plain, interval=2))
    v.need(run.wait_for(when), f"never reached {when!r}")
    run.signal(sig)
    done = run.finish(timeout=300)
    v.need(done.rc == rc, f"exit {done.rc}, expected {rc}")
    v.need("Traceback" not in done.err, "a Python traceback")
    if rc == 130:
        v.need(done.err_lines()[-1:] == ["interrupted"], f"last line {done.err_lines()[-1:]}")
    v.need(reap(ctx.token) == 0, "processes outlived the run")
    again = ctx.train(name, 3, "--resume", "--iterations", "3", plain=True)
    judge_ok(v, again)
    v.fact(f"exit {done.rc}; resumed afterwards: exit {again.rc}")


@case("signals", "sigint-plain", "Ctrl-C: 'interrupted', exit 130, lock released (a resume runs)")
def _(ctx, v):
    _interrupt(ctx, v, "s1", True, signal.SIGINT, r"^checkpoint @ step 2", 130)


@case("signals", "sigint-ray", "Ray path Ctrl-C: 'interrupted', exit 130, no Ray process left")
def _(ctx, v):
    _interrupt(ctx, v, "s2", False, signal.SIGINT, r"^checkpoint @ step 2", 130)


@case("signals", "sigterm-plain", "kill (SIGTERM): the run ends (exit 143), lock released")
def _(ctx, v):
    _interrupt(ctx, v, "s3", True, signal.SIGTERM, r"^checkpoint @ step 2", -signal.SIGTERM)


@case("signals", "sigint-during-start", "Ctrl-C before the first step: 'interrupted', exit 130")
def _(ctx, v):
    run = ctx.start(*ctx.train_argv("s4", plain=True))
    time.sleep(2.0)  # imports and checks
    run.signal(signal.SIGINT)
    done = run.finish(timeout=300)
    judge_error(v, done, 130, "interrupted")


# --- corrupt checkpoints ----------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@case("corrupt checkpoints", "truncated-latest-eval",
      "eval RUNFOLDER says it skipped the torn step 6 and evaluated step 4")
def _(ctx, v):
    run = ctx.copy_of_reference("c1")
    _truncate(step_dir(run, 6) / "model.safetensors")
    done = ctx.cli("eval", "baseline_mt", "--checkpoint", str(run), "--max-batches", "1")
    judge_ok(v, done, f"skipped checkpoint {step_dir(run, 6)}", "evaluated the checkpoint of step 4")


@case("corrupt checkpoints", "truncated-latest-resume",
      "resume says it skipped step 6, resumes from step 4 and finishes")
def _(ctx, v):
    run = ctx.copy_of_reference("c2")
    _truncate(step_dir(run, 6) / "model.safetensors")
    done = ctx.train("c2", STEPS, "--resume")
    judge_ok(v, done, f"skipped checkpoint {step_dir(run, 6)}", "resumed from step 4")
    ok, text = same_state(step_dir(run, STEPS), step_dir(ctx.reference(), STEPS))
    v.need(ok, text)


@case("corrupt checkpoints", "garbage-meta-eval",
      "meta.json that is not JSON: skipped and said; step 4 evaluated")
def _(ctx, v):
    run = ctx.copy_of_reference("c3")
    (step_dir(run, 6) / "meta.json").write_text("{not json")
    judge_ok(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(run), "--max-batches", "1"),
             "skipped checkpoint", "evaluated the checkpoint of step 4")


@case("corrupt checkpoints", "missing-optimizer-resume",
      "optimizer file missing in step 6: resume skips it (said) and resumes from step 4")
def _(ctx, v):
    run = ctx.copy_of_reference("c4")
    (step_dir(run, 6) / "optimizer.safetensors").unlink()
    judge_ok(v, ctx.train("c4", STEPS, "--resume"), "skipped checkpoint", "resumed from step 4")


@case("corrupt checkpoints", "all-corrupt-eval",
      "every checkpoint torn: eval is one error naming the run folder (exit 2)")
def _(ctx, v):
    run = ctx.copy_of_reference("c5")
    for folder in run.glob("step_*"):
        _truncate(folder / "model.safetensors")
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(run)), 2, str(run))


@case("corrupt checkpoints", "all-corrupt-resume",
      "every checkpoint torn: resume says there is nothing to resume (exit 2)")
def _(ctx, v):
    run = ctx.copy_of_reference("c6")
    for folder in run.glob("step_*"):
        (folder / "meta.json").write_text("")
    judge_error(v, ctx.train("c6", STEPS, "--resume"), 2, "nothing to resume", lines=8)


@case("corrupt checkpoints", "pickle-instead-of-safetensors",
      "a pickle with a payload in place of model.safetensors: refused, never unpickled")
def _(ctx, v):
    run = ctx.copy_of_reference("c7")
    marker = ctx.work / "pwned"
    payload = (b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    (step_dir(run, 6) / "model.safetensors").write_bytes(payload)
    done = ctx.cli("eval", "baseline_mt", "--checkpoint", str(step_dir(run, 6)))
    judge_error(v, done, 2, "model.safetensors")
    v.need(not marker.exists(), "the pickle was executed")


@case("corrupt checkpoints", "truncated-step-folder-eval",
      "eval of the torn step folder itself: one error naming the file (exit 2)")
def _(ctx, v):
    run = ctx.copy_of_reference("c8")
    _truncate(step_dir(run, 6) / "model.safetensors")
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(step_dir(run, 6))), 2,
                str(step_dir(run, 6) / "model.safetensors"))


@case("corrupt checkpoints", "flipped-header-length",
      "model.safetensors whose header length is garbage: one error, exit 2")
def _(ctx, v):
    run = ctx.copy_of_reference("c9")
    path = step_dir(run, 6) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(data))
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(step_dir(run, 6))), 2, str(path))


# --- disk full -----------------------------------------------------------------------------------------

class SmallDisk:
    """A tmpfs of ``mb`` MB (root only); ``grow`` remounts it bigger."""

    def __init__(self, path: Path, mb: float):
        self.path, self.mb = path, mb

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(self.mb * 1024)}k", "tmpfs",
                        str(self.path)], check=True, capture_output=True)
        return self.path

    def grow(self, mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(self.path)], check=True,
                       capture_output=True)

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def _disk_full(ctx: Context, v: Verdict, name: str, mb: float, plain: bool, first: int) -> None:
    if not v.need(_can_mount(), "not run: a tmpfs needs root"):
        return
    small = SmallDisk(ctx.work / f"disk-{name}", mb)
    with small as disk:
        done = ctx.train(name, STEPS, storage=disk, plain=plain)
        run = disk / name
        judge_error(v, done, 1, f"no space left on device while writing {step_dir(run, first)}",
                    "MB needed)", lines=1)
        kept = sorted(p.name for p in run.glob("step_*")) if run.exists() else []
        v.need(kept == [f"step_{s:08d}" for s in range(2, first, 2)], f"left {kept}")
        v.need(not list(run.glob(".step_*")) if run.exists() else True, "a temporary folder is left")
        v.need(reap(ctx.token) == 0, "processes outlived the run")
        if first > 2:
            small.grow(64)
            again = ctx.train(name, STEPS, "--resume", storage=disk)
            judge_ok(v, again, f"resumed from step {first - 2}")
            ok, text = same_state(step_dir(run, STEPS), step_dir(ctx.reference(), STEPS))
            v.need(ok, text)
            v.fact(f"after more space: {text}")


@case("disk full", "disk-full-second-checkpoint",
      "one line 'no space left on device while writing DIR (N MB needed)', exit 1, step 2 intact; "
      "with space again the resume is bit-identical")
def _(ctx, v):
    _disk_full(ctx, v, "d1", 12, True, 4)


@case("disk full", "disk-full-first-checkpoint", "one line, exit 1, no checkpoint or temporary folder left")
def _(ctx, v):
    _disk_full(ctx, v, "d2", 3, True, 2)


@case("disk full", "disk-full-ray", "Ray path: one line, exit 1, step 2 intact, no Ray process left")
def _(ctx, v):
    _disk_full(ctx, v, "d3", 12, False, 4)


# --- concurrent runs -----------------------------------------------------------------------------------

def _second_run(ctx: Context, v: Verdict, name: str, wait: str, *extra: str) -> None:
    """A second run on the folder of a run in progress: refused naming its PID; the first goes on
    (until its Ctrl-C)."""
    first = ctx.start(*ctx.train_argv(name, 100_000))
    v.need(first.wait_for(wait), "the first run did not start")
    judge_error(v, ctx.train(name, 100_000, *extra), 2, f"PID {first.proc.pid}")
    v.need(first.proc.poll() is None, "the first run stopped")
    first.signal(signal.SIGINT)
    v.need(first.finish(timeout=300).rc == 130, "the first run did not end on Ctrl-C")


@case("concurrent runs", "same-name-at-once",
      "the second run is refused naming the first's PID (exit 2); the first goes on")
def _(ctx, v):
    _second_run(ctx, v, "r1", r"^step +1/")


@case("concurrent runs", "resume-while-running",
      "--resume of a run that is still training is refused naming its PID (exit 2)")
def _(ctx, v):
    _second_run(ctx, v, "r2", r"^checkpoint @ step +2", "--resume")


@case("concurrent runs", "stale-lock-taken-over",
      "the lock of a kill -9'd run is taken over, said in a note; the resume finishes")
def _(ctx, v):
    first = ctx.start(*ctx.train_argv("r3"))
    first.wait_for(r"^checkpoint @ step 2")
    pid = first.proc.pid
    first.kill9()
    first.finish()
    done = ctx.train("r3", STEPS, "--resume")
    judge_ok(v, done, "took over run folder", f"PID {pid}")


@case("concurrent runs", "two-names-at-once", "two runs of other names at once both finish")
def _(ctx, v):
    a, b = ctx.start(*ctx.train_argv("r4a", 4)), ctx.start(*ctx.train_argv("r4b", 4))
    judge_ok(v, a.finish())
    judge_ok(v, b.finish())


@case("concurrent runs", "ray-and-plain-same-name",
      "a plain run on the folder of a Ray run in progress is refused naming the PID (exit 2)")
def _(ctx, v):
    first = ctx.start(*ctx.train_argv("r5", 10_000, plain=False))
    v.need(first.wait_for(r"^step +1/"), "the Ray run did not start")
    judge_error(v, ctx.train("r5", 4), 2, f"PID {first.proc.pid}")
    first.signal(signal.SIGINT)
    v.need(first.finish(timeout=300).rc == 130, "the Ray run did not end on Ctrl-C")


@case("concurrent runs", "eval-while-training",
      "eval of a run folder being written evaluates a whole checkpoint (exit 0)")
def _(ctx, v):
    first = ctx.start(*ctx.train_argv("r6", 40, interval=1))
    v.need(first.wait_for(r"^checkpoint @ step 2"), "no checkpoint")
    done = ctx.cli("eval", "baseline_mt", "--checkpoint", str(ctx.runs / "r6"), "--max-batches", "1")
    judge_ok(v, done, "evaluated the checkpoint of step")
    first.kill9()
    first.finish()


# --- NaN ---------------------------------------------------------------------------------------------

@case("NaN", "nan-loss-plain",
      "a diverging run stops in one line naming the task and step (exit 1); the last good checkpoint is kept")
def _(ctx, v):
    done = ctx.train("n1", 40, "--set", "optimizer.lr=1e30", "--set", "optimizer.name=sgd",
                     interval=1)
    judge_error(v, done, 1, "loss of task", "training stopped", lines=1)
    v.need(bool(list((ctx.runs / "n1").glob("step_*"))) or "step 1" in done.err,
           "no checkpoint kept")


@case("NaN", "nan-loss-ray", "Ray path: one line naming the task and step (exit 1), no retry")
def _(ctx, v):
    done = ctx.train("n2", 40, "--set", "optimizer.lr=1e30", "--set", "optimizer.name=sgd",
                     interval=1, plain=False)
    judge_error(v, done, 1, "loss of task", "training stopped", lines=1)
    v.need(reap(ctx.token) == 0, "processes outlived the run")


@case("NaN", "nan-learning-rate", "--set optimizer.lr=nan is refused naming the flag (exit 2)")
def _(ctx, v):
    judge_error(v, ctx.cli(*plain_train("--set", "optimizer.lr=nan")), 2, "--set optimizer.lr=nan")


@case("NaN", "inf-weight-decay", "--set optimizer.weight_decay=inf is refused (exit 2)")
def _(ctx, v):
    judge_error(v, ctx.cli(*plain_train("--set", "optimizer.weight_decay=inf")), 2,
                "--set optimizer.weight_decay=inf")


@case("NaN", "inf-in-yaml", "weight_decay: .inf in a config file: refused at its line (exit 2)")
def _(ctx, v):
    path = ctx.file("inf.yaml", "optimizer:\n  weight_decay: .inf\n")
    judge_error(v, ctx.cli(*plain_train("--config", str(path))), 2, f"{path}:2:3", "finite")


@case("NaN", "nan-in-yaml", "lr: .nan in a config file: refused at its line (exit 2)")
def _(ctx, v):
    path = ctx.file("nan.yaml", "optimizer:\n  lr: .nan\n")
    judge_error(v, ctx.cli(*plain_train("--config", str(path))), 2, f"{path}:2:3", "finite")
