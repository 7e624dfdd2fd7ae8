"""One trial of a sweep (``mtl-dsl tune``), run by Ray Tune in a trial actor.

A trial is an ordinary ``mtl-dsl train`` run (``launch.run_training``) with the trial's values
applied to the sweep's run config: on Ray Train (``TorchTrainer`` started from the trial, the
documented way to run Ray Train inside Ray Tune) or, for a ``--plain`` sweep, in the trial's own
process. Its run folder is ``<experiment>/trials/<trial id>``, so an interrupted trial continues
from its latest checkpoint when the sweep is resumed.

Each checkpoint (the trial evaluates at every checkpoint) is reported to Tune as one result:
``step``, ``params`` and ``macs`` of the model, ``val/<metric>`` for every validation metric and
``delta_m`` when the sweep has a baseline file. A spec that does not compile with the trial's
values, a run config they make invalid, or a run that stops (non-finite loss) fails the trial with
its message, written to ``error.txt`` in the run folder; Tune does not retry it.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Optional

from ray.tune.integration.ray_train import TuneReportCallback

from ..errors import SpecError

FIGURES_FILE = "figures.json"
ERROR_FILE = "error.txt"
VALUES_FILE = "trial.json"
CONSOLE_FILE = "console.log"


class TrialFailed(RuntimeError):
    """A trial that cannot run or stopped; the message is what the user reads (no traceback)."""


def plain_value(value: Any) -> Any:
    """A sampled value as a plain Python value (Tune samples numpy scalars)."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


def trial_config(base: dict, values: dict[str, Any], storage: str, name: str,
                 threads: Optional[int] = None, cpus_per_worker: Optional[int] = None):
    """The run config of one trial: the sweep's, with the trial's values, its run folder and the
    evaluation at every checkpoint (each report to Tune carries the metric)."""
    from pydantic import ValidationError

    from ..errors import simple_error
    from .config import RunConfig

    data = copy.deepcopy(base)
    data.pop("tune", None)
    model = data.setdefault("model", {})
    for key, value in values.items():
        if key == "preset":
            model["preset"] = value
        elif "." in key:
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise simple_error("--search", f"'{key}' is not a run-config key")
            node[parts[-1]] = value
        else:
            model.setdefault("overrides", {})[key] = value
    run = data.setdefault("run", {})
    run.update(storage=storage, name=name)
    if threads is not None and run.get("threads_per_worker") is None:
        run["threads_per_worker"] = threads
    if cpus_per_worker is not None and run.get("cpus_per_worker") is None:
        run["cpus_per_worker"] = cpus_per_worker
    training = data.setdefault("training", {})
    training["checkpoint_interval"] = training.get("eval_interval", 0)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        from .config import _unknown_key

        err = exc.errors()[0]
        dotted = ".".join(str(p) for p in err["loc"])
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        if err["type"] == "extra_forbidden":  # as the run config says it: the section's keys
            message, hint = _unknown_key(tuple(err["loc"]))
            raise simple_error("--search", f"{message} (trial values: {shown})", hint) from None
        raise simple_error("--search", f"key '{dotted}': {err['msg']} (trial values: {shown})") from None


def model_figures(spec: str, cfg) -> dict[str, int]:
    """Parameters and multiply-adds (batch 1, the run's input size, eval mode) of the trial's model."""
    from ..api import compile_model
    from ..summary import model_figures as figures

    model = compile_model(spec, **cfg.model_arguments())
    out = figures(model, batch=1, count_flops=True)
    return {"params": int(out["total"]), "macs": int(out["total_macs"])}


def tune_record(step: int, metrics: dict[str, float], figures: dict, baseline: Optional[dict]) -> dict:
    """What a trial reports to Tune at a checkpoint."""
    record: dict[str, Any] = {"step": int(step), "params": figures["params"], "macs": figures["macs"]}
    record.update({f"val/{k}": float(v) for k, v in metrics.items()})
    if baseline is not None and metrics:
        from .baseline import delta_m

        record["delta_m"] = delta_m(metrics, baseline)
    return record


class ReportToTune(TuneReportCallback):
    """A Ray Train callback (it runs in the Train controller) that turns each report of the run
    into the trial's Tune result."""

    def __init__(self, figures: dict, baseline: Optional[dict]):
        super().__init__()
        self.figures, self.baseline = figures, baseline

    def after_report(self, run_context, metrics, checkpoint):
        reported = metrics[0]
        values = {k[len("val/"):]: v for k, v in reported.items() if k.startswith("val/")}
        record = tune_record(reported.get("step", 0), values, self.figures, self.baseline)
        super().after_report(run_context, [record], checkpoint)


class _PlainReporter:
    """The progress sink of a plain trial: console lines to ``console.log``; each checkpoint's
    metrics to Tune (the loop calls it in the trial's thread, as ``tune.report`` wants)."""

    def __init__(self, log: Path, figures: dict, baseline: Optional[dict], report: Callable[[dict], None]):
        from .console import Console

        self.file = log.open("a", encoding="utf-8")
        self.console = Console(write=lambda line: (self.file.write(line + "\n"), self.file.flush()))
        self.figures, self.baseline, self.report = figures, baseline, report
        self.metrics: dict = {}

    def __call__(self, record: dict) -> None:
        self.console(record)
        if record.get("kind") == "eval":
            self.metrics = dict(record["metrics"])
        elif record.get("kind") == "checkpoint":
            self.report(tune_record(record["step"], self.metrics, self.figures, self.baseline))

    def close(self) -> None:
        self.file.close()


def _log_sink(log: Path) -> Callable[[dict], None]:
    from .console import Console

    def write(line: str) -> None:
        with log.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    return Console(write=write)


def run_trial(config: dict, sweep: dict) -> None:
    """The Tune trainable: ``config`` holds the trial's values, ``sweep`` the sweep (sweep.py)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(sweep["trials_dir"]) / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {k: plain_value(v) for k, v in config.items()}
    (run_dir / VALUES_FILE).write_text(json.dumps({"trial_id": trial_id, "values": values}, indent=1))
    try:
        _train_trial(sweep, values, run_dir, trial_id, tune.report)
    except SpecError as exc:
        _fail(run_dir, exc.render())
    except Exception as exc:  # noqa: BLE001 - TrainingError and whatever else stops the run
        from .failures import TrainingError

        if not isinstance(exc, TrainingError):
            raise
        _fail(run_dir, f"error: {exc}")


def _fail(run_dir: Path, message: str) -> None:
    (run_dir / ERROR_FILE).write_text(message + "\n", encoding="utf-8")
    raise TrialFailed(message)


def _train_trial(sweep: dict, values: dict, run_dir: Path, trial_id: str,
                 report: Callable[[dict], None]) -> None:
    from ..api import check_spec
    from .checkpoints import latest_checkpoint, read_meta
    from .launch import run_training

    spec, plain = sweep["spec"], sweep["plain"]
    cfg = trial_config(sweep["config"], values, str(run_dir.parent), trial_id,
                       threads=sweep.get("threads"), cpus_per_worker=sweep.get("cpus_per_worker"))
    check_spec(spec, **cfg.model_arguments())  # a spec error fails the trial before anything runs
    figures_path = run_dir / FIGURES_FILE
    if figures_path.is_file():
        figures = json.loads(figures_path.read_text())
    else:
        figures = model_figures(spec, cfg)
        figures_path.write_text(json.dumps(figures))
    baseline = sweep.get("baseline")
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        meta = read_meta(latest)
        if int(meta["step"]) >= cfg.training.iterations:  # finished before the sweep was stopped
            report(tune_record(meta["step"], meta.get("metrics", {}), figures, baseline))
            return
    log = run_dir / CONSOLE_FILE
    if plain:
        sink = _PlainReporter(log, figures, baseline, report)
        try:
            run_training(spec, cfg, resume=latest is not None, plain=True, progress=sink)
        finally:
            sink.close()
    else:
        run_training(spec, cfg, resume=latest is not None, plain=False, progress=_log_sink(log),
                     ray_callbacks=[ReportToTune(figures, baseline)])
