"""Helpers shared by the test files (import them: ``from conftest import make_call``)."""
from __future__ import annotations

from typing import Any

import torch

from mtl_dsl.blocks import REGISTRY, Call


def make_call(block: str, inputs: dict, params: dict | None = None, *, tasks=(), size=(64, 64),
              node: str = "n", **more_params: Any) -> Call:
    """A call of ``block`` as the checker makes it: the block's defaults filled in, then
    ``params`` and ``more_params``; omitted inputs are None."""
    spec = REGISTRY[block]
    full = {k: v.default for k, v in spec.params().items() if not v.required}
    full.update(params or {})
    full.update(more_params)
    inputs = dict(inputs)
    for name in spec.inputs():
        inputs.setdefault(name, None)
    return Call(node=node, block=block, inputs=inputs, params=full, tasks=tuple(tasks),
                input_size=size)


def n_params(module: torch.nn.Module, prefix: str = "") -> int:
    """Parameters of ``module`` (those whose name starts with ``prefix``)."""
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def assert_batch_independent(model, images: torch.Tensor, start: int, stop: int | None = None) -> None:
    """The outputs for ``images[start:stop]`` run alone equal theirs inside the whole batch."""
    part = slice(start, stop)
    with torch.no_grad():
        full, alone = model(images), model(images[part])
    for task in full:
        assert torch.allclose(full[task]["final"][part], alone[task]["final"], atol=1e-4)
