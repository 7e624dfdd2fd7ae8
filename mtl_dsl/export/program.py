"""``torch.export`` of a deployed model: the one graph both file formats are written from.

Traced under ``torch.no_grad`` (inference: no autograd bookkeeping, no activation checkpointing)
in eval mode. With a dynamic batch the example has two images (``torch.export`` specialises a
dimension whose example size is 0 or 1) and the batch dimension is ``batch`` in 1..``MAX_BATCH``.
"""
from __future__ import annotations

import torch

from .deploy import BATCH
from .locate import (batch_specialising_node, blocker, model_error, node_error,
                     node_of_traceback, trace_reason)
from .quiet import quiet

MAX_BATCH = 4096


def example_batch(dynamic_batch: bool) -> int:
    return 2 if dynamic_batch else 1


def trace(deploy: torch.nn.Module, model, example: torch.Tensor, dynamic_batch: bool):
    """The ``ExportedProgram`` of ``deploy`` (which wraps ``model``); a ``SpecError`` at the spec
    node that cannot be exported otherwise."""
    error = blocker(model)
    if error is not None:
        raise error
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    dynamic = ({0: batch},) if dynamic_batch else None
    try:
        with torch.no_grad(), quiet():
            return torch.export.export(deploy, (example,), dynamic_shapes=dynamic)
    except Exception as exc:  # noqa: BLE001 - every failure is told as the node behind it
        why, hint = trace_reason(exc)
        node = node_of_traceback(exc, model)
        if node is None and dynamic_batch and "batch size" in why:
            node = batch_specialising_node(model, example, batch)
        if node is not None:
            raise node_error(model, node, "with torch.export", why, hint) from None
        raise model_error(model, "with torch.export", why, hint) from None
