"""``export_model``: a compiled model -> a checked deployment file (ONNX or torch.export).

Steps: choose the outputs and wrap the model (``deploy.py``), trace it once with ``torch.export``
(``program.py``), write the format (``formats.py``) with its description (``manifest.py``), run the
written file again and compare it with the eager model (``verify.py``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from .deploy import DeployModule, OutputInfo, example_input, select_outputs
from .formats import FORMATS, FP16_TOLERANCE
from .manifest import describe, write_sidecar
from .program import example_batch, trace
from .quiet import verbose
from .verify import Difference, compare

CHECK_BATCHES_DYNAMIC = (1, 3)


@dataclass(frozen=True)
class ExportOptions:
    format: str = "onnx"  # "onnx" or "pt2"
    dynamic_batch: bool = False
    fp16: bool = False
    with_aux: bool = False
    normalize: bool = True  # the graph normalises RGB in [0, 1] itself
    tolerance: float | None = None  # None: the format's (FORMATS[...].tolerance, FP16_TOLERANCE)
    weights: str = ""  # where the weights came from, for the description
    verbose: bool = False  # show the exporters' own output (see quiet.py)

    def atol(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return FP16_TOLERANCE if self.fp16 else FORMATS[self.format].tolerance


@dataclass
class ExportResult:
    files: list[Path]
    sidecar: Path
    outputs: list[OutputInfo]
    differences: list[Difference]
    runtime: str
    export_seconds: float
    description: dict = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.differences)


def export_model(model, path: str | Path, options: ExportOptions) -> ExportResult:
    """Export ``model`` (a ``CompiledModel``, weights loaded) to ``path`` and check the file."""
    with verbose(options.verbose):
        return _export(model, Path(path), options)


def _export(model, path: Path, options: ExportOptions) -> ExportResult:
    fmt = FORMATS[options.format]
    model.eval()
    outputs = select_outputs(model, options.with_aux)
    names = [o.name for o in outputs]
    reference = DeployModule(model, outputs, options.normalize).eval()
    deployed = reference
    if options.fp16:
        deployed = DeployModule(copy.deepcopy(model).half(), outputs, options.normalize,
                                half=True).eval()
    size = tuple(model.input_size)
    started = time.perf_counter()
    example = example_input(example_batch(options.dynamic_batch), size, options.normalize)
    program = trace(deployed, model, example, options.dynamic_batch)
    description = describe(model, outputs, file_format=fmt.name, title=fmt.title,
                           dynamic_batch=options.dynamic_batch, fp16=options.fp16,
                           normalize=options.normalize, weights=options.weights)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files = fmt.write(program, example, path, names, description, model, options.dynamic_batch)
    except OSError as e:  # a folder in the way, no space, no permission: said, not a traceback
        from ..errors import simple_error

        raise simple_error(str(path), f"cannot write {path}: {e.strerror or e}") from None
    seconds = time.perf_counter() - started
    batches = CHECK_BATCHES_DYNAMIC if options.dynamic_batch else (1,)
    try:
        differences = compare(reference, fmt.runner(path, model), names, batches, size,
                              options.normalize, options.atol())
    except BaseException:  # a file its runtime cannot run is no deployment
        for file in files:
            file.unlink(missing_ok=True)
        raise
    runtime = fmt.runtime()
    description["check"] = {
        "runtime": runtime, "reference": "eager PyTorch, float32",
        "tolerance": f"{options.atol():g} x max(1, max |eager output|)",
        "results": [{"output": d.name, "batch": d.batch, "max_abs_diff": d.max_abs,
                     "bound": d.tolerance, "ok": d.ok} for d in differences],
    }
    sidecar = write_sidecar(path, description)
    return ExportResult(files, sidecar, outputs, differences, runtime, seconds, description)
