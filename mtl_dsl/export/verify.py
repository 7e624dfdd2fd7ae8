"""The numerical check of an exported file against the eager model.

The written file is run again (ONNX Runtime on the CPU, or the program ``torch.export.load``
reads back) on random images in the deployed input's range and compared with the eager float32
model, output by output. An output passes when its largest absolute difference is at most
``tolerance * max(1, max |eager output|)``: absolute for outputs of magnitude up to 1 (every
output of a freshly initialised model), relative beyond (a trained depth head in metres, large
logits), where float32 rounding grows with the values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .deploy import example_input


@dataclass(frozen=True)
class Difference:
    name: str
    batch: int
    shape: tuple[int, ...]
    max_abs: float  # inf when the shapes differ or a value is not finite
    scale: float  # max(1, max |eager output|)
    tolerance: float  # the bound: atol * scale

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance  # False for nan/inf


def compare(reference: torch.nn.Module, exported: Callable[[torch.Tensor], dict],
            names: list[str], batches: tuple[int, ...], size: tuple[int, int], normalize: bool,
            atol: float) -> list[Difference]:
    out = []
    for batch in batches:
        images = example_input(batch, size, normalize, seed=1000 + batch)
        with torch.no_grad():
            expected = reference(images)
        got = exported(images.clone())
        missing = [n for n in names if n not in got]
        if missing or len(got) != len(names):
            raise RuntimeError(f"the exported file returns {sorted(got)}, expected {names}")
        for name in names:
            want, have = expected[name].double(), got[name].double()
            scale = max(1.0, float(want.abs().max()))
            if want.shape != have.shape:
                diff = math.inf
            else:
                diff = float((have - want).abs().max())
                diff = diff if math.isfinite(diff) else math.inf
            out.append(Difference(name, batch, tuple(have.shape), diff, scale, atol * scale))
    return out


def format_table(differences: list[Difference]) -> str:
    rows = [("output", "batch", "shape", "max |diff|", "tolerance", "")]
    for d in differences:
        rows.append((d.name, str(d.batch), "x".join(map(str, d.shape)), f"{d.max_abs:.2e}",
                     f"{d.tolerance:.1e}", "ok" if d.ok else "FAILED"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)
