"""Ray Train's record of a run folder (``checkpoint_manager_snapshot.json``), checked on resume.

Ray Train (v2) restores a run of the same name and storage by itself: its checkpoint manager reads
this snapshot when the run starts. It stops the run (``CheckpointManagerInitializationError``, "a
corrupted run directory") if the file is torn, was written by another Ray version, or names a
checkpoint folder that is gone (pruned by a ``--plain`` resume, or deleted by hand because it was
corrupt); and if the snapshot's latest checkpoint is older than the run folder's newest usable one
(a ``--plain`` resume went further), or is one that cannot be loaded, the workers would be handed
that one instead.

The driver decides where a resumed run continues (``launch.prepare_run_dir``: the newest
checkpoint that can be loaded). A snapshot that does not agree with that choice is moved aside
(to ``.checkpoint_manager_snapshot.json.stale``: kept, not deleted) and said; Ray Train then starts
with an empty record and the workers load the driver's choice. A snapshot that agrees is left to
Ray Train, which goes on pruning the checkpoints it lists.

This module imports neither torch nor ray.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from .storage import Location

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants


def _ray_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


def _name_in(run_dir: Location, checkpoint: Any) -> str:
    """The checkpoint folder's path inside the run folder (Ray's ``checkpoint_dir_name``)."""
    inside, text = str(run_dir).rstrip("/") + "/", str(checkpoint)
    return text[len(inside):] if text.startswith(inside) else text.rstrip("/").rsplit("/", 1)[-1]


def snapshot_problem(run_dir: Location, chosen: Any) -> Optional[str]:
    """Why Ray Train's snapshot in ``run_dir`` must not restore the run that continues from the
    checkpoint ``chosen`` (a path or a ``Location``), or None (also when there is no snapshot)."""
    file = run_dir.child(SNAPSHOT_FILE)
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
        names = [r["checkpoint_dir_name"] for r in data.get("checkpoint_results") or []]
        latest = (data.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return "it cannot be read (torn)"
    running = _ray_version()
    if data.get("ray_version") != running:
        return f"it was written by Ray {data.get('ray_version') or '(unknown)'}, this is Ray {running}"
    gone = [n for n in names if not run_dir.child(n).exists()]
    if gone:
        return f"it lists checkpoint {gone[0]}, which is no longer there"
    want = _name_in(run_dir, chosen)
    if latest != want:
        return f"its latest checkpoint is {latest or 'none'}, the newest usable one is {want}"
    return None


def reconcile_snapshot(run_dir: Location, chosen: Any, note: Callable[[dict], None]) -> None:
    """Move Ray Train's snapshot aside if it disagrees with the checkpoint the driver chose."""
    problem = snapshot_problem(run_dir, chosen)
    if problem is None:
        return
    file, aside = run_dir.child(SNAPSHOT_FILE), run_dir.child(f".{SNAPSHOT_FILE}.stale")
    try:
        aside.write_bytes(file.read_bytes())
    except OSError:
        pass  # unreadable: nothing worth keeping
    file.delete()
    note({"kind": "note", "text": f"set aside Ray Train's record of the run ({problem}) as "
                                  f"{aside}; resuming from {chosen}"})
