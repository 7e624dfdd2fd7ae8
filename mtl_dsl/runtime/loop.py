"""The training loop every worker runs: set up, restore, then for each batch step, log, evaluate
and save, in the shape of Ray Train's ``train_loop_per_worker`` examples.

``train_loop(job, session)`` is the whole of it; the session (``session.py``) hides whether it
runs in a Ray Train worker or in the calling process. Everything random is a function of the
seed and the position in the run (``sampling.py``), so together with the model, optimiser,
scheduler step and loss-weighting state in the checkpoint, a run stopped at a checkpoint and
resumed ends with the same weights as one that was never stopped.

Module hooks (used by ATRC's architecture search): a submodule of the model may define
``arch_parameters()`` (optimised by a separate Adam, excluded from the main optimiser),
``on_train_step(step, total_steps)`` (called before each forward) and ``extra_loss()`` (a tensor
added to the total loss after the forward, or None). Callbacks (``callbacks.py``) watch the loop
from outside.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..api import build_model
from .config import RunConfig
from .failures import BadSample, NonFiniteLoss, TrainingError
from .optim import apply_hyperparameters, apply_schedule, lr_factor, make_optimizers
from .sampling import ResumableSampler, SeededSamples, seed_model_init, seed_step


class TrainStep(nn.Module):
    """Model + criterion + loss weighting in one module, so DDP sees every trained tensor."""

    def __init__(self, model, criterion, weighting):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.weighting = weighting
        self._extra = [m for m in model.modules() if callable(getattr(m, "extra_loss", None))]

    def forward(self, images, targets):
        outputs = self.model(images)
        losses = self.criterion(outputs, targets)
        total = self.weighting(losses)
        for module in self._extra:
            extra = module.extra_loss()
            if extra is not None:
                total = total + extra
        return total, losses


class Meter:
    """Mean losses and images/s over one log interval (time spent evaluating or saving excluded)."""

    def __init__(self, size: int):
        self.sums = torch.zeros(size, dtype=torch.float64)
        self.steps = self.images = 0
        self.started = self.run_started = time.perf_counter()

    def add(self, values: torch.Tensor, images: int) -> None:
        self.sums += values
        self.steps += 1
        self.images += images

    def pause(self, seconds: float) -> None:
        self.started += seconds

    def flush(self) -> tuple[list[float], float, float]:
        """(mean values, seconds of the interval, images/s), and start a new interval."""
        now = time.perf_counter()
        seconds = now - self.started
        mean = (self.sums / max(1, self.steps)).tolist()
        speed = self.images / seconds if seconds > 0 else 0.0
        self.sums.zero_()
        self.steps = self.images = 0
        self.started = now
        return mean, seconds, speed


@dataclass
class Run:
    """The state of the loop on one worker."""

    job: dict
    cfg: RunConfig
    profile: Any
    session: Any
    model: nn.Module
    step_module: TrainStep
    optimizer: Any
    arch_optimizer: Any
    callbacks: list = field(default_factory=list)
    step_hooks: list = field(default_factory=list)
    model_hash: str = ""
    train_module: Any = None
    amp_dtype: Any = None
    scaler: Any = None
    train_set: Any = None
    sampler: Optional[ResumableSampler] = None
    loader: Any = None
    eval_loader: Any = None
    step: int = 0
    start_step: int = 0
    metrics: dict = field(default_factory=dict)
    meter: Optional[Meter] = None
    skipped: int = 0  # unreadable samples replaced (dataset.skip_bad_samples)
    nodes: list = field(default_factory=list)  # the machines the workers run on
    fusion_tuned: bool = False  # whether the fusion groups were timed on this device

    @property
    def tasks(self) -> list[str]:
        return self.profile.task_names

    @property
    def total_steps(self) -> int:
        return self.cfg.training.iterations

    @property
    def weighting(self):
        return self.step_module.weighting

    @property
    def device(self):
        return self.session.device


# --------------------------------------------------------------------------------------------------
# The loop


def train_loop(job: dict, session) -> dict:
    run = setup(job, session)
    restore(run)
    check_data_on_every_node(run)
    prepare(run)
    announce(run)
    for batch in batches(run):
        train_step(run, batch)
        log(run)
        evaluate_and_save(run)
        if run.step >= run.total_steps:
            break
    if run.skipped:
        session.emit({"kind": "note", "text": f"skipped {run.skipped} unreadable sample(s) "
                                              f"in all (dataset.skip_bad_samples)"})
    return {"step": run.step, "metrics": run.metrics}


def setup(job: dict, session) -> Run:
    """Build the model, the criterion, the loss weighting and the optimisers."""
    from ..modules.grad_layout import guard_norm_gradients
    from .checkpoints import ir_hash
    from .losses import MultiTaskCriterion
    from .weighting import build_weighting

    cfg = RunConfig.model_validate(job["config"])
    profile = cfg.profile()
    tasks = profile.task_names
    seed_model_init(cfg.training.seed)
    model = build_model(job["spec"], **cfg.model_arguments())
    model_hash = ir_hash(getattr(model, "ir", None))
    if session.device.type == "cuda" and session.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        guard_norm_gradients(model)  # the new modules do not carry the compiler's hooks
    centroids = "pascal" if cfg.dataset.name == "pascal" else "nyu"
    criterion = MultiTaskCriterion(tasks, profile.edge_pos_weight, centroids)
    weighting = build_weighting(cfg.loss.weighting, tasks, {t: cfg.loss_weight(t) for t in tasks},
                                cfg.loss.dwa_temperature, cfg.loss.dwa_interval)
    step_module = TrainStep(model, criterion, weighting).to(session.device)
    optimizer, arch_optimizer = make_optimizers(cfg, model, weighting)
    step_hooks = [m for m in model.modules() if callable(getattr(m, "on_train_step", None))]
    return Run(job=job, cfg=cfg, profile=profile, session=session, model=model,
               step_module=step_module, optimizer=optimizer, arch_optimizer=arch_optimizer,
               callbacks=list(job.get("callbacks") or []), step_hooks=step_hooks,
               model_hash=model_hash)


def restore(run: Run) -> None:
    """Continue from the session's checkpoint, if it has one: weights, optimiser states, loss
    weighting and step; the run config's hyper-parameters apply from here on. Else the weights
    ``--init`` gave, if any (the optimiser starts fresh)."""
    from .checkpoints import check_matches, state_shapes, unflatten_optimizer

    resumed = run.session.checkpoint_to_resume()
    if resumed is None:
        if run.job.get("init"):  # `train --init`: a fresh run from given weights
            from ..weights.convert import load_init

            count = load_init(run.model, run.job["init"])
            run.session.emit({"kind": "note", "text": f"initialised {count} tensors from "
                                                      f"{run.job['init']}"})
        return
    meta = resumed.meta
    # lists the differing keys if the weights differ
    check_matches(run.model, resumed.path, state_shapes(resumed.model_state))
    run.model.load_state_dict({k: v.to(run.device) for k, v in resumed.model_state.items()})
    state = resumed.state_tensors
    run.optimizer.load_state_dict(unflatten_optimizer(state, meta["optimizer"]["main"], "main"))
    if run.arch_optimizer is not None and "arch" in meta["optimizer"]:
        run.arch_optimizer.load_state_dict(unflatten_optimizer(state, meta["optimizer"]["arch"], "arch"))
    apply_hyperparameters(run.optimizer, run.arch_optimizer, run.cfg)
    run.weighting.load_state_dict({k[len("weighting."):]: v for k, v in state.items()
                                   if k.startswith("weighting.")})
    weights = [run.cfg.loss_weight(t) for t in run.tasks]
    run.weighting.base_weights.copy_(torch.tensor(weights, dtype=run.weighting.base_weights.dtype))
    run.step = run.start_step = int(meta["step"])
    world = run.session.world
    saved_world = meta.get("data_state", {}).get("world_size", world)
    if saved_world != world:
        run.session.emit({"kind": "note", "text": f"resuming with {world} workers (checkpoint: "
                          f"{saved_world}); the data order differs from an uninterrupted run"})
    run.session.emit({"kind": "note", "text": f"resumed from step {run.start_step}"})


def prepare(run: Run) -> None:
    """Wrap the model for the session (DDP), and open the data."""
    from torch.utils.data import DataLoader

    from .datasets import GuardedSamples, collate_samples, open_dataset

    cfg, session = run.cfg, run.session
    run.train_module = session.prepare(run.step_module)
    is_cuda = run.device.type == "cuda"
    mixed = cfg.training.mixed_precision if is_cuda else "off"
    run.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    run.scaler = torch.amp.GradScaler("cuda") if mixed == "fp16" else None

    batch_size = cfg.per_worker_batch()
    run.train_set = open_dataset(cfg, "train", cfg.training.augment)
    run.sampler = ResumableSampler(len(run.train_set), session.world, session.rank,
                                   cfg.training.seed, batch_size)
    if run.sampler.batches_per_epoch() < 1:
        raise TrainingError(f"the training split has {len(run.train_set)} images, fewer than one "
                            f"batch of {batch_size} per worker x {session.world} workers")
    samples = SeededSamples(GuardedSamples(run.train_set, cfg.dataset.skip_bad_samples))
    run.loader = DataLoader(samples, batch_size=batch_size, sampler=run.sampler,
                            num_workers=cfg.dataset.data_workers, drop_last=True, pin_memory=is_cuda,
                            collate_fn=collate_samples, persistent_workers=False)
    run.meter = Meter(len(run.tasks) + 1)
    run.train_module.train()


def check_data_on_every_node(run: Run) -> None:
    """Before the first step, every worker looks for the dataset folder on its node; if one or
    more lack it, every rank stops with the same one-line error naming those nodes."""
    from .failures import DataUnavailable

    cfg, session = run.cfg, run.session
    problem = None
    if cfg.dataset.root is not None and cfg.dataset.name != "synthetic":
        root = Path(cfg.dataset.root).expanduser()
        if not root.is_dir():
            problem = "missing" if not root.exists() else "not a folder"
        elif not os.access(root, os.R_OK | os.X_OK):
            problem = "not readable"
    reports = session.gather({"node": session.node, "rank": session.rank, "problem": problem})
    run.nodes = sorted({r["node"] for r in reports})
    bad = [r for r in reports if r["problem"]]
    if not bad:
        return
    nodes = sorted({r["node"] for r in bad})
    good = sorted({r["node"] for r in reports if not r["problem"]} - set(nodes))
    what = "; ".join(f"{n}: {next(r['problem'] for r in bad if r['node'] == n)}" for n in nodes)
    there = f" (it is there on {', '.join(good)})" if good else ""
    raise DataUnavailable(f"dataset folder {cfg.dataset.root} is not usable on node"
                          f"{'s' if len(nodes) > 1 else ''} {what}{there}; every node that runs "
                          f"a worker needs it at that path", where=str(cfg.dataset.root))


def announce(run: Run) -> None:
    session = run.session
    session.emit({"kind": "start", "step": run.step, "total": run.total_steps, "tasks": run.tasks,
                  "world": session.world, "nodes": run.nodes, "device": str(run.device),
                  "batch": run.cfg.per_worker_batch() * session.world,
                  "threads": torch.get_num_threads()})


def batches(run: Run) -> Iterator[dict]:
    """The batches from the current step on, epoch after epoch."""
    epoch, offset = divmod(run.step, run.sampler.batches_per_epoch())
    while run.step < run.total_steps:
        run.sampler.set_epoch(epoch)
        run.sampler.set_start(offset)
        if hasattr(run.train_set, "set_epoch"):
            run.train_set.set_epoch(epoch)
        try:
            yield from run.loader
        except BadSample as exc:  # from a loader process, the message holds its traceback
            raise BadSample(_exception_line(str(exc), "BadSample")) from None
        epoch += 1
        offset = 0


def _exception_line(text: str, name: str) -> str:
    """The message of exception ``name`` in ``text`` (a formatted traceback, or the message)."""
    for line in reversed(text.splitlines()):
        if f"{name}: " in line:
            return line.split(f"{name}: ", 1)[1]
    return text.splitlines()[0] if text else name


def count_skipped(run: Run, batch: dict) -> None:
    """Report the unreadable samples the batch replaced (``dataset.skip_bad_samples``)."""
    for meta in batch.get("meta", []):
        for text in meta.get("skipped", []):
            run.skipped += 1
            if run.skipped <= 5:
                run.session.emit({"kind": "note", "text": f"skipped an unreadable sample: {text}"})


def _one_value_per_channel(images: torch.Tensor, step: int) -> str:
    """PyTorch's BatchNorm refuses to train on one value per channel: one image per worker
    whose map has shrunk to 1x1 (a stride-32 level of a small input)."""
    n, _, h, w = images.shape
    return (f"training.batch_size: a BatchNorm of the model got one value per channel at step "
            f"{step} ({n} image{'s' if n != 1 else ''} per worker at {h}x{w}: a map of 1x1), which "
            f"it cannot normalise in training; use training.batch_size >= 2 per worker or a "
            f"larger training.input_size")


def train_step(run: Run, batch: dict) -> None:
    """One optimisation step on ``batch``; stops the run on a non-finite loss."""
    cfg, session, tasks = run.cfg, run.session, run.tasks
    for module in run.step_hooks:
        module.on_train_step(run.step, run.total_steps)
    apply_schedule(run.optimizer, run.step, cfg)
    seed_step(cfg.training.seed, run.step, session.rank)
    count_skipped(run, batch)
    images = batch["image"].to(run.device, non_blocking=True)
    targets = {t: batch[t].to(run.device, non_blocking=True) for t in tasks}
    if not run.fusion_tuned:
        tune_fusion_once(run, images)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        try:
            total, losses = run.train_module(images, targets)
        except ValueError as exc:
            if "more than 1 value per channel" not in str(exc):
                raise
            raise TrainingError(_one_value_per_channel(images, run.step + 1)) from None
    values = torch.stack([losses[t].detach().float() for t in tasks] + [total.detach().float()])
    for callback in run.callbacks:
        callback.on_losses(run, values)
    if session.world > 1:
        dist.all_reduce(values)
        values /= session.world
    values = values.cpu().double()
    if not bool(torch.isfinite(values).all()):
        bad = next(i for i in range(len(values)) if not math.isfinite(float(values[i])))
        raise NonFiniteLoss(tasks[bad] if bad < len(tasks) else "total", run.step + 1, float(values[bad]))
    backward_and_update(run, total)
    run.weighting.observe(run.step, values[:-1].float())
    run.step += 1
    run.meter.add(values, images.shape[0] * session.world)
    for callback in run.callbacks:
        callback.on_step_end(run)


def fusion_is_tuned(mode: str, device: torch.device) -> bool:
    """Whether the loop times the fusion groups (``training.fusion_tuning``; ``auto``: on GPUs,
    where the answer depends on kernels and settings; a CPU keeps the fixed policy of
    ``mtl_dsl.modules.batched.layers.grouping_pays``)."""
    return mode == "always" or (mode == "auto" and device.type == "cuda")


def tune_fusion_once(run: Run, images: torch.Tensor) -> None:
    """Before the first step: keep batched the fusion groups that are faster so on this device,
    under the run's autocast. Every rank runs rank 0's choice. Exact either way (speed only)."""
    from ..fusion_tuning import describe, tune_fusion

    run.fusion_tuned = True
    model = run.model
    wanted = fusion_is_tuned(run.cfg.training.fusion_tuning, run.device)
    if not (wanted and getattr(model, "fused", False) and model.full_fusion.groups):
        return

    def rank0_choice(timings) -> set[int]:
        keep = [sorted(i for i, t in enumerate(timings) if t.pays)]
        if run.session.world > 1:
            dist.broadcast_object_list(keep, src=0)
        return set(keep[0])

    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        timings = tune_fusion(model, images, decide=rank0_choice)
    if run.session.rank == 0:
        run.session.emit({"kind": "note", "text": describe(timings, len(model.fusion.groups))})


def backward_and_update(run: Run, total: torch.Tensor) -> None:
    optimizers = [o for o in (run.optimizer, run.arch_optimizer) if o is not None]
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(total).backward()
        for optimizer in optimizers:
            run.scaler.unscale_(optimizer)
    else:
        total.backward()
    if run.cfg.training.grad_clip is not None:
        params = [p for o in optimizers for group in o.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, run.cfg.training.grad_clip)
    if run.scaler is not None:
        for optimizer in optimizers:
            run.scaler.step(optimizer)
        run.scaler.update()
    else:
        for optimizer in optimizers:
            optimizer.step()


def log(run: Run) -> None:
    """At the end of a log interval: one record (rank 0) and TensorBoard scalars."""
    if run.step % run.cfg.training.log_interval != 0 and run.step != run.total_steps:
        return
    mean, seconds, speed = run.meter.flush()
    if run.session.rank != 0:
        return
    record = {"kind": "log", "step": run.step, "total": run.total_steps,
              "losses": dict(zip(run.tasks, mean[:-1])), "loss": mean[-1],
              "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": speed,
              "seconds": seconds, "elapsed": time.perf_counter() - run.meter.run_started,
              "weights": run.weighting.task_weights()}
    run.session.emit(record)  # the driver writes it to TensorBoard and metrics.jsonl (run_log.py)


def _due(run: Run, interval: int) -> bool:
    return run.step == run.total_steps or (interval > 0 and run.step % interval == 0)


def evaluate_and_save(run: Run) -> None:
    """Evaluate and checkpoint when their intervals (or the last step) come."""
    evaluate_now = _due(run, run.cfg.training.eval_interval)
    checkpoint_now = _due(run, run.cfg.training.checkpoint_interval)
    if not (evaluate_now or checkpoint_now):
        return
    paused = time.perf_counter()
    if evaluate_now:
        run.metrics = evaluate(run)
    if checkpoint_now:
        rank0 = run.session.rank == 0
        path = save(run) if rank0 else None
        run.session.report({"step": run.step, **{f"val/{k}": v for k, v in run.metrics.items()}}, path)
        if rank0:
            run.session.emit({"kind": "checkpoint", "step": run.step,
                              "path": str(run.session.persisted(path))})
    run.meter.pause(time.perf_counter() - paused)  # images/s is about training only


def evaluate(run: Run) -> dict:
    """Pooled validation metrics (every rank evaluates its shard)."""
    from .evaluate import evaluate_model, make_eval_loader

    cfg, session = run.cfg, run.session
    if run.eval_loader is None:
        run.eval_loader = make_eval_loader(cfg, session.rank, session.world, cfg.dataset.data_workers)
    started = time.perf_counter()
    metrics, images = evaluate_model(run.model, run.eval_loader, run.profile, cfg.dataset.name,
                                     run.device, session.world,
                                     max_batches=cfg.eval_batches_per_worker(), amp_dtype=run.amp_dtype)
    if session.rank == 0:
        session.emit({"kind": "eval", "step": run.step, "metrics": metrics, "images": images,
                      "seconds": time.perf_counter() - started})
    return metrics


def save(run: Run) -> Path:
    """Write the checkpoint of the current step (rank 0) and return its folder."""
    from .checkpoints import flatten_optimizer, save_checkpoint

    cfg, profile = run.cfg, run.profile
    tensors, opt_info = {}, {}
    for name, optimizer in (("main", run.optimizer), ("arch", run.arch_optimizer)):
        if optimizer is not None:
            flat, info = flatten_optimizer(optimizer.state_dict(), name)
            tensors.update(flat)
            opt_info[name] = info
    tensors.update({f"weighting.{k}": v for k, v in run.weighting.state_dict().items()})
    per_epoch = run.sampler.batches_per_epoch()
    meta = {
        "step": run.step, "metrics": run.metrics, "run_config": cfg.dump(),
        "spec": run.job["spec_name"], "spec_source": run.job["spec_source"],
        "ir_hash": run.model_hash, "graph": run.job.get("graph") or {},
        "profile": profile.model_dump(mode="json"),
        "input_size": list(cfg.input_size()), "optimizer": opt_info,
        "lr_factor": lr_factor(run.step, cfg),
        "data_state": {"seed": cfg.training.seed, "epoch": run.step // per_epoch,
                       "batch_in_epoch": run.step % per_epoch, "world_size": run.session.world,
                       "batch_size_per_worker": cfg.per_worker_batch()},
    }
    target = run.session.checkpoint_target(run.step)
    return save_checkpoint(target, run.model.state_dict(), tensors, meta)
