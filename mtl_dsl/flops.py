"""Counting multiply-adds of a model's forward pass.

The figure is **multiply-accumulates (MACs) = FLOPs / 2** of the convolutions, matrix products
(``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``einsum`` through its decomposition into them), attention
(every ``scaled_dot_product_attention`` backend) and torchvision's ``deform_conv2d``: what fvcore
reports as "conv+mm", the convention of the papers' tables. (The papers themselves measured with a
module-hook counter such as ptflops, which also adds norms, activations and upsampling; the ATRC
family's printed GFLOPs are 0.6-2.9 % above our count.) Counting is done by
``torch.utils.flop_counter.FlopCounterMode`` at the aten level, so bare tensor ops are seen too.

Every op that ran, was not counted, and is not known to be free of multiply-adds (elementwise ops,
views, copies, reductions, norms, softmax, pooling, interpolation, concatenation, ...) is listed in
``MacReport.uncounted``, so a total is never silently low.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


class MacReport(NamedTuple):
    """``total``: MACs of the whole forward; ``per_module``: MACs inside each submodule, keyed by
    its dotted name in the model (``"d.semseg"``; the model itself is ``""``); ``uncounted``: ops
    that ran without a formula and may do multiply-adds (should be empty)."""

    total: int
    per_module: dict[str, int]
    uncounted: tuple[str, ...]

    def summary(self) -> str:
        text = f"{self.total / 1e9:.3f} GMACs (conv+mm, 1 MAC = 2 FLOPs)"
        if self.uncounted:
            text += f"; not counted: {', '.join(self.uncounted)}"
        return text


def _deform_conv2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """fvcore's handler: Cout * Cin/groups * kh * kw MACs per output pixel (weight shape is
    [Cout, Cin/groups, kh, kw]); the bilinear sampling of the offsets is not counted."""
    batch, _, h_out, w_out = out_shape
    return 2 * batch * h_out * w_out * math.prod(weight_shape)


def _deform_conv2d_backward_flop(grad_shape, input_shape, weight_shape, *args, out_shape=None,
                                 **kwargs) -> int:
    """Gradients for the input and for the weight: twice the forward products."""
    batch, _, h_out, w_out = grad_shape
    return 4 * batch * h_out * w_out * math.prod(weight_shape)


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                                 value_shape)


def extra_formulas() -> dict[Any, Any]:
    """Formulas for ops that torch's counter lacks and our blocks run."""
    formulas: dict[Any, Any] = {
        # the CPU backend of scaled_dot_product_attention
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
    }
    import torchvision.ops  # noqa: F401  (registers torch.ops.torchvision)

    formulas[torch.ops.torchvision.deform_conv2d] = _deform_conv2d_flop
    formulas[torch.ops.torchvision._deform_conv2d_backward] = _deform_conv2d_backward_flop
    return formulas


# Ops without multiply-adds (besides every op tagged pointwise): views, copies, creation,
# reductions, norms, softmax, pooling, interpolation, indexing, concatenation, random numbers.
MAC_FREE_OPS = frozenset("""
    view _unsafe_view reshape permute transpose t expand expand_as unsqueeze squeeze flatten unflatten
    alias detach slice select narrow split split_with_sizes unbind chunk as_strided diagonal
    unfold im2col col2im view_as_real view_as_complex lift_fresh lift_fresh_copy _reshape_alias
    clone copy copy_ _to_copy to contiguous _copy_from fill fill_ zero zero_ empty empty_like
    empty_strided new_empty new_empty_strided new_zeros new_ones new_full zeros zeros_like ones
    ones_like full full_like scalar_tensor arange linspace logspace eye tril triu _local_scalar_dense
    item set_ resize_ cat stack hstack vstack constant_pad_nd pad reflection_pad2d replication_pad2d
    roll flip repeat repeat_interleave tile index index_select gather scatter scatter_add
    index_put index_put_ index_add masked_fill masked_select masked_scatter where nonzero take
    sum mean amax amin max min argmax argmin var var_mean std std_mean prod cumsum cumprod
    logsumexp norm linalg_vector_norm frobenius_norm all any sort topk kthvalue median count_nonzero
    softmax _softmax log_softmax _log_softmax _softmax_backward_data _log_softmax_backward_data
    native_layer_norm native_layer_norm_backward native_batch_norm native_batch_norm_backward
    _native_batch_norm_legit _native_batch_norm_legit_no_training _native_batch_norm_legit_functional
    native_group_norm native_group_norm_backward _fused_rms_norm batch_norm_backward
    max_pool2d_with_indices max_pool2d_with_indices_backward avg_pool2d avg_pool2d_backward
    adaptive_avg_pool2d _adaptive_avg_pool2d _adaptive_avg_pool2d_backward adaptive_max_pool2d
    upsample_bilinear2d upsample_bilinear2d_backward upsample_nearest2d upsample_nearest2d_backward
    _upsample_bilinear2d_aa upsample_bicubic2d grid_sampler_2d grid_sampler_2d_backward
    native_dropout native_dropout_backward bernoulli bernoulli_ rand rand_like randn randn_like
    uniform_ normal_ randint randperm embedding embedding_dense_backward one_hot
    threshold_backward gelu_backward sigmoid_backward tanh_backward softplus_backward
    silu_backward hardtanh_backward leaky_relu_backward
    nll_loss_forward nll_loss2d_forward nll_loss_backward nll_loss2d_backward
    binary_cross_entropy_with_logits mse_loss l1_loss smooth_l1_loss
    _assert_async _assert_tensor_metadata sym_constrain_range_for_size _functional_assert_async
""".split())


def _op_name(packet: Any) -> str:
    return str(packet).replace("aten.", "aten::", 1) if str(packet).startswith("aten.") else str(packet)


def _is_mac_free(packet: Any) -> bool:
    name = getattr(packet, "__name__", str(packet)).split(".")[-1]
    if name in MAC_FREE_OPS or name.rstrip("_") in MAC_FREE_OPS:
        return True
    try:
        overloads = [getattr(packet, o) for o in packet.overloads()]
    except (AttributeError, RuntimeError):
        return False
    return any(torch.Tag.pointwise in op.tags for op in overloads)


class _RecordingCounter(FlopCounterMode):
    """torch's counter, also remembering the ops that ran without a formula."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=extra_formulas())
        self.uncounted: dict[str, int] = defaultdict(int)

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet not in self.flop_registry and not _is_mac_free(func_packet):
            self.uncounted[_op_name(func_packet)] += 1
        return super()._count_flops(func_packet, out, args, kwargs)


def count_macs(model: nn.Module, images: torch.Tensor, *inputs: Any) -> MacReport:
    """MACs of ``model(images, *inputs)`` (forward only, no gradients; the model's train/eval
    mode is left as it is: count in eval mode for inference figures).

    A module may declare multiply-adds that its aten ops do not show with a method
    ``multiply_adds(output, *inputs) -> int``: the weighted sum of the algebra blocks, a fold of
    ``torch.addcmul`` (an op tagged pointwise), counts one MAC per term and output element there,
    as the matrix product over its terms that it is."""
    counter = _RecordingCounter()
    declared: dict[str, int] = defaultdict(int)
    hooks = [module.register_forward_hook(_declared_hook(declared, name))
             for name, module in model.named_modules()
             if callable(getattr(module, "multiply_adds", None))]
    try:
        with torch.no_grad(), counter:
            model(images, *inputs)
    finally:
        for hook in hooks:
            hook.remove()
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        if name == root:
            key = ""
        elif name.startswith(root + "."):
            key = name[len(root) + 1:]
        else:  # pragma: no cover - a module outside the model (a hook calling another model)
            key = name
        per_module[key] = sum(ops.values()) // 2
    extra = sum(declared.values())
    for name, macs in declared.items():
        parts = name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            if key == name or key in per_module:
                per_module[key] = per_module.get(key, 0) + macs
    return MacReport(total=counter.get_total_flops() // 2 + extra, per_module=per_module,
                     uncounted=tuple(sorted(counter.uncounted)))


def _declared_hook(declared: dict[str, int], name: str):
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        declared[name] += int(module.multiply_adds(output, *args))
    return hook
