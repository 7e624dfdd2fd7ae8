"""nn.Modules behind the backbone block: timm encoders with the official MTL code's details.

Every backbone holds the timm model as ``body`` (so its parameter names are timm's; for HRNet
they are also mmseg's) and returns a list of NCHW maps, one per requested level.

What differs from a plain ``timm.create_model(..., features_only=True)``, and why:
* HRNet: the fusion of a coarser branch into a finer one upsamples bilinearly by 2^k and then
  resizes to the finer branch's exact size, as mmseg's ``HRModule`` (timm upsamples nearest and
  fails unless the input size is divisible by 32). Done by swapping the class of timm's
  ``HighResolutionModule`` instances, so submodules and ``state_dict`` keys stay timm's.
* Swin: the input is zero-padded bottom/right to a multiple of 4 and every output level gets its
  own LayerNorm (mmseg's ``norm0..norm3``; DeMT/TPANet); windows are always 7x7 however small the
  map (mmseg never shrinks them); maps are padded to whole windows before the cyclic shift, as
  mmseg (timm shifts first).
* ViT: ``forward_intermediates`` after blocks ``levels``; the final norm only where asked (InvPT
  normalises block 24 only); blocks after the last level and the classifier are not built; a
  pretrained position table of another grid is resampled to this one (InvPT: 384 -> 448x576).
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn

from ..errors import simple_error


class BilinearFuseHRModule(HighResolutionModule):
    """timm's HRNet module with mmseg's size-exact bilinear fusion (same submodules)."""

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(xi) for branch, xi in zip(self.branches, x)]
        fused = []
        for i, fuse_into_i in enumerate(self.fuse_layers):
            size = x[i].shape[-2:]
            y = None
            for j, fuse in enumerate(fuse_into_i):
                if j > i:  # coarser branch: 1x1 conv, BN, then upsample (timm's nn.Upsample unused)
                    conv, norm = fuse[0], fuse[1]
                    z = F.interpolate(norm(conv(x[j])), scale_factor=2 ** (j - i), mode="bilinear",
                                      align_corners=False)
                    if z.shape[-2:] != size:
                        z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                else:
                    z = fuse(x[j])
                y = z if y is None else y + z
            fused.append(self.fuse_act(y))
        return fused


class PadThenShiftSwinBlock(SwinTransformerBlock):
    """timm's Swin block, padding to whole windows before the cyclic shift as mmseg's Swin."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh))
        padded_h, padded_w = x.shape[1], x.shape[2]
        shifted = any(self.shift_size)
        mask = None
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
            mask = self.get_attn_mask(x)
        windows = window_partition(x, self.window_size).view(-1, self.window_area, channels)
        windows = self.attn(windows, mask=mask).view(-1, wh, ww, channels)
        x = window_reverse(windows, self.window_size, padded_h, padded_w)
        if shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


def fit_to_patches(x: torch.Tensor, patch: int, pad: bool) -> torch.Tensor:
    """Zero-pad bottom/right to whole patches, or drop the rows and columns that a stride-``patch``
    patch convolution would ignore anyway (timm's patch embedding refuses partial patches)."""
    h, w = x.shape[-2:]
    if pad:
        return F.pad(x, (0, (patch - w % patch) % patch, 0, (patch - h % patch) % patch))
    return x[..., : h - h % patch, : w - w % patch]


class FeaturesBackbone(nn.Module):
    """A timm ``features_only`` model (ResNet, HRNet, and any other CNN)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.channels_last = str(getattr(body, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = list(self.body(images))
        if self.channels_last:
            return [m.permute(0, 3, 1, 2).contiguous() for m in maps]
        return maps


class SwinBackbone(nn.Module):
    def __init__(self, body: nn.Module, channels: Sequence[int], output_norms: bool, patch: int,
                 pad_to_patch: bool):
        super().__init__()
        self.body = body
        self.patch = patch
        self.pad_to_patch = pad_to_patch
        self.output_norms = nn.ModuleList(nn.LayerNorm(c) for c in channels) if output_norms else None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = fit_to_patches(images, self.patch, self.pad_to_patch)
        maps = self.body(images)  # NHWC
        if self.output_norms is not None:
            maps = [norm(m) for norm, m in zip(self.output_norms, maps)]
        return [m.permute(0, 3, 1, 2).contiguous() for m in maps]


class ViTBackbone(nn.Module):
    def __init__(self, body: nn.Module, levels: Sequence[int], normed_levels: Sequence[int],
                 patch: int, pad_to_patch: bool):
        super().__init__()
        self.body = body
        self.block_indices = [lv - 1 for lv in levels]
        self.normed = [lv in normed_levels for lv in levels]
        self.patch = patch
        self.pad_to_patch = pad_to_patch

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = fit_to_patches(images, self.patch, self.pad_to_patch)
        maps = self.body.forward_intermediates(images, indices=self.block_indices, norm=False,
                                               output_fmt="NCHW", intermediates_only=True)
        return [self.body.norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous() if normed
                else m for m, normed in zip(maps, self.normed)]


def create_backbone(name: str, family: str, levels: Sequence[int], *, in_chans: int = 3,
                    img_size: tuple[int, int] | None = None, pretrained: str = "",
                    hrnet_fusion: str = "bilinear", output_norms: bool = False,
                    pad_to_patch: bool = False, swin_window: str = "mmseg",
                    vit_norm: Sequence[int] = (), drop_path: float = 0.0,
                    out_indices: Sequence[int] | None = None, **timm_kwargs) -> nn.Module:
    """Build the backbone and load ``pretrained``: "" random init; "timm" timm's own pretrained
    weights for ``name`` (``timm.create_model(pretrained=True)``: the Hugging Face hub cache,
    which honours ``HF_HOME`` and ``HF_HUB_OFFLINE=1``; timm adapts them as it does for any user,
    e.g. a ViT position table resampled to ``img_size``); a path: a local .safetensors file.

    ``out_indices``: timm's feature indices of ``levels`` where they differ (a probed model whose
    levels are named by stride). ``timm_kwargs`` go to ``timm.create_model`` (tests use them to
    build tiny variants).
    """
    from_timm = pretrained == "timm"
    kwargs = dict(pretrained=from_timm, in_chans=in_chans, **timm_kwargs)
    if drop_path or family in ("swin", "vit"):  # timm's Swin defaults to 0.1: always say it
        kwargs["drop_path_rate"] = drop_path
    levels = list(levels)
    if family == "vit":
        body = _create(name, dict(kwargs, num_classes=0, img_size=img_size, dynamic_img_size=True))
        body.prune_intermediate_layers([lv - 1 for lv in levels], prune_norm=not vit_norm,
                                       prune_head=True)
        model: nn.Module = ViTBackbone(body, levels, vit_norm, _patch_size(body), pad_to_patch)
    elif family == "swin":
        body = _create(name, dict(kwargs, features_only=True, out_indices=[lv - 1 for lv in levels],
                                  img_size=img_size, strict_img_size=False, always_partition=True))
        if swin_window == "mmseg":
            for module in body.modules():
                if type(module) is SwinTransformerBlock:
                    module.__class__ = PadThenShiftSwinBlock
        model = SwinBackbone(body, body.feature_info.channels(), output_norms, _patch_size(body),
                             pad_to_patch)
    elif family == "hrnet":
        body = _create(name, dict(kwargs, features_only=True, feature_location="",
                                  out_indices=levels))
        if hrnet_fusion == "bilinear":
            for module in body.modules():
                if type(module) is HighResolutionModule:
                    module.__class__ = BilinearFuseHRModule
        model = FeaturesBackbone(body)
    else:
        if family == "resnet":  # torchvision/mmseg init: timm's zero-initialised last BN of each
            kwargs.setdefault("zero_init_last", False)  # block would leave its convs gradient-free
        indices = list(out_indices) if out_indices is not None else levels
        model = FeaturesBackbone(_create(name, dict(kwargs, features_only=True, out_indices=indices)))
    if pretrained and not from_timm:
        load_safetensors(model, pretrained,
                         timm_model=lambda: _full_timm_keys(name, dict(in_chans=in_chans,
                                                                       **timm_kwargs)))
    return model


def _full_timm_keys(name: str, kwargs: dict) -> set[str]:
    """The state_dict keys of the whole timm model ``name`` (classifier and every stage), built on
    the meta device: what ``timm.create_model(name).state_dict()`` saves."""
    try:
        with torch.device("meta"):
            return set(timm.create_model(name, pretrained=False, **kwargs).state_dict())
    except Exception:  # noqa: BLE001 - a model that cannot be built whole: no translation
        return set()


def _from_timm_names(state: dict[str, torch.Tensor], expected: dict, full: set[str]
                     ) -> dict[str, torch.Tensor]:
    """A whole timm model's state_dict in the backbone's names, as timm itself loads pretrained
    weights into a ``features_only`` model: each key under ``body.``, a stage that timm's feature
    wrapper flattens renamed as it does (``layers.0.`` -> ``layers_0.``, Swin), and the tensors of
    what ``features_only`` does not build (the classifier, stages after the last level, HRNet's
    classification neck) left out. Keys of neither kind stay, and are reported as unexpected."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        flat = re.sub(r"^([A-Za-z_]\w*)\.(\d+)\.", r"\1_\2.", key)
        if key in expected or f"body.{key}" in expected:
            out[key if key in expected else f"body.{key}"] = value
        elif f"body.{flat}" in expected:
            out[f"body.{flat}"] = value
        elif key not in full:
            out[f"body.{key}"] = value
    return out


def _patch_size(body: nn.Module) -> int:
    return body.patch_embed.patch_size[0]


def _create(name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:  # a model that does not take one of the options (e.g. drop_path_rate)
        raise ValueError(f"timm model '{name}' does not accept these options "
                         f"({', '.join(sorted(kwargs))}): {e}") from e
    except (OSError, RuntimeError) as e:
        if not kwargs.get("pretrained"):
            raise
        hub = os.environ.get("HF_HOME", "~/.cache/huggingface")
        offline = " (HF_HUB_OFFLINE=1: only the cache is read)" \
            if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load timm's pretrained weights for '{name}' from the Hugging "
                         f"Face cache under {hub}{offline}: {first}") from None


def _resample_position_table(model: "ViTBackbone", state: dict[str, torch.Tensor]) -> None:
    """A ViT checkpoint's position table is for its training size (384: 24x24); resample it to
    this model's grid as InvPT does (bicubic; the old grid is taken to be square)."""
    from timm.layers import resample_abs_pos_embed

    table = state.get("body.pos_embed")
    target = model.body.pos_embed
    if table is None or target is None or table.shape == target.shape or table.dim() != 3:
        return
    prefix = 0 if model.body.no_embed_class else model.body.num_prefix_tokens
    old_side = int(round((table.shape[1] - prefix) ** 0.5))
    if old_side * old_side != table.shape[1] - prefix or table.shape[2] != target.shape[2]:
        return  # not a square table of the same width: reported as a shape mismatch
    state["body.pos_embed"] = resample_abs_pos_embed(
        table, new_size=list(model.body.patch_embed.grid_size), num_prefix_tokens=prefix)


def load_safetensors(model: nn.Module, path: str, timm_model=None) -> None:
    """Load ``path`` into ``model``, every key and shape matching exactly.

    Keys are those of ``model.state_dict()``; a file written from the timm model alone (keys
    without the ``body.`` prefix, e.g. a converted mmseg HRNet checkpoint, or
    ``timm.create_model(name).state_dict()`` whole) is accepted too: ``timm_model()`` gives the
    whole timm model's keys, whose tensors a ``features_only`` backbone does not hold are left out.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise simple_error(path, "pretrained weights file not found",
                           hint="`pretrained` takes the path of a local .safetensors file")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise simple_error(path, f"cannot read pretrained weights (not a valid .safetensors "
                                 f"file?): {e}") from e
    expected = model.state_dict()
    if not any(k.startswith("body.") for k in state):
        state = _from_timm_names(state, expected, timm_model() if timm_model else set())
    if isinstance(model, ViTBackbone):
        _resample_position_table(model, state)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {title}: {shown}")
        raise simple_error(path, "pretrained weights do not match the backbone: " + "; ".join(parts),
                           hint="the file must hold exactly this backbone's state_dict "
                                "(timm parameter names)")
    model.load_state_dict(state, strict=True)
