"""Whether a checkpoint holds a model's graph: the keys and shapes that differ, listed for a
person, and the spec the checkpoint was written for when it is another one. The checkpoint's
files are read through ``checkpoints`` (imported where used: ``checkpoints`` re-exports these
names)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import SpecError, usage_error


def state_differences(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
                      ) -> tuple[list[str], list[str], list[str]]:
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    shape = sorted(f"{k} (checkpoint {list(found[k])}, model {list(expected[k])})"
                   for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
    return missing, unexpected, shape


def _listing(items: list[str], limit: int = 8) -> str:
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_matches(model: torch.nn.Module, checkpoint_path: Any,
                  found: dict[str, tuple[int, ...]] | None = None) -> None:
    """Raise ``SpecError`` listing the differing keys if the checkpoint is not this model's graph.
    ``checkpoint_path``: a local folder or a ``Location``/URI in remote storage. ``found``: the
    checkpoint's tensor shapes when they are in memory already (else read from the file's header)."""
    from .checkpoint_format import MODEL_FILE
    from .checkpoints import _local, _remote, read_shapes

    if found is None:
        remote = _remote(checkpoint_path)
        if remote is not None:
            from .remote_checkpoints import read_shapes as read_remote_shapes

            found = read_remote_shapes(remote.child(MODEL_FILE))
        else:
            found = read_shapes(_local(checkpoint_path) / MODEL_FILE)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected, shape = state_differences(expected, found)
    if not (missing or unexpected or shape):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if shape:
        parts.append(f"shape differs {len(shape)}: {_listing(shape)}")
    raise usage_error(str(checkpoint_path),
                       f"checkpoint {checkpoint_path} does not match the spec's graph: " + "; ".join(parts),
                       hint=_written_for(model, checkpoint_path))


def _written_for(model: torch.nn.Module, checkpoint_path: Any) -> str:
    """A hint naming the spec a checkpoint was written for, when that is another model's (its
    ``meta.json``: ``model``, else the stem of ``spec``)."""
    from .checkpoints import read_meta

    name = getattr(getattr(model, "ir", None), "name", None)
    try:
        meta = read_meta(checkpoint_path)
    except SpecError:
        return ""
    spec = meta.get("spec")
    if name is None or not isinstance(spec, str) or not spec:
        return ""
    written = meta.get("model") if isinstance(meta.get("model"), str) else Path(spec).stem
    if written == name:
        return ""
    return f"it was written for the model '{written}' of the spec '{spec}', not '{name}'"


def state_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}
