"""nn.Modules of TPANet (Xu et al.) as the released ``AdaptHead`` computes them.

The released code (github.com/yangyangxu0/TPANet, src/model/heads/adapthead.py) has grouped 1x1 prior convolutions without BatchNorm,
an adaptive task mixing whose spatial MLP is sized by the number of positions of the map (so its
weights are tied to the input size the model is compiled for), a cross attention that, at one image
per GPU, attends over a single key, and an MLP shared by all tasks.
"""
from __future__ import annotations

import torch
from torch import nn

from .batched.layers import grouping_pays
from .batched.tpanet import prior_extractor, shared_mlp
from .demt import TokenAttention, map_tokens, token_map


def prior_branch(cin: int, dim: int, groups: int, norm: bool) -> nn.Sequential:
    """1x1 convolution (+ BatchNorm in the paper's eqs. 1-2)."""
    layers = [nn.Conv2d(cin, dim, 1, groups=groups)]
    if norm:
        layers.append(nn.BatchNorm2d(dim))
    return nn.Sequential(*layers)


class TaskPriorExtractor(nn.Module):
    """F_tp^t = specific_t(x) + inject(x) (paper eqs. 1-3). ``batched`` (set by the compiler's
    fusion): all branches as one convolution."""

    batched = False

    def __init__(self, in_channels: int, dim: int, tasks: list[str], groups: int = 2,
                 norm: str = "none"):
        super().__init__()
        cin, norm = in_channels, norm == "bn"
        self.specific_tasks = nn.ModuleDict({t: prior_branch(cin, dim, groups, norm) for t in tasks})
        self.inject_prior = prior_branch(cin, dim, groups, norm)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.batched:
            return prior_extractor(self, x)
        shared = self.inject_prior(x)
        return {t: branch(x) + shared for t, branch in self.specific_tasks.items()}


def spatial_hidden(positions: int, ratio: float) -> int:
    """Hidden width of the spatial MLP as released: int(S * ratio) (14,980 -> 7, 16,384 -> 8),
    and S itself where that is 0 (S < 2,000 at the default ratio, i.e. inputs below about
    180x180): the released ``Mlp`` takes ``int(hidden_features) or in_features``
    (github.com/yangyangxu0/TPANet 1c693556, src/model/heads/adapthead.py, class Mlp)."""
    return int(positions * ratio) or positions


class AdaptiveTaskMixing(nn.Module):
    """ATM (paper eqs. 5-7) on the channel concat of the task maps, as ``(B, S, T*D)``.

    The released code applies the same LayerNorm ``norm`` before both MLPs, and each MLP starts
    with its own LayerNorm (paper eq. 4).
    """

    def __init__(self, in_channels: int, tasks: int | list[str], positions: int,
                 ratio: float = 0.0005):
        super().__init__()
        width = in_channels * (tasks if isinstance(tasks, int) else len(tasks))
        hidden = spatial_hidden(positions, ratio)
        self.positions = positions
        self.norm = nn.LayerNorm(width)
        self.fc_s = nn.Sequential(nn.LayerNorm(positions), nn.Linear(positions, hidden), nn.GELU(),
                                  nn.Linear(hidden, positions))
        self.fc_c = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                  nn.Linear(width, width))

    def forward(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first = next(iter(maps.values()))
        h, w = first.shape[-2:]
        if h * w != self.positions:
            raise ValueError(f"the spatial MLP was built for {self.positions} positions, got "
                             f"{h}x{w} = {h * w}: compile the model for this input size")
        x = map_tokens(torch.cat(list(maps.values()), 1))  # [B, S, T*D]
        x = x + self.fc_s(self.norm(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.fc_c(self.norm(x))
        chunks = token_map(x, h, w).chunk(len(maps), 1)
        return dict(zip(maps, chunks))


class CrossAttention(nn.Module):
    """Per-task cross attention (paper eqs. 9-11) with one attention shared by its two calls:
    x = F_tp + F + MHA(F, F, F) + MHA(F_tp, F, F)."""

    def __init__(self, in_channels: int, heads: int, over: str = "self"):
        super().__init__()
        self.attn = TokenAttention(in_channels, heads, over)

    def forward(self, feature: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        h, w = feature.shape[-2:]
        f, p = map_tokens(feature), map_tokens(prior)
        keys = f.unsqueeze(1)
        x = p + f + self.attn(f, keys) + self.attn(p, keys)
        return token_map(x, h, w)


class SharedMlp(nn.Module):
    """x + mlp(norm2(x)) for every task with one ``mlp`` and one ``norm2`` (released code; paper
    eq. 12). mlp = [LN, Linear(D -> ratio*D), GELU, Linear(-> D)]. ``batched`` (set by the
    compiler's fusion): one call on the tokens of every task."""

    batched = False

    def __init__(self, in_channels: int, ratio: int = 2):
        super().__init__()
        dim = in_channels
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ratio * dim), nn.GELU(),
                                 nn.Linear(ratio * dim, dim))

    def forward(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.batched and grouping_pays(next(iter(maps.values())).device):
            return shared_mlp(self, maps)
        out = {}
        for t, m in maps.items():
            x = map_tokens(m)
            out[t] = token_map(x + self.mlp(self.norm2(x)), m.shape[-2], m.shape[-1])
        return out
