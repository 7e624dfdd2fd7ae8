"""Batched forms of InvPT's per-task decoder blocks (``invpt_task_mix``, ``invpt_up_embed``,
``invpt_fuse_stages``) and of the per-task query convolutions inside a decoder stage
(``MultiTaskAttention.batched``, set by the compiler's fusion): each task's convolutions as one
grouped convolution with one BatchNorm over all tasks' channels."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import Maps, conv2d, grouping_pays, run_layers


def _per_call(value, shared: bool, n: int) -> list:
    return [value] * n if shared else list(value)


def task_mixes(modules: Sequence[nn.Module], shared: tuple[bool, ...], feature, pred) -> list:
    """``TaskMix``: a 1x1 conv of each task's [feature, prediction]."""
    n = len(modules)
    joined = [torch.cat([f, p], dim=1) for f, p in
              zip(_per_call(feature, shared[0], n), _per_call(pred, shared[1], n))]
    return conv2d([m.proj for m in modules], Maps.of(joined, n)).split()


def up_embeds(modules: Sequence[nn.Module], shared: tuple[bool, ...], x, efa) -> list:
    """``UpEmbed``: x2 resize and two dilated Conv-BN-ReLU of each task's map, plus EFA."""
    n = len(modules)
    maps = [v[m.task] if isinstance(v, dict) else v
            for m, v in zip(modules, _per_call(x, shared[0], n))]
    y = run_layers([m.proj for m in modules], Maps.of(maps, n)).split()
    if shared[1] and efa is None:
        return y
    return [a + e for a, e in zip(y, _per_call(efa, shared[1], n))]


def fuse_stages(modules: Sequence[nn.Module], shared: tuple[bool, ...], stages) -> list:
    """``FuseStages``: per task, the stages after the first projected by a 1x1 conv, all resized
    to ``scale`` times the last stage's grid and summed; a stage's T projections as one grouped
    convolution and one resize (on a GPU; on a CPU the calls run one by one)."""
    from ..invpt import resize

    n = len(modules)
    first = modules[0]
    per_stage: list[list[torch.Tensor]] = []
    for m, value in zip(modules, _per_call(stages, shared[0], n)):
        maps = value if isinstance(value, list) else [value[k] for k in value]
        per_stage.append([s[m.task] if isinstance(s, dict) else s for s in maps])
    if not grouping_pays(per_stage[0][0].device):  # one by one on a CPU (see grouping_pays)
        return [m(v) for m, v in zip(modules, _per_call(stages, shared[0], n))]
    stage_maps = list(zip(*per_stage))  # stage -> the calls' maps
    h, w = stage_maps[-1][0].shape[-2:]
    size = (h * first.scale, w * first.scale)
    out = resize(Maps.of(list(stage_maps[0]), n).data, size)
    for key, maps in zip(first.keys[1:], stage_maps[1:]):
        projected = conv2d([m.proj[key] for m in modules], Maps.of(list(maps), n))
        out = out + resize(projected.data, size)
    return list(out.chunk(n, dim=1))


def query_embeds(module: nn.Module, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``MultiTaskAttention``'s per-task depthwise-conv + BN queries, all tasks at once."""
    stacks = [module.query_embed[t] for t in module.tasks]
    return run_layers(stacks, Maps.of([x[t] for t in module.tasks], len(stacks))).split()
