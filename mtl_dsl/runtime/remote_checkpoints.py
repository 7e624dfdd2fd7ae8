"""Checkpoints in remote storage (``s3://``, ``gs://``...): the reading side of ``checkpoints.py``.

A run folder in object storage has the layout of a local one (``RUN/step_XXXXXXXX/`` with
``model.safetensors``, ``optimizer.safetensors``, ``meta.json``), written there by Ray Train's
storage handling. Finding the newest usable checkpoint reads only small things: each folder's
``meta.json`` and the two safetensors headers (two ranged reads per file), checked as
``safetensors`` checks a local file (the header is valid, the tensors' byte ranges tile the data
and the file is as long as the header says), so a truncated upload is skipped and said without
downloading gigabytes. Loading downloads the chosen folder into a temporary directory, reads it
into memory and removes the copy.

The safetensors header is parsed here rather than with ``safetensors.safe_open``, which needs the
whole file on a local disk.
"""
from __future__ import annotations

import json
import re
import struct
from typing import Optional

from ..errors import SpecError, usage_error
from .checkpoint_format import FORMAT, META_FILE, MODEL_FILE, STATE_FILE
from .storage import Location, StorageUnreachable

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_STEP_NAME = re.compile(r"step_(\d+)")


def read_meta(folder: Location) -> dict:
    file = folder.child(META_FILE)
    try:
        if not file.is_file():
            raise usage_error(str(file), f"not a checkpoint (no {META_FILE}): {folder}")
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise usage_error(str(file), f"corrupt checkpoint file {file}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise usage_error(str(file), f"{file} is not an mtl-dsl checkpoint (format {FORMAT})")
    return meta


def read_shapes(file: Location) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file in storage, from its header; ``UsageError`` naming
    the file if it is missing, its header is not valid, or its length does not match."""
    try:
        if not file.is_file():
            raise usage_error(str(file), f"checkpoint file missing: {file}")
        size = file.size()
        if size < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (length,) = struct.unpack("<Q", file.read_range(0, 8))
        if length > _MAX_HEADER or 8 + length > size:
            raise ValueError(f"header of {length} bytes in a file of {size} bytes")
        header = json.loads(file.read_range(8, length).decode("utf-8"))
        return _check_header(header, size - 8 - length)
    except SpecError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise usage_error(str(file), f"corrupt checkpoint file {file}: {exc}") from None


def _check_header(header: dict, data_bytes: int) -> dict[str, tuple[int, ...]]:
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    spans, shapes = [], {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(v) for v in entry["data_offsets"])
        count = 1
        for d in shape:
            count *= d
        if entry["dtype"] not in _DTYPE_BYTES or end - begin != count * _DTYPE_BYTES[entry["dtype"]]:
            raise ValueError(f"tensor {name}: {entry['dtype']} {list(shape)} does not fill bytes "
                             f"{begin}..{end}")
        spans.append((begin, end))
        shapes[name] = shape
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ValueError(f"tensor data not contiguous at byte {begin}")
        position = end
    if position != data_bytes:
        raise ValueError(f"the header describes {position} bytes of tensor data, the file holds "
                         f"{data_bytes} (truncated?)")
    return shapes


def problem(folder: Location) -> Optional[str]:
    """Why the checkpoint in ``folder`` cannot be loaded, or None (small reads only)."""
    try:
        read_meta(folder)
        read_shapes(folder.child(MODEL_FILE))
        read_shapes(folder.child(STATE_FILE))
    except StorageUnreachable:  # not a corrupt checkpoint: the store does not answer
        raise
    except SpecError as exc:
        return exc.message
    return None


def step_of(folder: Location) -> int:
    try:
        return int(json.loads(folder.child(META_FILE).read_bytes()).get("step", -1))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        match = _STEP_NAME.fullmatch(folder.name)
        return int(match.group(1)) if match else -1


def _is_candidate(folder: Location) -> bool:
    return bool(_STEP_NAME.fullmatch(folder.name)) or folder.child(META_FILE).is_file()


def candidates(folder: Location) -> list[Location]:
    """Checkpoint folders (complete or not) directly in ``folder`` or one level deeper."""
    found: list[Location] = []
    for child in folder.child_dirs():
        if child.name.startswith("."):
            continue
        if _is_candidate(child):
            found.append(child)
        else:
            found.extend(g for g in child.child_dirs()
                         if not g.name.startswith(".") and _is_candidate(g))
    return found


def list_checkpoints(folder: Location) -> list[Location]:
    return [c for c in candidates(folder) if c.child(META_FILE).is_file()]


def newest_usable(folder: Location) -> tuple[Optional[Location], list[tuple[Location, str]]]:
    skipped: list[tuple[Location, str]] = []
    for path in sorted(candidates(folder), key=step_of, reverse=True):
        why = problem(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def resolve(folder: Location, skipped: Optional[list] = None) -> Location:
    """A checkpoint folder in storage, or a run folder's newest usable checkpoint."""
    if folder.child(META_FILE).is_file():
        return folder
    if not folder.is_dir():
        raise usage_error(str(folder), f"checkpoint not found: {folder}")
    found, passed = newest_usable(folder)
    if skipped is not None:
        skipped.extend(passed)
    if found is None:
        if passed:
            more = f" (and {len(passed) - 1} more)" if len(passed) > 1 else ""
            raise usage_error(str(folder), f"no usable checkpoint in {folder}: {passed[0][0].name}: "
                                           f"{passed[0][1]}{more}")
        raise usage_error(str(folder), f"no checkpoint in {folder} (looked for */{META_FILE})")
    return found
