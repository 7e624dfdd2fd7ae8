"""The ways a training run stops early, as exceptions the command line turns into one line and
exit status 1, and the root cause of a worker's error in one line."""
from __future__ import annotations

import errno
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class TrainingError(RuntimeError):
    """A run that stopped: non-finite loss, worker failure, a bad sample, a full disk..."""


class NonFiniteLoss(TrainingError):
    def __init__(self, task: str, step: int, value: float):
        self.task, self.step, self.value = task, step, value
        super().__init__(f"loss of task '{task}' is {value} at step {step}; training stopped "
                         f"(the last good checkpoint is kept)")


class WriteError(TrainingError):
    """A file of the run (a checkpoint, ``metrics.jsonl``, the lock) could not be written."""


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (a full disk); the earlier ones are intact."""


def write_error(path: Any, exc: OSError, kind: type = WriteError) -> WriteError:
    """``exc``, met writing ``path``, as one line: a full disk (or quota) as "no space left on
    device while writing PATH", any other failure (a read-only filesystem, no permission) in the
    system's words."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return kind(f"no space left on device while writing {path}")
    return kind(f"cannot write {path}: {exc.strerror or exc}")


class BadSample(TrainingError):
    """A sample whose files cannot be read, met during training."""


class DataUnavailable(TrainingError):
    """The dataset folder is missing or unreadable on one or more nodes (found before step 1)."""

    def __init__(self, message: str, where: str):
        self.where = where
        super().__init__(message)


def root_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "Traceback")):
            return line
    return type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job, ``kill``): stops the run as Ctrl-C does; the command
    line says "terminated" and exits 143."""


@contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """While in the block, SIGTERM raises :class:`Terminated` in the main thread, so the run ends
    as on Ctrl-C (Ray shut down, the lock released) instead of under Ray's own handler, which
    dumps a C stack to stderr and leaves with status 15."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
