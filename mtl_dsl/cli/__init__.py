"""``mtl-dsl``, the command line.

Each command lives in a module that defines ``register(subparsers)``: it adds its subparser(s)
and sets ``func`` (a handler taking the parsed arguments and returning the exit status). The
command modules are listed once, in ``COMMANDS``; adding a command is writing such a module and
adding one line there. Handlers import torch, ray and the runtime only when they run, so
``mtl-dsl check`` and ``mtl-dsl --help`` answer at once.

Exit status: 0 done; 1 a run that stopped (non-finite loss, worker failure); 2 a mistake in what
the user gave (a spec, a run config, a flag), printed as one message without a traceback; 130
interrupted; 143 a Ray run ended by SIGTERM (a plain run ends as SIGTERM's default does).
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Sequence

from ..errors import SpecError

EXIT_SPEC_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended

# The modules that add commands, in the order their commands are listed by --help.
COMMANDS = (
    "mtl_dsl.cli.spec",          # check, compile, render, blocks
    "mtl_dsl.runtime.commands",  # train, search, eval, predict
    "mtl_dsl.weights.commands",  # convert
    "mtl_dsl.cli.tune",          # tune
    "mtl_dsl.export.command",    # export
    "mtl_dsl.cli.fmt",           # fmt
    "mtl_dsl.cli.lsp",           # lsp
)

DESCRIPTION = ("Check, compile, render, train, evaluate and run multi-task dense-prediction\n"
               "vision models written as .mtl specs.")
EPILOG = """\
examples:
  mtl-dsl check demt --tasks nyud              parse and shape-check a spec (no torch)
  mtl-dsl compile demt --preset hrnet18        build it and print its nodes, parameters, MACs
  mtl-dsl train baseline_mt                    train on the built-in synthetic scenes
  mtl-dsl tune baseline_mt --search dim=[16,32] sweep a parameter with Ray Tune
  mtl-dsl export baseline_mt --checkpoint runs/baseline_mt-synthetic -o model.onnx
                                               the trained model as ONNX, checked against PyTorch
  mtl-dsl COMMAND --help                       the options of one command

SPEC is a .mtl file or the name of a built-in spec (baseline_mt, demt, tpanet, invpt, atrc, ...).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl-dsl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        import_module(name).register(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return f"mtl-dsl {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "plugins", None):
            from ..plugins import load_plugins

            load_plugins(args.plugins)
        return int(args.func(args) or 0)
    except SpecError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_SPEC_ERROR
    except KeyboardInterrupt as exc:
        from ..runtime.failures import Terminated

        if isinstance(exc, Terminated):  # SIGTERM on the Ray path (runtime/failures.py)
            print("terminated", file=sys.stderr)
            return EXIT_TERMINATED
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


__all__ = ["COMMANDS", "EXIT_SPEC_ERROR", "build_parser", "main"]
