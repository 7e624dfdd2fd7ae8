"""The fault campaign: a run meeting trouble, case by case, through the real ``mtl-dsl`` command line
on the built-in data (issue 11: "kill -9 and resume on both paths, SIGINT, corrupt checkpoints,
disk full, concurrent runs, NaN, bad configs, bad --set, hostile specs, bad images, wrong
checkpoints, bad dataset folders").

Every case runs ``python -m mtl_dsl.cli ...`` as a user would, in its own process group, and is
judged by what a careful user expects: the exit status (0 done, 1 a run that stopped, 2 a mistake
in what was given, 130 interrupted), one message and no Python traceback on stderr, what the
message names (the flag, the file, the key, the PID), and what is left behind: kill -9 and resume
end with weights and optimiser state bit-identical to an uninterrupted run, a full disk keeps the
previous checkpoint, a killed run's lock is taken over, and no process of the case (Ray's
included) outlives it.

    python benchmarks/fault_campaign.py            # every case; a table; exit 1 if one is not fine
    python benchmarks/fault_campaign.py --list     # the cases
    python benchmarks/fault_campaign.py --only kill9 --keep /tmp/campaign

The disk-full cases mount a small tmpfs and so need root (elsewhere they report "not run").
Runs take a few seconds each on a tiny model (resnet18 cut at level 2, 32x32 images); the Ray
cases start a local Ray each (about a minute on a small machine).
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Importing the case modules registers their cases, runs first (the campaign's order).
import fault_cases_runs  # noqa: E402,F401,I001
import fault_cases_inputs  # noqa: E402,F401
from fault_harness import (CASES, LEFT_BEHIND, Case, Context, Done, Verdict,  # noqa: E402,F401
                           judge_error, reap)


# --------------------------------------------------------------------------------------------------


def run_case(ctx: Context, c: Case) -> tuple[bool, str, float]:
    ctx.token = c.name
    v = Verdict()
    start = time.monotonic()
    try:
        c.body(ctx, v)
    except Exception as exc:  # the campaign's own failure is a case that is not fine
        v.problems.append(f"campaign error: {type(exc).__name__}: {exc}")
    left = reap(c.name, grace=20)
    v.need(left == 0, f"{left} processes left behind")
    outcome = "; ".join(v.problems) if v.problems else "; ".join(v.facts) or "as expected"
    return not v.problems, outcome, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--only", default=None, metavar="PATTERN", help="cases whose group or name match")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)
    # A shell starts a background job with SIGINT ignored, and a child inherits that: the cases
    # that press Ctrl-C need it to reach the command line's process as it does from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    chosen = [c for c in CASES if args.only is None or re.search(args.only, f"{c.group} {c.name}")]
    if args.list:
        for c in chosen:
            print(f"{c.group:20} {c.name:32} {c.expected}")
        print(f"{len(chosen)} cases")
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mtl-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(work)
    rows, began = [], time.monotonic()
    try:
        for c in chosen:
            fine, outcome, seconds = run_case(ctx, c)
            rows.append((c, fine, outcome, seconds))
            print(f"{'fine' if fine else 'NOT FINE':8} {seconds:6.1f}s  {c.group} / {c.name}: {outcome}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"| # | group | case | expected | outcome | fine? |")
    print(f"|---|---|---|---|---|---|")
    for i, (c, fine, outcome, _) in enumerate(rows, 1):
        print(f"| {i} | {c.group} | {c.name} | {c.expected} | {outcome} | {'yes' if fine else 'NO'} |")
    if LEFT_BEHIND:
        print("\nprocesses left behind (killed): " + "; ".join(LEFT_BEHIND))
    good = sum(fine for _, fine, _, _ in rows)
    print(f"\n{good} of {len(rows)} cases fine ({time.monotonic() - began:.0f} s)")
    return 0 if good == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
