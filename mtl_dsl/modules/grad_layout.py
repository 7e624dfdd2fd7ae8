"""A guard against a PyTorch defect in the backward of batch normalisation on a batch of one.

Measured with torch 2.14.1 on CPU (float32 and float64, training and evaluation mode): when a
BatchNorm's input is ``[1, C, H, W]`` and the gradient arriving at its output is laid out
channels-last with a batch stride other than ``C*H*W`` (which torch still counts as channels-last
contiguous, since the batch has size one), ``native_batch_norm_backward`` returns wrong input,
weight and bias gradients, wrong by as much as the gradients themselves; the forward is right.
Such gradients are common: the backward of ``tokens(x)`` (``x.flatten(2).transpose(1, 2)``) and of
any permute of a batch of one produce them. InstanceNorm runs batch norm on ``[1, B*C, H, W]``, so
it meets the defect at any batch size. GroupNorm, LayerNorm, convolutions, pooling, interpolation
and ``deform_conv2d`` read such gradients correctly (checked the same way).

Found by the fusion tests: DeMT-style deformable mixers followed by an attention over the tasks'
tokens gave different gradients fused and unfused at batch one, and finite differences sided with
the fused model, whose batched BatchNorm happened to receive a contiguous gradient.

The guard is a forward hook on every BatchNorm / InstanceNorm of a compiled model (backbones
included) and a call in the batched BatchNorm: it registers a gradient hook on the output that
hands the norm's backward a contiguous copy in exactly those cases (one copy of one gradient map);
otherwise the gradient passes untouched.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def _contiguous(grad: torch.Tensor | None) -> torch.Tensor | None:
    return grad if grad is None or grad.is_contiguous() else grad.contiguous()


def _contiguous_for_batch_of_one(grad: torch.Tensor | None) -> torch.Tensor | None:
    return _contiguous(grad) if grad is not None and grad.shape[0] == 1 else grad


def guard_norm_output(y: torch.Tensor, any_batch: bool = False) -> torch.Tensor:
    """``y`` (a norm's output), with its gradient made contiguous where the defect would read it
    wrong: a batch of one, or any batch (``any_batch``) for instance norms."""
    if y.requires_grad and y.dim() > 2:
        y.register_hook(_contiguous if any_batch else _contiguous_for_batch_of_one)
    return y


def _after_norm(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    if isinstance(output, torch.Tensor):
        guard_norm_output(output, any_batch=isinstance(module, nn.modules.instancenorm._InstanceNorm))


def guard_norm_gradients(model: nn.Module) -> int:
    """A forward hook on every BatchNorm and InstanceNorm in ``model``; how many were guarded."""
    count = 0
    for module in model.modules():
        if isinstance(module, NORMS) and _after_norm not in module._forward_hooks.values():
            module.register_forward_hook(_after_norm)
            count += 1
    return count
