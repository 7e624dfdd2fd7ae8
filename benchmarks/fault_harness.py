"""The fault campaign's harness: running ``mtl-dsl`` as a user would (each case in its own
process group, marked so that what it leaves running can be found and reaped), the campaign's
context (folders, the reference run, data files), the judge of an outcome, and the registry of
cases (``@case``). The cases are in ``fault_cases_runs.py`` and ``fault_cases_inputs.py``; the
campaign itself is ``fault_campaign.py``."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

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


def plain_train(*flags: str) -> list[str]:
    """``train baseline_mt --plain FLAGS``: the command an error case gives (it must not start)."""
    return ["train", "baseline_mt", "--plain", "--run-name", "refused", *flags]
