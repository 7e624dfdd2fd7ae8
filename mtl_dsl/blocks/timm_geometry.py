"""The geometry of any timm backbone, for a torch-free ``check``: asked of timm once, then cached.

A backbone that the table of ``backbones.py`` does not describe is probed by
``mtl_dsl.modules.timm_probe`` (timm's ``feature_info`` and a shape probe on the meta device), and
the result is kept in a JSON file per timm version, so the next ``check`` answers at once:
``$MTL_DSL_CACHE/backbones-timm<version>.json`` (default ``$XDG_CACHE_HOME/mtl-dsl``, else
``~/.cache/mtl-dsl``). The probe needs torch: in a process that has imported torch already (compile,
train) it runs in-process; otherwise (``mtl-dsl check``) in a child Python, so ``check`` itself
never imports torch. A description is plain data: deleting the cache only costs a new probe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PROBE_SCRIPT = Path(__file__).resolve().parent.parent / "modules" / "timm_probe.py"
PROBE_TIMEOUT_S = 900


class BackboneProbeError(Exception):
    """A name that is no usable timm backbone (the message says why; the hint what to do)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


def timm_version() -> str:
    try:
        return metadata.version("timm")
    except metadata.PackageNotFoundError:  # pragma: no cover - timm is a dependency
        return "unknown"


def cache_dir() -> Path:
    root = os.environ.get("MTL_DSL_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mtl-dsl"


def cache_file() -> Path:
    return cache_dir() / f"backbones-timm{timm_version()}.json"


def cached() -> dict[str, dict[str, Any]]:
    """Every description in the cache (empty when there is none or it cannot be read)."""
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(name: str, description: dict[str, Any]) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = cached()
        data[name] = description
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".backbones-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the probe runs again next time
        pass


def describe(name: str) -> dict[str, Any]:
    """The description of timm model ``name`` (a pretrained tag is ignored), from the cache or a
    new probe. Raises ``BackboneProbeError``."""
    base = name.split(".")[0]
    known = cached().get(base)
    if known is not None:
        return known
    result = _probe_here(base) if "torch" in sys.modules else _probe_in_child(base)
    if "error" in result:
        raise BackboneProbeError(result["error"], result.get("hint", ""))
    _store(base, result)
    return result


def _probe_here(name: str) -> dict[str, Any]:
    from ..modules import timm_probe

    try:
        return timm_probe.describe(name)
    except timm_probe.ProbeError as e:
        return {"error": e.message, "hint": e.hint}


def _probe_in_child(name: str) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, str(PROBE_SCRIPT), name], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"cannot probe timm model '{name}': {e}"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probing timm model '{name}' failed: {tail}"}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"error": f"probing timm model '{name}' gave no description: {lines[-1][:200]}"}
