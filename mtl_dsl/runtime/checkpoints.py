"""Checkpoints: a directory of safetensors files and one JSON file; never pickle.

Layout of a checkpoint directory:

* ``model.safetensors``: the compiled model's ``state_dict`` (parameters and buffers).
* ``optimizer.safetensors``: every tensor of the optimiser(s), the loss weighting's state and
  anything else the training loop needs to continue exactly, flattened to ``prefix.path.to.key``.
* ``meta.json``: step, metrics, run config, the spec's name, source text and IR hash (sha256 of
  the IR JSON), the task profile, the data-order state, and the non-tensor parts of the optimiser
  state (hyper-parameters of the param groups).

Writes are atomic: everything goes to a hidden temporary directory next to the target, each file
is fsync'ed, then the directory is renamed into place (a crash mid-write leaves only a hidden
temporary folder, which readers ignore, and every earlier checkpoint intact). ``meta.json`` is
written last.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import SpecError, usage_error
from .checkpoint_format import FORMAT, META_FILE, MODEL_FILE, STATE_FILE
from .failures import CheckpointWriteError
from .runlock import pid_alive


def ir_hash(ir: Any) -> str:
    """sha256 of the IR's JSON (a pydantic model, a JSON string, or None)."""
    if ir is None:
        return ""
    text = ir if isinstance(ir, str) else ir.model_dump_json()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- optimiser state <-> flat tensors + JSON --------------------------------------------------------


def flatten_optimizer(state_dict: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict, prefix: str) -> dict:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(head):
            index, _, key = name[len(head):].partition(".")
            state.setdefault(int(index), {})[key] = value
    for index, entry in info.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for g in info["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- writing --------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors_for_file(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights) or are not contiguous.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_checkpoint(target: str | Path, model_state: dict[str, torch.Tensor],
                    state_tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    A full disk raises ``CheckpointWriteError`` ("no space left on device while writing DIR
    (N MB needed)"), and so does a folder that cannot be written (read-only, no permission);
    the earlier checkpoints stay as they were."""
    target = Path(target)
    try:
        return _write_checkpoint(target, model_state, state_tensors, meta)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # the same again on a retry
            raise CheckpointWriteError(f"cannot write checkpoint {target}: "
                                       f"{exc.strerror or exc}") from None
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        needed = sum(t.numel() * t.element_size() for t in (*model_state.values(), *state_tensors.values()))
        raise CheckpointWriteError(f"no space left on device while writing {target} "
                                   f"({max(1, math.ceil(needed / 2**20))} MB needed)") from None


def _write_checkpoint(target: Path, model_state: dict[str, torch.Tensor],
                      state_tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        _save_tensors(model_state, tmp / MODEL_FILE)
        _fsync_file(tmp / MODEL_FILE)
        _save_tensors(state_tensors, tmp / STATE_FILE)
        _fsync_file(tmp / STATE_FILE)
        meta = dict(meta, format=FORMAT)
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if target.exists():
            # Replacing a checkpoint of the same name: move the old one aside first, so there is
            # always a complete checkpoint under one of the two names.
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        # Ctrl-C (or any failure) between the two renames: put the replaced checkpoint back
        # under its name rather than leave it only under a hidden one that readers ignore.
        if old is not None and old.is_dir() and not target.exists():
            os.rename(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors.torch.save_file``, whose failures to write (a full disk) come back as the
    ``OSError`` they are: the library reports them as ``SafetensorError("... I/O error: No space
    left on device (os error 28)")``."""
    try:
        save_file(_tensors_for_file(tensors), str(path), metadata={"format": FORMAT})
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), f"{os.strerror(int(code.group(1)))}: {path}") from exc


def _json_default(value: Any):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to meta.json")


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest (by step) usable checkpoints in ``folder``, and the
    temporary folders of writers that are no longer running. A checkpoint that cannot be loaded
    never takes the place of one that can: a corrupt one newer than those kept stays as it is
    (a resumed run writes over it when it reaches its step), an older one goes."""
    folder = Path(folder)
    found = sorted(list_checkpoints(folder), key=lambda p: _step_of(p))
    usable = [p for p in found if checkpoint_problem(p) is None]
    kept = usable[-keep:] if keep > 0 else []
    oldest_kept = _step_of(kept[0]) if kept else -1  # none usable: delete nothing
    for path in found:
        if path not in kept and (path in usable or _step_of(path) < oldest_kept):
            shutil.rmtree(path, ignore_errors=True)
    for stale in folder.glob(".*.tmp-*"):
        match = re.search(r"\.tmp-(\d+)-[0-9a-f]+$", stale.name)
        if match is None or not pid_alive(int(match.group(1))):
            shutil.rmtree(stale, ignore_errors=True)


# --- reading --------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    path: Any  # a local Path, or a storage Location for a checkpoint in remote storage
    meta: dict
    model_state: dict[str, torch.Tensor] = field(repr=False)
    state_tensors: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def _read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise usage_error(str(path), f"checkpoint file missing: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise usage_error(str(path), f"corrupt checkpoint file {path}: {exc}") from None


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if not path.is_file():
        raise usage_error(str(path), f"checkpoint file missing: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise usage_error(str(path), f"corrupt checkpoint file {path}: {exc}") from None


def _remote(path: Any):
    """``path`` as a storage ``Location`` if it is a URI or a Location (else None)."""
    from .storage import Location, is_remote, open_location

    if isinstance(path, Location):
        return None if path.local else path
    if is_remote(path):
        return open_location(str(path), where=str(path))
    return None


def _local(path: Any) -> Path:
    from .storage import Location

    return path.local_path if isinstance(path, Location) else Path(path)


def read_meta(path: Any) -> dict:
    """The ``meta.json`` of a checkpoint folder (a path, a URI or a storage ``Location``)."""
    remote = _remote(path)
    if remote is not None:
        from .remote_checkpoints import read_meta as read_remote_meta

        return read_remote_meta(remote)
    path = _local(path)
    file = path / META_FILE
    if not file.is_file():
        raise usage_error(str(file), f"not a checkpoint (no {META_FILE}): {Path(path)}")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise usage_error(str(file), f"corrupt checkpoint file {file}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise usage_error(str(file), f"{file} is not an mtl-dsl checkpoint (format {FORMAT})")
    return meta


def load_checkpoint(path: Any, with_state: bool = True) -> LoadedCheckpoint:
    """A checkpoint (folder, run folder, URI or storage ``Location``) read into memory; a remote
    one is downloaded to a temporary folder first (removed after reading). ``path`` of the result
    is where it was found (a local ``Path`` or a ``Location``)."""
    path = resolve_checkpoint(path)
    if not isinstance(path, Path):
        with path.fetched() as local:
            loaded = _load_local(local, with_state)
        return LoadedCheckpoint(path=path, meta=loaded.meta, model_state=loaded.model_state,
                                state_tensors=loaded.state_tensors)
    return _load_local(path, with_state)


def _load_local(path: Path, with_state: bool) -> LoadedCheckpoint:
    meta = read_meta(path)
    model_state = _read_safetensors(path / MODEL_FILE)
    state = _read_safetensors(path / STATE_FILE) if with_state else {}
    return LoadedCheckpoint(path=path, meta=meta, model_state=model_state, state_tensors=state)


def load_newest(path: Any, skipped: list | None = None, with_state: bool = True,
                attempts: int = 5) -> LoadedCheckpoint:
    """``load_checkpoint(resolve_checkpoint(path, skipped))``, for a run folder that a live run
    may be writing: its pruning can delete the checkpoint chosen here before it is read (``eval``
    of a run in progress). Then the newest usable checkpoint is chosen again; an error of a
    checkpoint that is still the newest is the user's to see. ``path``: a local path, a URI or a
    storage ``Location`` (compared by their text: a ``Location``'s filesystem object is not)."""
    remote = _remote(path)
    path = remote if remote is not None else _local(path)
    for _ in range(attempts):
        passed: list = []
        chosen = resolve_checkpoint(path, passed)
        try:
            loaded = load_checkpoint(chosen, with_state=with_state)
        except (SpecError, OSError):
            if str(chosen) == str(path) or str(newest_usable(path)[0]) == str(chosen):
                raise
            continue
        if skipped is not None:
            skipped.extend(passed)
        return loaded
    raise usage_error(str(path), f"the checkpoints in {path} changed {attempts} times while being "
                                 f"read (a run is writing them); try again")


def _step_of(path: Path) -> int:
    """The step of a checkpoint folder: from its meta.json, else from its name (step_00000100)."""
    try:
        return int(json.loads((path / META_FILE).read_text(encoding="utf-8")).get("step", -1))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        match = re.fullmatch(r"step_(\d+)", path.name)
        return int(match.group(1)) if match else -1


def list_checkpoints(folder: Any) -> list:
    """Complete checkpoint directories directly under ``folder`` or one level deeper (local
    paths, or storage ``Location``s for a remote run folder)."""
    remote = _remote(folder)
    if remote is not None:
        from .remote_checkpoints import list_checkpoints as list_remote

        return list_remote(remote)
    return [p for p in _candidates(_local(folder)) if (p / META_FILE).is_file()]


def _candidates(folder: str | Path) -> list[Path]:
    """Folders under ``folder`` (or one level deeper) that hold a meta.json or are named like a
    checkpoint (``step_N``): what a reader must look at, corrupt ones included."""
    folder = Path(folder)
    found: list[Path] = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        if (child / META_FILE).is_file() or re.fullmatch(r"step_\d+", child.name):
            found.append(child)
        else:
            found.extend(g for g in child.iterdir() if not g.name.startswith(".") and g.is_dir()
                         and ((g / META_FILE).is_file() or re.fullmatch(r"step_\d+", g.name)))
    return found


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return max(found, key=_step_of) if found else None


def checkpoint_problem(path: Any) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded (a missing, corrupt or truncated file), or
    None; reads only meta.json and the safetensors headers."""
    remote = _remote(path)
    if remote is not None:
        from .remote_checkpoints import problem

        return problem(remote)
    path = _local(path)
    try:
        read_meta(path)
        read_shapes(path / MODEL_FILE)
        read_shapes(path / STATE_FILE)
    except SpecError as exc:
        return exc.message
    return None


def newest_usable(folder: Any) -> tuple[Any, list[tuple[Any, str]]]:
    """(the newest checkpoint of a run folder that can be loaded, the newer ones skipped with the
    reason for each); ``Location``s for a remote run folder."""
    remote = _remote(folder)
    if remote is not None:
        from .remote_checkpoints import newest_usable as newest_remote

        return newest_remote(remote)
    skipped: list[tuple[Path, str]] = []
    for path in sorted(_candidates(_local(folder)), key=_step_of, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def resolve_checkpoint(path: Any, skipped: list | None = None):
    """A checkpoint directory, or a run folder (-> its newest usable checkpoint; the corrupt newer
    ones are appended to ``skipped`` as (path, reason)). A URI or remote ``Location`` gives a
    ``Location``, a local path a ``Path``."""
    remote = _remote(path)
    if remote is not None:
        from .remote_checkpoints import resolve

        return resolve(remote, skipped)
    path = _local(path)
    if not path.exists():
        raise usage_error(str(path), f"checkpoint not found: {path}")
    if (path / META_FILE).is_file():
        return path
    found, passed = newest_usable(path)
    if skipped is not None:
        skipped.extend(passed)
    if found is None:
        if passed:
            raise usage_error(str(path), f"no usable checkpoint in {path}: {passed[0][0].name}: "
                                         f"{passed[0][1]}" + (f" (and {len(passed) - 1} more)"
                                                              if len(passed) > 1 else ""))
        raise usage_error(str(path), f"no checkpoint in {path} (looked for */{META_FILE})")
    return found


# --- matching a checkpoint against a model -----------------------------------------------------------


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


def meta_file_of(path: Any) -> str:
    """The ``meta.json`` of a checkpoint folder (a ``Path`` or a ``Location``), as text."""
    return f"{str(path).rstrip('/')}/{META_FILE}"


def load_model_weights(model: torch.nn.Module, checkpoint: LoadedCheckpoint) -> None:
    # The tensors are in memory: the folder may be gone by now (pruned by the run writing it).
    check_matches(model, checkpoint.path, state_shapes(checkpoint.model_state))
    model.load_state_dict(checkpoint.model_state, strict=True)


__all__ = ["SpecError", "save_checkpoint", "load_checkpoint", "check_matches", "latest_checkpoint",
           "list_checkpoints", "newest_usable", "checkpoint_problem", "flatten_optimizer",
           "unflatten_optimizer", "ir_hash", "read_meta", "resolve_checkpoint", "prune_checkpoints",
           "load_model_weights", "pid_alive", "state_shapes", "meta_file_of"]
