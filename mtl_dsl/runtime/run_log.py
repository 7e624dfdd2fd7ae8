"""The run's TensorBoard events and ``metrics.jsonl``, written by the driver into the run folder.

The workers stream every record of the loop to the driver (a Ray queue, or directly in a plain
run); ``RunLog`` turns the log and evaluation records into TensorBoard scalars and one JSON line
each, so that nothing a user needs is left on a worker's local disk, whichever node rank 0 ran
on. A local (or NFS) run folder is written in place. For a run folder in remote storage the files
are written to a local staging folder and copied there at every checkpoint and at the end (object
stores cannot append); an existing ``metrics.jsonl`` is fetched first, so a resumed run extends it.

Each ``start`` record (the first step of the run, and of every restart after a worker failure)
opens a new event file with ``purge_step`` at that step, so TensorBoard drops the points of the
steps the restart repeats; ``metrics.jsonl`` keeps both (a reader takes the last line per step).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .failures import write_error
from .storage import Location

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class RunLog:
    def __init__(self, run_dir: Location):
        self.run_dir = run_dir
        self._staging: Optional[Path] = None
        if run_dir.local:
            self.folder = run_dir.local_path
        else:
            self._staging = Path(tempfile.mkdtemp(prefix="mtl-dsl-runlog-"))
            self.folder = self._staging
            remote_metrics = run_dir.child(METRICS_FILE)
            if remote_metrics.is_file():
                (self.folder / METRICS_FILE).write_bytes(remote_metrics.read_bytes())
        self.writer = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, record: dict) -> None:
        kind = record.get("kind")
        if kind == "start":
            self._open(int(record.get("step") or 0))
        elif kind == "log":
            scalars = {f"loss/{task}": value for task, value in record["losses"].items()}
            scalars.update({"loss/total": record["loss"], "lr": record["lr"],
                            "images_per_s": record["images_per_s"]})
            self._write(record["step"], scalars, record)
        elif kind == "eval":
            self._write(record["step"], {f"val/{k}": v for k, v in record["metrics"].items()}, record)
        elif kind == "checkpoint":
            self.flush()

    def _open(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is not None:
            self.writer.close()
        try:
            self.writer = SummaryWriter(str(self.folder / TENSORBOARD_DIR), purge_step=step or None)
        except OSError as exc:
            raise write_error(self.folder / TENSORBOARD_DIR, exc) from None

    def _write(self, step: int, scalars: dict, record: dict) -> None:
        if self.writer is None:
            self._open(0)
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        line = {k: v for k, v in record.items() if k not in ("start_step",)}
        try:
            with open(self.folder / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
        except OSError as exc:  # a full disk: one line naming the file, not a traceback
            raise write_error(self.folder / METRICS_FILE, exc) from None

    def flush(self) -> None:
        """Make the files complete; copy them into remote storage."""
        if self.writer is not None:
            self.writer.flush()
        if self._staging is None:
            return
        if (self._staging / TENSORBOARD_DIR).is_dir():
            self.run_dir.child(TENSORBOARD_DIR).upload(self._staging / TENSORBOARD_DIR)
        if (self._staging / METRICS_FILE).is_file():
            self.run_dir.child(METRICS_FILE).write_bytes((self._staging / METRICS_FILE).read_bytes())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        try:
            self.flush()
        finally:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
