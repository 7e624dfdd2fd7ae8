"""Training: one loop, run either by Ray Train's ``TorchTrainer`` (the default) or in-process.

``run_training(spec, config)`` is the programmatic entry point and what ``mtl-dsl train`` calls.
With ``plain=False`` it starts (or joins) Ray, and ``TorchTrainer`` runs ``train_loop`` on every
worker: data sharded by a ``DistributedSampler``, gradients averaged by DDP, only rank 0 writing
files. With ``plain=True`` the same ``train_loop`` runs in this process (the throughput benchmark's
reference and the cheap tests).

Exact resume: everything random is a function of (seed, step) or (seed, epoch, sample):

* the data order is the ``DistributedSampler`` permutation of ``(seed, epoch)``; a resumed run
  starts at the same epoch and skips the batches of that epoch already seen;
* every sample is produced under its own RNG seed (torch, numpy and ``random`` global generators,
  restored afterwards), so augmentation does not depend on what was loaded before;
* the torch RNG is re-seeded from (seed, step, rank) before every forward (dropout, drop-path,
  Gumbel noise), so no generator state has to be saved.
Together with the optimiser, scheduler step and loss-weighting state in the checkpoint, a run
stopped at a checkpoint and resumed ends with the same weights as one that was never stopped.

Module hooks (used by ATRC's architecture search): a submodule of the model may define
``arch_parameters()`` (optimised by a separate Adam, excluded from the main optimiser),
``on_train_step(step, total_steps)`` (called before each forward) and ``extra_loss()`` (a tensor
added to the total loss after the forward, or None).
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import SpecError, simple_error
from .config import RunConfig, load_config

# torch, numpy and ray are imported inside functions: ``commands`` imports this module lazily, and
# the config checks above must not pay for them.


class TrainingError(RuntimeError):
    """A run that stopped: non-finite loss, worker failure, nothing to resume..."""


class NonFiniteLoss(TrainingError):
    def __init__(self, task: str, step: int, value: float):
        self.task, self.step, self.value = task, step, value
        super().__init__(f"loss of task '{task}' is {value} at step {step}; training stopped "
                         f"(the last good checkpoint is kept)")


class SimulatedCrash(RuntimeError):
    """Raised (plain mode) or os._exit (Ray) by the test-only fault injection."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    history: list = field(default_factory=list)  # every log record (dicts) in order
    evaluations: list = field(default_factory=list)  # every evaluation record


# --------------------------------------------------------------------------------------------------
# Small pieces shared by the loop


def lr_factor(step: int, cfg: RunConfig) -> float:
    """The schedule: warm-up (linear from warmup_ratio) then poly / cosine / constant, per step."""
    s = cfg.schedule
    total = cfg.training.iterations
    if s.name == "poly":
        factor = (1.0 - min(step, total) / total) ** s.power
    elif s.name == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    else:
        factor = 1.0
    if step < s.warmup_iters:
        alpha = step / s.warmup_iters
        factor *= s.warmup_ratio * (1.0 - alpha) + alpha
    return factor


def _mix(*values: int) -> int:
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFF


def default_run_name(spec: Any, cfg: RunConfig) -> str:
    if cfg.run.name:
        return cfg.run.name
    stem = Path(str(spec)).stem if isinstance(spec, (str, Path)) else getattr(spec, "__name__", "model")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{cfg.tasks_text()}")


def spec_source(spec: Any) -> tuple[str, str]:
    """(name, source text) of a spec path or built-in name; ('', '') for a model factory."""
    if not isinstance(spec, (str, Path)):
        return getattr(spec, "__name__", "model"), ""
    path = Path(spec)
    candidates = [path, Path(__file__).resolve().parents[2] / "specs" / f"{spec}.mtl",
                  Path(__file__).resolve().parents[1] / "specs" / f"{spec}.mtl"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return str(spec), candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                break
    return str(spec), ""


def build_model(spec: Any, cfg: RunConfig):
    """The compiled model of a spec (path or built-in name), or ``spec(profile, input_size)``."""
    if callable(spec) and not isinstance(spec, (str, Path)):
        return spec(cfg.profile(), cfg.input_size())
    from ..api import compile_model

    return compile_model(str(spec), tasks=cfg.tasks_text(), input_size=cfg.input_size(),
                         overrides=dict(cfg.model.overrides) or None, preset=cfg.model.preset)


def centroids_for(dataset: str) -> str:
    return "pascal" if dataset == "pascal" else "nyu"


def _hooks(model, name: str) -> list:
    return [m for m in model.modules() if callable(getattr(m, name, None))]


def arch_parameters(model) -> list:
    seen, out = set(), []
    for module in _hooks(model, "arch_parameters"):
        for p in module.arch_parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                out.append(p)
    return out


def make_train_step(model, criterion, weighting):
    import torch.nn as nn

    class TrainStep(nn.Module):
        """Model + criterion + loss weighting in one module, so DDP sees every trained tensor."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.criterion = criterion
            self.weighting = weighting
            self._extra = _hooks(model, "extra_loss")

        def forward(self, images, targets):
            outputs = self.model(images)
            losses = self.criterion(outputs, targets)
            total = self.weighting(losses)
            for module in self._extra:
                extra = module.extra_loss()
                if extra is not None:
                    total = total + extra
            return total, losses

    return TrainStep()


def make_optimizers(cfg: RunConfig, model, weighting):
    import torch

    arch = arch_parameters(model)
    arch_ids = {id(p) for p in arch}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in arch_ids]
    groups = [{"params": params, "weight_decay": cfg.optimizer.weight_decay}]
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    lr = cfg.learning_rate()
    o = cfg.optimizer
    if o.name == "sgd":
        main = torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
    elif o.name == "adam":  # coupled L2 weight decay, as InvPT
        main = torch.optim.Adam(groups, lr=lr, betas=tuple(o.betas))
    else:
        main = torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas))
    for g in main.param_groups:
        g["initial_lr"] = lr
    arch_opt = None
    if arch:
        arch_opt = torch.optim.Adam(arch, lr=o.arch_lr, weight_decay=o.arch_weight_decay)
    return main, arch_opt


class _SeededSamples:
    """Dataset wrapper: sample ``(index, seed)`` is produced under its own global-RNG seed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        import numpy as np
        import torch

        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def make_train_sampler(dataset_len: int, world: int, rank: int, seed: int, batch_size: int):
    from torch.utils.data import DistributedSampler

    class ResumableSampler(DistributedSampler):
        """The standard shuffled shard of ``(seed, epoch)``, resumable at a batch of the epoch,
        yielding ``(index, per-sample seed)``."""

        start_batch = 0

        def set_start(self, batch: int) -> None:
            self.start_batch = batch

        def batches_per_epoch(self) -> int:
            return self.num_samples // batch_size

        def __iter__(self):
            indices = list(super().__iter__())
            usable = self.batches_per_epoch() * batch_size
            for index in indices[self.start_batch * batch_size:usable]:
                yield index, _mix(self.seed, self.epoch, index)

        def __len__(self):
            return max(0, self.batches_per_epoch() - self.start_batch) * batch_size

    return ResumableSampler(range(dataset_len), num_replicas=world, rank=rank, shuffle=True,
                            seed=seed, drop_last=True)


def _to_device(batch: dict, device, tasks: list[str]):
    images = batch["image"].to(device, non_blocking=True)
    targets = {t: batch[t].to(device, non_blocking=True) for t in tasks}
    return images, targets


# --------------------------------------------------------------------------------------------------
# Sessions: what differs between the Ray workers and the plain in-process loop


class PlainSession:
    rank = 0
    world = 1
    local_rank = 0

    def __init__(self, run_dir: Path, emit: Callable[[dict], None], resume: bool, keep: int):
        import torch

        self.run_dir = run_dir
        self.checkpoint_dir = run_dir  # the same layout as Ray Train's: <run>/step_XXXXXXXX
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._emit = emit
        self._resume = resume
        self._keep = keep
        self.last_checkpoint: Optional[Path] = None
        self.last_metrics: dict = {}

    def emit(self, record: dict) -> None:
        self._emit(record)

    def checkpoint_to_resume(self):
        from .checkpoints import latest_checkpoint, load_checkpoint

        if not self._resume:
            return None
        latest = latest_checkpoint(self.checkpoint_dir)
        return load_checkpoint(latest) if latest is not None else None

    def checkpoint_target(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:08d}"

    def persisted(self, path: Path) -> Path:
        return path

    def report(self, metrics: dict, checkpoint: Optional[Path]) -> None:
        from .checkpoints import prune_checkpoints

        self.last_metrics = metrics
        if checkpoint is not None:
            self.last_checkpoint = checkpoint
            prune_checkpoints(self.checkpoint_dir, self._keep)

    def prepare(self, module):
        return module.to(self.device)


class RaySession:
    def __init__(self, run_dir: Path, queue, resume_path: Optional[str]):
        import ray.train
        import ray.train.torch

        self._resume_path = resume_path

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device()
        self.run_dir = run_dir
        self._queue = queue
        self._tmp = Path(tempfile.mkdtemp(prefix="mtl-dsl-ckpt-"))

    def emit(self, record: dict) -> None:
        if self.rank == 0 and self._queue is not None:
            try:
                self._queue.put_nowait(record)
            except Exception:  # a full or dead queue must never stop training
                pass

    def checkpoint_to_resume(self):
        import ray.train

        from .checkpoints import load_checkpoint

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return load_checkpoint(self._resume_path) if self._resume_path else None
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)

    def checkpoint_target(self, step: int) -> Path:
        return self._tmp / f"step_{step:08d}"

    def persisted(self, path: Path) -> Path:
        return self.run_dir / path.name  # Ray Train copies it to storage/run_name/<dir name>

    def report(self, metrics: dict, checkpoint: Optional[Path]) -> None:
        import ray.train

        if checkpoint is not None and self.rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                             checkpoint_dir_name=checkpoint.name)
            shutil.rmtree(checkpoint, ignore_errors=True)
        else:
            ray.train.report(metrics)

    def prepare(self, module):
        import ray.train.torch

        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": False})


# --------------------------------------------------------------------------------------------------
# The loop


def train_loop(job: dict, session) -> dict:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from .checkpoints import (check_matches, flatten_optimizer, ir_hash, save_checkpoint,
                              unflatten_optimizer)
    from .datasets import collate_samples
    from .evaluate import evaluate_model, make_eval_loader
    from .losses import MultiTaskCriterion
    from .weighting import build_weighting

    cfg = RunConfig.model_validate(job["config"])
    profile = cfg.profile()
    tasks = profile.task_names
    input_size = cfg.input_size()
    seed = cfg.training.seed
    total_steps = cfg.training.iterations
    batch_size = cfg.per_worker_batch()
    rank, world = session.rank, session.world
    device = session.device
    is_cuda = device.type == "cuda"

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    model = build_model(job["spec"], cfg)
    ir = getattr(model, "ir", None)
    model_hash = ir_hash(ir)
    if is_cuda and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    criterion = MultiTaskCriterion(tasks, profile.edge_pos_weight, centroids_for(cfg.dataset.name))
    weighting = build_weighting(cfg.loss.weighting, tasks, {t: cfg.loss_weight(t) for t in tasks},
                                cfg.loss.dwa_temperature, cfg.loss.dwa_interval)
    step_module = make_train_step(model, criterion, weighting).to(device)
    optimizer, arch_optimizer = make_optimizers(cfg, model, weighting)
    step_hooks = _hooks(model, "on_train_step")
    clip_params = [p for group in optimizer.param_groups for p in group["params"]]
    if arch_optimizer is not None:
        clip_params += [p for group in arch_optimizer.param_groups for p in group["params"]]

    # Resume
    start_step = 0
    resumed = session.checkpoint_to_resume()
    if resumed is not None:
        meta = resumed.meta
        check_matches(model, resumed.path)  # lists the differing keys if the graph changed
        if model_hash and meta.get("ir_hash") and meta["ir_hash"] != model_hash:
            raise simple_error(str(resumed.path), f"cannot resume: the spec changed since checkpoint "
                               f"{resumed.path} (IR hash {meta['ir_hash'][:12]} vs {model_hash[:12]})")
        model.load_state_dict({k: v.to(device) for k, v in resumed.model_state.items()})
        state = resumed.state_tensors
        optimizer.load_state_dict(unflatten_optimizer(state, meta["optimizer"]["main"], "main"))
        if arch_optimizer is not None and "arch" in meta["optimizer"]:
            arch_optimizer.load_state_dict(unflatten_optimizer(state, meta["optimizer"]["arch"], "arch"))
        weighting.load_state_dict({k[len("weighting."):]: v for k, v in state.items()
                                   if k.startswith("weighting.")})
        start_step = int(meta["step"])
        saved_world = meta.get("data_state", {}).get("world_size", world)
        if saved_world != world:
            session.emit({"kind": "note", "text": f"resuming with {world} workers (checkpoint: "
                          f"{saved_world}); the data order differs from an uninterrupted run"})
        session.emit({"kind": "note", "text": f"resumed from step {start_step}"})

    train_module = session.prepare(step_module)

    mixed = cfg.training.mixed_precision if is_cuda else "off"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    scaler = torch.amp.GradScaler("cuda") if mixed == "fp16" else None

    # Data
    train_set = open_dataset(cfg, "train", profile, input_size, cfg.training.augment)
    sampler = make_train_sampler(len(train_set), world, rank, seed, batch_size)
    batches_per_epoch = sampler.batches_per_epoch()
    if batches_per_epoch < 1:
        raise TrainingError(f"the training split has {len(train_set)} images, fewer than one batch of "
                            f"{batch_size} per worker x {world} workers")
    loader_workers = cfg.dataset.data_workers
    loader = DataLoader(_SeededSamples(train_set), batch_size=batch_size, sampler=sampler,
                        num_workers=loader_workers, drop_last=True, pin_memory=is_cuda,
                        collate_fn=collate_samples, persistent_workers=False)
    eval_loader = None

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(job["run_dir"]) / "tensorboard"), purge_step=start_step or None)

    def save(step: int, metrics: dict) -> Path:
        tensors, opt_info = {}, {}
        t, info = flatten_optimizer(optimizer.state_dict(), "main")
        tensors.update(t)
        opt_info["main"] = info
        if arch_optimizer is not None:
            t, info = flatten_optimizer(arch_optimizer.state_dict(), "arch")
            tensors.update(t)
            opt_info["arch"] = info
        tensors.update({f"weighting.{k}": v for k, v in weighting.state_dict().items()})
        meta = {
            "step": step, "metrics": metrics, "run_config": cfg.dump(), "spec": job["spec_name"],
            "spec_source": job["spec_source"], "ir_hash": model_hash,
            "profile": profile.model_dump(mode="json"), "input_size": list(input_size),
            "optimizer": opt_info, "lr_factor": lr_factor(step, cfg),
            "data_state": {"seed": seed, "epoch": step // batches_per_epoch,
                           "batch_in_epoch": step % batches_per_epoch, "world_size": world,
                           "batch_size_per_worker": batch_size},
        }
        return save_checkpoint(session.checkpoint_target(step), model.state_dict(), tensors, meta)

    def evaluate(step: int) -> dict:
        nonlocal eval_loader
        if eval_loader is None:
            eval_loader = make_eval_loader(cfg, profile, input_size, rank, world, loader_workers)
        started = time.perf_counter()
        metrics = evaluate_model(model, eval_loader, profile, cfg.dataset.name, device, world,
                                 max_batches=cfg.training.eval_batches, amp_dtype=amp_dtype)
        if rank == 0:
            for key, value in metrics.items():
                writer.add_scalar(f"val/{key}", value, step)
            session.emit({"kind": "eval", "step": step, "metrics": metrics,
                          "seconds": time.perf_counter() - started})
        return metrics

    def due(step: int, interval: int) -> bool:
        return step == total_steps or (interval > 0 and step % interval == 0)

    fault = job.get("fault") or {}
    step = start_step
    epoch, offset = divmod(step, batches_per_epoch)
    log_sum = torch.zeros(len(tasks) + 1, dtype=torch.float64)
    log_steps, log_images = 0, 0
    log_started = time.perf_counter()
    run_started = time.perf_counter()
    last_metrics: dict = {}
    train_module.train()
    session.emit({"kind": "start", "step": step, "total": total_steps, "tasks": tasks,
                  "world": world, "device": str(device), "batch": batch_size * world,
                  "threads": torch.get_num_threads()})
    while step < total_steps:
        sampler.set_epoch(epoch)
        sampler.set_start(offset)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        for batch in loader:
            for module in step_hooks:
                module.on_train_step(step, total_steps)
            factor = lr_factor(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            torch.manual_seed(_mix(seed, step, rank))
            images, targets = _to_device(batch, device, tasks)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                total, losses = train_module(images, targets)
            values = torch.stack([losses[t].detach().float() for t in tasks] + [total.detach().float()])
            if fault.get("nan_task") and step + 1 >= fault.get("nan_step", 1) and rank == fault.get("rank", 0):
                values[tasks.index(fault["nan_task"])] = float("nan")  # test hook: one rank only
            if world > 1:
                dist.all_reduce(values)
                values /= world
            values = values.cpu().double()
            if not bool(torch.isfinite(values).all()):
                bad = [i for i in range(len(tasks) + 1) if not math.isfinite(float(values[i]))]
                name = tasks[bad[0]] if bad[0] < len(tasks) else "total"
                raise NonFiniteLoss(name, step + 1, float(values[bad[0]]))
            optimizer.zero_grad(set_to_none=True)
            if arch_optimizer is not None:
                arch_optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
                if arch_optimizer is not None:
                    scaler.unscale_(arch_optimizer)
            else:
                total.backward()
            if cfg.training.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(clip_params, cfg.training.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                if arch_optimizer is not None:
                    scaler.step(arch_optimizer)
                scaler.update()
            else:
                optimizer.step()
                if arch_optimizer is not None:
                    arch_optimizer.step()
            weighting.observe(step, values[:-1].float())
            step += 1
            log_sum += values
            log_steps += 1
            log_images += images.shape[0] * world

            if fault and step == fault.get("step") and rank == fault.get("rank", 0):
                marker = Path(fault["marker"])
                if not marker.exists():
                    marker.write_text("crashed once\n")
                    if fault.get("hard", False):
                        os._exit(17)
                    raise SimulatedCrash(f"injected crash after step {step}")

            if step % cfg.training.log_interval == 0 or step == total_steps:
                now = time.perf_counter()
                seconds = now - log_started
                mean = (log_sum / max(1, log_steps)).tolist()
                if rank == 0:
                    record = {"kind": "log", "step": step, "total": total_steps,
                              "losses": dict(zip(tasks, mean[:-1])), "loss": mean[-1],
                              "lr": optimizer.param_groups[0]["lr"],
                              "images_per_s": log_images / seconds if seconds > 0 else 0.0,
                              "seconds": seconds, "elapsed": now - run_started,
                              "weights": weighting.task_weights()}
                    for t, v in record["losses"].items():
                        writer.add_scalar(f"loss/{t}", v, step)
                    writer.add_scalar("loss/total", record["loss"], step)
                    writer.add_scalar("lr", record["lr"], step)
                    writer.add_scalar("images_per_s", record["images_per_s"], step)
                    session.emit(record)
                log_sum.zero_()
                log_steps, log_images = 0, 0
                log_started = time.perf_counter()

            evaluate_now = due(step, cfg.training.eval_interval)
            checkpoint_now = due(step, cfg.training.checkpoint_interval)
            if evaluate_now or checkpoint_now:
                paused = time.perf_counter()
                if evaluate_now:
                    last_metrics = evaluate(step)
                report = {"step": step, **{f"val/{k}": v for k, v in last_metrics.items()}}
                path = save(step, last_metrics) if checkpoint_now and rank == 0 else None
                if checkpoint_now:
                    session.report(report, path)
                if rank == 0 and path is not None:
                    session.emit({"kind": "checkpoint", "step": step, "path": str(session.persisted(path))})
                log_started += time.perf_counter() - paused  # keep images/s about training only
            if step >= total_steps:
                break
        epoch += 1
        offset = 0
    if writer is not None:
        writer.close()
    return {"step": step, "metrics": last_metrics}


def ray_worker_entry(job: dict) -> None:
    """What every Ray Train worker runs."""
    import torch

    threads = job.get("threads_per_worker") or job.get("cpus_per_worker")
    if threads:
        torch.set_num_threads(int(threads))
    session = RaySession(Path(job["run_dir"]), job.get("queue"), job.get("resume_path"))
    try:
        train_loop(job, session)
    except NonFiniteLoss as exc:
        # Every rank sees the same all-reduced losses, so all of them stop here together; return
        # normally (Ray must not retry a deterministic failure) and tell the driver.
        session.emit({"kind": "error", "text": str(exc), "step": exc.step})


# --------------------------------------------------------------------------------------------------
# Driver side


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


def _start_ray(cfg: RunConfig, verbose: bool, workers: int):
    _silence_ray(verbose)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.WARNING,
                                  configure_logging=True, ignore_reinit_error=True)
    if cfg.run.address:
        ray.init(address=cfg.run.address, **kwargs)
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


class Console:
    """Turns the records of the training loop into console lines (one per log interval)."""

    def __init__(self, write: Callable[[str], None] = print, bar_width: int = 20):
        self.write = write
        self.bar_width = bar_width

    def __call__(self, record: dict) -> None:
        kind = record.get("kind")
        if kind == "start":
            start = f"from step {record['step']} " if record.get("step") else ""
            n = record.get("threads")
            threads = f" ({n} thread{'s' if n != 1 else ''})" if record.get("device") == "cpu" else ""
            self.write(f"training {record['total']} steps {start}on {record['world']} worker(s), "
                       f"{record['device']}{threads}, batch {record['batch']}; tasks {', '.join(record['tasks'])}")
        elif kind == "log":
            self.write(format_log_line(record, self.bar_width))
        elif kind == "eval":
            metrics = " ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
            self.write(f"eval @ step {record['step']}: {metrics} ({record['seconds']:.1f} s)")
        elif kind == "checkpoint":
            self.write(f"checkpoint @ step {record['step']}: {record['path']}")
        elif kind == "note":
            self.write(record["text"])


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_log_line(record: dict, bar_width: int = 20) -> str:
    step, total = record["step"], record["total"]
    done = step / total
    filled = int(round(done * bar_width))
    bar = "#" * filled + "." * (bar_width - filled)
    speed = record["images_per_s"]
    left = record["elapsed"] / max(step - record.get("start_step", 0), 1) * (total - step)
    losses = " ".join(f"{t} {v:.4f}" for t, v in record["losses"].items())
    width = len(str(total))
    return (f"step {step:>{width}}/{total} [{bar}] {100 * done:3.0f}% | {losses} | total "
            f"{record['loss']:.4f} | lr {record['lr']:.2e} | {speed:.1f} img/s | {_clock(left)} left")


def open_dataset(cfg: RunConfig, split: str, profile, input_size, augment: bool):
    from .datasets import build_dataset

    extra = {}
    if cfg.dataset.name == "synthetic":
        length = cfg.dataset.length if split == "train" else cfg.dataset.val_length
        extra = {"length": length, "cache": cfg.dataset.cache}
    return build_dataset(cfg.dataset.name, cfg.dataset.root, split, profile, input_size, augment,
                         cfg.training.seed, **extra)


def _check_dataset(cfg: RunConfig, file: str) -> None:
    """Open the training split once on the driver, so a bad layout fails before any worker."""
    from .datasets import DatasetError

    try:
        dataset = open_dataset(cfg, "train", cfg.profile(), cfg.input_size(), False)
    except SpecError:
        raise
    except (DatasetError, FileNotFoundError, ValueError, OSError) as exc:
        raise simple_error(cfg.dataset.root or file, str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
    if len(dataset) < cfg.per_worker_batch() * cfg.run.workers:
        raise simple_error(cfg.dataset.root or "<dataset>",
                           f"the training split has {len(dataset)} images, fewer than one batch "
                           f"({cfg.per_worker_batch()} x {cfg.run.workers} workers)")


def run_training(spec: Any, config: RunConfig | None = None, *, resume: bool = False,
                 plain: bool = False, verbose: bool = False,
                 progress: Callable[[dict], None] | None = None,
                 fault: dict | None = None, check_data: bool = True) -> TrainResult:
    """Train ``spec`` (a spec path, a built-in spec name, or ``factory(profile, input_size)``).

    ``progress`` receives every record of the loop (log lines, evaluations, checkpoints); the
    default prints them with ``Console``. ``fault`` is a test hook: ``{"step": N, "rank": R,
    "marker": path, "hard": bool}`` crashes rank R once after step N; ``{"nan_task": T,
    "nan_step": N, "rank": R}`` makes rank R see a NaN loss for task T from step N on.
    """
    cfg = config if config is not None else load_config()
    spec_name, source = spec_source(spec)
    if isinstance(spec, (str, Path)):
        from ..api import check_spec

        # Shape-check (no weights) here: a spec error must show before any worker starts.
        check_spec(str(spec), cfg.tasks_text(), dict(cfg.model.overrides) or None, cfg.model.preset,
                   cfg.input_size())
    if check_data:
        _check_dataset(cfg, "<config>")
    storage = Path(cfg.run.storage).expanduser().resolve()
    run_name = default_run_name(spec, cfg)
    run_dir = storage / run_name
    from .checkpoints import latest_checkpoint, list_checkpoints

    existing = list_checkpoints(run_dir)
    if existing and not resume:
        raise simple_error(str(run_dir), f"run folder {run_dir} already has checkpoints; pass --resume "
                           f"to continue it or choose another --run-name")
    if resume and not existing:
        raise simple_error(str(run_dir), f"nothing to resume: no checkpoint in {run_dir}")
    if not resume and not plain and run_dir.exists():
        # A fresh Ray Train run must not pick up the state of an earlier (failed) run of that name.
        for child in run_dir.iterdir():
            if child.name != "tensorboard":
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    sink = progress if progress is not None else Console()

    def collect(record: dict) -> None:
        if record.get("kind") == "start":
            collect.start_step = record["step"]
        if record.get("kind") == "log":
            record.setdefault("start_step", getattr(collect, "start_step", 0))
        records.append(record)
        sink(record)

    job = {"spec": spec, "spec_name": spec_name, "spec_source": source, "config": cfg.dump(),
           "run_dir": str(run_dir), "resume": resume, "fault": fault}
    if plain:
        import torch

        session = PlainSession(run_dir, collect, resume, cfg.run.keep_checkpoints)
        threads_before = torch.get_num_threads()
        if cfg.run.threads_per_worker:
            torch.set_num_threads(cfg.run.threads_per_worker)
        try:
            out = train_loop(job, session)
        finally:
            torch.set_num_threads(threads_before)
        return TrainResult(run_dir=run_dir, step=out["step"], metrics=out["metrics"],
                           checkpoint=session.last_checkpoint,
                           history=[r for r in records if r.get("kind") == "log"],
                           evaluations=[r for r in records if r.get("kind") == "eval"])
    latest = latest_checkpoint(run_dir) if resume else None
    return _run_with_ray(job, cfg, run_dir, run_name, storage, verbose, collect, records, latest)


def _run_with_ray(job, cfg, run_dir, run_name, storage, verbose, collect, records,
                  latest: Optional[Path]) -> TrainResult:
    started_here = _start_ray(cfg, verbose, cfg.run.workers)
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    try:
        if cfg.run.gpus_per_worker is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        else:
            gpus = cfg.run.gpus_per_worker
        use_gpu = gpus > 0
        cpus_available = int(ray.cluster_resources().get("CPU", 1))
        cpus_per_worker = max(1, cpus_available // cfg.run.workers) if not cfg.run.address else 1
        resources = {"CPU": cpus_per_worker}
        if use_gpu:
            resources["GPU"] = gpus
        queue = Queue(maxsize=10_000)
        # Ray Train restores a run of the same name and storage by itself; resume_path covers a
        # run folder without Ray's state (e.g. written by --plain) whose checkpoints remain.
        job = dict(job, queue=queue, cpus_per_worker=cpus_per_worker,
                   threads_per_worker=cfg.run.threads_per_worker,
                   resume_path=str(latest) if latest is not None else None)
        trainer = TorchTrainer(
            ray_worker_entry,
            train_loop_config=job,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=cfg.run.timeout_s),
            scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RayRunConfig(
                name=run_name, storage_path=str(storage),
                failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)),
        )
        stop = threading.Event()

        def drain():
            # Poll twice a second: on a small machine, a blocking get per record keeps the queue
            # actor and this process busy enough to slow the training worker measurably.
            while True:
                finished = stop.wait(0.5)
                try:
                    while not queue.empty():
                        collect(queue.get_nowait())
                except Exception:  # the queue actor is gone (Ray shut down)
                    return
                if finished:
                    return

        thread = threading.Thread(target=drain, name="mtl-dsl-console", daemon=True)
        thread.start()
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise TrainingError(f"training failed: {_root_cause(exc)}") from None
        finally:
            stop.set()
            thread.join(timeout=10)
        if result.error is not None:
            raise TrainingError(f"training failed: {_root_cause(result.error)}")
        errors = [r for r in records if r.get("kind") == "error"]
        if errors:
            raise TrainingError(errors[-1]["text"])
        metrics = dict(result.metrics or {})
        checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else None
        step = int(metrics.get("step", 0))
        return TrainResult(run_dir=run_dir, step=step,
                           metrics={k[4:]: v for k, v in metrics.items() if k.startswith("val/")},
                           checkpoint=checkpoint,
                           history=[r for r in records if r.get("kind") == "log"],
                           evaluations=[r for r in records if r.get("kind") == "eval"])
    finally:
        if started_here:
            ray.shutdown()


def _root_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "Traceback")):
            return line
    return type(exc).__name__
