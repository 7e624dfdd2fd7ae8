"""Starting Ray for a run: a local Ray sized and quietened for a small machine, or joining a
cluster (``run.address``, or ``RAY_ADDRESS`` under ``ray job submit``), with plugin modules shipped
to the workers. Training (``launch.py``) and sweeps (``sweep.py``) start Ray here.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .config import RunConfig


def _silence_ray(verbose: bool) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    if not verbose:
        os.environ.setdefault("RAY_LOG_TO_STDERR", "0")
        for name in ("ray", "ray.train", "ray.data", "ray.tune", "ray._private"):
            logging.getLogger(name).setLevel(logging.ERROR)


def start_ray(cfg: RunConfig, verbose: bool, workers: int) -> bool:
    """Start a local Ray (or join ``run.address``) unless one is up; True if started here."""
    _silence_ray(verbose)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    import ray

    from .config import cluster_address

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.WARNING,
                                  configure_logging=True, ignore_reinit_error=True)
    from ..plugins import shipped_modules

    # Plugin modules the workers cannot import from their own environment (a file of this
    # project, not an installed package) travel with the job (Ray's runtime_env py_modules).
    shipped = shipped_modules(cfg.plugins)
    if shipped:
        kwargs["runtime_env"] = {"py_modules": shipped}
    address = cluster_address(cfg)
    if address:
        # --address, or the driver of `ray job submit` (which sets RAY_ADDRESS): join the cluster
        ray.init(address=address, **kwargs)
    else:
        # Ray runs workers at nice 15 for shared nodes; on a local machine that only lets Ray's
        # own control processes preempt training.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Every Ray process wakes ~100 times a second, and on a small machine each one costs the
        # training worker throughput: a local run does without the processes it has no use for
        # (the spot-preemption watcher; metrics exporters, with no dashboard to read them).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        # A laptop may have fewer cores than workers asked for: let Ray oversubscribe.
        ray.init(num_cpus=max(os.cpu_count() or 1, workers), **kwargs)
    if not verbose:
        for name in ("ray", "ray.train", "ray.data", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return True
