"""What ``check`` needs to know about a timm backbone, found by asking timm and probing shapes.

``describe(name)`` returns the geometry of any timm model that the ``backbone`` block can build,
as plain JSON data (``mtl_dsl.blocks.timm_geometry`` caches it and turns it into a
``BackboneGeometry``):

* the families whose modules the block builds in a special way keep their exact rules, and the
  probe only reads their sizes from the model: HRNet (channels of every branch from timm's
  ``feature_info``; the index of the last fusion module), Swin (embedding width, patch size), ViT
  (width, depth, patch size); a ResNet is marked so that its module keeps torchvision's init;
* any other model that supports ``features_only``: channels and strides from ``feature_info``, and
  the exact size of every level from a shape probe on the meta device (no weights, no compute).
  A chain of strided convolutions and poolings, whatever their kernels, paddings and rounding
  (floor, ceil mode, TF "same" padding), maps an input side ``d`` to ``floor((d + a) / r)`` for its
  stride ``r`` and one integer ``a``; probing ``r`` consecutive sizes pins ``a`` down exactly. A
  level is named after its stride as for the built-in families (level ``k`` = stride
  ``2**(k+1)``: level 1 = stride 4), or after timm's feature index where strides repeat or are not
  powers of two. A model that refuses sizes that are not multiples of its largest stride is
  marked so (``multiple``); one that takes a single input size, so (``fixed_size``).

This file imports only torch and timm: it also runs as a script (``python timm_probe.py NAME``
prints the JSON), which is how a torch-free ``mtl-dsl check`` asks it without importing torch.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any


class ProbeError(Exception):
    """The model cannot be a backbone: not a timm model, or no features_only support."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


def _base(name: str) -> str:
    return name.split(".")[0]  # a pretrained tag (resnet50.a1_in1k) changes no shape


def _build(name: str, **kwargs: Any):
    import timm
    import torch

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # some constructors compute on tensors; build for real (small cost)
        return timm.create_model(name, pretrained=False, **kwargs)


def describe(name: str) -> dict[str, Any]:
    import timm

    base = _base(name)
    if not timm.is_model(base):
        from difflib import get_close_matches

        close = get_close_matches(base, timm.list_models(), n=3, cutoff=0.75)
        raise ProbeError(f"'{base}' is not a timm model (timm {timm.__version__})",
                         f"did you mean {', '.join(repr(c) for c in close)}?" if close else
                         "timm.list_models() lists them")
    from timm.models.hrnet import HighResolutionNet
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    plain = _build(base, num_classes=0)
    out: dict[str, Any] = {"name": base, "timm": timm.__version__}
    if isinstance(plain, VisionTransformer):
        return dict(out, family="vit", depth=len(plain.blocks), width=plain.embed_dim,
                    patch=plain.patch_embed.patch_size[0])
    if isinstance(plain, SwinTransformer):
        return dict(out, family="swin", width=plain.embed_dim,
                    patch=plain.patch_embed.patch_size[0], depth=len(plain.layers))
    if isinstance(plain, HighResolutionNet):
        model = _features(base, feature_location="")
        return dict(out, family="hrnet", channels=dict(enumerate(model.feature_info.channels())),
                    hrnet_last_module=len(plain.stage4) - 1)
    family = "resnet" if type(plain).__module__ == "timm.models.resnet" else "timm"
    return dict(out, family=family, **_probe_levels(base))


def _features(base: str, **kwargs: Any):
    try:
        return _build(base, features_only=True, **kwargs)
    except Exception as e:
        raise ProbeError(f"timm cannot build '{base}' as a backbone (features_only): "
                         f"{type(e).__name__}: {e}",
                         "the backbone block takes timm models that support features_only") from e


def _levels(reductions: list[int]) -> list[int]:
    """Level names: log2(stride) - 1 where strides are distinct powers of two, else indices."""
    powers = all(r >= 2 and r & (r - 1) == 0 for r in reductions)
    if powers and len(set(reductions)) == len(reductions):
        return [int(math.log2(r)) - 1 for r in reductions]
    return list(range(len(reductions)))


def _run(model, h: int, w: int) -> list[tuple[int, int]]:
    import torch

    device = next(iter(model.parameters()), torch.empty(0)).device
    nhwc = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, h, w, device=device))
    return [tuple(m.shape[1:3]) if nhwc else tuple(m.shape[2:4]) for m in maps]


def _probe_levels(base: str) -> dict[str, Any]:
    model = _features(base).eval()
    info = model.feature_info
    channels, reductions = list(info.channels()), list(info.reduction())
    names = _levels(reductions)
    largest = max(reductions)
    start = 4 * largest
    sizes = list(range(start, start + largest))  # every residue of every stride
    half = (len(sizes) + 1) // 2
    heights, widths = sizes[:half], sizes[half:]
    widths += heights[len(widths):]
    offsets = None
    multiple, fixed = 1, None
    try:
        offsets = _fit(names, reductions, [(h, w, _run(model, h, w))
                                           for h, w in zip(heights, widths)])
    except Exception:  # the model refuses some sizes, or resizes inside (MobileViT)
        pass
    if offsets is None:  # sides that are multiples of the largest stride only
        multiple = largest
        try:
            pairs = [(start, start + largest), (start + 2 * largest, start + 3 * largest)]
            offsets = _fit(names, reductions, [(h, w, _run(model, h, w)) for h, w in pairs])
        except Exception as e:  # a model built for one input size
            fixed = _default_size(model, base)
            if fixed is None:
                raise ProbeError(f"timm's '{base}' fails on a {start}x{start + largest} input: "
                                 f"{type(e).__name__}: {e}") from e
            offsets = _fit(names, reductions, [(fixed[0], fixed[1], _run(model, *fixed))])
            multiple = 1
        if offsets is None:
            raise ProbeError(f"the level sizes of '{base}' are not those of a chain of strided "
                             f"convolutions, even at multiples of {largest}",
                             "describe it with mtl_dsl.blocks.backbones.register_backbone")
    return {"channels": dict(zip(names, channels)), "offsets": offsets,
            "indices": dict(zip(names, range(len(names)))), "multiple": multiple,
            "fixed_size": fixed}


def _fit(names: list[int], reductions: list[int], observed: list) -> dict[int, list[int]] | None:
    """For each level, the ``a`` of ``floor((d + a) / r)`` that every observation agrees on (the
    smallest where only some residues were seen: they give the same sizes on those); None when
    no ``a`` fits."""
    offsets = {}
    for i, (name, r) in enumerate(zip(names, reductions)):
        lo, hi = -10 * r, 10 * r
        for h, w, maps in observed:
            for d, o in ((h, maps[i][0]), (w, maps[i][1])):
                lo, hi = max(lo, r * o - d), min(hi, r * o - d + r - 1)
        if lo > hi:
            return None
        offsets[name] = [lo, r]
    return offsets


def _default_size(model, base: str) -> tuple[int, int] | None:
    import timm

    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg:
        try:
            cfg = timm.models.get_pretrained_cfg(base).to_dict()
        except Exception:
            cfg = {}
    size = cfg.get("input_size")
    return (int(size[1]), int(size[2])) if size else None


def main(argv: list[str]) -> int:
    """``python timm_probe.py NAME``: the description as JSON, or {"error", "hint"}."""
    try:
        result: dict[str, Any] = describe(argv[1])
    except ProbeError as e:
        result = {"error": e.message, "hint": e.hint}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
