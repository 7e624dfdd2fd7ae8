"""Launching a run: what ``mtl-dsl train`` calls, on the driver.

``run_training(spec, config)`` checks the spec and the data before anything starts, prepares the
run folder, then runs ``loop.train_loop`` either in this process (``plain=True``: the throughput
benchmark's reference and the cheap tests) or on Ray Train's ``TorchTrainer`` (the default): it
starts (or joins) Ray, every worker runs the same loop in a ``RaySession`` with its data shard,
gradients averaged by DDP and only rank 0 writing files, and the loop's progress records come back
through a Ray queue to the console.

The run folder is ``run.storage``/``run.name``: a local or NFS path, or a URI (``s3://...``,
``storage.py``). Checkpoints reach it only through Ray Train's storage handling
(``storage_path`` and ``storage_filesystem``); the driver owns the folder (``runlock.FileLock``
or, in remote storage, ``lease.Lease``) and writes TensorBoard events and ``metrics.jsonl`` there
from the records the workers stream to it (``run_log.py``), so nothing a user needs stays on a
worker's disk.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import Diagnostic, SpecError, usage_error
from .config import RunConfig, load_config
from .console import Console
from .failures import (BadSample, CheckpointWriteError, DataUnavailable, NonFiniteLoss, TrainingError,
                       WriteError, root_cause, sigterm_stops_the_run)
from .run_log import RunLog
from .lease import lock_for
from .ray_start import start_ray
from .runlock import describe
from .storage import Location, open_location

# torch, numpy and ray are imported inside functions: ``commands`` imports this module lazily, and
# the config checks above must not pay for them.


@dataclass
class TrainResult:
    run_dir: Any  # a local Path, or a storage Location for a run folder in remote storage
    step: int
    metrics: dict = field(default_factory=dict)
    checkpoint: Any = None  # as run_dir: the last checkpoint folder
    history: list = field(default_factory=list)  # every log record (dicts) in order
    evaluations: list = field(default_factory=list)  # every evaluation record


class Recorder:
    """Receives the loop's records: keeps them, passes each to the sink (the console)."""

    def __init__(self, sink: Callable[[dict], None]):
        self.sink = sink
        self.sinks: list[Callable[[dict], None]] = []  # further sinks (the run's metrics files)
        self.records: list[dict] = []
        self.start_step = 0

    def __call__(self, record: dict) -> None:
        if record.get("kind") == "start":
            self.start_step = record["step"]
        if record.get("kind") == "log":
            record.setdefault("start_step", self.start_step)
        self.records.append(record)
        for sink in self.sinks:
            sink(record)
        self.sink(record)

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]


def default_run_name(spec: Any, cfg: RunConfig) -> str:
    if cfg.run.name:
        return cfg.run.name
    stem = Path(str(spec)).stem if isinstance(spec, (str, Path)) else getattr(spec, "__name__", "model")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{cfg.tasks_text()}")


def spec_source(spec: Any) -> tuple[str, str]:
    """(name, source text) of a spec path or built-in name; (name, '') for a model factory."""
    if not isinstance(spec, (str, Path)):
        return getattr(spec, "__name__", "model"), ""
    from ..api import resolve_spec_path

    try:
        path, _ = resolve_spec_path(spec)
        return str(spec), path.read_text(encoding="utf-8")
    except (SpecError, OSError, UnicodeDecodeError):
        return str(spec), ""


def _resume_point(run_dir, resume: bool, plain: bool, cfg: RunConfig, signature: dict,
                  recorder) -> tuple[Any, int]:
    """The checkpoint a run resumes from (None: a fresh run) and its first step, checked against
    this run's graph and config; on Ray, Ray Train's own record of the run is made to agree."""
    resume_from = prepare_run_dir(run_dir, resume, plain, recorder)
    if resume_from is None:
        return None, 0
    if not plain:
        from .ray_snapshot import reconcile_snapshot

        reconcile_snapshot(run_dir, resume_from, recorder)  # Ray Train restores from its own record
    return resume_from, _check_resume(resume_from, cfg, signature, recorder)


def run_training(spec: Any, config: RunConfig | None = None, *, resume: bool = False,
                 plain: bool = False, verbose: bool = False,
                 progress: Callable[[dict], None] | None = None,
                 callbacks: list | None = None, check_data: bool = True,
                 init: dict | None = None, ray_callbacks: list | None = None) -> TrainResult:
    """Train ``spec`` (a spec path, a built-in spec name, or ``factory(profile, input_size)``).

    ``progress`` receives every record of the loop (log lines, evaluations, checkpoints, notes);
    the default prints them with ``Console``. ``callbacks`` (``callbacks.Callback``) go to the
    loop of every worker; ``ray_callbacks`` (``ray.train.UserCallback``) to Ray Train's run (a
    sweep's report to Ray Tune). The run folder is locked for the whole run (``runlock.py``).
    ``init``: ``{"file": "[PART=]FILE", "map": NAME, "allow_partial": bool}`` (``--init``) starts a
    fresh run from an official checkpoint or a checkpoint folder, checked here before the run
    folder is touched (``mtl_dsl.weights.convert.prepare_init``).
    """
    cfg = (config if config is not None else load_config()).for_spec(spec)
    spec_name, source = spec_source(spec)
    signature = _checked_signature(spec, cfg)
    recorder = Recorder(progress if progress is not None else Console())
    if check_data:
        _check_data_here(cfg, recorder)
    initial = None
    if init is not None and not resume:
        from ..weights.convert import prepare_init

        initial = prepare_init(spec, cfg, init["file"], init.get("map", "official"),
                               init.get("allow_partial", False))
    storage = open_location(cfg.run.storage, cfg.run.storage_endpoint)
    if plain and not storage.local:
        raise usage_error("--plain", f"--plain trains in this process and writes to a local folder; "
                                     f"storage {storage} is written by Ray Train: leave out "
                                     f"--plain, or give a local --storage")
    run_name = default_run_name(spec, cfg)
    run_dir = storage.child(run_name)
    with lock_for(run_dir) as lock:
        if lock.took_over:
            recorder({"kind": "note", "text": f"took over run folder {run_dir} from a run that "
                                              f"is no longer running ({describe(lock.took_over)})"})
        resume_from, start = _resume_point(run_dir, resume, plain, cfg, signature, recorder)
        if isinstance(spec, (str, Path)) and Path(spec).is_file():
            spec = str(Path(spec).resolve())  # a worker may run in another folder (runtime_env)
        job = {"spec": spec, "spec_name": spec_name, "spec_source": source, "config": cfg.dump(),
               "graph": signature, "run_dir": str(run_dir), "callbacks": list(callbacks or []),
               "resume_path": resume_from, "start_step": start, "init": None}
        if initial is not None:
            recorder({"kind": "note", "text": initial.report})
            job["init"] = initial.write(run_dir.child("init", "model.safetensors"))
        with RunLog(run_dir) as run_log:
            recorder.sinks.append(run_log)
            if plain:
                out, checkpoint = _train_plain(job, cfg, run_dir.local_path, recorder)
            else:
                out, checkpoint = _train_with_ray(job, cfg, run_name, run_dir, verbose, recorder, lock,
                                                  list(ray_callbacks or []))
    shown = run_dir.local_path if run_dir.local else run_dir
    return TrainResult(run_dir=shown, step=out["step"], metrics=out["metrics"], checkpoint=checkpoint,
                       history=recorder.of("log"), evaluations=recorder.of("eval"))


def _checked_signature(spec: Any, cfg: RunConfig) -> dict:
    """The graph signature of a spec file or name (empty for a factory), shape-checked (no
    weights) here: a spec error must show before any worker starts."""
    if not isinstance(spec, (str, Path)):
        return {}
    from ..api import check_spec
    from .resume import graph_signature

    return graph_signature(check_spec(str(spec), **cfg.model_arguments()).ir)


def _check_data_here(cfg: RunConfig, recorder: Recorder) -> None:
    """Check the dataset on the driver before any worker starts. On a cluster, a folder the
    driver cannot see is left to the workers, which check it on every node."""
    from .config import cluster_address
    from .datasets import check_dataset

    root = cfg.dataset.root
    if root is not None and cluster_address(cfg) and not Path(root).expanduser().is_dir():
        recorder({"kind": "note", "text": f"dataset folder {root} is not on this machine; every "
                                          f"worker checks it on its node before the first step"})
        return
    for text in check_dataset(cfg):
        recorder({"kind": "note", "text": text})


def _check_resume(path: Any, cfg: RunConfig, signature: dict, note: Callable[[dict], None]) -> int:
    """Refuse a checkpoint of another graph or a run config changed where it cannot be; report
    the changes that are applied. Returns the checkpoint's step."""
    from .checkpoints import read_meta
    from .resume import check_config, check_graph

    meta = read_meta(path)
    check_graph(meta, signature, str(path))
    changes = check_config(meta, cfg.dump(), str(path))
    step = int(meta.get("step", 0))
    if changes:
        note({"kind": "note", "text": f"run config changed since step {step}, applied from here "
                                      f"on: {'; '.join(changes)}"})
    if step >= cfg.training.iterations:
        note({"kind": "note", "text": f"nothing to train: the checkpoint is at step {step}, "
                                      f"training.iterations is {cfg.training.iterations} (raise "
                                      f"--iterations to continue)"})
    return step


def prepare_run_dir(run_dir: Location, resume: bool, plain: bool,
                    note: Callable[[dict], None]) -> Any:
    """Refuse a fresh run over checkpoints, or a resume without any; returns the checkpoint to
    resume from (the newest that can be loaded; newer corrupt ones are skipped and reported)."""
    from .checkpoints import list_checkpoints, newest_usable
    from .run_log import METRICS_FILE
    from .runlock import LOCK_FILE

    existing = list_checkpoints(run_dir)
    if existing and not resume:
        raise usage_error(str(run_dir), f"run folder {run_dir} already has checkpoints; pass --resume "
                          f"to continue it or choose another --run-name")
    found = None
    if resume:
        found, skipped = newest_usable(run_dir)
        for path, why in skipped:
            note({"kind": "note", "text": f"skipped checkpoint {path} (cannot be loaded: {why})"})
        if found is None:
            raise usage_error(str(run_dir), f"nothing to resume: no usable checkpoint in {run_dir}")
    if not resume:
        # A fresh run must not pick up the state of an earlier (failed) run of that name: Ray
        # Train's snapshot would restore it, and its metrics would mix with this run's.
        for child in run_dir.children():
            if child.name == METRICS_FILE or (not plain and child.name not in ("tensorboard", LOCK_FILE)):
                child.delete()
    run_dir.make_dir()
    return found.local_path if isinstance(found, Location) and found.local else found


def _train_plain(job: dict, cfg: RunConfig, run_dir: Path,
                 recorder: Recorder) -> tuple[dict, Optional[Path]]:
    import torch

    from .loop import train_loop
    from .session import PlainSession

    session = PlainSession(run_dir, recorder, job["resume_path"], cfg.run.keep_checkpoints)
    threads_before = torch.get_num_threads()
    if cfg.run.threads_per_worker:
        torch.set_num_threads(cfg.run.threads_per_worker)
    try:
        out = train_loop(job, session)
    finally:
        torch.set_num_threads(threads_before)
        session.close()
    return out, session.last_checkpoint


# --------------------------------------------------------------------------------------------------
# Ray


def ray_worker_entry(job: dict) -> None:
    """What every Ray Train worker runs."""
    import torch

    from .loop import train_loop
    from .session import RaySession

    threads = job.get("threads_per_worker") or job.get("cpus_per_worker")
    if threads:
        torch.set_num_threads(int(threads))
    session = RaySession(job["run_dir"], job.get("queue"), job.get("resume_path"))
    try:
        train_loop(job, session)
    except DataUnavailable as exc:  # every rank raises it after the same all-gather
        session.emit({"kind": "error", "text": str(exc), "where": exc.where})
    except (NonFiniteLoss, BadSample, CheckpointWriteError) as exc:
        # Failures a restart would meet again: return normally (Ray must not retry them) and tell
        # the driver. Every rank sees the same all-reduced losses, so on a non-finite loss all of
        # them stop here together.
        session.emit({"kind": "error", "text": str(exc)})
    except SpecError as exc:
        # A mistake the driver could not see (a user block's module failing as it is built or
        # run): every rank meets it; the driver raises it as it is, with its location.
        session.emit({"kind": "error", "text": str(exc),
                      "diagnostics": [dataclasses.asdict(d) for d in exc.diagnostics]})
    finally:
        session.close()


class _QueueDrain:
    """Moves the workers' records from the Ray queue to the recorder, on a background thread.

    It polls twice a second: on a small machine, a blocking get per record keeps the queue actor
    and this process busy enough to slow the training worker measurably."""

    def __init__(self, queue, recorder: Recorder):
        self.queue, self.recorder = queue, recorder
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mtl-dsl-console", daemon=True)
        self.error: Optional[TrainingError] = None  # the run's logs could not be written

    def _run(self) -> None:
        while True:
            finished = self.stop.wait(0.5)
            try:
                while not self.queue.empty():
                    self.recorder(self.queue.get_nowait())
            except TrainingError as exc:  # metrics.jsonl on a full disk: the driver stops the run
                self.error = exc
                return
            except Exception:  # the queue actor is gone (Ray shut down)
                return
            if finished:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _trainer(job: dict, cfg: RunConfig, run_name: str, run_dir: Location, ray_callbacks: list):
    """The ``TorchTrainer`` of the run, and the queue its workers report to."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .config import cluster_address

    if cfg.run.gpus_per_worker is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    else:
        gpus = cfg.run.gpus_per_worker
    use_gpu = gpus > 0
    if cfg.run.backend == "nccl" and not use_gpu:
        raise usage_error("run.backend", "run.backend is nccl, but the workers get no GPU "
                                         "(run.gpus_per_worker, or none in the cluster)",
                          hint="use gloo on CPUs, or leave run.backend out")
    cpus_available = int(ray.cluster_resources().get("CPU", 1))
    cpus_per_worker = cfg.run.cpus_per_worker or (
        max(1, cpus_available // cfg.run.workers) if not cluster_address(cfg) else 1)
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus
    # The queue does no work: it needs no CPU (so it also fits in a Tune trial's placement group).
    # It lives beside the driver and Ray Train's controller, so that losing another node never
    # loses the run's records.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0, "scheduling_strategy": here})
    # Ray Train restores a run of the same name and storage by itself; resume_path covers a
    # run folder without Ray's state (e.g. written by --plain) whose checkpoints remain.
    job = dict(job, queue=queue, cpus_per_worker=cpus_per_worker,
               threads_per_worker=cfg.run.threads_per_worker)
    storage_path, storage_filesystem = run_dir.parent().ray_storage()
    trainer = TorchTrainer(
        ray_worker_entry,
        train_loop_config=job,
        torch_config=TorchConfig(backend=cfg.run.backend or ("nccl" if use_gpu else "gloo"), timeout_s=cfg.run.timeout_s),
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=ray_callbacks),
    )
    return trainer, queue


def _train_with_ray(job: dict, cfg: RunConfig, run_name: str, run_dir: Location, verbose: bool,
                    recorder: Recorder, lock, ray_callbacks: list) -> tuple[dict, Any]:
    started_here = start_ray(cfg, verbose, cfg.run.workers)
    import ray.train

    try:
        trainer, queue = _trainer(job, cfg, run_name, run_dir, ray_callbacks)
        with _QueueDrain(queue, recorder) as drain, sigterm_stops_the_run():
            try:
                result = _fit_interruptibly(trainer, lock, drain)
            except ray.train.TrainingFailedError as exc:
                raise _disk_full(run_dir, exc) or \
                    TrainingError(f"training failed: {root_cause(exc)}") from None
            except (KeyboardInterrupt, LeaseLost, WriteError):
                started_here = True  # only disconnecting the driver ends the run's actors
                raise
        if drain.error is not None:  # met by the last records, after the workers finished
            raise drain.error
        if result.error is not None:
            raise _disk_full(run_dir, result.error) or \
                TrainingError(f"training failed: {root_cause(result.error)}")
        _raise_worker_error(recorder)
        metrics = dict(result.metrics or {})
        checkpoint = None
        if result.checkpoint is not None:
            name = result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
            checkpoint = run_dir.local_path / name if run_dir.local else run_dir.child(name)
        out = {"step": int(metrics.get("step", job["start_step"])),  # no report: nothing trained
               "metrics": {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}}
        return out, checkpoint
    finally:
        if started_here:
            ray.shutdown()


def _raise_worker_error(recorder: Recorder) -> None:
    """A failure the workers reported instead of raising (Ray must not retry it)."""
    errors = recorder.of("error")
    if not errors:
        return
    last = errors[-1]
    if last.get("diagnostics"):  # a spec error met on a worker (a user's block module)
        raise SpecError([Diagnostic(**dict(d, notes=tuple(d.get("notes", ()))))
                         for d in last["diagnostics"]])
    if last.get("where"):  # a mistake in the setup (a dataset folder missing on a node)
        raise usage_error(last["where"], last["text"])
    raise TrainingError(last["text"])


class LeaseLost(TrainingError):
    """Another run took over the run folder while this one ran (its lease lapsed)."""


def _fit_interruptibly(trainer, lock=None, drain: Optional[_QueueDrain] = None):
    """``trainer.fit()`` on a helper thread, so that Ctrl-C reaches this (main) thread as
    ``KeyboardInterrupt``, as in a plain run: the caller's ``ray.shutdown()`` (also of a Ray
    started before ``run_training``) then ends the controller and the workers, the run folder's
    lock is released, and the command line says "interrupted" and exits 130. (On the
    main thread Ray Train installs its own SIGINT handler, which aborts the run and exits 1
    without a word.) A run folder lease taken over, or logs that could not be written (the
    ``drain``'s error: a full disk), stop the run the same way."""
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    thread = threading.Thread(target=fit, name="mtl-dsl-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if lock is not None and lock.lost:
            raise LeaseLost(f"{lock.lost}; this run stopped so that only one writes there")
        if drain is not None and drain.error is not None:
            raise drain.error
    if "error" in box:
        raise box["error"]
    return box["result"]


def _disk_full(run_dir: Location, exc: BaseException) -> Optional[CheckpointWriteError]:
    """``disk_full_error`` of a local run folder (a remote one's space is not this machine's)."""
    from .disk_full import disk_full_error

    return disk_full_error(run_dir.local_path, exc) if run_dir.local else None
