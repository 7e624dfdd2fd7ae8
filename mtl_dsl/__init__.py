"""mtl-dsl: a declarative language for multi-task dense-prediction vision models.

The API a user needs, from the package itself::

    from mtl_dsl import compile_model, check_spec, load_ir, SpecError
    model = compile_model("demt", tasks="nyud", preset="hrnet18")
    out = model(images)           # {task: {"final": [B, C_t, H, W], ...}}

``load_ir`` (spec -> typed IR) and ``check_spec`` (IR -> shape-checked graph) never import torch;
``compile_model`` builds the ``nn.Module``. ``block`` makes an ``nn.Module`` a block of the
language (docs/blocks.md); ``register`` (with ``Block``, ``Input``, ``Param``, ``Call``; ``Fusion``
for a batched form) adds a block declared by hand; ``load_plugins`` imports the modules that define
blocks. The names are loaded on first use, so ``import mtl_dsl``
stays instant and imports neither torch nor the front-end.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import SpecError

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "compile_model": "mtl_dsl.api",
    "check_spec": "mtl_dsl.api",
    "load_ir": "mtl_dsl.api",
    "compile_ir": "mtl_dsl.api",
    "block": "mtl_dsl.blocks.user",
    "load_plugins": "mtl_dsl.plugins",
    "register": "mtl_dsl.blocks.registry",
    "Block": "mtl_dsl.blocks.registry",
    "Call": "mtl_dsl.blocks.registry",
    "Fusion": "mtl_dsl.blocks.registry",
    "Input": "mtl_dsl.blocks.registry",
    "Param": "mtl_dsl.blocks.registry",
    "ShapeError": "mtl_dsl.blocks.registry",
}
__all__ = ["SpecError", "__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .api import check_spec, compile_ir, compile_model, load_ir
    from .blocks.registry import Block, Call, Fusion, Input, Param, ShapeError, register
    from .blocks.user import block
    from .plugins import load_plugins


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        if _EXPORTS[name] in ("mtl_dsl.blocks.registry", "mtl_dsl.blocks.user"):
            import_module("mtl_dsl.blocks")  # the library registered before a user adds to it
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtl_dsl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
