"""``mtl-dsl export``: a trained model as an ONNX file or a ``torch.export`` program, checked.

The model is compiled from the spec with the checkpoint's run config (tasks, input size, preset,
parameters; each can be overridden by its flag), the checkpoint's weights are loaded (refused if
they are not this graph's), then ``export_model`` writes and checks the file. This module imports
neither torch nor ONNX at import time; the CLI registers it while building its parser.

Exit codes: 0 written and checked; 1 written but the check failed (the file is removed); 2 a
mistake in the spec, a flag or a file, or a node that cannot be exported (named, no traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_CHECK_FAILED = 1


def register(subparsers: Any) -> None:
    from ..cli.options import add_spec_arguments

    p = subparsers.add_parser("export", help="write a trained model as ONNX or a torch.export "
                                             "program, checked against eager PyTorch")
    add_spec_arguments(p)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="checkpoint directory or run folder (its newest checkpoint)")
    p.add_argument("--format", choices=("onnx", "pt2"), default=None,
                   help="onnx (ONNX Runtime, TensorRT, ...) or pt2 (torch.export: ExecuTorch, "
                        "AOTInductor); default: from the suffix of -o")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="a symbolic batch dimension (default: batch 1)")
    p.add_argument("--fp16", action="store_true",
                   help="compute in float16 (inputs and outputs stay float32)")
    p.add_argument("--with-aux", action="store_true",
                   help="also output the auxiliary / intermediate predictions (task.aux, ...)")
    p.add_argument("--raw-input", action="store_true",
                   help="leave the ImageNet normalisation to the caller (default: the graph "
                        "takes RGB in [0, 1] and normalises it)")
    p.add_argument("--tolerance", type=float, default=None, metavar="T",
                   help="max abs difference to eager PyTorch, times max(1, |output|) (default: "
                        "1e-4 onnx, 1e-5 pt2, 1e-2 with --fp16)")
    p.add_argument("--verbose", action="store_true",
                   help="show the exporters' own output (progress, warnings, partial programs)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..errors import simple_error

    path = Path(args.output)
    fmt = args.format or {".onnx": "onnx", ".pt2": "pt2"}.get(path.suffix.lower())
    if fmt is None:
        raise simple_error("--format", f"cannot tell the format from '{args.output}'",
                           hint="give --format onnx or --format pt2 (or name the file .onnx / .pt2)")
    if args.tolerance is not None and not args.tolerance > 0:
        raise simple_error("--tolerance", f"the tolerance must be positive, got {args.tolerance}")
    if fmt == "onnx":
        from .formats import require_onnx

        require_onnx()
    model, weights = load_model(args)

    from .run import ExportOptions, export_model
    from .verify import format_table

    options = ExportOptions(format=fmt, dynamic_batch=args.dynamic_batch, fp16=args.fp16,
                            with_aux=args.with_aux, normalize=not args.raw_input,
                            tolerance=args.tolerance, weights=weights, verbose=args.verbose)
    result = export_model(model, path, options)
    print(_summary(model, result, options))
    print(format_table(result.differences))
    if not result.ok:
        for file in (*result.files, result.sidecar):
            file.unlink(missing_ok=True)
        worst = max(result.differences, key=lambda d: d.max_abs / d.tolerance)
        print(f"error: the exported {worst.name} differs from the eager model by "
              f"{worst.max_abs:.3g} > {worst.tolerance:.3g}; removed {path} (--tolerance accepts "
              f"a larger difference)", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"description: {result.sidecar}")
    return 0


def _summary(model, result, options) -> str:
    h, w = model.input_size
    batch = "N" if options.dynamic_batch else "1"
    given = ("RGB in [0, 1], normalised inside the graph" if options.normalize
             else "ImageNet-normalised by the caller")
    size = sum(f.stat().st_size for f in result.files)
    files = ", ".join(str(f) for f in result.files)
    dtype = "float16" if options.fp16 else "float32"
    return (f"exported {model.ir.name} ({', '.join(o.name for o in result.outputs)}) to {files} "
            f"({size / 1e6:.1f} MB, {result.description['title']}, {dtype} compute) in "
            f"{result.export_seconds:.1f} s\n"
            f"input 'images' float32 {batch}x3x{h}x{w}, {given}\n"
            f"checked with {result.runtime} on random images against eager PyTorch (float32):")


def load_model(args: argparse.Namespace):
    """(compiled model with the weights loaded, where the weights came from).

    ``--checkpoint`` is the one source of weights today (a training run's checkpoint, or any
    folder in that layout); a loader of official checkpoint files (``--weights FILE``) plugs in
    here, next to it, by returning the same pair.
    """
    return _from_checkpoint(args)


def _from_checkpoint(args: argparse.Namespace):
    from ..api import compile_model
    from ..cli.options import spec_kwargs
    from ..errors import simple_error
    from ..runtime.checkpoints import load_checkpoint, load_model_weights

    flags = spec_kwargs(args)
    loaded = load_checkpoint(args.checkpoint, with_state=False)
    kwargs = dict(flags)
    stored = loaded.meta.get("run_config")
    if stored is not None:  # what the run was trained as; a flag given overrides its part
        from ..runtime.config import RunConfig

        try:
            trained = RunConfig.model_validate(stored).model_arguments()
        except ValueError as exc:
            raise simple_error(str(loaded.path / "meta.json"),
                               f"run config in checkpoint is invalid: {exc}") from None
        for key in ("tasks", "input_size", "preset"):
            kwargs[key] = flags[key] if flags[key] is not None else trained[key]
        kwargs["overrides"] = {**(trained["overrides"] or {}), **flags["overrides"]}
    model = compile_model(args.spec, **kwargs)
    load_model_weights(model, loaded)
    return model, str(loaded.path)
