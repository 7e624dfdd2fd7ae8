"""The ``train``, ``eval``, ``predict`` and ``search`` subcommands of ``mtl-dsl``.

``mtl_dsl.cli`` calls ``register(subparsers)``. This module imports neither torch nor ray: every
handler imports what it needs when it runs, so ``mtl-dsl check`` stays instant.

Exit codes: 0 done, 1 training stopped (non-finite loss, worker failure), 2 a mistake in the spec,
run config, data folder or a command-line value (printed as one message, no traceback).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .mtl file or the name of a built-in spec (e.g. baseline_mt)")
    p.add_argument("--config", default=None, metavar="RUN.yaml", help="run config (YAML)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="training recipe from configs/ (baseline, atrc, atrc_search, demt, tpanet, invpt)")
    p.add_argument("--tasks", default=None, help="task profile (nyud, pascal, synthetic) or list (semseg:7,depth)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="override a run-config key (dotted, e.g. optimizer.lr=0.01) or a model "
                        "parameter (a plain name, e.g. backbone=resnet18); repeatable")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a named preset of the spec's model (a row of the papers' tables), as "
                        "for compile")
    p.add_argument("--input", default=None, metavar="HxW", help="input size (default: the dataset's)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs per worker (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue the run of this name from its latest checkpoint")
    p.add_argument("--run-name", default=None, metavar="NAME", help="run folder name under the storage path")
    p.add_argument("--storage", default=None, metavar="PATH", help="where runs are written (default ./runs)")
    p.add_argument("--iterations", type=int, default=None, metavar="N", help="training iterations")
    p.add_argument("--plain", action="store_true", help="run in this process without Ray (debugging)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log output")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a spec with Ray Train (default: synthetic data, local CPU/GPU)")
    _add_run_arguments(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("search", help="ATRC architecture search on the spec's supergraph")
    _add_run_arguments(p)
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on the validation split")
    p.add_argument("spec", help="the spec the checkpoint was trained from")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory or run folder")
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="run config (default: the one stored in the checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="override a run-config key, e.g. dataset.root=/data/NYUDv2")
    p.add_argument("--baseline", default=None, metavar="ST.yaml",
                   help="single-task baseline file; delta_m is printed only with one")
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="evaluate only N batches")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="write a PNG per task per image")
    p.add_argument("spec", help="the spec the checkpoint was trained from")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory or run folder")
    p.add_argument("images", nargs="+", help="input images")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default ./predictions)")
    p.set_defaults(func=cmd_predict)


# --- building the run config from the flags ---------------------------------------------------------


def _flag_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """(run-config overrides, model parameter overrides) from the command line."""
    from ..errors import simple_error
    from .config import parse_set

    dotted = [o for o in getattr(args, "overrides", []) if "." in o.partition("=")[0]]
    plain = [o for o in getattr(args, "overrides", []) if "." not in o.partition("=")[0]]
    run = parse_set(dotted)
    model: dict = {}
    if plain:
        from ..api import parse_override

        model = dict(parse_override(o) for o in plain)

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = run
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    put("tasks", getattr(args, "tasks", None))
    put("run.workers", getattr(args, "workers", None))
    put("run.gpus_per_worker", getattr(args, "gpus_per_worker", None))
    put("run.address", getattr(args, "address", None))
    put("run.name", getattr(args, "run_name", None))
    put("run.storage", getattr(args, "storage", None))
    put("training.iterations", getattr(args, "iterations", None))
    put("model.preset", getattr(args, "preset", None))
    text = getattr(args, "input", None)
    if text is not None:
        try:
            h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
        except ValueError:
            raise simple_error("--input", f"expected HxW such as 96x128, got '{text}'") from None
        put("training.input_size", [h, w])
    if model:
        run.setdefault("model", {}).setdefault("overrides", {}).update(model)
    return run, model


def build_config(args: argparse.Namespace):
    from .config import load_config

    run, _ = _flag_overrides(args)
    return load_config(args.config, overrides=run or None, preset=getattr(args, "recipe", None))


# --- handlers ------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    from .failures import TrainingError
    from .launch import run_training

    try:
        result = run_training(args.spec, cfg, resume=args.resume, plain=args.plain, verbose=args.verbose)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = result.checkpoint if result.checkpoint is not None else result.run_dir
    print(f"done: {result.step} steps; last checkpoint {where}; TensorBoard: "
          f"tensorboard --logdir {result.run_dir / 'tensorboard'}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``mtl-dsl search SPEC [--config run.yaml] ...``: the flags of ``train``; writes
    ``<spec name>_found.mtl`` beside the spec (built-in specs: in the current folder)."""
    cfg = build_config(args)
    from .failures import TrainingError
    from .search import format_choice, search

    try:
        result = search(args.spec, cfg, resume=args.resume, plain=args.plain, verbose=args.verbose)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for choice in result.choices:
        print(format_choice(choice))
    print(f"done: {result.step} steps; genotype {result.run_dir / 'atrc_genotype.json'}; "
          f"found architecture {result.found_spec} (retrain it: mtl-dsl train {result.found_spec})")
    return 0


def _eval_config(args: argparse.Namespace):
    """The run config of ``eval``: --config, else the checkpoint's; --set on top of either."""
    if args.config is None and not args.overrides:
        return None  # the run config stored in the checkpoint
    import tempfile
    from pathlib import Path

    import yaml

    from .checkpoints import read_meta, resolve_checkpoint
    from .config import _merge, load_config

    overrides, _ = _flag_overrides(args)
    if args.config is not None:
        return load_config(args.config, overrides=overrides or None)
    stored = read_meta(resolve_checkpoint(args.checkpoint)).get("run_config", {})
    merged = _merge(stored, overrides)
    merged.pop("preset", None)  # already applied when the run was trained
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint-run-config.yaml"
        path.write_text(yaml.safe_dump(merged))
        return load_config(path)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..errors import simple_error
    from .datasets import DatasetError
    from .evaluate import run_eval

    try:
        _, table = run_eval(args.spec, args.checkpoint, _eval_config(args), args.baseline,
                            max_batches=args.max_batches)
    except DatasetError as exc:
        raise simple_error("dataset", str(exc)) from None
    print(table)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .evaluate import run_predict

    written = run_predict(args.spec, args.checkpoint, args.images, args.out)
    print(f"wrote {len(written)} PNG files to {args.out}")
    return 0
