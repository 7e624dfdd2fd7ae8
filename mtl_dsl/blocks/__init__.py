"""The block library: one module per family, each registering its blocks by spec name.

``common`` (conv/norm/activation/linear/attention/MLP primitives, resizing, collections),
``algebra`` (arithmetic on graph values, element-wise functions, softmax, pooling, reductions),
``backbones`` (timm encoders), ``aggregation`` (multi-scale feature extractors), ``heads`` (per-task
prediction heads), and the published models' families ``demt``, ``tpanet``, ``invpt``, ``atrc``.
Importing this package registers every block and does not import torch.
"""
from . import aggregation, algebra, atrc, backbones, common, demt, heads, invpt, tpanet  # noqa: F401
from .registry import REGISTRY, Block, Call, Fusion, Input, Param, ShapeError, register

__all__ = ["REGISTRY", "Block", "Call", "Fusion", "Input", "Param", "ShapeError", "register", "get_block"]


def get_block(name: str) -> Block:
    return REGISTRY[name]
