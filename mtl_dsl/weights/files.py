"""Reading a checkpoint file as released, without ever running code from it.

Formats (told apart by their first bytes, not their extension):

* ``.safetensors``: read with safetensors (no code by construction);
* ``.pth``, ``.pth.tar``, ``.ckpt``, ``.bin`` (a torch zip archive or a legacy pickle): read with
  ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only. A file
  that would need any other class (an ``argparse.Namespace`` hyper-parameter object, a model
  object, numpy arrays) is refused with the name of the class, not loaded with a trust flag.

Wrappers, as the official repositories save them: PyTorch Lightning (``{"state_dict": {"model.…":
…}, "epoch": …}``: the ``model.`` keys are the network, the rest, e.g. the loss module's buffers,
is set aside), mmsegmentation (``{"meta": …, "state_dict": …}``), InvPT (``{"model": …}`` with
DistributedDataParallel's ``module.`` prefix), DataParallel (``module.``), or a bare state_dict.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import simple_error

SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_LIGHTNING_MARKERS = ("pytorch-lightning_version", "global_step", "epoch", "callbacks")


@dataclass
class OfficialWeights:
    """The tensors of a checkpoint file under their stored names (wrappers removed)."""

    path: Path
    tensors: dict[str, Any]  # name -> torch.Tensor, in the file's order
    format: str  # "safetensors" or "torch"
    wrapper: str = ""  # "lightning", "mmseg", "state_dict", "model", ""
    stripped: str = ""  # a prefix removed from every key ("module.", "model.")
    set_aside: dict[str, str] = field(default_factory=dict)  # key -> why it is not the network's
    sha256: str = ""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.tensors.items()}

    def dtypes(self) -> list[str]:
        return sorted({str(v.dtype).replace("torch.", "") for v in self.tensors.values()})


def read_weights(path: str | Path) -> OfficialWeights:
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise simple_error(name, f"weights file not found: {name}")
    if not path.is_file():
        raise simple_error(name, f"{name} is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise simple_error(name, f"cannot read {name}: {exc}") from None
    if _looks_like_safetensors(head):
        tensors, fmt = _read_safetensors(path), "safetensors"
    elif head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        tensors, fmt = _read_torch(path), "torch"
    else:
        raise simple_error(name, f"{name} is neither a .safetensors file nor a torch checkpoint "
                                 f"(.pth, .pth.tar, .ckpt)")
    weights = _unwrap(path, tensors, fmt)
    weights.sha256 = file_sha256(path)
    return weights


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise simple_error(str(path), f"cannot read {path}: truncated or not a valid .safetensors "
                                      f"file ({exc})") from None


def _read_torch(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        what = f"an object of type `{found.group(1)}`" if found else "an object that is not a tensor"
        raise simple_error(
            str(path), f"refusing to load {path}: it pickles {what}, and unpickling it would run "
                       f"code; a weights file may hold only tensors, numbers, strings and plain "
                       f"containers",
            hint="save its state_dict with safetensors (or torch.save of a plain dict of tensors) "
                 "from the code that wrote it") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise simple_error(str(path), f"cannot read {path}: truncated or corrupt torch "
                                      f"checkpoint ({first})") from None


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _unwrap(path: Path, content: Any, fmt: str) -> OfficialWeights:
    wrapper = ""
    lightning = False
    if isinstance(content, dict) and not _all_tensors(content):
        lightning = any(k in content for k in _LIGHTNING_MARKERS) and "state_dict" in content
        mmseg = "meta" in content and "state_dict" in content
        for key, kind in (("state_dict", "lightning" if lightning else
                           "mmseg" if mmseg else "state_dict"),
                          ("model", "model"), ("module", "module")):
            if isinstance(content.get(key), dict):
                content, wrapper = content[key], kind
                break
    if not isinstance(content, dict) or not content:
        raise simple_error(str(path), f"{path} holds no state_dict (a dict of named tensors)")
    tensors = {str(k): v for k, v in content.items() if _is_tensor(v)}
    others = [str(k) for k, v in content.items() if not _is_tensor(v)]
    if not tensors:
        top = ", ".join(list(map(str, content))[:8])
        raise simple_error(str(path), f"{path} holds no tensors (its keys: {top})")
    weights = OfficialWeights(path=path, tensors=tensors, format=fmt, wrapper=wrapper)
    for k in others:
        weights.set_aside[k] = "not a tensor"
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in weights.tensors):
            weights.tensors = {k[len(prefix):]: v for k, v in weights.tensors.items()}
            weights.stripped += prefix
        elif prefix == "model." and lightning and any(k.startswith(prefix) for k in weights.tensors):
            # A LightningModule holds the network as ``self.model``; its other members (the
            # loss's buffers) are not part of the network.
            for k in [k for k in weights.tensors if not k.startswith(prefix)]:
                weights.set_aside[k] = "not part of the network (another member of the " \
                                       "LightningModule, e.g. the loss)"
                del weights.tensors[k]
            weights.tensors = {k[len(prefix):]: v for k, v in weights.tensors.items()}
            weights.stripped += prefix
    return weights


def _all_tensors(content: dict) -> bool:
    return all(_is_tensor(v) for v in content.values())
