"""Checks shared by the model tests."""
from __future__ import annotations

import torch


def assert_batch_independent(model, images: torch.Tensor, start: int, stop: int | None = None) -> None:
    """The outputs for ``images[start:stop]`` run alone equal theirs inside the whole batch."""
    part = slice(start, stop)
    with torch.no_grad():
        full, alone = model(images), model(images[part])
    for task in full:
        assert torch.allclose(full[task]["final"][part], alone[task]["final"], atol=1e-4)
