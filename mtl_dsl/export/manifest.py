"""The description written next to an exported file (``FILE.json``) and embedded in it.

It says what a deployment needs and the file cannot say by itself: the input's range and the
normalisation (applied inside the graph or not), what each output holds, the spec, preset and
parameters the model was compiled from, the weights, and the numerical check's results.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .deploy import BATCH, INPUT_NAME, OutputInfo

FORMAT = "mtl-dsl-export/1"


def describe(model, outputs: list[OutputInfo], *, file_format: str, title: str,
             dynamic_batch: bool, fp16: bool, normalize: bool, weights: str) -> dict[str, Any]:
    from ..tasks import IMAGENET_MEAN, IMAGENET_STD

    ir = model.ir
    h, w = model.input_size
    batch: int | str = BATCH if dynamic_batch else 1
    normalization = {"inside_graph": normalize, "mean": [round(float(v), 6) for v in IMAGENET_MEAN],
                     "std": [round(float(v), 6) for v in IMAGENET_STD]}
    if normalize:
        normalization["input_range"] = [0.0, 1.0]
        normalization["applied"] = "(images - mean) / std, per channel, inside the graph"
    else:
        normalization["applied"] = ("by the caller: RGB in [0, 1], then (x - mean) / std per "
                                    "channel, as in training")
    return {
        "format": FORMAT,
        "file_format": file_format,
        "title": title,
        "spec": ir.file,
        "model": ir.name,
        "preset": ir.preset,
        "params": {k: v.value for k, v in ir.params.items()},
        "tasks": [{"name": t.name, "channels": t.channels} for t in ir.tasks],
        "graph_hash": ir.graph_hash(),
        "weights": weights,
        "compute_dtype": "float16" if fp16 else "float32",
        "input": {"name": INPUT_NAME, "shape": [batch, 3, h, w], "dtype": "float32",
                  "layout": "NCHW, RGB", "normalization": normalization},
        "outputs": [{"name": o.name, "task": o.task, "output": o.output,
                     "shape": [batch, o.channels, h, w], "dtype": "float32",
                     "meaning": o.meaning} for o in outputs],
        "versions": _versions(file_format),
    }


def _versions(file_format: str) -> dict[str, str]:
    import torch

    from .. import __version__

    versions = {"mtl-dsl": __version__, "torch": torch.__version__}
    if file_format == "onnx":
        import onnx
        import onnxruntime
        import onnxscript

        versions.update(onnx=onnx.__version__, onnxscript=onnxscript.__version__,
                        onnxruntime=onnxruntime.__version__)
    return versions


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_sidecar(path: Path, description: dict) -> Path:
    target = sidecar_path(path)
    target.write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")
    return target
