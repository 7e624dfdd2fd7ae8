"""Layers of several calls run as one computation: the building blocks of the batched forms.

A group of calls (one per task, say) holds T modules of one structure. Their feature maps travel
channel-concatenated, as one ``Maps`` value: call i's channels follow call i-1's, so that T
convolutions become one grouped convolution (``groups`` x T; on a shared input, one convolution
with the T weights stacked) and T BatchNorms one BatchNorm over all channels. Weights are
concatenated at call time from each call's own parameters: they keep their names, receive their
own gradients, and each call's BatchNorm running statistics are written back to its own buffers
exactly as its own forward would update them.

``run_layers`` walks T ``nn.Sequential`` stacks of one structure together: convolutions and
BatchNorms batched, stateless channel-wise layers (activations, resizing, pooling) applied once to
the whole value, dropout
per call in call order (the random numbers are drawn as the separate calls would draw them), and
any other layer per call. Every batched form equals the separate calls to float32 rounding.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..grad_layout import guard_norm_output

# Layers without state that treat every channel alike: one call on the joint value is the T calls.
CHANNELWISE = (nn.ReLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SiLU, nn.Identity,
               nn.LeakyReLU, nn.Hardswish, nn.Upsample, nn.AvgPool2d, nn.MaxPool2d)


class Maps:
    """The NCHW maps of T calls: one ``shared`` map they all read, or the T maps concatenated
    along channels (call i's channels are ``widths[i]`` wide, in call order). T separate maps
    (``parts``) are concatenated only when a batched layer reads ``data``: calls that run one by
    one read their own maps, contiguous, as the separate calls would."""

    def __init__(self, data: torch.Tensor | None, calls: int,
                 widths: tuple[int, ...] | None = None, parts: list[torch.Tensor] | None = None):
        self._data, self.parts = data, parts
        self.calls, self.widths = calls, widths  # widths None: shared

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            self._data = torch.cat(self.parts, 1)  # type: ignore[arg-type]
        return self._data

    @property
    def device(self) -> torch.device:
        return (self.parts[0] if self._data is None else self._data).device  # type: ignore[index]

    @property
    def shared(self) -> bool:
        return self.widths is None

    @classmethod
    def of(cls, value: torch.Tensor | Sequence[torch.Tensor], calls: int) -> "Maps":
        """A shared map, or a list with one map per call."""
        if isinstance(value, torch.Tensor):
            return cls(value, calls)
        return cls.each(list(value))

    @classmethod
    def each(cls, maps: list[torch.Tensor]) -> "Maps":
        return cls(None, len(maps), tuple(v.shape[1] for v in maps), parts=maps)

    def split(self) -> list[torch.Tensor]:
        """One map per call (a shared map is every call's)."""
        if self.widths is None:
            return [self.data] * self.calls
        if self.parts is not None:
            return list(self.parts)
        return list(self.data.split(list(self.widths), 1))

    def expanded(self) -> "Maps":
        """A shared map repeated once per call (for layers whose parameters differ per call)."""
        if self.widths is None:
            c = self.data.shape[1]
            return Maps(self.data.repeat(1, self.calls, *([1] * (self.data.dim() - 2))),
                        self.calls, (c,) * self.calls)
        return self


def grouping_pays(device: torch.device) -> bool:
    """Whether T convolutions on T different maps (and T small layers on T token sets) gain from
    running as one grouped convolution (one call on the concatenation). Not on a CPU: there is no
    kernel launch to save, and oneDNN's grouped convolutions are slower than the separate ones
    (0.6x for TPANet's 3x3 heads, 0.6x for ATRC's label heads, 0.9x for 1x1 270-wide ones;
    ``benchmarks/fusion_groups.py``), so calls on their own maps run as T calls there. Calls on
    one shared map still batch on a CPU: one convolution with the weights stacked is faster than
    T (1.1-1.2x), and the input gradients add up inside it."""
    return device.type != "cpu" or _GROUPING_EVERYWHERE


_GROUPING_EVERYWHERE = False


@contextmanager
def grouping_everywhere() -> Iterator[None]:
    """Group calls on their own maps on a CPU too (for the tests of the grouped forms, which
    otherwise run only on a GPU, and for ``benchmarks/fusion_groups.py --grouped``)."""
    global _GROUPING_EVERYWHERE
    was, _GROUPING_EVERYWHERE = _GROUPING_EVERYWHERE, True
    try:
        yield
    finally:
        _GROUPING_EVERYWHERE = was


def _per_call(layers: Sequence[nn.Module], x: Maps) -> Maps:
    """Each call's layer on its own map, in call order (the fallback that is always exact)."""
    return Maps.each([layer(m) for layer, m in zip(layers, x.split())])


def conv2d(convs: Sequence[nn.Conv2d], x: Maps) -> Maps:
    """T convolutions of one structure as one: on a shared map, the T weights stacked as output
    channels; on T maps, a convolution with T times the groups."""
    c = convs[0]
    n = len(convs)
    if c.padding_mode != "zeros" or isinstance(c.padding, str):
        return _per_call(convs, x)
    widths = tuple(m.out_channels for m in convs)
    g = c.groups
    bias = None if c.bias is None else [m.bias for m in convs]
    if not x.shared and not grouping_pays(x.device):
        return _per_call(convs, x)
    if x.shared:
        if g == 1:
            w = torch.cat([m.weight for m in convs])
            b = None if bias is None else torch.cat(bias)
            return Maps(F.conv2d(x.data, w, b, c.stride, c.padding, c.dilation), n, widths)
        if len(set(widths)) != 1:
            return _per_call(convs, x)
        # Group j of the joint convolution holds group j of every call; reorder afterwards.
        w = torch.cat([wj for j in range(g) for wj in (m.weight.chunk(g)[j] for m in convs)])
        b = None if bias is None else torch.cat([bj for j in range(g)
                                                 for bj in (v.chunk(g)[j] for v in bias)])
        y = F.conv2d(x.data, w, b, c.stride, c.padding, c.dilation, g)
        bsz, _, h, wd = y.shape
        y = y.view(bsz, g, n, widths[0] // g, h, wd).transpose(1, 2).reshape(bsz, -1, h, wd)
        return Maps(y, n, widths)
    if len(set(widths)) != 1 or len(set(x.widths or ())) != 1:
        return _per_call(convs, x)
    w = torch.cat([m.weight for m in convs])
    b = None if bias is None else torch.cat(bias)
    return Maps(F.conv2d(x.data, w, b, c.stride, c.padding, c.dilation, g * n), n, widths)


def batch_norm(bns: Sequence[nn.modules.batchnorm._BatchNorm], x: Maps) -> Maps:
    """T BatchNorms as one over the joint channels; each call's running statistics (and batch
    count) are updated exactly as its own forward updates them."""
    bn = bns[0]
    x = x.expanded()
    plain = all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in bns)  # not SyncBatchNorm
    if not plain or any(m.training != bn.training for m in bns):
        return _per_call(bns, x)
    update = bn.training and bn.track_running_stats
    factor = 0.0 if bn.momentum is None else bn.momentum
    if update:
        if bn.momentum is None:  # a cumulative average: one factor only if the counts agree
            counts = {int(m.num_batches_tracked) for m in bns}
            if len(counts) != 1:
                return _per_call(bns, x)
            factor = 1.0 / (counts.pop() + 1)
        for m in bns:
            m.num_batches_tracked.add_(1)
    batch_stats = bn.training or bn.running_mean is None
    stats = bn.running_mean is not None and (not bn.training or bn.track_running_stats)
    mean = torch.cat([m.running_mean for m in bns]) if stats else None
    var = torch.cat([m.running_var for m in bns]) if stats else None
    weight = torch.cat([m.weight for m in bns]) if bn.affine else None
    bias = torch.cat([m.bias for m in bns]) if bn.affine else None
    y = guard_norm_output(F.batch_norm(x.data, mean, var, weight, bias, batch_stats, factor, bn.eps))
    if update and mean is not None and var is not None:
        with torch.no_grad():
            for m, a, v in zip(bns, mean.split(list(x.widths or ())), var.split(list(x.widths or ()))):
                m.running_mean.copy_(a)
                m.running_var.copy_(v)
    return Maps(y, x.calls, x.widths)


def _same_channelwise(layers: Sequence[nn.Module]) -> bool:
    first = layers[0]
    return isinstance(first, CHANNELWISE) and all(
        type(m) is type(first) and m.extra_repr() == first.extra_repr() for m in layers[1:])


def apply_layer(layers: Sequence[nn.Module], x: Maps) -> Maps:
    """Layer k of every call, batched where that is exact."""
    first = layers[0]
    if x.parts is not None and x._data is None and not grouping_pays(x.device):
        return _per_call(layers, x)  # maps still apart: keep them so (see grouping_pays)
    if isinstance(first, nn.Sequential):
        return run_layers(layers, x)  # type: ignore[arg-type]
    if isinstance(first, nn.Conv2d):
        return conv2d(layers, x)  # type: ignore[arg-type]
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return batch_norm(layers, x)  # type: ignore[arg-type]
    if _same_channelwise(layers) and not (x.shared and getattr(first, "inplace", False)):
        return Maps(first(x.data), x.calls, x.widths)
    if isinstance(first, (nn.Dropout, nn.Dropout2d)) and not (first.training and first.p > 0):
        return x  # dropout is the identity in evaluation
    return _per_call(layers, x)  # dropout in training (call order), norms over channels, ...


def run_layers(stacks: Sequence[nn.Sequential], x: Maps) -> Maps:
    """T ``nn.Sequential`` stacks of one structure, layer by layer (where grouping does not pay
    and each call reads its own map, each call's whole stack on its own)."""
    if not x.shared and not grouping_pays(x.device):
        return _per_call(stacks, x)
    for layers in zip(*(list(s) for s in stacks)):
        x = apply_layer(layers, x)
    return x


def linear(linears: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """T Linear layers on one shared input as one: ``[..., sum of the output widths]``."""
    w = torch.cat([m.weight for m in linears])
    b = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return F.linear(x, w, b)


def linear_each(linears: Sequence[nn.Linear], xs: torch.Tensor) -> torch.Tensor:
    """T Linear layers, layer i on ``xs[i]``: ``[T, M, in]`` -> ``[T, M, out]`` in one batched
    matmul."""
    w = torch.stack([m.weight for m in linears]).transpose(1, 2)
    if linears[0].bias is None:
        return torch.bmm(xs, w)
    b = torch.stack([m.bias for m in linears]).unsqueeze(1)
    return torch.baddbmm(b, xs, w)
