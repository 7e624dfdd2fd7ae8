"""The names a node may not have, derived from torch itself and kept in ``reserved_names.json``.

A node's dotted name is its module path in the compiled model: its first part becomes an
attribute of the model (a ``torch.fx.GraphModule``), every further part an attribute of a plain
``nn.Module``. A part that is already an attribute there (``forward``, ``add_submodule``,
``training``, the model's ``ir``) or a Python keyword would break the model at run time, so the
checker refuses it. ``mtl-dsl check`` must not import torch, so the lists are generated here and
read from the JSON file; the test suite regenerates them from the installed torch and compares.

    python -m mtl_dsl.frontend.reserved      # rewrite reserved_names.json after a torch upgrade
"""
from __future__ import annotations

import functools
import json
import keyword
from pathlib import Path

DATA = Path(__file__).with_name("reserved_names.json")


def names_from_torch() -> dict[str, list[str]]:
    """``model``: attributes of a compiled model (a GraphModule, with the attributes mtl-dsl adds);
    ``module``: attributes of a plain ``nn.Module`` (the containers of dotted names)."""
    from torch import fx, nn

    from ..compiler import CompiledModel

    graph = fx.Graph()
    graph.output(graph.placeholder("images"))
    model = CompiledModel(nn.Module(), graph)
    model_names = set(dir(model)) | set(CompiledModel.__annotations__)
    return {"model": sorted(model_names), "module": sorted(set(dir(nn.Module())))}


@functools.cache
def reserved() -> dict[str, frozenset[str]]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return {k: frozenset(data[k]) for k in ("model", "module")}


def why_reserved(part: str, first: bool) -> str:
    """Why ``part`` cannot be part of a node name ('' when it can)."""
    if keyword.iskeyword(part):
        return "it is a Python keyword"
    if first and part in reserved()["model"]:
        return "the compiled model (a torch.fx.GraphModule) has an attribute of that name"
    if not first and part in reserved()["module"]:
        return "every torch module has an attribute of that name"
    return ""


def main(argv: list[str] | None = None) -> None:
    """Rewrite the JSON file; with ``--print``, print the lists instead (the test compares them
    to the file; a fresh interpreter, as torch.compile adds attributes to modules it has seen)."""
    import sys

    import torch

    names = names_from_torch()
    if "--print" in (sys.argv[1:] if argv is None else argv):
        print(json.dumps(names))
        return
    data = {"generated_by": "python -m mtl_dsl.frontend.reserved", "torch": torch.__version__,
            **names}
    DATA.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {DATA}: {len(data['model'])} model and {len(data['module'])} module names")


if __name__ == "__main__":
    main()
