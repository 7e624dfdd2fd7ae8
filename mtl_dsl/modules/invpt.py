"""nn.Modules behind the InvPT blocks (Ye & Xu, ECCV 2022), as the official code computes them.

The decoder works on one feature map per task; the attention of a stage looks at the tokens of
all tasks at once. Where the official code and the paper differ (github.com/prismformore/Multi-Task-Transformer, InvPT/models/transformers/
transformer_decoder.py) the module
follows the code by default and takes the paper's form as an option.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batched.invpt import query_embeds
from .common import ConvBnAct


def init_stage_weights(module: nn.Module) -> None:
    """The official stage init: Linear trunc-normal(0.02) with zero bias, LN/BN ones and zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class EfaEmbed(nn.Module):
    """Encoder-feature embedding: a 3x3 conv, or a 3x3 transposed conv that doubles the grid."""

    def __init__(self, in_channels: int, channels: int, up: int = 1, level: int = -1):
        super().__init__()
        cin, cout = in_channels, channels
        self.level = level
        if up == 2:
            self.proj = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        elif up == 4:
            self.proj = nn.ConvTranspose2d(cin, cout, 4, stride=4)
        else:
            self.proj = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return self.proj(x[self.level] if isinstance(x, list) else x)


class DecoderInput(nn.Module):
    """The encoder map bilinearly resized to floor(h / factor) x floor(w / factor)."""

    def __init__(self, factor: int = 2, level: int = -1):
        super().__init__()
        self.factor = factor
        self.level = level

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        x = x[self.level] if isinstance(x, list) else x
        h, w = x.shape[-2:]
        return resize(x, (h // self.factor, w // self.factor))


def preliminary_decoder(in_channels: int, channels: int) -> nn.Sequential:
    """A task's preliminary decoder: 3x3 Conv-BN-ReLU keeping the width, then to ``channels``."""
    return nn.Sequential(ConvBnAct(in_channels, in_channels, 3), ConvBnAct(in_channels, channels, 3))


class TaskMix(nn.Module):
    """1x1 conv over the channel concat of a task's features and its preliminary prediction."""

    def __init__(self, feature_channels: int, pred_channels: int, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(feature_channels + pred_channels, channels, 1)

    def forward(self, feature: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([feature, pred], dim=1))


class UpEmbed(nn.Module):
    """Bilinear x2, then two dilated (d=2) 3x3 Conv-BN-ReLU; plus the EFA map when one is given."""

    def __init__(self, in_channels: int, channels: int, dilation: int = 2, task: str = ""):
        super().__init__()
        cin, cout = in_channels, channels
        self.task = task
        self.proj = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        init_stage_weights(self)

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor],
                efa: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(x[self.task] if isinstance(x, dict) else x)
        return x if efa is None else x + efa


class AttentionMessagePassing(nn.Module):
    """Mixes the current pre-softmax scores with the previous stage's, resized to the current
    query grid task by task.

    ``conv`` (official): a 1x1 conv over the stacked [current, previous] head maps, which also
    mixes heads and adds a bias. ``scalars`` (paper, Eq. 3): alpha_1 * A + alpha_2 * M.
    """

    def __init__(self, heads: int, mode: str = "conv"):
        super().__init__()
        self.mode = mode
        if mode == "conv":
            self.fuse = nn.Conv2d(2 * heads, heads, 1)
        else:
            self.alpha = nn.Parameter(torch.ones(2))

    def forward(self, scores: torch.Tensor, previous: torch.Tensor, tasks: int,
                previous_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        message = upsample_scores(previous, tasks, previous_grid, grid)
        if self.mode == "conv":
            return self.fuse(torch.cat([scores, message], dim=1))
        return self.alpha[0] * scores + self.alpha[1] * message


def upsample_scores(scores: torch.Tensor, tasks: int, previous_grid: tuple[int, int],
                    grid: tuple[int, int]) -> torch.Tensor:
    """[B, heads, T*h'*w', K] -> [B, heads, T*h*w, K]: each task's query rows as an h' x w' map
    with K channels, resized bilinearly to h x w."""
    b, heads, _, keys = scores.shape
    ph, pw = previous_grid
    maps = scores.reshape(b * heads, tasks, ph, pw, keys).permute(0, 1, 4, 2, 3)
    maps = resize(maps.reshape(b * heads, tasks * keys, ph, pw), grid)
    maps = maps.reshape(b, heads, tasks, keys, grid[0] * grid[1]).permute(0, 1, 2, 4, 3)
    return maps.reshape(b, heads, tasks * grid[0] * grid[1], keys)


class MultiTaskAttention(nn.Module):
    """Attention over the tokens of all tasks jointly, with per-task reduced queries and keys.

    Queries: per task a depthwise 3x3 stride-2 conv + BN, then a shared Linear. Keys and values:
    per task average pooling (kernel = stride = ``kv_pool``, ceil mode), then a shared Linear each.
    ``batched`` (set by the compiler's fusion): the tasks' query convolutions as one.
    """

    batched = False

    def __init__(self, tasks: list[str], dim: int, heads: int, kv_pool: int, query_stride: int = 2,
                 amp: str | None = "conv", scale: str = "stage", qkv_bias: bool = True):
        super().__init__()
        self.tasks = list(tasks)
        self.heads = heads
        # The code scales by the full stage width; the paper (Eq. 2) by the head width.
        self.scale = (dim if scale == "stage" else dim // heads) ** -0.5
        self.query_embed = nn.ModuleDict({
            t: nn.Sequential(
                nn.Conv2d(dim, dim, 3, stride=query_stride, padding=1, groups=dim, bias=False),
                nn.BatchNorm2d(dim),
            ) for t in self.tasks
        })
        self.kv_pool = nn.AvgPool2d(kv_pool, kv_pool, ceil_mode=True)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.amp = AttentionMessagePassing(heads, amp) if amp else None

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        return tokens.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: dict[str, torch.Tensor], previous: torch.Tensor | None,
                previous_grid: tuple[int, int] | None):
        if self.batched:
            queries = query_embeds(self, x)
        else:
            queries = [self.query_embed[t](x[t]) for t in self.tasks]
        pooled = [self.kv_pool(x[t]) for t in self.tasks]
        grid = tuple(queries[0].shape[-2:])
        q = self._heads(self.q(tokens_of(queries)))
        kv = tokens_of(pooled)
        k = self._heads(self.k(kv))
        v = self._heads(self.v(kv))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if previous is not None and self.amp is not None:
            scores = self.amp(scores, previous, len(self.tasks), previous_grid, grid)
        out = scores.softmax(dim=-1) @ v
        b, _, n, _ = out.shape
        out = self.proj(out.transpose(1, 2).reshape(b, n, -1))
        return out, scores, grid


def tokens_of(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-task [B, C, h, w] maps -> [B, T*h*w, C], task after task."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def maps_of(tokens: torch.Tensor, tasks: int, grid: tuple[int, int]) -> list[torch.Tensor]:
    b, _, c = tokens.shape
    h, w = grid
    return list(tokens.transpose(1, 2).reshape(b, c, tasks, h, w).unbind(2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InvPTTransformerBlock(nn.Module):
    """One decoder stage's transformer block over all tasks' tokens (pre-norm attention and MLP).

    Returns the per-task maps at the input grid and the fused pre-softmax attention scores, which
    the next stage's attention message passing reads. The official stage has depth 1, so its
    stochastic-depth rate is linspace(0, 0.15, 1) = 0: there is no drop path.
    """

    def __init__(self, tasks: list[str], in_channels: int, heads: int, kv_pool: int,
                 query_stride: int = 2, mlp_ratio: float = 4.0, amp: str | None = "conv",
                 scale: str = "stage"):
        super().__init__()
        dim = in_channels
        self.tasks = list(tasks)
        self.query_stride = query_stride
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiTaskAttention(tasks, dim, heads, kv_pool, query_stride, amp, scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        init_stage_weights(self)

    @property
    def batched(self) -> bool:
        """The tasks' query convolutions as one (the compiler's fusion sets it)."""
        return self.attn.batched

    @batched.setter
    def batched(self, value: bool) -> None:
        self.attn.batched = value

    def forward(self, x: dict[str, torch.Tensor], previous: torch.Tensor | None = None):
        maps = [x[t] for t in self.tasks]
        grid = tuple(maps[0].shape[-2:])
        tasks = len(self.tasks)
        tokens = tokens_of(maps)
        normed = maps_of(self.norm1(tokens), tasks, grid)
        previous_grid = None
        if previous is not None:
            previous_grid = self._grid_of(previous, tasks, grid)
        attn, scores, query_grid = self.attn(dict(zip(self.tasks, normed)), previous, previous_grid)
        attn = [resize(m, grid) for m in maps_of(attn, tasks, query_grid)]
        tokens = tokens + tokens_of(attn)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return dict(zip(self.tasks, maps_of(tokens, tasks, grid))), scores

    def _grid_of(self, previous: torch.Tensor, tasks: int, grid: tuple[int, int]) -> tuple[int, int]:
        """The previous stage ran at half this grid (the up-embedding doubles it exactly); its
        queries came from a stride-s conv of that, ceil(g / s). The official code takes h // 4."""
        s = self.query_stride
        ph, pw = -(-(grid[0] // 2) // s), -(-(grid[1] // 2) // s)
        if tasks * ph * pw != previous.shape[2]:
            raise ValueError(f"attention message of shape {tuple(previous.shape)} does not come from "
                             f"a stage at half of this stage's grid {grid} ({tasks}*{ph}*{pw} queries)")
        return ph, pw


class JointTaskNorm(nn.Module):
    """LayerNorm over the channels of all tasks together at each position, split back per task."""

    def __init__(self, tasks: list[str], in_channels: int):
        super().__init__()
        self.tasks = list(tasks)
        self.norm = nn.LayerNorm(in_channels * len(self.tasks))

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        joint = torch.cat([x[t] for t in self.tasks], dim=1)
        joint = self.norm(joint.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return dict(zip(self.tasks, joint.chunk(len(self.tasks), dim=1)))


class FuseStages(nn.Module):
    """One task's decoder output: stages after the first projected by a 1x1 conv to
    ``channels``, all resized to ``scale`` times the last stage's grid, summed."""

    def __init__(self, keys: list, widths: list[int], channels: int, task: str = "",
                 scale: int = 2):
        super().__init__()
        self.keys = [str(k) for k in keys]
        self.task = task
        self.scale = scale
        self.proj = nn.ModuleDict({k: nn.Conv2d(w, channels, 1)
                                   for k, w in zip(self.keys[1:], widths[1:])})

    def forward(self, stages) -> torch.Tensor:
        maps = stages if isinstance(stages, list) else [stages[k] for k in stages]
        maps = [m[self.task] if isinstance(m, dict) else m for m in maps]
        h, w = maps[-1].shape[-2:]
        size = (h * self.scale, w * self.scale)
        out = resize(maps[0], size)
        for key, m in zip(self.keys[1:], maps[1:]):
            out = out + resize(self.proj[key](m), size)
        return out


class Upsample(nn.Module):
    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, (x.shape[-2] * self.scale, x.shape[-1] * self.scale))
