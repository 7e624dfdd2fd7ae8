"""The spec commands of ``mtl-dsl``: check, compile, render and blocks. None imports torch
before it runs (``check``, ``render`` and ``blocks`` never do)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import Diagnostic, SpecError
from .options import add_plugin_argument, add_spec_arguments, spec_kwargs


# -- commands -------------------------------------------------------------------------------------

def _unknown_block(name: str, asked: list[str], known: list[str]) -> Diagnostic:
    """``mtl-dsl blocks NAME`` of a block the library lacks: at the name as typed; a block that
    a built-in spec defines (``fcn_features``, ``mixer_stack``) says which spec to import."""
    import re

    from ..errors import did_you_mean
    from ..frontend import iter_builtin_specs

    line = " ".join(asked)
    column = len(" ".join(asked[:asked.index(name)] + [""])) + 1  # where it starts in the line
    hint = did_you_mean(name, known)
    defined = re.compile(rf"^block\s+{re.escape(name)}\s*\(", re.MULTILINE)
    for spec in iter_builtin_specs():
        text = spec.read_text(encoding="utf-8", errors="replace")
        found = defined.search(text)
        if found:
            at = text.count("\n", 0, found.start()) + 1
            hint = (f"'{name}' is not in the library: the built-in spec {spec.name} defines it "
                    f"(line {at}); import \"{spec.name}\" to call it")
            break
    return Diagnostic("blocks", 1, column, f"unknown block '{name}'", hint, source_line=line,
                      length=max(1, len(name)))


def cmd_check(args: argparse.Namespace) -> int:
    from ..api import check_spec

    graph = check_spec(args.spec, **spec_kwargs(args))
    ir = graph.ir
    print(f"{ir.file}: model '{ir.name}' is well-formed: {len(ir.nodes)} nodes, "
          f"{len(ir.outputs)} outputs for {len(ir.tasks)} tasks "
          f"({', '.join(t.name for t in ir.tasks)}), input {ir.input_size[0]}x{ir.input_size[1]}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from ..api import check_spec, fusion_option

    kwargs = spec_kwargs(args)
    _, fuse = fusion_option(kwargs["overrides"])
    graph = check_spec(args.spec, **kwargs)
    if args.emit:
        for target in args.emit:
            _emit(graph, target)
        if args.emit_only:
            return 0
    from ..summary import print_summary

    print_summary(graph, batch=args.batch, count_flops=not args.no_flops, fuse=fuse)
    return 0


def _emit(graph: Any, target: str) -> None:
    path = Path(target)
    if path.suffix == ".json":
        text = graph.ir.to_json()
    else:
        from ..draw import graph_view

        try:
            text = graph_view(graph, path.suffix)
        except RuntimeError as e:  # Graphviz itself failed
            raise SpecError(Diagnostic("--emit", 1, 1, f"cannot draw '{target}': {e}",
                                       source_line=target)) from None
        if text is None:
            raise SpecError(Diagnostic("--emit", 1, 1, f"cannot emit '{target}': use a .json, "
                                                       f".dot, .mmd or .svg file name",
                                       source_line=target))
    try:
        path.write_text(text)
    except OSError as e:
        raise SpecError(Diagnostic("--emit", 1, 1, f"cannot write '{target}': {e.strerror}",
                                   source_line=target)) from None
    print(f"wrote {path}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    from ..api import check_spec, fusion_option
    from ..passes import plan_fusion
    from ..render import render_spec

    kwargs = spec_kwargs(args)
    _, fuse = fusion_option(kwargs["overrides"])
    graph = check_spec(args.spec, **kwargs)
    print(render_spec(graph, plan_fusion(graph) if fuse else None))
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from ..blocks import REGISTRY
    from ..plugins import load_installed

    for failure in load_installed():
        print(f"warning: {failure}", file=sys.stderr)
    names = sorted(REGISTRY, key=lambda n: (REGISTRY[n].family, n))
    if args.name:
        missing = [n for n in args.name if n not in REGISTRY]
        if missing:
            raise SpecError([_unknown_block(m, args.name, list(REGISTRY)) for m in missing])
        names = args.name
    family = None
    for name in names:
        block = REGISTRY[name]
        if block.family != family and not args.name:
            family = block.family
            print(f"\n== {family} ==")
        print(block_help(block, detailed=bool(args.name)))
    return 0


def block_help(block: Any, detailed: bool = True) -> str:
    """What ``mtl-dsl blocks NAME`` prints for a block (``detailed``: with its arguments); the
    language server's hover shows the same text."""
    lines = [block.signature()]
    if block.doc:
        lines.append(f"    {block.doc}")
    if detailed:
        for arg_name, spec in block.args.items():
            doc = getattr(spec, "doc", "")
            lines.append(f"    {arg_name}: {spec.type_name()}  {doc}")
        details = getattr(block, "details", None)
        if callable(details):
            lines.append("\n" + details())
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="parse and shape-check a spec without building weights")
    add_spec_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("compile", help="check a spec, build the model, print a table per node")
    add_spec_arguments(p)
    p.add_argument("--emit", action="append", default=[], metavar="FILE",
                   help="also write ir.json, graph.dot, graph.mmd (Mermaid) or graph.svg "
                        "(Graphviz layout when dot is installed; repeatable)")
    p.add_argument("--emit-only", action="store_true", help="write --emit files and stop")
    p.add_argument("--batch", type=int, default=1, help="batch size for the FLOP count")
    p.add_argument("--no-flops", action="store_true", help="skip counting multiply-adds")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("render", help="print the spec with imports, blocks, loops and parameters "
                                      "resolved")
    add_spec_arguments(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("blocks", help="list the registered blocks with their signatures")
    p.add_argument("name", nargs="*", help="show these blocks' arguments in detail")
    add_plugin_argument(p)
    p.set_defaults(func=cmd_blocks)
