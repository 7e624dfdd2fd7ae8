"""Sessions: what differs between a Ray Train worker and the plain in-process loop.

The loop talks to its session only: rank and world size, the device, where a checkpoint is
written and how it is registered, what to resume from, how the model is wrapped (DDP or not) and
where progress records go. ``PlainSession`` runs in the calling process and writes checkpoints
straight into the run folder; ``RaySession`` runs in a Ray Train worker, writes each checkpoint
to a local temporary folder and hands it to ``ray.train.report`` (rank 0 only), which copies it
into the run folder under the same name (a local path, or remote storage through Ray Train's
storage filesystem).

``node`` names the machine a session runs on and ``gather`` collects one small object from every
rank (an all-gather over the process group): the loop uses them to check that the dataset folder
is there on every node before the first step.
"""
from __future__ import annotations

import errno
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Optional


class PlainSession:
    rank = 0
    world = 1
    local_rank = 0

    def __init__(self, run_dir: Path, emit: Callable[[dict], None], resume_path: Optional[str],
                 keep: int):
        import torch

        self.run_dir = run_dir
        self.checkpoint_dir = run_dir  # the same layout as Ray Train's: <run>/step_XXXXXXXX
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._emit = emit
        self._resume_path = resume_path
        self._keep = keep
        self.last_checkpoint: Optional[Path] = None
        self.last_metrics: dict = {}

    def emit(self, record: dict) -> None:
        self._emit(record)

    @property
    def node(self) -> str:
        return socket.gethostname()

    def gather(self, item):
        return [item]

    def checkpoint_to_resume(self):
        from .checkpoints import load_checkpoint

        return load_checkpoint(self._resume_path) if self._resume_path else None

    def checkpoint_target(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:08d}"

    def persisted(self, path: Path) -> Path:
        return path

    def report(self, metrics: dict, checkpoint: Optional[Path]) -> None:
        from .checkpoints import prune_checkpoints

        self.last_metrics = metrics
        if checkpoint is not None:
            self.last_checkpoint = checkpoint
            prune_checkpoints(self.checkpoint_dir, self._keep)

    def prepare(self, module):
        return module.to(self.device)

    def close(self) -> None:
        pass


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk (or quota), also when a library reports it in its own words
    (pyarrow: "[Errno 28] Error writing bytes to file"; Ray may wrap that)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "[Errno 28]" in text or "errno 28" in text


class RaySession:
    def __init__(self, run_dir: str, queue, resume_path):
        import ray.train
        import ray.train.torch

        self._resume_path = resume_path
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":  # NCCL collectives (SyncBatchNorm, object broadcasts)
            import torch  # run on the current device: make it this worker's

            torch.cuda.set_device(self.device)
        self.run_dir = str(run_dir).rstrip("/")  # a local path or a storage URI
        self._queue = queue
        self._tmp = Path(tempfile.mkdtemp(prefix="mtl-dsl-ckpt-"))
        self._node: Optional[str] = None

    def emit(self, record: dict) -> None:
        if self.rank == 0 and self._queue is not None:
            try:
                self._queue.put_nowait(record)
            except Exception:  # a full or dead queue must never stop training
                pass

    def checkpoint_to_resume(self):
        """Ray Train's latest registered checkpoint (after a restart), else the driver's choice."""
        import ray.train

        from ..errors import SpecError
        from .checkpoints import load_checkpoint

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            try:
                with checkpoint.as_directory() as folder:
                    return load_checkpoint(folder)
            except SpecError as exc:  # a corrupt copy: fall back to the driver's choice
                self.emit({"kind": "note", "text": f"skipped Ray Train's checkpoint: {exc.message}"})
        return load_checkpoint(self._resume_path) if self._resume_path else None

    def checkpoint_target(self, step: int) -> Path:
        return self._tmp / f"step_{step:08d}"

    def persisted(self, path: Path) -> str:
        return f"{self.run_dir}/{path.name}"  # Ray Train copies it to storage/run_name/<dir name>

    @property
    def node(self) -> str:
        """The Ray node this worker runs on: its IP, and its name where that differs."""
        if self._node is None:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
            info = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
            address = info.get("NodeManagerAddress") or ray.util.get_node_ip_address()
            name = info.get("NodeName")
            self._node = address if not name or name == address else f"{name} ({address})"
        return self._node

    def gather(self, item):
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return [item]
        items = [None] * self.world
        dist.all_gather_object(items, item)
        return items

    def report(self, metrics: dict, checkpoint: Optional[Path]) -> None:
        import ray.train

        from .failures import CheckpointWriteError

        if checkpoint is not None and self.rank == 0:
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                                 checkpoint_dir_name=checkpoint.name)
            except Exception as exc:  # copying it into the run folder (pyarrow, maybe wrapped by Ray)
                if not disk_full(exc):
                    raise
                size = sum(f.stat().st_size for f in checkpoint.iterdir())
                shutil.rmtree(self.persisted(checkpoint), ignore_errors=True)  # the torn copy
                raise CheckpointWriteError(f"no space left on device while writing "
                                           f"{self.persisted(checkpoint)} "
                                           f"({max(1, -(-size // 2**20))} MB needed)") from None
            finally:
                shutil.rmtree(checkpoint, ignore_errors=True)
        else:
            ray.train.report(metrics)

    def prepare(self, module):
        import ray.train.torch

        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": False})

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
