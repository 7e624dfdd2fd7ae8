"""nn.Modules of ATRC (Bruggemann et al., ICCV 2021) as the official code builds them.

A Context Pooling (CP) block refines a target task's features ``F_t`` with a source task's
features ``F_s``; its ``forward(target, source, target_aux, source_aux)`` takes the auxiliary
(label-region) logits of both tasks at the features' resolution, ``None`` where not needed.
Every projection is a 1x1 Conv (no bias, Xavier-uniform) + BatchNorm (+ ReLU).
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..blocks.atrc import CONTEXT_KINDS, SEARCH_DEFAULTS
GLOBAL_EPS = 1e-12  # the official clamp of the linear attention's normaliser


class Projection(nn.Sequential):
    """1x1 Conv (no bias, Xavier-uniform) -> BatchNorm -> optional activation."""

    def __init__(self, cin: int, cout: int, act: str = "relu", affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        nn.init.xavier_uniform_(self.conv.weight)
        self.bn = nn.BatchNorm2d(cout, affine=affine)
        if act == "relu":
            self.act = nn.ReLU(inplace=False)


def two_layer_projection(cin: int, cout: int, last_act: str) -> nn.Sequential:
    """The official query/key structure: Conv-BN-ReLU, Conv-BN-``last_act``."""
    layers = nn.Sequential(Projection(cin, cout), Projection(cout, cout, act="none"))
    if last_act == "relu":
        layers.append(nn.ReLU(inplace=False))
    elif last_act == "softplus":
        layers.append(nn.Softplus())
    return layers


class GlobalContext(nn.Module):
    """Linearised global attention (paper eq. 3 with phi = identity on softplus features).

    out_i = sum_j (q_i . k_j) v_j / max(sum_j q_i . k_j, eps); no 1/sqrt(d) scaling.
    """

    def __init__(self, target_channels: int, source_channels: int, channels: int,
                 value_affine: bool = True):
        super().__init__()
        self.query = two_layer_projection(target_channels, channels, "softplus")
        self.key = two_layer_projection(source_channels, channels, "softplus")
        self.value = Projection(source_channels, channels, affine=value_affine)

    def forward(self, target, source, target_aux=None, source_aux=None):
        b, _, h, w = target.shape
        q = self.query(target).flatten(2)  # B, C, N
        k = self.key(source).flatten(2)
        v = self.value(source).flatten(2)
        summary = torch.matmul(v, k.transpose(1, 2))  # B, C, C
        normaliser = torch.matmul(k.sum(dim=2, keepdim=True).transpose(1, 2), q)  # B, 1, N
        out = torch.matmul(summary, q) / normaliser.clamp_min(GLOBAL_EPS)
        return out.view(b, -1, h, w)


class LocalContext(nn.Module):
    """Attention over the ``window`` x ``window`` source neighbourhood of every target pixel.

    The official CUDA kernel's semantics: window positions outside the image have similarity 0
    and value 0 and still take part in the softmax (zero padding, not masking). Computed in row
    chunks of unfolded keys/values so that memory stays bounded; under autograd each chunk is
    recomputed in the backward pass instead of keeping its unfolded copy.
    """

    def __init__(self, target_channels: int, source_channels: int, channels: int,
                 window: int = 9, value_affine: bool = True, chunk_elements: int = 1 << 22):
        super().__init__()
        self.query = two_layer_projection(target_channels, channels, "relu")
        self.key = two_layer_projection(source_channels, channels, "relu")
        self.value = Projection(source_channels, channels, affine=value_affine)
        self.window = window
        self.chunk_elements = chunk_elements  # unfolded floats per chunk (16 MiB in float32)

    def forward(self, target, source, target_aux=None, source_aux=None):
        q = self.query(target)
        return local_attention(q, self.key(source), self.value(source), self.window,
                               self.chunk_elements)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                    chunk_elements: int = 1 << 22) -> torch.Tensor:
    b, c, h, w = q.shape
    pad = window // 2
    k_pad = F.pad(k, (pad, pad, pad, pad))
    v_pad = F.pad(v, (pad, pad, pad, pad))
    # While exporting (torch.export, ONNX) the batch size is symbolic: chunk as for one image, so
    # the number of chunks is a constant of the graph.
    per_chunk = (1 if torch.compiler.is_exporting() else b) * c * window * window * w
    rows = max(1, chunk_elements // max(1, per_chunk))
    scale = 1.0 / math.sqrt(c)
    use_checkpoint = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                  or v.requires_grad)
    chunks = []
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        args = (q[:, :, r0:r1], k_pad[:, :, r0:r1 + 2 * pad], v_pad[:, :, r0:r1 + 2 * pad])
        if use_checkpoint and r1 - r0 < h:
            chunks.append(checkpoint(_local_rows, *args, window, scale, use_reentrant=False))
        else:
            chunks.append(_local_rows(*args, window, scale))
    return torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0]


def _local_rows(q, k_pad, v_pad, window: int, scale: float) -> torch.Tensor:
    """Rows of the local attention: ``k_pad``/``v_pad`` hold the rows plus the window margin."""
    b, c, h, w = q.shape
    n = window * window
    keys = F.unfold(k_pad, window).view(b, c, n, h * w).permute(0, 3, 1, 2)  # B, L, C, n
    values = F.unfold(v_pad, window).view(b, c, n, h * w).permute(0, 3, 2, 1)  # B, L, n, C
    query = q.flatten(2).transpose(1, 2).unsqueeze(2)  # B, L, 1, C
    weights = torch.softmax(torch.matmul(query, keys) * scale, dim=-1)  # B, L, 1, n
    out = torch.matmul(weights, values).squeeze(2)  # B, L, C
    return out.transpose(1, 2).reshape(b, c, h, w)


class LabelContext(nn.Module):
    """Attention over label-region prototypes (OCR-style), regions of the target or the source.

    A = softmax over positions of the region logits; prototypes P = A^T F_s (R x C_s), treated as
    an R x 1 image so that key/value BatchNorm statistics are taken over the B x R prototypes.
    out = softmax(q k^T / sqrt(C)) v.
    """

    def __init__(self, target_channels: int, source_channels: int, channels: int,
                 regions: str = "target", value_affine: bool = True):
        super().__init__()
        if regions not in ("target", "source"):
            raise ValueError(f"regions must be 'target' or 'source', got {regions!r}")
        self.regions = regions
        self.query = two_layer_projection(target_channels, channels, "relu")
        self.key = two_layer_projection(source_channels, channels, "relu")
        self.value = Projection(source_channels, channels, affine=value_affine)

    def forward(self, target, source, target_aux=None, source_aux=None):
        logits = target_aux if self.regions == "target" else source_aux
        if logits is None:
            raise ValueError(f"label context over {self.regions} regions needs the "
                             f"{self.regions} task's auxiliary logits")
        b, c, h, w = target.shape
        prototypes = region_prototypes(source, logits)  # B, C_s, R, 1
        q = self.query(target).flatten(2).transpose(1, 2)  # B, N, C
        k = self.key(prototypes).flatten(2)  # B, C, R
        v = self.value(prototypes).flatten(2).transpose(1, 2)  # B, R, C
        attention = torch.softmax(torch.matmul(q, k) * q.shape[-1] ** -0.5, dim=-1)
        return torch.matmul(attention, v).transpose(1, 2).reshape(b, -1, h, w)


def region_prototypes(features: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """``[B, C, R, 1]``: per region, the features averaged with the region's spatial softmax."""
    b, c = features.shape[:2]
    density = torch.softmax(region_logits.flatten(2), dim=2)  # B, R, N
    prototypes = torch.matmul(density, features.flatten(2).transpose(1, 2))  # B, R, C
    return prototypes.transpose(1, 2).unsqueeze(3)


def build_context(kind: str, target_channels: int, source_channels: int, out_channels: int,
                  window: int = 9, value_affine: bool | None = None,
                  pair: list[str] | None = None) -> nn.Module:
    """The CP block of one kind with ``out_channels`` outputs. ``value_affine`` None: affine
    value BatchNorm, except in the search supergraph (``kind="search"``), as the official code."""
    channels = out_channels
    if kind == "search":
        return ContextSearch(target_channels, source_channels, channels, tuple(pair or ()), window,
                             value_affine=bool(value_affine), tau=SEARCH_DEFAULTS["tau"],
                             entropy_weight=SEARCH_DEFAULTS["entropy_weight"],
                             freeze_gap=SEARCH_DEFAULTS["freeze_gap"])
    value_affine = True if value_affine is None else value_affine
    if kind == "global":
        return GlobalContext(target_channels, source_channels, channels, value_affine)
    if kind == "local":
        return LocalContext(target_channels, source_channels, channels, window, value_affine)
    if kind in ("t_label", "s_label"):
        return LabelContext(target_channels, source_channels, channels,
                            "target" if kind == "t_label" else "source", value_affine)
    raise ValueError(f"unknown context kind {kind!r}")


# -- the context-type search ----------------------------------------------------------------------

def linear_schedule(start: float, end: float, step: int, total_steps: int) -> float:
    fraction = min(max(step / max(1, total_steps), 0.0), 1.0)
    return start + (end - start) * fraction


def should_freeze(probabilities: torch.Tensor, gap: float) -> bool:
    """The official freezing rule: top-1 minus top-2 softmax probability reaches ``gap``."""
    top = torch.topk(probabilities, 2).values
    return bool(top[0] - top[1] >= gap)


class ContextSearch(nn.Module):
    """A CP block of the search supergraph: a Gumbel-softmax mixture of the context types.

    Candidate 0 is ``none`` (it only scales the others down); then global, local, T-label and,
    off the diagonal, S-label. Once the softmax of the architecture logits has a top-1 minus
    top-2 gap of at least ``freeze_gap``, the block is fixed to that one-hot for good (buffer
    ``frozen``, so it survives checkpoints). Evaluation uses the argmax.

    Hooks for the training runtime: ``arch_parameters()`` (own optimiser), ``on_train_step``
    (temperature and entropy-regulariser schedules) and ``extra_loss()`` (the regulariser).
    """

    def __init__(self, target_channels: int, source_channels: int, channels: int,
                 pair: tuple[str, str], window: int = 9, value_affine: bool = False,
                 tau: tuple[float, float] = (1.0, 0.05),
                 entropy_weight: tuple[float, float] = (-0.02, 0.06), freeze_gap: float = 0.3):
        super().__init__()
        self.pair = tuple(pair)
        kinds = [k for k in CONTEXT_KINDS if not (k == "s_label" and pair[0] == pair[1])]
        self.candidate_names = ("none", *kinds)
        self.candidates = nn.ModuleDict({
            k: build_context(k, target_channels, source_channels, channels, window, value_affine)
            for k in kinds})
        self.arch_logits = nn.Parameter(torch.zeros(len(self.candidate_names)))
        self.register_buffer("frozen", torch.zeros(len(self.candidate_names)))  # one-hot or 0
        self.tau_schedule = tau
        self.entropy_schedule = entropy_weight
        self.freeze_gap = freeze_gap
        self.tau = tau[0]
        self.entropy_weight = entropy_weight[0]
        self._peers: list[weakref.ref] = [weakref.ref(self)]  # the search blocks of this model

    # runtime hooks ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.arch_logits]

    def on_train_step(self, step: int, total_steps: int) -> None:
        self.tau = linear_schedule(*self.tau_schedule, step, total_steps)
        self.entropy_weight = linear_schedule(*self.entropy_schedule, step, total_steps)
        _join_round(self, step)

    def extra_loss(self) -> torch.Tensor:
        """This block's share of the regulariser, weight x entropy / number of search blocks, so
        that the runtime's sum over blocks is the official weight x mean entropy."""
        peers = sum(1 for r in self._peers if r() is not None)
        return self.entropy_weight * self.entropy() / max(1, peers)

    # ---------------------------------------------------------------------------------------------
    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.arch_logits, dim=0)

    def entropy(self) -> torch.Tensor:
        log_p = torch.log_softmax(self.arch_logits, dim=0)
        return -(log_p.exp() * log_p).sum()

    @property
    def is_frozen(self) -> bool:
        return bool(self.frozen.sum() > 0)

    def chosen(self) -> str:
        """The context this block selects now: the frozen one, else the argmax."""
        index = int(self.frozen.argmax()) if self.is_frozen else int(self.arch_logits.argmax())
        return self.candidate_names[index]

    def update_frozen(self) -> None:
        if not self.is_frozen and should_freeze(self.probabilities().detach(), self.freeze_gap):
            self.frozen.zero_()
            self.frozen[int(self.arch_logits.detach().argmax())] = 1.0

    def mixture_weights(self) -> torch.Tensor:
        if self.training:
            self.update_frozen()
            if not self.is_frozen:
                return F.gumbel_softmax(self.arch_logits, tau=self.tau, hard=False)
            return self.frozen
        return F.one_hot(torch.tensor(self.candidate_names.index(self.chosen())),
                         len(self.candidate_names)).to(self.arch_logits)

    def forward(self, target, source, target_aux=None, source_aux=None):
        weights = self.mixture_weights()
        out = None
        for i, (name, op) in enumerate(self.candidates.items(), start=1):
            # Training runs every candidate (the graph stays the same on every step and worker);
            # evaluation skips the ones with weight 0.
            if not self.training and self.candidate_names[weights.argmax()] != name:
                continue
            y = weights[i] * op(target, source, target_aux, source_aux)
            out = y if out is None else out + y
        if out is None:  # evaluation with `none` chosen
            first = next(iter(self.candidates.values()))
            b, _, h, w = target.shape
            out = target.new_zeros(b, first.value.conv.out_channels, h, w)
        return out


# The runtime calls every block's on_train_step before each forward, one block after another, and
# sums their extra_loss afterwards; a block cannot see its siblings, so the blocks that join the
# same round of on_train_step calls learn how many they are (the regulariser is a mean).
_round: dict = {"step": None, "peers": []}


def _join_round(block: ContextSearch, step: int) -> None:
    peers = _round["peers"]
    if _round["step"] != step or any(r() is block for r in peers):
        peers = []
        _round.update(step=step, peers=peers)
    peers.append(weakref.ref(block))
    block._peers = peers


def share_regulariser(model: nn.Module) -> list[ContextSearch]:
    """Make the search blocks of ``model`` peers without a training step (tests, tools)."""
    blocks = [m for m in model.modules() if isinstance(m, ContextSearch)]
    peers = [weakref.ref(b) for b in blocks]
    for block in blocks:
        block._peers = peers
    return blocks


# -- per-target fusion ----------------------------------------------------------------------------

class ContextFusion(nn.Module):
    """Refine a target's features with its CP outputs (official ``RelationalContextHead``).

    With contexts: concat -> 1x1 Conv-BN (BN weight and bias zero, so training starts from the
    plain features) -> concat with the target features -> 1x1 Conv-BN-ReLU -> Dropout2d.
    Without: 1x1 Conv-BN-ReLU -> Dropout2d.
    """

    def __init__(self, in_channels: int, context_channels: int, dropout: float = 0.05):
        super().__init__()
        channels = in_channels
        if context_channels:
            self.out_proj = nn.Sequential()
            self.out_proj.add_module("conv", nn.Conv2d(context_channels, channels, 1, bias=False))
            self.out_proj.add_module("bn", nn.BatchNorm2d(channels))
            nn.init.zeros_(self.out_proj.bn.weight)
            nn.init.zeros_(self.out_proj.bn.bias)
            fused = 2 * channels
        else:
            self.out_proj = None
            fused = channels
        self.bottleneck = nn.Sequential()
        self.bottleneck.add_module("conv", nn.Conv2d(fused, channels, 1, bias=False))
        self.bottleneck.add_module("bn", nn.BatchNorm2d(channels))
        self.bottleneck.add_module("act", nn.ReLU(inplace=False))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, features, contexts=None):
        if self.out_proj is not None:
            if not contexts:
                raise ValueError("this fusion block was built with contexts but got none")
            context = self.out_proj(torch.cat(list(contexts.values()), dim=1))
            features = torch.cat([features, context], dim=1)
        return self.dropout(self.bottleneck(features))


class LabelHead(nn.Sequential):
    """ATRC's auxiliary head: 1x1 Conv-BN-ReLU (``width`` 0: the input width) -> 1x1 Conv (bias)
    to the ``out_channels`` label regions."""

    def __init__(self, in_channels: int, width: int, out_channels: int):
        super().__init__()
        cin, width, regions = in_channels, width or in_channels, out_channels
        self.hidden = nn.Sequential()
        self.hidden.add_module("conv", nn.Conv2d(cin, width, 1, bias=False))
        self.hidden.add_module("bn", nn.BatchNorm2d(width))
        self.hidden.add_module("act", nn.ReLU(inplace=False))
        self.logits = nn.Conv2d(width, regions, 1)
