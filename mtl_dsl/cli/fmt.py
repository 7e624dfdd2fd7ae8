"""``mtl-dsl fmt``: lay spec files out in the canonical layout (``mtl_dsl.fmt``).

Exit status: 0 every file is (now) formatted; 1 with ``--check``, some file would change; 2 a file
could not be read or parsed, or a folder named holds no .mtl file (its errors printed as ``check``
prints them; the other files are still formatted), or ``--width`` is below 1.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any, Iterator

from ..errors import Diagnostic, SpecError

EXIT_CHANGED = 1
EXIT_ERROR = 2


def _files(names: list[str]) -> Iterator[Path | None]:
    """The files named (a folder: the .mtl files below it; ``-``: standard input, as None)."""
    for name in names:
        if name == "-":
            yield None
            continue
        path = Path(name)
        if path.is_dir():
            found = sorted(path.rglob("*.mtl"))
            if not found:  # a mistyped or wrong folder formats nothing: say so
                raise SpecError(Diagnostic(str(path), 0, 0, f"no .mtl file in the folder {path}"))
            yield from found
        else:
            yield path


def _paths(names: list[str]) -> Iterator[Path | None | SpecError]:
    """``_files`` of each name, a name's error in its place (the other names still formatted)."""
    for name in names:
        try:
            yield from list(_files([name]))
        except SpecError as e:
            yield e


def _read(path: Path) -> str:
    from ..frontend.parser import decode_source

    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecError(Diagnostic(str(path), 0, 0, f"cannot read {path}: "
                                                    f"{e.strerror or e}")) from None
    return decode_source(data, str(path))


def cmd_fmt(args: argparse.Namespace) -> int:
    from ..fmt import format_source

    if args.width < 1:
        raise SpecError(Diagnostic("--width", 0, 0, f"the width must be a positive number of "
                                                    f"columns, got {args.width}"))
    status = 0
    changed = unchanged = 0
    for path in _paths(args.files):
        if isinstance(path, SpecError):
            print(path.render(), file=sys.stderr)
            status = EXIT_ERROR
            continue
        name = "<stdin>" if path is None else str(path)
        try:
            source = sys.stdin.read() if path is None else _read(path)
            formatted = format_source(source, name, width=args.width)
        except SpecError as e:
            print(e.render(), file=sys.stderr)
            status = EXIT_ERROR
            continue
        if path is None and not (args.check or args.diff):
            sys.stdout.write(formatted)
            continue
        if formatted == source:
            unchanged += 1
            continue
        changed += 1
        if args.diff:
            sys.stdout.writelines(difflib.unified_diff(
                source.splitlines(keepends=True), formatted.splitlines(keepends=True),
                f"{name} (original)", f"{name} (formatted)"))
        if args.check or args.diff:
            print(f"would reformat {name}", file=sys.stderr)
            if args.check and status == 0:
                status = EXIT_CHANGED
        else:
            path.write_text(formatted, encoding="utf-8")
            print(f"reformatted {name}", file=sys.stderr)
    verb = "would be reformatted" if args.check or args.diff else "reformatted"
    if changed or unchanged:
        print(f"{changed} file{'s' * (changed != 1)} {verb}, {unchanged} unchanged",
              file=sys.stderr)
    return status


def register(sub: Any) -> None:
    from ..fmt import WIDTH

    p = sub.add_parser("fmt", help="lay spec files out in the canonical layout",
                       description="Lay .mtl files out in the canonical layout, in place. Only "
                                   "whitespace changes; every comment stays where it was.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help=".mtl files or folders of them ('-': standard input to standard output)")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a file would change (for CI and pre-commit)")
    p.add_argument("--diff", action="store_true",
                   help="change nothing; print what would change as a unified diff")
    p.add_argument("--width", type=int, default=WIDTH,
                   help=f"the line width the layout aims at (default {WIDTH})")
    p.set_defaults(func=cmd_fmt)
