"""The deployed form of a compiled model: one image tensor in, one named tensor out per output.

``DeployModule`` wraps a ``CompiledModel`` (whose ``forward`` returns ``{task: {output: tensor}}``)
into what ``torch.export`` and ONNX serve:

* input ``images``: float32 ``[N, 3, H, W]`` at the size the model was compiled for. By default the
  graph normalises it itself (RGB in [0, 1], then the ImageNet mean/std every dataset of the
  runtime is trained with); with ``normalize=False`` the caller does, as in training.
* outputs, in task order: ``semseg``, ``depth``, ... for each task's final prediction and, with
  ``with_aux``, ``semseg.aux``, ``depth.inter``, ... for the other supervised outputs (ATRC's label
  heads, InvPT's intermediate predictions); float32 ``[N, C, H, W]``, at the input size.
* ``half``: the network runs in float16 (input cast after the normalisation, outputs cast back),
  so that the file's interface is the same with and without ``--fp16``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..tasks import IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "images"
BATCH = "batch"  # the name of a dynamic batch dimension
FINAL = "final"

# What each task's final prediction holds (the same reading as `mtl-dsl predict`).
MEANINGS = {
    "semseg": "class logits (argmax = class index)",
    "human_parts": "part logits (argmax = part index)",
    "sal": "two-class saliency logits (softmax, channel 1 = salient)",
    "normals": "surface normal, not normalised (divide by its L2 norm)",
    "depth": "depth, in the unit of the training labels (metres for NYUD-v2)",
    "edge": "boundary logit (sigmoid = boundary probability)",
}
OTHER_MEANINGS = {
    "aux": "auxiliary label-region logits (ATRC)",
    "inter": "intermediate prediction (deep supervision)",
}


def output_name(task: str, output: str) -> str:
    """``semseg`` for a task's final prediction, ``semseg.aux`` for its other outputs."""
    return task if output == FINAL else f"{task}.{output}"


@dataclass(frozen=True)
class OutputInfo:
    name: str
    task: str
    output: str
    channels: int

    @property
    def meaning(self) -> str:
        if self.output == FINAL:
            return MEANINGS.get(self.task, "prediction")
        return OTHER_MEANINGS.get(self.output, "supervised output")


def select_outputs(model, with_aux: bool) -> list[OutputInfo]:
    """The outputs a deployed model returns, in the compiled model's order."""
    channels = {t.name: t for t in model.ir.tasks}
    infos = []
    for task, names in model.output_names.items():
        for output in names:
            if output != FINAL and not with_aux:
                continue
            spec = channels[task]
            n = spec.channels if output == FINAL else _channels_of(model, task, output)
            infos.append(OutputInfo(output_name(task, output), task, output, n))
    return infos


def _channels_of(model, task: str, output: str) -> int:
    for o in model.ir.outputs:
        if o.task == task and o.name == output:
            return model.checked.output_type(o.value).channels
    raise KeyError(f"{task}.{output}")


class DeployModule(nn.Module):
    """``forward(images) -> {name: tensor}`` around a compiled model (see the module doc)."""

    def __init__(self, model: nn.Module, outputs: list[OutputInfo], normalize: bool = True,
                 half: bool = False):
        super().__init__()
        self.model = model
        self.selection = [(o.name, o.task, o.output) for o in outputs]
        self.normalize = normalize
        self.half = half
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images - self.mean) / self.std if self.normalize else images
        if self.half:
            x = x.half()
        out = self.model(x)
        return {name: out[task][output].float() for name, task, output in self.selection}


def example_input(batch: int, size: tuple[int, int], normalize: bool, seed: int = 0) -> torch.Tensor:
    """A random image batch in the deployed input's range: uniform [0, 1] RGB, or standard normal
    for a graph that expects normalised images."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, *size)
    if normalize:
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)
