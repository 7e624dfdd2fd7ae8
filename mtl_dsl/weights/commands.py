"""``mtl-dsl convert``: an official checkpoint into a checkpoint folder of a compiled spec.

``mtl_dsl.cli`` calls ``register(subparsers)``; torch is imported when the command runs.
"""
from __future__ import annotations

import argparse
from typing import Any

MAP_HELP = "the spec's weights map to use (default: official)"


def register(subparsers: Any) -> None:
    from ..cli.options import add_spec_arguments

    p = subparsers.add_parser(
        "convert", help="turn a checkpoint stored under the official names into a checkpoint "
                        "folder of the spec (model.safetensors + meta.json)")
    add_spec_arguments(p)
    p.add_argument("file", help="the official checkpoint (.safetensors, .pth, .pth.tar, .ckpt)")
    p.add_argument("-o", "--out", required=True, metavar="DIR|URI",
                   help="the folder to write (new): a path or a storage URI (s3://...)")
    p.add_argument("--storage-endpoint", dest="uri_endpoint", default=None, metavar="URL",
                   help="endpoint of an S3-compatible store, for an s3:// -o (default: AWS, or "
                        "AWS_ENDPOINT_URL)")
    p.add_argument("--map", default="official", metavar="NAME", help=MAP_HELP)
    p.add_argument("--allow-partial", action="store_true",
                   help="model tensors the file does not give keep their initialisation (seed 0)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..cli.options import spec_kwargs
    from ..runtime.commands import storage_argument
    from .convert import convert

    kwargs = spec_kwargs(args)
    out = storage_argument(args.out, args.uri_endpoint, "-o")
    path, report = convert(args.spec, args.file, out, tasks=kwargs["tasks"],
                           input_size=kwargs["input_size"], preset=kwargs["preset"],
                           overrides=kwargs["overrides"], model_name=kwargs["model"],
                           map_name=args.map, allow_partial=args.allow_partial)
    print(report)
    print(f"wrote {path}")
    return 0
