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
    p.add_argument("--storage", default=None, metavar="PATH|URI",
                   help="where runs are written: a local or NFS path (default ./runs) or a URI "
                        "such as s3://bucket/prefix or gs://bucket/prefix (credentials from the "
                        "environment)")
    p.add_argument("--storage-endpoint", default=None, metavar="URL",
                   help="endpoint of an S3-compatible store for s3:// storage (run.storage_endpoint)")
    p.add_argument("--iterations", type=int, default=None, metavar="N", help="training iterations")
    p.add_argument("--plain", action="store_true", help="run in this process without Ray (debugging)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log output")
    _add_plugin(p)


def _add_plugin(p: argparse.ArgumentParser) -> None:
    from ..cli.options import add_plugin_argument

    add_plugin_argument(p)


RUN_KEYS_HELP = """\
run-config keys a user turns most (--set KEY=VALUE, or in a --config YAML file):
  training.iterations=300          steps (also --iterations)
  training.batch_size=8            images per worker and step
  training.input_size=[96,128]     H, W (also --input 96x128); default: the dataset's
  training.eval_interval=100       steps between evaluations (0: only at the end)
  training.checkpoint_interval=100 steps between checkpoints (0: only at the end)
  dataset.val_length=N             synthetic val images; default: sized to the run (a tenth
                                   of the images trained on, at least one batch, at most 200)
  training.eval_batches=N          cap on val batches per evaluation and worker (default:
                                   sized to the run, as dataset.val_length)
  dataset.name=nyud dataset.root=DIR   a real dataset (synthetic, nyud, pascal)
  dataset.length=1000              synthetic train images
  dataset.skip_bad_samples=true    skip (and count) unreadable samples instead of stopping
  optimizer.name=adam optimizer.lr=0.001 schedule.name=poly schedule.min_lr=0
  run.threads_per_worker=N         torch threads per worker
a plain NAME=VALUE is a model parameter (backbone=resnet18, dim=64); every key: README.md
"""


def _add_weights_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", default="official", metavar="NAME",
                   help="the spec's weights map an official file is read with (default: official)")
    p.add_argument("--allow-partial", action="store_true",
                   help="model tensors an official file does not give keep their initialisation")


def register(subparsers: Any) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train", help="train a spec with Ray Train (default: synthetic data, local CPU/GPU)",
                              epilog=RUN_KEYS_HELP, formatter_class=formatter)
    _add_run_arguments(p)
    p.add_argument("--init", default=None, metavar="[PART=]FILE",
                   help="start from an official checkpoint (read through the spec's weights map) "
                        "or a checkpoint folder; PART=FILE loads only the blocks the spec imports "
                        "from PART (e.g. demt=demt_nyud.pth); the optimiser starts fresh")
    _add_weights_arguments(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("search", help="ATRC architecture search on the spec's supergraph",
                              epilog=RUN_KEYS_HELP, formatter_class=formatter)
    _add_run_arguments(p)
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on the validation split")
    p.add_argument("spec", help="the spec the checkpoint was trained from")
    _add_checkpoint_arguments(p)
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="run config (default: the one stored in the checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="override a run-config key, e.g. dataset.root=/data/NYUDv2")
    p.add_argument("--baseline", default=None, metavar="ST.yaml",
                   help="single-task baseline file; delta_m is printed only with one")
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="evaluate only N batches")
    _add_plugin(p)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="write a PNG per task per image")
    p.add_argument("spec", help="the spec the checkpoint was trained from")
    _add_checkpoint_arguments(p)
    p.add_argument("images", nargs="+", help="input images")
    p.add_argument("--out", default="predictions", metavar="DIR|URI",
                   help="output folder, a path or a storage URI (default ./predictions)")
    _add_plugin(p)
    p.set_defaults(func=cmd_predict)


def _add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="DIR|URI",
                       help="checkpoint folder or run folder, a path or a storage URI (s3://...); "
                            "also a folder written by convert")
    which.add_argument("--weights", metavar="FILE", help="an official checkpoint, read through "
                                                         "the spec's weights map")
    _add_weights_arguments(p)
    p.add_argument("--tasks", default=None, help="with --weights: task profile or list")
    p.add_argument("--preset", default=None, metavar="NAME", help="with --weights: model preset")
    p.add_argument("--input", default=None, metavar="HxW", help="with --weights: input size")
    _add_endpoint_argument(p)


def _add_endpoint_argument(p: argparse.ArgumentParser) -> None:
    # its own dest: the endpoint of the URIs read here, not a run-config key (train's flag)
    p.add_argument("--storage-endpoint", dest="uri_endpoint", default=None, metavar="URL",
                   help="endpoint of an S3-compatible store, for s3:// URIs (default: AWS, or "
                        "AWS_ENDPOINT_URL)")


def storage_argument(text: str, endpoint: str | None, flag: str):
    """A path as given, or a storage ``Location`` for a URI (opened with the endpoint)."""
    from .storage import is_remote, open_location

    if is_remote(text):
        return open_location(text, endpoint, where=f"{flag} {text}")
    if endpoint:
        from ..errors import usage_error

        raise usage_error(f"--storage-endpoint {endpoint}", f"an endpoint applies to s3:// URIs, "
                                                            f"and {flag} is the local path {text}")
    return text


# --- building the run config from the flags ---------------------------------------------------------


_FLAG_KEYS = (("tasks", "tasks"), ("workers", "run.workers"), ("gpus_per_worker", "run.gpus_per_worker"),
              ("address", "run.address"), ("run_name", "run.name"), ("storage", "run.storage"),
              ("storage_endpoint", "run.storage_endpoint"),
              ("iterations", "training.iterations"), ("preset", "model.preset"))


def _flag(args_name: str, value: Any) -> str:
    import shlex

    return f"--{args_name.replace('_', '-')} {shlex.quote(str(value))}"


def flag_overrides(args: argparse.Namespace):
    """The run-config overrides of the command line (``config.Overrides``: each key remembers the
    flag that set it)."""
    from ..errors import SpecError, usage_error
    from .config import parse_set

    items = getattr(args, "overrides", [])
    run = parse_set([o for o in items if "." in o.partition("=")[0]])
    for item in (o for o in items if "." not in o.partition("=")[0]):
        from ..api import parse_override

        try:
            name, value = parse_override(item)
        except SpecError as exc:
            raise usage_error(f"--set {item}", exc.message, exc.hint) from None
        run.put(f"model.overrides.{name}", value, f"--set {item}")
    for name, dotted in _FLAG_KEYS:
        value = getattr(args, name, None)
        if value is not None:
            run.put(dotted, value, _flag(name, value))
    text = getattr(args, "input", None)
    if text is not None:
        try:
            h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
        except ValueError:
            raise usage_error(_flag("input", text), f"expected HxW such as 96x128, got '{text}'") from None
        run.put("training.input_size", [h, w], _flag("input", text))
    return run


def build_config(args: argparse.Namespace):
    from .config import load_config

    run = flag_overrides(args)
    cfg = load_config(args.config, overrides=run or None, recipe=getattr(args, "recipe", None))
    flags = getattr(args, "plugins", None) or []
    if flags:  # --plugin adds to the run config's plugins
        cfg.plugins = list(dict.fromkeys(cfg.plugins + flags))
    return cfg


# --- handlers ------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    from .failures import TrainingError
    from .launch import run_training

    init = None
    if args.init is not None:
        init = {"file": args.init, "map": args.map, "allow_partial": args.allow_partial}
    try:
        result = run_training(args.spec, cfg, resume=args.resume, plain=args.plain, verbose=args.verbose,
                              init=init)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = result.checkpoint if result.checkpoint is not None else result.run_dir
    print(f"done: {result.step} steps; last checkpoint {where}; TensorBoard: "
          f"tensorboard --logdir {str(result.run_dir).rstrip('/')}/tensorboard")
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
    print(f"done: {result.step} steps; genotype {str(result.run_dir).rstrip('/')}/atrc_genotype.json; "
          f"found architecture {result.found_spec} (retrain it: mtl-dsl train {result.found_spec})")
    return 0


def _eval_config(args: argparse.Namespace):
    """The run config of ``eval``: --config, else the checkpoint's; --set on top of either.
    With --weights (no checkpoint folder): the flags on the default run config."""
    from ..errors import simple_error

    given = [f"--{k}" for k in ("tasks", "preset", "input") if getattr(args, k, None) is not None]
    if args.weights is not None:
        return build_config(args)
    if given:
        raise simple_error(given[0], f"{', '.join(given)} go with --weights; a checkpoint folder "
                                     f"records its tasks, preset and input size")
    if args.config is None and not args.overrides:
        return None  # the run config stored in the checkpoint
    from .checkpoints import meta_file_of, read_meta, resolve_checkpoint
    from .config import load_config

    overrides = flag_overrides(args)
    if args.config is not None:
        return load_config(args.config, overrides=overrides or None)
    path = resolve_checkpoint(storage_argument(args.checkpoint, args.uri_endpoint, "--checkpoint"))
    stored = read_meta(path).get("run_config", {})
    return load_config(overrides=overrides or None, base=(stored, meta_file_of(path)))


def cmd_eval(args: argparse.Namespace) -> int:
    from ..errors import usage_error
    from .datasets import DatasetError
    from .evaluate import run_eval
    from .failures import TrainingError

    try:
        checkpoint = None
        if args.checkpoint is not None:
            checkpoint = storage_argument(args.checkpoint, args.uri_endpoint, "--checkpoint")
        _, table = run_eval(args.spec, checkpoint, _eval_config(args), args.baseline,
                            max_batches=args.max_batches, weights=args.weights,
                            weights_map=args.map, allow_partial=args.allow_partial)
    except DatasetError as exc:
        raise usage_error("dataset", str(exc)) from None
    except TrainingError as exc:  # an unreadable sample
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(table)
    return 0


def _is_uri(text: str) -> bool:
    from .storage import is_remote

    return is_remote(text)


def cmd_predict(args: argparse.Namespace) -> int:
    from .evaluate import run_predict

    config = None
    if args.weights is not None:
        args.config, args.overrides = None, []
        config = build_config(args)
    checkpoint = None
    if args.checkpoint is not None:
        checkpoint = storage_argument(args.checkpoint, args.uri_endpoint, "--checkpoint")
    out = storage_argument(args.out, args.uri_endpoint if _is_uri(args.out) else None, "--out")
    written = run_predict(args.spec, checkpoint, args.images, out, config=config,
                          weights=args.weights, weights_map=args.map,
                          allow_partial=args.allow_partial)
    print(f"wrote {len(written)} PNG files to {args.out}")
    return 0
