"""Writing an exported program as a file, and running that file again.

* ``onnx``: ``torch.onnx.export`` (the ``torch.export``-based exporter, ONNX Script's operator
  library, its optimiser), opset ``OPSET``; DeMT's deformable convolution becomes ONNX
  ``DeformConv`` (opset 19), which ONNX Runtime's CPU provider runs. Weights past ONNX's 2 GB
  protobuf limit go to ``FILE.data`` next to the file. Read back with ONNX Runtime (CPU).
* ``pt2``: ``torch.export.save`` (the ExportedProgram archive that ExecuTorch and AOTInductor
  start from). Read back with ``torch.export.load``.

Both embed the export's description (``manifest.py``): ONNX as the metadata entry
``mtl_dsl``, the archive as the extra file ``mtl_dsl.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import simple_error
from .deploy import BATCH, INPUT_NAME
from .locate import (first_line, model_error, node_error, node_of_fx_frames,
                     node_of_onnx_runtime_failure, node_of_program, onnx_failure)
from .quiet import quiet

OPSET = 20  # DeformConv needs 19; from 20 GELU is one operator
METADATA_KEY = "mtl_dsl"
Runner = Callable[[torch.Tensor], dict]


def require_onnx() -> None:
    """A usage error (not a traceback) when the ``export`` extra is not installed."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise simple_error("--format", f"ONNX export needs {', '.join(missing)}, which this "
                                       f"installation lacks",
                           hint="pip install 'mtl-dsl[export]'")


def write_onnx(program, example: torch.Tensor, path: Path, output_names: list[str],
               description: dict, model, dynamic_batch: bool) -> list[Path]:
    require_onnx()
    # The program's batch symbol (s0, s34, ...) is named `batch` in the file.
    dynamic = ({0: BATCH},) if dynamic_batch else None
    try:
        with quiet():
            onnx_program = torch.onnx.export(
                program, (example,), dynamo=True, input_names=[INPUT_NAME],
                output_names=output_names, opset_version=OPSET, optimize=True, verbose=False,
                dynamic_shapes=dynamic)
    except Exception as exc:  # noqa: BLE001 - every failure is told as the node behind it
        graph_node, op, why = onnx_failure(exc)
        node = node_of_fx_frames(exc, model) or node_of_program(program, graph_node, op, model)
        if node is not None:
            raise node_error(model, node, "to ONNX", why) from None
        raise model_error(model, "to ONNX", why) from None
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(description)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx_program.save(str(path))  # external data only past the 2 GB limit
    return [path] + ([data] if data.exists() else [])


def onnx_runner(path: Path, model) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own error types
        raise onnx_runtime_error(path, exc, model) from None
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [INPUT_NAME]:
        raise RuntimeError(f"{path} takes inputs {inputs}, expected ['{INPUT_NAME}']")

    def run(images: torch.Tensor) -> dict:
        try:
            arrays = session.run(None, {INPUT_NAME: images.numpy()})
        except Exception as exc:  # noqa: BLE001
            raise onnx_runtime_error(path, exc, model) from None
        return {n: torch.from_numpy(a) for n, a in zip(names, arrays)}

    return run


def onnx_runtime_error(path: Path, exc: BaseException, model):
    """ONNX Runtime cannot load or run the file: the spec node of the ONNX node it names."""
    node, op = node_of_onnx_runtime_failure(path, exc, model)
    why = f"{onnx_runtime_name()} cannot run it: {first_line(exc)}"
    hint = (f"the file holds ONNX's {op}, which this runtime does not implement; `--format pt2` "
            f"does not need it" if op else "")
    stage = "to ONNX" + (f" ({op})" if op else "")
    if node is not None:
        return node_error(model, node, stage, why, hint)
    return model_error(model, stage, why, hint)


def onnx_runtime_name() -> str:
    import onnxruntime as ort

    return f"ONNX Runtime {ort.__version__} (CPU)"


def write_pt2(program, example: torch.Tensor, path: Path, output_names: list[str],
              description: dict, model, dynamic_batch: bool) -> list[Path]:
    torch.export.save(program, str(path), extra_files={f"{METADATA_KEY}.json":
                                                       json.dumps(description)})
    return [path]


def pt2_runner(path: Path, model) -> Runner:
    module = torch.export.load(str(path)).module()

    def run(images: torch.Tensor) -> dict:
        with torch.no_grad():
            return dict(module(images))

    return run


def pt2_runtime_name() -> str:
    return f"torch.export.load (torch {torch.__version__}, CPU)"


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    title: str
    write: Callable[..., list[Path]]
    runner: Callable[[Path, object], Runner]
    runtime: Callable[[], str]
    tolerance: float  # float32 max abs difference to eager PyTorch (times max(1, |output|))


FORMATS = {
    "onnx": Format("onnx", ".onnx", f"ONNX (opset {OPSET})", write_onnx, onnx_runner,
                   onnx_runtime_name, 1e-4),
    "pt2": Format("pt2", ".pt2", "torch.export program", write_pt2, pt2_runner,
                  pt2_runtime_name, 1e-5),
}
FP16_TOLERANCE = 1e-2
