"""Sweeps over a spec's model parameters and run-config keys on Ray Tune: ``mtl-dsl tune``.

``run_sweep(spec, config)`` checks the search space (``sweep_space.py``) against the spec and the
run config, then runs Ray Tune's ``Tuner`` over it: every trial is a training run of the same
runtime (``sweep_trial.py``: Ray Train inside the Tune trial, or the plain loop in the trial with
``plain=True``), reporting at each checkpoint. ``tune.scheduler: asha`` stops the weaker trials
early (``ASHAScheduler`` on the trial's training step); ``tune.budget`` bounds the sweep's wall
clock. A trial that fails (its spec does not compile with the trial's values, its loss turns
non-finite) is recorded with its message and not retried (Tune ``max_failures=0``; Ray Train still
restarts crashed workers inside a trial, ``run.max_failures``).

The experiment folder ``<run.storage>/<run.name>`` (default ``runs/tune-<spec>-<tasks>``) holds
Ray Tune's experiment state, ``sweep.json`` (the sweep as started), ``trials/<trial id>/`` (each
trial's run folder: checkpoints, TensorBoard, console.log) and the results (``sweep_results.py``:
``results.csv``, ``results.txt``, ``pareto.png``). An interrupted sweep (Ctrl+C, a lost driver)
is continued with ``resume=True``: Tune's experiment restore runs the unfinished trials again, each
from its own latest checkpoint, and never repeats a finished or failed one.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ray import tune

from ..errors import did_you_mean, simple_error
from .config import RunConfig
from .sweep_space import (Dimension, SearchSyntaxError, budget_seconds, dimension_from_yaml,
                          normalise_metric)

SWEEP_FILE = "sweep.json"
TRIALS_DIR = "trials"
TRIAL_CPU = 0.01  # what the trial of a Ray Train sweep reserves for itself
FLAG = "--search"


def flag_error(path: tuple, message: str, hint: str = "") -> Exception:
    """The error about the sweep setting ``path`` (``("tune", "search", KEY)``, ``("tune",
    "metric")``) at its flag; ``mtl-dsl tune`` passes a ``locate`` that names the YAML key of the
    run config instead when the setting came from there."""
    return simple_error(FLAG if path[1] == "search" else f"--{path[1]}", message, hint)


@dataclass
class SweepResult:
    experiment_dir: Path
    rows: list  # sweep_results.TrialRow, in trial order
    metric: str  # e.g. "semseg/mIoU" or "delta_m"
    mode: str  # "max" or "min"
    interrupted: bool  # trials left unfinished or not started (Ctrl+C, budget spent): resume=True continues
    planned: int  # trials the sweep consists of
    table: str
    files: dict  # "csv", "table", "plot" -> Path


# --------------------------------------------------------------------------------------------------
# Checking the sweep before anything starts


def experiment_dir(spec: Any, cfg: RunConfig) -> Path:
    from ..errors import usage_error
    from .storage import is_remote

    if is_remote(cfg.run.storage):
        # Ray Tune's experiment state and the results files live in one folder on the driver.
        raise usage_error("run.storage", f"mtl-dsl tune keeps its experiment in a local or NFS "
                                          f"folder, not in {cfg.run.storage}",
                           hint="give a local --storage (object storage serves mtl-dsl train)")
    storage = Path(cfg.run.storage).expanduser().resolve()
    if cfg.run.name:
        return storage / cfg.run.name
    stem = Path(str(spec)).stem
    return storage / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"tune-{stem}-{cfg.tasks_text()}")


def _spec_reference(spec: str) -> str:
    """A spec file as an absolute path (trials run in other processes); a built-in name as is."""
    path = Path(spec)
    return str(path.resolve()) if path.is_file() else spec


def _check_names(spec: str, cfg: RunConfig, dims: list[Dimension], locate: Callable) -> None:
    """Model parameters and presets the spec has; run-config values the config accepts."""
    from ..api import load_ir
    from ..errors import SpecError
    from .sweep_trial import trial_config

    ir = load_ir(spec, **cfg.model_arguments())
    for dim in dims:
        where = ("tune", "search", dim.key)
        if dim.target == "model" and dim.key not in ir.params:
            raise locate(where, f"model '{ir.name}' has no parameter '{dim.key}'",
                         did_you_mean(dim.key, ir.params) or f"parameters: {', '.join(ir.params)}")
        if dim.target == "preset":
            unknown = [v for v in dim.args if v not in ir.presets]
            if unknown:
                raise locate(where, f"model '{ir.name}' has no preset '{unknown[0]}'",
                             f"presets: {', '.join(ir.presets) or 'none'}")
        if dim.target == "run":
            for value in dim.candidates():
                try:
                    trial_config(cfg.dump(), {dim.key: value}, "runs", "check")
                except SpecError as exc:
                    first = exc.diagnostics[0]
                    raise locate(where, first.message, first.hint) from None


def _objective(cfg: RunConfig, baseline_path: Optional[str], locate: Callable = flag_error
               ) -> tuple[str, str, str, Optional[dict]]:
    """(metric, the key of Tune's results, mode, baseline) of the sweep."""
    from .baseline import BaselineError, load_baseline
    from .metrics import PRIMARY_METRICS, METRIC_DIRECTIONS

    tasks = cfg.profile().task_names
    baseline = None
    if baseline_path is not None:
        try:
            loaded = load_baseline(baseline_path)
        except BaselineError as exc:
            if not Path(baseline_path).is_file():  # at the key or flag that names it
                raise locate(("tune", "baseline"), exc.message,
                             f"a relative path is read from the working directory, {Path.cwd()}"
                             ) from None
            raise simple_error(str(baseline_path), exc.message, line=exc.line,
                               column=exc.column) from None
        missing = [k for k in loaded.metrics if k.split("/")[0] not in tasks]
        if missing:
            raise simple_error(str(baseline_path), f"baseline metric '{missing[0]}' is not computed for "
                               f"the tasks of this run ({', '.join(tasks)})")
        baseline = loaded.model_dump(mode="json")
    name = cfg.tune.metric
    if name is None:
        metric = "delta_m" if baseline is not None else PRIMARY_METRICS[tasks[0]]
    else:
        metric = normalise_metric(name)
    if metric == "delta_m":
        if baseline is None:
            raise locate(("tune", "metric"), "metric delta_m needs a single-task baseline file "
                               "(--baseline st.yaml or tune.baseline)")
        return metric, "delta_m", "max", baseline
    if metric not in METRIC_DIRECTIONS:
        raise locate(("tune", "metric"), f"unknown metric '{name}'",
                           did_you_mean(metric, METRIC_DIRECTIONS) or
                           f"metrics: delta_m, {', '.join(k.replace('/', '.') for k in METRIC_DIRECTIONS)}")
    if metric.split("/")[0] not in tasks:
        raise locate(("tune", "metric"), f"metric '{name}' belongs to a task this run does not train "
                           f"(tasks: {', '.join(tasks)})")
    mode = "max" if METRIC_DIRECTIONS[metric] == "higher" else "min"
    return metric, f"val/{metric}", mode, baseline


def plan_sweep(spec: str, cfg: RunConfig, plain: bool, locate: Callable = flag_error) -> dict:
    """The sweep as ``sweep_trial.run_trial`` and ``resume`` need it (JSON), after every check.
    ``locate(path, message, hint)`` makes the error about a sweep setting (``flag_error``)."""
    from .datasets import check_dataset

    try:
        dims = cfg.tune.dimensions()
    except SearchSyntaxError as exc:
        raise simple_error("tune.search", exc.message, exc.hint) from None
    if not dims:
        raise simple_error(FLAG, "nothing to search: give --search KEY=VALUES (e.g. dim=[64,128]) "
                                 "or a tune.search section in the run config")
    _check_names(spec, cfg, dims, locate)
    metric, key, mode, baseline = _objective(cfg, cfg.tune.baseline, locate)
    check_dataset(cfg)
    tune = cfg.tune
    return {"spec": _spec_reference(spec), "config": cfg.dump(),
            "search": {d.key: d.text() for d in dims}, "metric": metric, "metric_key": key,
            "mode": mode, "baseline": baseline, "baseline_path": tune.baseline, "plain": plain,
            "iterations": cfg.training.iterations, "samples": tune.samples,
            "scheduler": tune.scheduler, "concurrent": tune.concurrent,
            "budget_s": budget_seconds(tune.budget) if tune.budget is not None else None,
            "grace_period": tune.grace_period or max(1, cfg.training.eval_interval or cfg.training.iterations),
            "reduction_factor": tune.reduction_factor}


def _load_saved(folder: Path, asked: dict) -> dict:
    saved = json.loads((folder / SWEEP_FILE).read_text())
    if asked["search"] and asked["search"] != saved["search"]:
        shown = " ".join(f"{k}={v}" for k, v in saved["search"].items())
        raise simple_error(FLAG, f"--resume continues the sweep saved in {folder / SWEEP_FILE} "
                                 f"(search {shown}); drop the search flags or choose another --run-name")
    return saved


# --------------------------------------------------------------------------------------------------
# Progress: Tune callbacks that reach the listeners of the current call, also after a restore


_LISTENERS: dict[str, list] = {}


class SweepEvents(tune.Callback):
    """Forwards trial events to ``_LISTENERS[key]``. Tune pickles its callbacks with the experiment,
    and only the key is kept: a restored sweep reports to the listeners of the call that
    restored it."""

    def __init__(self, key: str):
        self.key = key

    def _each(self, method: str, *args) -> None:
        for listener in _LISTENERS.get(self.key, []):
            handler = getattr(listener, method, None)
            if handler is not None:
                handler(*args)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._each("on_trial_start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._each("on_trial_result", trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._each("on_trial_complete", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._each("on_trial_error", trial)


class SweepConsole:
    """One line per trial event."""

    def __init__(self, sweep: dict, trials_dir: Path, write: Callable[[str], None] = print):
        self.sweep, self.trials_dir, self.write = sweep, trials_dir, write

    def _values(self, trial) -> str:
        from .sweep_space import format_value

        return ", ".join(f"{k}={format_value(_plain(v))}" for k, v in trial.config.items())

    def on_trial_start(self, trial) -> None:
        self.write(f"trial {trial.trial_id} started: {self._values(trial)}")

    def on_trial_result(self, trial, result) -> None:
        value = result.get(self.sweep["metric_key"])
        shown = f"{self.sweep['metric']} {value:.4g}" if isinstance(value, (int, float)) else ""
        self.write(f"trial {trial.trial_id} step {result.get('step')}/{self.sweep['iterations']}: {shown}")

    def on_trial_complete(self, trial) -> None:
        step = (trial.last_result or {}).get("step", 0)
        how = "finished" if step >= self.sweep["iterations"] else "stopped early (ASHA)"
        self.write(f"trial {trial.trial_id} {how} at step {step}")

    def on_trial_error(self, trial) -> None:
        from .sweep_trial import ERROR_FILE

        error = self.trials_dir / trial.trial_id / ERROR_FILE
        text = error.read_text().strip().splitlines()[0] if error.is_file() else "see Ray Tune's error.txt"
        self.write(f"trial {trial.trial_id} failed: {text}")


def _plain(value: Any) -> Any:
    from .sweep_trial import plain_value

    return plain_value(value)


# --------------------------------------------------------------------------------------------------
# Running


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _resources(sweep: dict, cfg: RunConfig) -> dict:
    """What each trial reserves; fills in the trial's threads and CPUs per Train worker."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = float(ray.cluster_resources().get("GPU", 0))
    share = max(1, cpus // sweep["concurrent"])
    if sweep["plain"]:
        sweep["threads"] = cfg.run.threads_per_worker or share
        resources = {"CPU": share}
        if gpus > 0 and cfg.run.gpus_per_worker != 0:
            resources["GPU"] = min(1.0, gpus / sweep["concurrent"])
        return resources
    # Ray Train reserves the workers' resources itself; the trial only waits for its run, and
    # reserves a token CPU (Tune needs a resource) that its workers' reservations leave free.
    workers = cfg.run.workers
    sweep["threads"] = cfg.run.threads_per_worker or max(1, share // workers)
    sweep["cpus_per_worker"] = cfg.run.cpus_per_worker or max(1, int((share - TRIAL_CPU) // workers))
    return {"CPU": TRIAL_CPU}


def _tuner(sweep: dict, folder: Path, resume: bool, resources: dict):
    from ray.tune.schedulers import ASHAScheduler

    from .sweep_trial import run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), resources)
    if resume:
        return tune.Tuner.restore(str(folder), trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    dims = [dimension_from_yaml(k, v) for k, v in sweep["search"].items()]
    scheduler = None
    if sweep["scheduler"] == "asha":
        scheduler = ASHAScheduler(time_attr="step", max_t=sweep["iterations"],
                                  grace_period=sweep["grace_period"],
                                  reduction_factor=sweep["reduction_factor"])
    return tune.Tuner(
        trainable,
        param_space={d.key: d.to_tune() for d in dims},
        tune_config=tune.TuneConfig(metric=sweep["metric_key"], mode=sweep["mode"],
                                    scheduler=scheduler, num_samples=sweep["samples"],
                                    max_concurrent_trials=sweep["concurrent"],
                                    time_budget_s=sweep["budget_s"], reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=folder.name, storage_path=str(folder.parent),
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[SweepEvents(str(folder))], verbose=0),
    )


def run_sweep(spec: str, cfg: RunConfig, *, resume: bool = False, plain: bool = False,
              verbose: bool = False, progress: Callable[[str], None] = print,
              listeners: Optional[list] = None, locate: Callable = flag_error) -> SweepResult:
    """Run (or with ``resume``, continue) the sweep of ``spec`` over ``cfg.tune``.

    ``listeners`` get the trial events (``on_trial_start(trial)``, ``on_trial_result(trial,
    result)``, ``on_trial_complete(trial)``, ``on_trial_error(trial)``) next to the console.
    """
    from .ray_start import start_ray
    from .sweep_results import collect_rows, write_results

    cfg = cfg.for_spec(spec)  # no tasks given: the profile the spec's model states
    folder = experiment_dir(spec, cfg)
    has_state = folder.is_dir() and (folder / SWEEP_FILE).is_file() and tune.Tuner.can_restore(str(folder))
    if resume and not has_state:
        raise simple_error(str(folder), f"nothing to resume: no sweep in {folder}")
    if not resume and folder.exists() and any(folder.iterdir()):
        raise simple_error(str(folder), f"experiment folder {folder} is not empty; pass --resume to "
                           f"continue its sweep or choose another --run-name")
    if resume:
        sweep = _load_saved(folder, {"search": {d.key: d.text() for d in cfg.tune.dimensions()}})
        cfg = RunConfig.model_validate(sweep["config"])
    else:
        sweep = plan_sweep(spec, cfg, plain, locate)
    sweep["trials_dir"] = str(folder / TRIALS_DIR)
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    started_here = start_ray(cfg, verbose, cfg.run.workers)
    import ray

    key = str(folder)
    _LISTENERS[key] = [SweepConsole(sweep, folder / TRIALS_DIR, progress), *(listeners or [])]
    try:
        resources = _resources(sweep, cfg)
        if not resume:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SWEEP_FILE).write_text(json.dumps(sweep, indent=1))
        progress(f"sweep {folder.name}: {_describe(sweep)}")
        _tuner(sweep, folder, resume, resources).fit()
        trials = tune.ExperimentAnalysis(str(folder)).trials
    finally:
        _LISTENERS.pop(key, None)
        if started_here:
            ray.shutdown()
    rows = collect_rows(trials, sweep, folder / TRIALS_DIR)
    table, files = write_results(rows, sweep, folder)
    planned = planned_trials(sweep)
    interrupted = len(rows) < planned or any(r.status == "unfinished" for r in rows)
    return SweepResult(experiment_dir=folder, rows=rows, metric=sweep["metric"], mode=sweep["mode"],
                       interrupted=interrupted, planned=planned, table=table, files=files)


def planned_trials(sweep: dict) -> int:
    """Trials of the whole sweep: every combination of the grids, ``samples`` times (Tune creates
    them one by one, so a stopped sweep has fewer)."""
    count = sweep["samples"]
    for key, text in sweep["search"].items():
        dim = dimension_from_yaml(key, text)
        if dim.is_grid:
            count *= len(dim.args)
    return count


def _describe(sweep: dict) -> str:
    search = " ".join(f"{k}={v}" for k, v in sweep["search"].items())
    how = "plain loop" if sweep["plain"] else "Ray Train"
    budget = f", budget {sweep['budget_s']:.0f} s" if sweep["budget_s"] else ""
    return (f"{search}; {sweep['samples']} sample(s), {sweep['scheduler']}, metric "
            f"{sweep['metric']} ({sweep['mode']}), {sweep['concurrent']} at a time, {how}, "
            f"{sweep['iterations']} steps per trial{budget}")


__all__ = ["SweepResult", "experiment_dir", "flag_error", "plan_sweep", "run_sweep"]
