"""``mtl-dsl export``: a trained model as an ONNX file or a ``torch.export`` program, checked.

The model is compiled from the spec with the checkpoint's run config (tasks, input size, preset,
parameters; each can be overridden by its flag) and the checkpoint's weights are loaded (refused if
they are not this graph's); or, with ``--weights FILE``, compiled from the flags and given an
official checkpoint's tensors through the spec's weights map (``mtl_dsl.weights``, as ``eval
--weights``). Then ``export_model`` writes and checks the file. This module imports
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
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="DIR",
                       help="checkpoint directory or run folder (its newest checkpoint; also a "
                            "folder written by convert)")
    which.add_argument("--weights", metavar="FILE",
                       help="an official checkpoint, read through the spec's weights map (the "
                            "model is compiled from the flags: --tasks, --input, --preset, --set)")
    p.add_argument("--map", default=None, metavar="NAME",
                   help="with --weights: the spec's weights map to read it with (default: "
                        "official)")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --weights: model tensors the file does not give keep their "
                        "initialisation (seed 0)")
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
    suffix = {".onnx": "onnx", ".pt2": "pt2"}.get(path.suffix.lower())
    if suffix is not None and suffix != fmt:
        raise simple_error("--format", f"--format {fmt} but -o names a .{suffix} file: "
                                       f"'{args.output}'",
                           hint=f"name the file .{fmt}, or drop --format")
    if args.tolerance is not None and not args.tolerance > 0:
        raise simple_error("--tolerance", f"the tolerance must be positive, got {args.tolerance}")
    check_writable(path, fmt)
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


def check_writable(path: Path, fmt: str) -> None:
    """Refuse, before anything is compiled, an output file that cannot be written: a folder, a
    path under a file, a folder that cannot be created or written (one ``-o`` error, no
    traceback)."""
    from ..errors import refuse_unwritable, simple_error

    if path.is_dir():
        raise simple_error("-o", f"{path} is a folder, not a file",
                           hint=f"give a file name, such as {path / ('model.' + fmt)}")
    refuse_unwritable(path, "-o")


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
    """(compiled model with the weights loaded, where the weights came from): a checkpoint
    folder (``--checkpoint``, compiled as it was trained) or an official file (``--weights``,
    compiled from the flags and read through the spec's weights map, as ``eval --weights``)."""
    from ..errors import simple_error

    if args.weights is not None:
        return _from_official_file(args)
    given = [flag for flag, value in (("--map", args.map), ("--allow-partial", args.allow_partial))
             if value]
    if given:
        raise simple_error(given[0], f"{' and '.join(given)} only apply with --weights: a "
                                     f"checkpoint folder holds the spec's own tensor names")
    return _from_checkpoint(args)


def _from_official_file(args: argparse.Namespace):
    import torch

    from ..api import compile_model
    from ..cli.options import spec_kwargs
    from ..weights.convert import DEFAULT_MAP, INIT_SEED, apply_file

    torch.manual_seed(INIT_SEED)  # what --allow-partial keeps is the seed-0 initialisation
    model = compile_model(args.spec, **spec_kwargs(args))
    loaded = apply_file(model, args.weights, args.map or DEFAULT_MAP,
                        allow_partial=args.allow_partial)
    print(loaded.report, file=sys.stderr)
    return model, f"{args.weights} (official, sha256 {loaded.weights.sha256})"


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
        kwargs["plugins"] = trained.get("plugins") or ()  # the run's block plugins
    model = compile_model(args.spec, **kwargs)
    load_model_weights(model, loaded)
    return model, str(loaded.path)
