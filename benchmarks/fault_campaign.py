"""The fault campaign: a run meeting trouble, case by case, through the real ``mtl-dsl`` command line
on the built-in data (issue 11: "kill -9 and resume on both paths, SIGINT, corrupt checkpoints,
disk full, concurrent runs, NaN, bad configs, bad --set, hostile specs, bad images, wrong
checkpoints, bad dataset folders").

Every case runs ``python -m mtl_dsl.cli ...`` as a user would, in its own process group, and is
judged by what a careful user expects: the exit status (0 done, 1 a run that stopped, 2 a mistake
in what was given, 130 interrupted), one message and no Python traceback on stderr, what the
message names (the flag, the file, the key, the PID), and what is left behind: kill -9 and resume
end with weights and optimiser state bit-identical to an uninterrupted run, a full disk keeps the
previous checkpoint, a killed run's lock is taken over, and no process of the case (Ray's
included) outlives it.

    python benchmarks/fault_campaign.py            # every case; a table; exit 1 if one is not fine
    python benchmarks/fault_campaign.py --list     # the cases
    python benchmarks/fault_campaign.py --only kill9 --keep /tmp/campaign

The disk-full cases mount a small tmpfs and so need root (elsewhere they report "not run").
Runs take a few seconds each on a tiny model (resnet18 cut at level 2, 32x32 images); the Ray
cases start a local Ray each (about a minute on a small machine).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARK = "MTL_FAULT_CAMPAIGN"
LEFT_BEHIND: list[str] = []  # processes a case left running (killed by the campaign)

TINY = ["--tasks", "semseg,depth", "--input", "32x32", "--set", "backbone=resnet18", "--set", "dim=8",
        "--set", "levels=[1, 2]", "--set", "dataset.length=4", "--set", "dataset.val_length=2",
        "--set", "training.batch_size=2", "--set", "training.eval_interval=0",
        "--set", "training.log_interval=1", "--set", "run.threads_per_worker=1"]
STEPS = 6  # the reference run: checkpoints at 2, 4 and 6


# --------------------------------------------------------------------------------------------------
# processes


@dataclass
class Done:
    rc: int
    out: str
    err: str
    leftovers: int = 0

    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Cli:
    """One ``mtl-dsl`` process, its output read as it comes."""

    def __init__(self, ctx: "Context", argv: list[str], cwd: Path | None = None):
        self.ctx = ctx
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   **{MARK: ctx.token})
        self.proc = subprocess.Popen([sys.executable, "-m", "mtl_dsl.cli", *argv], cwd=cwd or ctx.work,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            with self.changed:
                into.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 600) -> bool:
        """Until a line of stdout matches ``pattern`` (False if the process ended first)."""
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        with self.changed:
            while True:
                if any(regex.search(line) for line in self.out):
                    return True
                if self.proc.poll() is not None and not any(t.is_alive() for t in self.readers):
                    return False
                if time.monotonic() > deadline:
                    return False
                self.changed.wait(0.5)

    def kill9(self, group: bool = True) -> None:
        if group:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            os.kill(self.proc.pid, signal.SIGKILL)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = 900) -> Done:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for t in self.readers:
            t.join(timeout=10)
        return Done(self.proc.returncode, "".join(self.out), "".join(self.err))


def own_processes(token: str) -> list[int]:
    """Processes started for this case (the marker is in their environment: Ray's too)."""
    found = []
    needle = f"{MARK}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def reap(token: str, grace: float = 20.0) -> int:
    """Wait for the case's processes to end; kill (and count) those still there after ``grace``."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not own_processes(token):
            return 0
        time.sleep(0.5)
    left = own_processes(token)
    for pid in left:
        try:
            name = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
            LEFT_BEHIND.append(f"{token}: {pid} {Path(name).name}")
            os.kill(pid, signal.SIGKILL)
        except (OSError, UnicodeDecodeError):  # it exited between the scan and the kill
            pass
    return len(left)


# --------------------------------------------------------------------------------------------------
# the campaign's context: folders, the reference run, data files


@dataclass
class Context:
    work: Path
    token: str = ""
    _reference: Optional[Path] = None
    notes: list = field(default_factory=list)

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def cli(self, *argv: str, timeout: float = 600) -> Done:
        return Cli(self, list(argv)).finish(timeout)

    def start(self, *argv: str) -> Cli:
        return Cli(self, list(argv))

    def train_argv(self, name: str, iterations: int = STEPS, *extra: str, plain: bool = True,
                   storage: Path | None = None, interval: int = 2) -> list[str]:
        argv = ["train", "baseline_mt", *TINY, "--iterations", str(iterations),
                "--set", f"training.checkpoint_interval={interval}",
                "--storage", str(storage or self.runs), "--run-name", name, *extra]
        return argv + (["--plain"] if plain else [])

    def train(self, name: str, iterations: int = STEPS, *extra: str, **kw) -> Done:
        return self.cli(*self.train_argv(name, iterations, *extra, **kw))

    def reference(self) -> Path:
        """An uninterrupted plain run of STEPS steps (trained once, then shared read-only)."""
        if self._reference is None:
            token, self.token = self.token, "reference"
            done = self.train("reference")
            self.token = token
            if done.rc != 0:
                raise RuntimeError(f"the reference run failed: {done.err}")
            self._reference = self.runs / "reference"
        return self._reference

    def copy_of_reference(self, name: str) -> Path:
        target = self.runs / name
        shutil.copytree(self.reference(), target, ignore=shutil.ignore_patterns(".lock"))
        return target

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.work / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path


def step_dir(run: Path, step: int) -> Path:
    return run / f"step_{step:08d}"


def same_state(a: Path, b: Path) -> tuple[bool, str]:
    """Model and optimiser files of two checkpoints hold bit-identical tensors."""
    from safetensors.numpy import load_file

    for name in ("model.safetensors", "optimizer.safetensors"):
        if not (a / name).is_file() or not (b / name).is_file():
            return False, f"{name} missing"
        x, y = load_file(str(a / name)), load_file(str(b / name))
        if x.keys() != y.keys():
            return False, f"{name}: other tensors"
        differ = [k for k in x if x[k].tobytes() != y[k].tobytes()]
        if differ:
            return False, f"{name}: {len(differ)} tensors differ (first {differ[0]})"
    return True, "bit-identical to the uninterrupted run"


# --------------------------------------------------------------------------------------------------
# judging


class Verdict:
    def __init__(self):
        self.problems: list[str] = []
        self.facts: list[str] = []

    def need(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok

    def fact(self, text: str) -> None:
        self.facts.append(text)


def judge_error(v: Verdict, done: Done, rc: int, *fragments: str, lines: int = 4,
                spec: bool = False) -> None:
    """Exit ``rc``, no traceback, a short message on stderr holding every fragment; unless the
    mistake is in a spec, no made-up position (``file:1:1``) in it."""
    err = done.err_lines()
    v.need(done.rc == rc, f"exit {done.rc}, expected {rc}")
    if not spec:  # 1:1 is a real place only where the text it points into is quoted
        v.need(not re.search(r":1:1: error", done.err) or "\n    1 | " in done.err,
               "a made-up position 1:1 outside a spec")
    v.need("Traceback" not in done.err and "Traceback" not in done.out, "a Python traceback")
    v.need(0 < len(err) <= lines, f"{len(err)} lines on stderr")
    for fragment in fragments:
        v.need(fragment in done.err, f"message lacks {fragment!r}")
    v.fact(err[0][:150] if err else "(stderr empty)")


def judge_ok(v: Verdict, done: Done, *fragments: str) -> None:
    v.need(done.rc == 0, f"exit {done.rc}: {done.err_lines()[-1:] or ''}")
    v.need("Traceback" not in done.err, "a Python traceback")
    for fragment in fragments:
        v.need(fragment in done.out + done.err, f"output lacks {fragment!r}")


# --------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    name: str
    group: str
    expected: str
    body: Callable[[Context, Verdict], None]


CASES: list[Case] = []


def case(group: str, name: str, expected: str):
    def register(body):
        CASES.append(Case(name, group, expected, body))
        return body
    return register


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
    judge_error(v, ctx.cli(*_plain_train("--set", "optimizer.lr=nan")), 2, "--set optimizer.lr=nan")


@case("NaN", "inf-weight-decay", "--set optimizer.weight_decay=inf is refused (exit 2)")
def _(ctx, v):
    judge_error(v, ctx.cli(*_plain_train("--set", "optimizer.weight_decay=inf")), 2,
                "--set optimizer.weight_decay=inf")


@case("NaN", "inf-in-yaml", "weight_decay: .inf in a config file: refused at its line (exit 2)")
def _(ctx, v):
    path = ctx.file("inf.yaml", "optimizer:\n  weight_decay: .inf\n")
    judge_error(v, ctx.cli(*_plain_train("--config", str(path))), 2, f"{path}:2:3", "finite")


@case("NaN", "nan-in-yaml", "lr: .nan in a config file: refused at its line (exit 2)")
def _(ctx, v):
    path = ctx.file("nan.yaml", "optimizer:\n  lr: .nan\n")
    judge_error(v, ctx.cli(*_plain_train("--config", str(path))), 2, f"{path}:2:3", "finite")


# --- bad config files ------------------------------------------------------------------------------

def _bad_config(ctx: Context, v: Verdict, name: str, text: str | bytes, *fragments: str) -> None:
    path = ctx.file(name, text)
    judge_error(v, ctx.cli(*_plain_train("--config", str(path))), 2, str(path), *fragments)


@case("bad configs", "invalid-yaml", "file:line:col of the syntax error")
def _(ctx, v):
    _bad_config(ctx, v, "a.yaml", "training:\n  iterations: [3\n", "invalid YAML", ":3:1:")


@case("bad configs", "unknown-key-far", "unknown key: lists the keys of its section")
def _(ctx, v):
    _bad_config(ctx, v, "b.yaml", "schedule:\n  wobble: 1\n", ":2:3:", "the keys of 'schedule' are")


@case("bad configs", "unknown-key-close", "unknown key: did you mean")
def _(ctx, v):
    _bad_config(ctx, v, "c.yaml", "optimizer:\n  momentun: 0.9\n", "did you mean 'momentum'")


@case("bad configs", "wrong-type", "iterations: lots -> its line, 'valid integer'")
def _(ctx, v):
    _bad_config(ctx, v, "d.yaml", "training:\n  iterations: lots\n", ":2:3:", "integer")


@case("bad configs", "duplicate-key", "a key given twice is an error at the second (YAML keeps the last)")
def _(ctx, v):
    _bad_config(ctx, v, "e.yaml", "training:\n  iterations: 3\n  iterations: 5\n", ":3:3:", "twice")


@case("bad configs", "alias-bomb-overrides", "alias bomb in model.overrides refused in one line, at once")
def _(ctx, v):
    items = ["a0: &a0 [" + ", ".join(["1"] * 10) + "]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    _bad_config(ctx, v, "f.yaml", "model:\n  overrides: {" + ", ".join(items) + "}\n", "expands to more than")


@case("bad configs", "huge-file", "a 50 MB config is refused before it is read")
def _(ctx, v):
    path = ctx.work / "files" / "huge.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"# " + b"x" * (50 * 2**20) + b"\n")
    judge_error(v, ctx.cli(*_plain_train("--config", str(path))), 2, "too large")


@case("bad configs", "deep-nesting", "200 nested lists refused in one line")
def _(ctx, v):
    _bad_config(ctx, v, "g.yaml", "model:\n  overrides:\n    x: " + "[" * 200 + "]" * 200 + "\n", "nested more than")


@case("bad configs", "top-level-list", "a list where a mapping belongs")
def _(ctx, v):
    _bad_config(ctx, v, "h.yaml", "- training\n- 3\n", "mapping")


@case("bad configs", "binary-junk", "random bytes: one error naming the file")
def _(ctx, v):
    _bad_config(ctx, v, "i.yaml", bytes(range(256)) * 4)


@case("bad configs", "missing-file", "a config file that does not exist")
def _(ctx, v):
    judge_error(v, ctx.cli(*_plain_train("--config", str(ctx.work / "nope.yaml"))), 2, "not found")


@case("bad configs", "config-is-a-folder", "a folder given as the config file")
def _(ctx, v):
    judge_error(v, ctx.cli(*_plain_train("--config", str(ctx.work))), 2, str(ctx.work))


@case("bad configs", "empty-task-list", "tasks: [] is an error, not the default tasks")
def _(ctx, v):
    path = ctx.file("j.yaml", "# the tasks\ntasks: []\n")
    judge_error(v, ctx.cli(*_plain_train("--config", str(path))), 2, f"{path}:2:1:", "task list is empty")


@case("bad configs", "min-lr-above-lr", "schedule.min_lr at or above the learning rate")
def _(ctx, v):
    _bad_config(ctx, v, "k.yaml", "optimizer: {lr: 0.001}\nschedule: {min_lr: 0.01}\n", "not below")


@case("bad configs", "unknown-recipe", "--recipe nope: lists the recipes, says 'recipe'")
def _(ctx, v):
    judge_error(v, ctx.cli(*_plain_train("--recipe", "nope")), 2, "--recipe nope", "recipes:")


@case("bad configs", "preset-key-in-config", "'preset:' in a run config points to 'recipe:' and model.preset")
def _(ctx, v):
    _bad_config(ctx, v, "l.yaml", "# a recipe\npreset: demt\n", ":2:1:", "recipe: NAME", "model.preset")


# --- bad --set and flags -----------------------------------------------------------------------------

def _plain_train(*flags: str) -> list[str]:
    """``train baseline_mt --plain FLAGS``: the command an error case gives (it must not start)."""
    return ["train", "baseline_mt", "--plain", "--run-name", "refused", *flags]


def _bad_flag(ctx: Context, v: Verdict, flags: list[str], *fragments: str) -> None:
    judge_error(v, ctx.cli(*_plain_train(*flags), timeout=300), 2, *fragments)


@case("bad --set", "set-without-equals", "--set lr names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "lr"], "--set lr")


@case("bad --set", "set-bool-batch", "training.batch_size=true is not 1")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "training.batch_size=true"], "--set training.batch_size=true", "integer")


@case("bad --set", "set-float-iterations", "training.iterations=2.0 is not an integer")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "training.iterations=2.0"], "integer")


@case("bad --set", "set-unknown-key", "optimizer.momentun: did you mean")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "optimizer.momentun=0.9"], "did you mean 'momentum'")


@case("bad --set", "set-unknown-model-parameter", "wobble=3: the model's parameters are listed")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "wobble=3"], "wobble")


@case("bad --set", "set-dim-not-a-number", "dim=abc: one error, no traceback")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "dim=abc"], "dim")


@case("bad --set", "set-dim-fraction", "dim=64.5: one error, no traceback")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "dim=64.5"], "dim")


@case("bad --set", "tasks-empty", "--tasks '' is an error")
def _(ctx, v):
    _bad_flag(ctx, v, ["--tasks", ""], "--tasks ''", "task list is empty")


@case("bad --set", "input-zero", "--input 0x0 names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--input", "0x0"], "--input 0x0")


@case("bad --set", "workers-zero", "--workers 0 names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--workers", "0"], "--workers 0")


@case("bad --set", "iterations-negative", "--iterations -1 names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--iterations", "-1"], "--iterations -1")


@case("bad --set", "unknown-dataset", "dataset.name=imagenet lists the datasets")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "dataset.name=imagenet"], "'synthetic', 'nyud' or 'pascal'")


@case("bad --set", "unknown-task", "--tasks semseg,segsem lists the tasks")
def _(ctx, v):
    _bad_flag(ctx, v, ["--tasks", "semseg,segsem"], "segsem")


# --- hostile specs ------------------------------------------------------------------------------------

def _bad_spec(ctx: Context, v: Verdict, spec: Path | str, *fragments: str, lines: int = 6) -> None:
    judge_error(v, ctx.cli("train", str(spec), "--plain", "--iterations", "1"), 2, *fragments,
                lines=lines, spec=True)


@case("hostile specs", "spec-missing", "a spec that does not exist")
def _(ctx, v):
    _bad_spec(ctx, v, ctx.work / "nope.mtl", "nope.mtl")


@case("hostile specs", "spec-binary-junk", "random bytes as a spec: one error")
def _(ctx, v):
    _bad_spec(ctx, v, ctx.file("junk.mtl", bytes(range(256)) * 8), "junk.mtl")


@case("hostile specs", "spec-import-cycle", "a imports b imports a: one error naming the cycle")
def _(ctx, v):
    ctx.file("b.mtl", 'import "a.mtl"\n')
    _bad_spec(ctx, v, ctx.file("a.mtl", 'import "b.mtl"\n'), "a.mtl")


@case("hostile specs", "spec-symlink-to-passwd", "a .mtl link to /etc/passwd: refused, its text not echoed")
def _(ctx, v):
    link = ctx.work / "files" / "passwd.mtl"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/etc/passwd")
    _bad_spec(ctx, v, link, "passwd")
    done = ctx.cli("check", str(link))
    v.need("root:" not in done.err, "the target's text was echoed")


@case("hostile specs", "spec-huge", "a 5 MB spec is refused by its size")
def _(ctx, v):
    _bad_spec(ctx, v, ctx.file("huge.mtl", "# " + "x" * (5 * 2**20) + "\n"), "huge.mtl")


@case("hostile specs", "spec-deep-expression", "10,000 nested parentheses: one error, no RecursionError")
def _(ctx, v):
    text = "model m(dim = " + "(" * 10_000 + "1" + ")" * 10_000 + ") {\n  out[t] = 1\n}\n"
    _bad_spec(ctx, v, ctx.file("deep.mtl", text), "deep.mtl")


@case("hostile specs", "spec-reserved-node-name", "a node named add_submodule is refused at check time")
def _(ctx, v):
    text = ('model m() {\n  add_submodule = upsample_concat(backbone("resnet18", levels = [1, 2]))\n'
            '  for t in tasks {\n    out[t] = dense_head(add_submodule, task = t, width = 8)\n  }\n}\n')
    _bad_spec(ctx, v, ctx.file("reserved.mtl", text), "add_submodule")


# --- bad images (predict) ---------------------------------------------------------------------------

def _png(path: Path, width: int, height: int, bit_depth: int, colour: int, raw: bytes) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _predict(ctx: Context, image: Path) -> Done:
    return ctx.cli("predict", "baseline_mt", "--checkpoint", str(ctx.reference()), str(image),
                   "--out", str(ctx.work / "predictions" / image.stem))


def _predict_ok(ctx: Context, v: Verdict, image: Path) -> None:
    done = _predict(ctx, image)
    judge_ok(v, done)
    written = sorted((ctx.work / "predictions" / image.stem).rglob("*.png"))
    v.need(len(written) == 2, f"{len(written)} PNGs written, expected one per task")


@case("bad images", "image-16-bit", "a 16-bit PNG is scaled to 8 bits and predicted")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "deep.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)).save(path)
    _predict_ok(ctx, v, path)


@case("bad images", "image-palette", "a palette PNG is converted and predicted")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "palette.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(30 * 40) % 200).reshape(30, 40).astype(np.uint8)).convert("P").save(path)
    _predict_ok(ctx, v, path)


@case("bad images", "image-rgba", "an RGBA PNG is predicted")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "rgba.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((30, 40, 4), 120, np.uint8)).save(path)
    _predict_ok(ctx, v, path)


@case("bad images", "image-float-tiff", "a floating-point TIFF is refused (no 8-bit range), exit 2")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "float.tiff"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).random((30, 40)).astype(np.float32)).save(path)
    judge_error(v, _predict(ctx, path), 2, str(path), "floating-point")


@case("bad images", "image-truncated", "a PNG cut in its pixel data: one error naming it")
def _(ctx, v):
    path = _png(ctx.work / "files" / "cut.png", 40, 30, 8, 2, bytes(30 * (1 + 40 * 3)))
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"IDAT") + 12])
    judge_error(v, _predict(ctx, path), 2, str(path))


@case("bad images", "image-not-an-image", "a text file named .jpg: one error naming it")
def _(ctx, v):
    path = ctx.file("text.jpg", "hello\n")
    judge_error(v, _predict(ctx, path), 2, str(path))


@case("bad images", "image-empty", "a zero-byte PNG: one error naming it")
def _(ctx, v):
    path = ctx.file("empty.png", b"")
    judge_error(v, _predict(ctx, path), 2, str(path))


@case("bad images", "image-missing", "an image that does not exist")
def _(ctx, v):
    judge_error(v, _predict(ctx, ctx.work / "files" / "nope.png"), 2, "nope.png")


@case("bad images", "image-decompression-bomb",
      "a PNG header of 40,000 x 40,000 pixels: refused at once, one error")
def _(ctx, v):
    path = _png(ctx.work / "files" / "bomb.png", 40_000, 40_000, 8, 2, b"")
    judge_error(v, _predict(ctx, path), 2, str(path))


# --- wrong checkpoints ----------------------------------------------------------------------------

@case("wrong checkpoints", "eval-other-spec", "eval demt with a baseline_mt checkpoint: one error (exit 2)")
def _(ctx, v):
    judge_error(v, ctx.cli("eval", "demt", "--checkpoint", str(ctx.reference())), 2, "")


@case("wrong checkpoints", "eval-missing-folder", "eval of a folder that does not exist")
def _(ctx, v):
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(ctx.work / "nope")), 2, "nope")


@case("wrong checkpoints", "eval-empty-folder", "eval of an empty folder")
def _(ctx, v):
    empty = ctx.work / "empty"
    empty.mkdir(exist_ok=True)
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(empty)), 2, str(empty))


@case("wrong checkpoints", "eval-file-not-folder", "eval --checkpoint pointing at model.safetensors")
def _(ctx, v):
    path = step_dir(ctx.reference(), 6) / "model.safetensors"
    done = ctx.cli("eval", "baseline_mt", "--checkpoint", str(path), "--max-batches", "1")
    if done.rc == 0:
        judge_ok(v, done, "evaluated")
    else:
        judge_error(v, done, 2, str(path))


@case("wrong checkpoints", "predict-other-spec", "predict with tpanet on a baseline_mt checkpoint: one error")
def _(ctx, v):
    image = ctx.work / "files" / "ok.png"
    _png(image, 40, 30, 8, 2, bytes(30 * (1 + 40 * 3)))
    judge_error(v, ctx.cli("predict", "tpanet", "--checkpoint", str(ctx.reference()), str(image),
                           "--out", str(ctx.work / "p")), 2, "")


@case("wrong checkpoints", "resume-changed-graph", "resume with dim=16 is refused naming the changed nodes")
def _(ctx, v):
    ctx.copy_of_reference("w1")
    done = ctx.train("w1", 8, "--resume", "--set", "dim=16")
    judge_error(v, done, 2, "graph changed", "out.")


@case("wrong checkpoints", "resume-changed-tasks", "resume with other tasks is refused")
def _(ctx, v):
    ctx.copy_of_reference("w2")
    argv = [a if a != "semseg,depth" else "semseg" for a in ctx.train_argv("w2", 8, "--resume")]
    judge_error(v, ctx.cli(*argv), 2, "cannot resume")


@case("wrong checkpoints", "resume-changed-lr-applied", "resume with optimizer.lr=0.5: applied and reported")
def _(ctx, v):
    ctx.copy_of_reference("w3")
    done = ctx.train("w3", 8, "--resume", "--set", "optimizer.lr=0.5")
    judge_ok(v, done, "applied from here on: optimizer.lr")
    meta = json.loads((step_dir(ctx.runs / "w3", 8) / "meta.json").read_text())
    v.need(meta["run_config"]["optimizer"]["lr"] == 0.5, "meta.json does not record lr 0.5")


@case("wrong checkpoints", "init-garbage-file", "train --init with a garbage file: one error naming it")
def _(ctx, v):
    path = ctx.file("garbage.pth", b"\0garbage" * 100)
    judge_error(v, ctx.train("w4", 2, "--init", str(path)), 2, str(path))


# --- bad dataset folders ---------------------------------------------------------------------------

def _nyud(ctx: Context, name: str, count: int = 3) -> Path:
    """A small NYUD-v2 folder in the layout of the multi-task repositories."""
    from PIL import Image

    base = ctx.work / name / "NYUD_MT"
    for d in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (base / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"{i:04d}" for i in range(1, count + 1)]
    for stem in names:
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(base / "images" / f"{stem}.jpg")
        Image.fromarray(rng.integers(0, 41, (24, 32), dtype=np.uint8)).save(base / "segmentation" / f"{stem}.png")
        np.save(base / "depth" / f"{stem}.npy", rng.uniform(0.5, 5, (24, 32)).astype(np.float32))
        normals = rng.normal(size=(24, 32, 3)).astype(np.float32)
        np.save(base / "normals" / f"{stem}.npy", normals / np.linalg.norm(normals, axis=2, keepdims=True))
        np.save(base / "edge" / f"{stem}.npy", (rng.random((24, 32)) > 0.9).astype(np.float32))
    (base / "gt_sets" / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    (base / "gt_sets" / "val.txt").write_text(names[-1] + "\n")
    return base


def _nyud_train(ctx: Context, run: str, root: Path, *extra: str) -> Done:
    return ctx.cli("train", "baseline_mt", "--plain", "--tasks", "semseg:40,depth", "--input", "32x32",
                   "--set", "backbone=resnet18", "--set", "dim=8", "--set", "levels=[1, 2]",
                   "--set", "dataset.name=nyud", "--set", f"dataset.root={root}",
                   "--set", "training.batch_size=1", "--set", "training.eval_interval=0",
                   "--set", "training.checkpoint_interval=0", "--set", "training.augment=false",
                   "--iterations", "4", "--storage", str(ctx.runs), "--run-name", run, *extra)


@case("bad dataset folders", "dataset-root-missing", "dataset.root that does not exist: one error naming it")
def _(ctx, v):
    judge_error(v, _nyud_train(ctx, "b1", ctx.work / "nowhere"), 2, "nowhere")


@case("bad dataset folders", "dataset-root-empty", "an empty folder: one error saying what is missing")
def _(ctx, v):
    empty = ctx.work / "emptydata"
    empty.mkdir(exist_ok=True)
    judge_error(v, _nyud_train(ctx, "b2", empty), 2, str(empty))


@case("bad dataset folders", "dataset-root-is-a-file", "dataset.root naming a file")
def _(ctx, v):
    path = ctx.file("data.txt", "x")
    judge_error(v, _nyud_train(ctx, "b3", path), 2, str(path))


@case("bad dataset folders", "dataset-corrupt-image",
      "an unreadable image is named before step 1 (exit 2), with the way to skip it")
def _(ctx, v):
    base = _nyud(ctx, "data-b4")
    (base / "images" / "0002.jpg").write_bytes(b"not a jpeg")
    judge_error(v, _nyud_train(ctx, "b4", base.parent), 2, str(base / "images" / "0002.jpg"),
                "dataset.skip_bad_samples=true")


@case("bad dataset folders", "dataset-label-torn-mid-run",
      "a label that fails while training: one line naming it (exit 1)")
def _(ctx, v):
    base = _nyud(ctx, "data-b5")
    label = base / "segmentation" / "0002.png"
    data = label.read_bytes()
    label.write_bytes(data[:data.index(b"IDAT") + 12])
    judge_error(v, _nyud_train(ctx, "b5", base.parent), 1, str(label), lines=1)


@case("bad dataset folders", "dataset-skip-bad-samples",
      "the same with dataset.skip_bad_samples=true: trains, counts what it skipped")
def _(ctx, v):
    base = _nyud(ctx, "data-b6")
    label = base / "segmentation" / "0002.png"
    data = label.read_bytes()
    label.write_bytes(data[:data.index(b"IDAT") + 12])
    judge_ok(v, _nyud_train(ctx, "b6", base.parent, "--set", "dataset.skip_bad_samples=true"),
             "unreadable sample")


@case("bad dataset folders", "dataset-missing-split", "gt_sets/train.txt missing: one error naming it")
def _(ctx, v):
    base = _nyud(ctx, "data-b7")
    (base / "gt_sets" / "train.txt").unlink()
    judge_error(v, _nyud_train(ctx, "b7", base.parent), 2, "train")


@case("bad dataset folders", "dataset-missing-file", "a listed sample without its depth file")
def _(ctx, v):
    base = _nyud(ctx, "data-b8")
    (base / "depth" / "0001.npy").unlink()
    judge_error(v, _nyud_train(ctx, "b8", base.parent), 2, "0001")


@case("bad dataset folders", "dataset-pascal-missing", "dataset.name=pascal without its folder")
def _(ctx, v):
    judge_error(v, ctx.cli("train", "baseline_mt", "--plain", "--tasks", "pascal",
                           "--set", "dataset.name=pascal", "--set", f"dataset.root={ctx.work / 'nop'}"),
                2, "nop")


# --------------------------------------------------------------------------------------------------


def run_case(ctx: Context, c: Case) -> tuple[bool, str, float]:
    ctx.token = c.name
    v = Verdict()
    start = time.monotonic()
    try:
        c.body(ctx, v)
    except Exception as exc:  # the campaign's own failure is a case that is not fine
        v.problems.append(f"campaign error: {type(exc).__name__}: {exc}")
    left = reap(c.name, grace=20)
    v.need(left == 0, f"{left} processes left behind")
    outcome = "; ".join(v.problems) if v.problems else "; ".join(v.facts) or "as expected"
    return not v.problems, outcome, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--only", default=None, metavar="PATTERN", help="cases whose group or name match")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)
    # A shell starts a background job with SIGINT ignored, and a child inherits that: the cases
    # that press Ctrl-C need it to reach the command line's process as it does from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    chosen = [c for c in CASES if args.only is None or re.search(args.only, f"{c.group} {c.name}")]
    if args.list:
        for c in chosen:
            print(f"{c.group:20} {c.name:32} {c.expected}")
        print(f"{len(chosen)} cases")
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mtl-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(work)
    rows, began = [], time.monotonic()
    try:
        for c in chosen:
            fine, outcome, seconds = run_case(ctx, c)
            rows.append((c, fine, outcome, seconds))
            print(f"{'fine' if fine else 'NOT FINE':8} {seconds:6.1f}s  {c.group} / {c.name}: {outcome}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"| # | group | case | expected | outcome | fine? |")
    print(f"|---|---|---|---|---|---|")
    for i, (c, fine, outcome, _) in enumerate(rows, 1):
        print(f"| {i} | {c.group} | {c.name} | {c.expected} | {outcome} | {'yes' if fine else 'NO'} |")
    if LEFT_BEHIND:
        print("\nprocesses left behind (killed): " + "; ".join(LEFT_BEHIND))
    good = sum(fine for _, fine, _, _ in rows)
    print(f"\n{good} of {len(rows)} cases fine ({time.monotonic() - began:.0f} s)")
    return 0 if good == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
