"""Parameters and multiply-adds of the papers' backbones at the papers' input sizes, next to the
official figures (the official backbones instantiated: the ATRC code's HRNet, the mmseg Swin of
DeMT/TPANet, InvPT's ViT).

MACs are "conv+mm" multiply-adds (1 MAC = 2 FLOPs) counted by ``mtl_dsl.flops.count_macs``; the
official column is fvcore's conv+mm count of the official backbones. Run:
``.venv/bin/python benchmarks/backbone_figures.py`` (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import time

import torch

from mtl_dsl.blocks import Call, get_block
from mtl_dsl.flops import count_macs
from mtl_dsl.types import H, W, FeatureMap

# name, input size, official params, official MACs (G), note
CASES = [
    ("hrnet_w18_small_v2", (425, 560), 3_860_720, 7.675, "HRNetV2-W18-small, NYUD"),
    ("hrnet_w18_small_v2", (448, 576), 3_860_720, 8.199, "HRNetV2-W18-small, NYUD padded"),
    ("hrnet_w18_small_v2", (512, 512), 3_860_720, 8.329, "HRNetV2-W18-small, PASCAL"),
    ("swin_tiny_patch4_window7_224", (425, 560), 27_520_698, 22.30, "Swin-T + 4 output LNs, NYUD"),
    ("swin_small_patch4_window7_224", (425, 560), 48_838_602, None, "Swin-S + 4 output LNs"),
    ("swin_base_patch4_window7_224", (425, 560), 86_745_016, None, "Swin-B + 4 output LNs"),
    ("vit_large_patch16_384", (448, 576), 304_133_120, 355.5, "ViT-L/16, InvPT NYUD"),
]


def build(name: str, size: tuple[int, int]):
    block = get_block("backbone")
    params = {k: v.default for k, v in block.params().items()}
    params["name"] = name
    call = Call(node="backbone", block="backbone",
                inputs={"images": FeatureMap(channels=3, h=H, w=W)}, params=params, tasks=(),
                input_size=size)
    return block.infer(call), block.build(call).eval()


def main() -> None:
    torch.manual_seed(0)
    print(f"{'backbone':<31} {'input':>8} {'params':>12} {'official':>12} {'GMACs':>8} "
          f"{'official':>8} {'diff':>7}  maps")
    for name, size, official_params, official_macs, note in CASES:
        start = time.time()
        predicted, model = build(name, size)
        params = sum(p.numel() for p in model.parameters())
        report = count_macs(model, torch.randn(1, 3, *size))
        with torch.no_grad():
            maps = model(torch.randn(1, 3, *size))
        shapes = [tuple(m.shape[2:]) for m in maps]
        assert shapes == [lv.concrete(size)[1:] for lv in predicted.levels], (shapes, predicted)
        gmacs = report.total / 1e9
        official = f"{official_macs:.3f}" if official_macs else "-"
        diff = f"{100 * (gmacs / official_macs - 1):+.2f}%" if official_macs else "-"
        print(f"{name:<31} {size[0]:>3}x{size[1]:<4} {params:>12,} {official_params:>12,} "
              f"{gmacs:>8.3f} {official:>8} {diff:>7}  {' '.join(f'{h}x{w}' for h, w in shapes)}"
              f"  ({note}; {time.time() - start:.0f} s)")
        if report.uncounted:
            print(f"    ops not counted: {', '.join(report.uncounted)}")


if __name__ == "__main__":
    main()
