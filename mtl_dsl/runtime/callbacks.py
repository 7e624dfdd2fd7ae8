"""Callbacks: code that watches (or, in tests, disturbs) the training loop from outside it.

``run_training(..., callbacks=[...])`` hands each callback to the loop of every worker (on the
Ray path they are pickled, so a callback class must be importable there). The loop calls

* ``on_losses(run, values)`` after the forward pass, with this rank's loss vector (one entry per
  task, then the total) before it is averaged over the workers; a callback may change it in place;
* ``on_step_end(run)`` after the optimiser step, with ``run.step`` the number of steps done (before
  that step's evaluation and checkpoint).

``run`` is the loop's state (``mtl_dsl.runtime.loop.Run``): ``step``, ``tasks``, ``session.rank``...
The fault injectors below are what the tests and the fault campaign use to crash a worker or
poison a loss at a chosen step, or hold a run still while a node is taken down, without any test
branch inside the loop.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


class Callback:
    def on_losses(self, run, values) -> None:
        """This rank's losses (tasks..., total) of the step being taken."""

    def on_step_end(self, run) -> None:
        """After ``run.step`` steps."""


class SimulatedCrash(RuntimeError):
    """Raised by :class:`CrashAfterStep` (unless it kills the process)."""


class CrashAfterStep(Callback):
    """Crash rank ``rank`` once, after step ``step``: raise :class:`SimulatedCrash`, or with
    ``hard`` end the process at once (``os._exit``, as a killed worker). ``marker`` is a file
    written before the crash, so that a restarted run does not crash again."""

    def __init__(self, step: int, marker: str | Path, rank: int = 0, hard: bool = False):
        self.step, self.marker, self.rank, self.hard = int(step), str(marker), int(rank), bool(hard)

    def on_step_end(self, run) -> None:
        if run.step != self.step or run.session.rank != self.rank:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.write_text("crashed once\n")
        if self.hard:
            os._exit(17)
        raise SimulatedCrash(f"injected crash after step {run.step}")


class PoisonLoss(Callback):
    """From step ``step`` on (1-based: the step being taken), rank ``rank`` sees ``value`` as the
    loss of ``task``."""

    def __init__(self, task: str, step: int = 1, rank: int = 0, value: float = float("nan")):
        self.task, self.step, self.rank, self.value = task, int(step), int(rank), float(value)

    def on_losses(self, run, values) -> None:
        if run.step + 1 >= self.step and run.session.rank == self.rank:
            values[run.tasks.index(self.task)] = self.value


class PauseAfterStep(Callback):
    """Every rank waits after step ``step`` until the file ``marker`` exists (at most ``timeout``
    seconds): the run stands still there, its checkpoints of earlier steps written, while a test
    takes a node down. A restarted run finds the marker and does not wait."""

    def __init__(self, step: int, marker: str | Path, timeout: float = 300.0):
        self.step, self.marker, self.timeout = int(step), str(marker), float(timeout)

    def on_step_end(self, run) -> None:
        if run.step != self.step:
            return
        deadline = time.monotonic() + self.timeout
        while not Path(self.marker).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
