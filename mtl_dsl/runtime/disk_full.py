"""A Ray Train run that failed on a full disk, told as the one line a plain run gives.

Kept apart from ``failures`` (which ``checkpoints`` imports) because it reads the run folder's
checkpoints."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from .checkpoints import checkpoint_problem, list_checkpoints
from .failures import CheckpointWriteError
from .session import disk_full


def disk_full_error(run_dir: Path, exc: BaseException) -> Optional[CheckpointWriteError]:
    """A Ray Train run that failed on a full disk outside the worker's own checks (Ray Train
    copying a checkpoint into the run folder, or writing its own state there), as the one-line
    error a plain run gives; the torn checkpoint folder it leaves is removed. None for any other
    failure."""
    if not disk_full(exc):
        return None
    steps = sorted(run_dir.glob("step_*"))
    torn = [p for p in steps if checkpoint_problem(p) is not None]
    whole = [p for p in list_checkpoints(run_dir) if p not in torn]
    size = max((sum(f.stat().st_size for f in p.iterdir()) for p in whole), default=0)
    for path in torn:
        shutil.rmtree(path, ignore_errors=True)
    where = torn[-1] if torn else run_dir
    needed = f"{max(1, -(-size // 2**20))} MB needed" if size else "the size of a checkpoint needed"
    return CheckpointWriteError(f"no space left on device while writing {where} ({needed})")
