"""Where blocks written in Python come from: plugins.

A spec never imports Python by itself; the user names the code that defines blocks, in one of two
ways:

* an installed package that declares an entry point in the group ``mtl_dsl.blocks``
  (``[project.entry-points."mtl_dsl.blocks"] my_blocks = "my_package.blocks"``): loaded once per
  process, the first time a spec is read or the block list is shown. The entry point names a
  module (importing it registers its blocks) or a function (called with no arguments);
* a module named on the command line (``--plugin my_package.blocks``, repeatable) or in the run
  config (``plugins: [my_package.blocks]``), imported before the spec is read.

On Ray, every worker loads the same: installed entry points by itself, and the named modules from
the job (``launch``), with a module that is not installed (a file of the current project) shipped
to the workers through Ray's ``runtime_env`` (``py_modules``), so a cluster needs nothing copied by
hand. A plugin that fails to import is a one-line error naming it and the real exception; an
installed one that fails is reported where its blocks are missed (an unknown block's note), so a
broken package does not stop specs that do not use it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import sysconfig
import traceback
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .errors import SpecError, usage_error

ENTRY_POINT_GROUP = "mtl_dsl.blocks"

_installed_done = False
_failures: list[str] = []
_loaded: list[str] = []


def load_installed() -> list[str]:
    """Load every installed plugin (entry-point group ``mtl_dsl.blocks``) once; returns what
    failed, one line each."""
    global _installed_done
    if _installed_done:
        return list(_failures)
    _installed_done = True
    _library()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        owner = f" of {dist.name} {dist.version}" if dist is not None else ""
        try:
            target = ep.load()
            if callable(target) and not isinstance(target, type):
                target()
        except Exception as e:  # a broken package: reported where its blocks are missed
            _failures.append(f"plugin '{ep.name} = {ep.value}'{owner} failed to load: "
                             f"{type(e).__name__}: {e}{_where(e)}")
    return list(_failures)


def failures() -> list[str]:
    """The installed plugins that failed to load (after ``load_installed``)."""
    return list(_failures)


def load_plugins(modules: Iterable[str] | str | None, origin: str = "--plugin") -> list[str]:
    """Import the named plugin modules (``--plugin``, the run config's ``plugins``); raises a
    ``SpecError`` naming the module and the real error. Returns the modules loaded so far."""
    _library()
    # one module named as a string, or None, as the API's other optional arguments take it
    modules = [modules] if isinstance(modules, str) else list(modules or ())
    if modules:
        _working_folder_on_path()
    for name in modules:
        if name in _loaded:
            continue
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise usage_error(origin, f"a plugin is a Python module path such as "
                                       f"my_package.blocks, got {name!r}")
        try:
            importlib.import_module(name)
        except SpecError:
            raise
        except ModuleNotFoundError as e:
            hint = ("the module must be importable: installed, or in the current folder or on "
                    "PYTHONPATH" if e.name == name.split(".")[0] else "")
            raise usage_error(origin, f"cannot load plugin '{name}': {type(e).__name__}: {e}",
                               hint=hint) from None
        except Exception as e:
            raise usage_error(origin, f"cannot load plugin '{name}': {type(e).__name__}: "
                                       f"{e}{_where(e)}") from None
        _loaded.append(name)
    return list(_loaded)


def _working_folder_on_path() -> None:
    """A plugin module may be a file in the folder the command runs from (docs/blocks.md).
    ``python -m mtl_dsl.cli`` has that folder on ``sys.path``, the ``mtl-dsl`` console script
    does not (its ``sys.path[0]`` is the script's own folder): it is added after every other
    entry, so it never shadows an installed module."""
    here = Path.cwd().resolve()
    for entry in sys.path:
        try:
            if Path(entry or ".").resolve() == here:
                return
        except OSError:
            continue
    sys.path.append(str(here))


def _library() -> None:
    """The block library is registered before any plugin adds to it."""
    importlib.import_module("mtl_dsl.blocks")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno})"


def _installed_roots() -> set[Path]:
    """Where installed packages and the standard library live (the workers have those)."""
    paths = sysconfig.get_paths()
    return {Path(paths[k]).resolve() for k in ("purelib", "platlib", "stdlib", "platstdlib")
            if k in paths}


def shipped_modules(modules: Iterable[str]) -> list[str]:
    """The files or folders to ship to Ray workers for the named plugins that are not installed
    (the top-level package's folder, or a single module's file)."""
    roots = _installed_roots()
    out: list[str] = []
    for name in modules:
        top = name.split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]).resolve()
        elif spec.origin and spec.origin.endswith(".py"):
            path = Path(spec.origin).resolve()
        else:
            continue
        if any(root == path or root in path.parents for root in roots):
            continue  # installed: the workers' environment has it
        if str(path) not in out:
            out.append(str(path))
    return out


def loaded() -> list[str]:
    """The plugin modules named so far in this process (what a Ray job gives its workers)."""
    return list(_loaded)


__all__ = ["ENTRY_POINT_GROUP", "failures", "load_installed", "load_plugins", "loaded",
           "shipped_modules"]
