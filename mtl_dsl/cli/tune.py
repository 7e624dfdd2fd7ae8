"""``mtl-dsl tune SPEC --search KEY=VALUES ...``: a sweep on Ray Tune (``runtime/sweep.py``).

It takes every flag of ``train`` (each trial is a training run of that runtime) and the sweep's
own: ``--search`` (repeatable), ``--samples``, ``--scheduler``, ``--metric``, ``--baseline``,
``--budget``, ``--concurrent``; they override the run config's ``tune:`` section. torch and ray
are imported when the command runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import simple_error

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

EPILOG = """\
search values: [a, b, c] every value; choice(a, b) one at random per sample; uniform(lo, hi),
loguniform(lo, hi), randint(lo, hi), quniform(lo, hi, q), ... as Ray Tune's. A plain KEY is a
model parameter of the spec (dim, depth, backbone), preset the model preset, a dotted KEY a
run-config key (optimizer.lr, training.batch_size).

examples (quote the values in a shell: "(" is bash syntax, "[" a glob pattern):
  mtl-dsl tune demt --search 'dim=[64,128,256]' --search 'depth=[1,2]' \\
      --search 'optimizer.lr=loguniform(1e-4,1e-2)' --samples 2 --scheduler asha \\
      --metric semseg.mIoU
  mtl-dsl tune baseline_mt --search 'dim=[16,32,64]' --plain --iterations 100
  mtl-dsl tune baseline_mt --resume --run-name tune-baseline_mt-synthetic
"""


def register(sub: Any) -> None:
    from ..runtime.commands import _add_run_arguments

    p = sub.add_parser("tune", help="sweep model parameters and run-config keys with Ray Tune",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(p)
    p.add_argument("--search", action="append", default=[], metavar="KEY=VALUES",
                   help="a searched key and its values or distribution (repeatable)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="samples of the space (each grid point N times; default 1)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default=None,
                   help="asha stops weaker trials early (default fifo: every trial runs to the end)")
    p.add_argument("--metric", default=None, metavar="M",
                   help="delta_m (needs --baseline) or TASK.METRIC such as semseg.mIoU "
                        "(default: delta_m with a baseline, else the first task's metric)")
    p.add_argument("--baseline", default=None, metavar="ST.yaml", help="single-task baseline file for delta_m")
    p.add_argument("--budget", default=None, metavar="TIME",
                   help="wall-clock budget of the sweep: seconds or 30m, 2h, 1h30m")
    p.add_argument("--concurrent", type=int, default=None, metavar="N", help="trials at once (default 1)")
    p.set_defaults(func=cmd_tune)


def tune_config(args: argparse.Namespace):
    """The run config with the sweep's flags applied to its ``tune:`` section."""
    from ..runtime.commands import build_config
    from ..runtime.sweep_space import TuneSection, budget_seconds, normalise_metric, parse_search_flag

    cfg = build_config(args)
    section = cfg.tune.model_dump()
    given: dict[str, str] = {}
    for item in args.search:
        dim = parse_search_flag(item)
        if dim.key in given:  # the last would silently win
            raise simple_error("--search", f"'{dim.key}' is searched twice: --search "
                                           f"{given[dim.key]} and --search {item}",
                               hint=f"give every value in one list, e.g. {dim.key}=[a, b, c]",
                               source_line=item)
        given[dim.key] = item
        section["search"][dim.key] = dim.text()
    for flag, value, check in (("--metric", args.metric, normalise_metric),
                               ("--budget", args.budget, budget_seconds)):
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                raise simple_error(flag, str(exc), source_line=str(value)) from None
    for flag, value in (("--samples", args.samples), ("--concurrent", args.concurrent)):
        if value is not None and value < 1:
            raise simple_error(flag, f"{flag} must be at least 1, got {value}")
    updates = {"samples": args.samples, "scheduler": args.scheduler, "metric": args.metric,
               "baseline": args.baseline, "budget": args.budget, "concurrent": args.concurrent}
    section.update({k: v for k, v in updates.items() if v is not None})
    return cfg.model_copy(update={"tune": TuneSection.model_validate(section)})


def locator(args: argparse.Namespace):
    """``locate(path, message, hint)`` for the sweep's checks: a setting given by a flag
    (``--search KEY=...``, ``--metric``) is named as typed, one from the run config's ``tune:``
    section at its YAML key (file, line, column)."""
    from ..runtime.sweep import flag_error
    from ..runtime.sweep_space import parse_search_flag
    from ..runtime.yaml_source import read_yaml_file

    flags = {("tune", "search", parse_search_flag(item).key): ("--search", item)
             for item in args.search}
    for key in ("metric", "baseline"):
        if getattr(args, key) is not None:
            flags[("tune", key)] = (f"--{key}", getattr(args, key))
    source = read_yaml_file(Path(args.config))[1] if args.config else None

    def locate(path: tuple, message: str, hint: str = "") -> Exception:
        if path in flags:
            flag, typed = flags[path]
            return simple_error(flag, message, hint, source_line=typed)
        if source is not None and source.has(path):
            return source.error(path, f"key '{'.'.join(path)}': {message}"
                                      + (f" ({hint})" if hint else ""))
        return flag_error(path, message, hint)

    return locate


def cmd_tune(args: argparse.Namespace) -> int:
    cfg = tune_config(args)
    from ..runtime.sweep import run_sweep

    result = run_sweep(args.spec, cfg, resume=args.resume, plain=args.plain, verbose=args.verbose,
                       locate=locator(args))
    print()
    print(result.table)
    print(f"\nwrote {', '.join(p.name for p in result.files.values())} in {result.experiment_dir}")
    if result.interrupted:
        done = sum(r.status != "unfinished" for r in result.rows)
        print(f"sweep stopped after {done} of {result.planned} trials; continue it with: mtl-dsl tune "
              f"{args.spec} --resume --run-name {result.experiment_dir.name} "
              f"--storage {result.experiment_dir.parent}", file=sys.stderr)
        return 0 if cfg.tune.budget is not None else EXIT_INTERRUPTED
    if all(r.objective is None for r in result.rows):
        print(f"error: no trial reported {result.metric}", file=sys.stderr)
        return EXIT_FAILED
    return 0
