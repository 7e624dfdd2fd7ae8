"""Arguments shared by the commands that read a spec (check, compile, render, and the
commands other modules add: convert, export, ...)."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import Diagnostic, SpecError


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every command that reads a spec takes."""
    p.add_argument("spec", help="a .mtl file or the name of a built-in spec (e.g. baseline_mt)")
    p.add_argument("--tasks", default=None,
                   help="task profile (nyud, pascal, synthetic) or list (semseg:13,depth)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="override a model parameter (repeatable)")
    p.add_argument("--preset", default=None, help="apply a named preset of the model first")
    p.add_argument("--input", default=None, metavar="HxW", help="input size (default: the "
                                                                 "task profile's)")
    p.add_argument("--model", default=None, help="which model of the file (default: the first)")
    add_plugin_argument(p)


def add_plugin_argument(p: argparse.ArgumentParser) -> None:
    """``--plugin module.path``: a Python module that defines blocks (docs/blocks.md)."""
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import this Python module first: it defines blocks (repeatable; "
                        "installed packages with an mtl_dsl.blocks entry point load by "
                        "themselves)")


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise SpecError(Diagnostic("--input", 1, 1, f"expected HxW such as 425x560, got "
                                                    f"'{text}'", source_line=text)) from None
    return h, w


def spec_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``api.check_spec`` / ``api.compile_model`` from the flags."""
    from ..api import parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    return dict(tasks=args.tasks, overrides=overrides, preset=args.preset,
                input_size=parse_input_size(args.input), model=args.model)
