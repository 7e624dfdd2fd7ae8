"""Whether a run may continue from a checkpoint, decided on the driver before any worker starts.

Two questions, each answered with one message:

* The graph. A checkpoint records its model's graph signature: the hash of what decides the
  weights' names and shapes (``ModelIR.graph_hash``: blocks, arguments, tasks, input size; not
  source locations, comments or import paths) and a digest per node and per output. Resuming
  accepts any edit of the spec that leaves these equal (a comment, a moved spec folder, a renamed
  import path) and refuses any other, naming the nodes that differ.
* The run config. A key that decides which data the run sees and in which order (dataset, task
  list, seed, batch size, input size, augmentation) or the layout of the optimiser and loss state
  (optimiser, loss weighting) cannot change on resume: refused, naming the keys. Every other
  change (learning rate, schedule, iterations, intervals, workers...) is applied from the resumed
  step on, and reported; the checkpoints written after it record the new values.

This module imports neither torch nor ray.
"""
from __future__ import annotations

import hashlib
from typing import Any

from ..errors import usage_error

# Run-config keys (dotted prefixes) a resumed run cannot change.
FIXED_ON_RESUME = (
    "dataset.name", "dataset.length", "tasks", "training.seed", "training.batch_size",
    "training.total_batch_size", "training.input_size", "training.augment", "optimizer.name",
    "loss.weighting",
)
NOT_COMPARED = ("recipe", "run.name", "run.storage", "run.storage_endpoint")  # the same run folder, or a record only


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def graph_signature(ir: Any) -> dict:
    """``{"hash": ..., "nodes": {name: digest}, "outputs": {task.name: digest}}`` of a ModelIR."""
    if ir is None:
        return {}
    nodes = {n.name: _digest(n.model_dump_json(exclude={"loc", "trace", "shape"})) for n in ir.nodes}
    outputs = {f"{o.task}.{o.name}": _digest(o.model_dump_json(exclude={"loc"})) for o in ir.outputs}
    return {"hash": ir.graph_hash(), "nodes": nodes, "outputs": outputs}


def _listing(names: list[str], limit: int = 6) -> str:
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def graph_differences(saved: dict, now: dict) -> list[str]:
    """What differs between two graph signatures, as phrases naming the nodes."""
    parts = []
    for kind in ("nodes", "outputs"):
        a, b = saved.get(kind, {}), now.get(kind, {})
        changed = [n for n in b if n in a and a[n] != b[n]]
        added = [n for n in b if n not in a]
        removed = [n for n in a if n not in b]
        label = "node" if kind == "nodes" else "output"
        for names, how in ((changed, "changed"), (added, "new"), (removed, "removed")):
            if names:
                parts.append(f"{how} {label}{'s' if len(names) > 1 else ''} {_listing(names)}")
    return parts


def check_graph(meta: dict, signature: dict, where: str) -> None:
    """Refuse to resume from a checkpoint whose graph differs from the spec's now."""
    saved = meta.get("graph") or {}
    if not saved or not signature or saved.get("hash") == signature.get("hash"):
        return
    differences = graph_differences(saved, signature)
    if not differences:  # the tasks or the input size changed
        differences = ["the tasks or the input size differ"]
    raise usage_error(where, f"cannot resume: the model's graph changed since step "
                             f"{meta.get('step', '?')} ({'; '.join(differences)}); resume with "
                             f"the spec it was trained from, or start a new run (--run-name)")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or ({prefix[:-1]: {}} if prefix else {})
    return {prefix[:-1]: data}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(saved: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in the checkpoint, value now) for every key that differs."""
    a, b = _flatten(saved), _flatten(now)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not _under(k, NOT_COMPARED)]


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)


def check_config(meta: dict, now: dict, where: str) -> list[str]:
    """Refuse a change of a fixed key; returns the applied changes as phrases
    ("optimizer.lr 0.001 -> 0.5")."""
    saved = meta.get("run_config") or {}
    changes = config_changes(saved, now)
    fixed = [(k, a, b) for k, a, b in changes if _under(k, FIXED_ON_RESUME)]
    if fixed:
        listed = ", ".join(f"{k} ({_show(a)} -> {_show(b)})" for k, a, b in fixed)
        raise usage_error(where, f"cannot resume with a changed {listed}: these decide the data "
                                 f"the run sees or the layout of its saved state; resume with the "
                                 f"values of step {meta.get('step', '?')} or start a new run "
                                 f"(--run-name)")
    return [f"{k} {_show(a)} -> {_show(b)}" for k, a, b in changes]
