"""Optimisers and the learning-rate schedule of a run.

The main optimiser (SGD with momentum, Adam with coupled L2 weight decay as InvPT uses it, or
AdamW) trains every parameter that requires a gradient except the architecture parameters a
module exposes through ``arch_parameters()`` (ATRC's search logits), which get their own Adam, as
in ATRC's search (github.com/brdav/atrc, src/model/search_pl_model.py). The loss weighting's own parameters
(uncertainty weighting) join the main optimiser without weight decay.

The schedule is applied per step: warm-up (linear from ``warmup_ratio`` of the rate), then poly,
cosine or constant decay from the base rate to ``schedule.min_lr``, as the official code's poly
schedule computes it (github.com/brdav/atrc, src/model/pl_model.py: ``PolynomialLR(optimizer,
iterations, gamma=0.9, min_lr=0)``): ``lr = (base - min_lr) * (1 - step / iterations) ** power +
min_lr``.
"""
from __future__ import annotations

import math

from .config import RunConfig


def decay_factor(step: int, cfg: RunConfig) -> float:
    """The decay part of the schedule at ``step``: 1 at the start, 0 at the end (constant: 1)."""
    s = cfg.schedule
    total = cfg.training.iterations
    progress = min(step, total) / total
    if s.name == "poly":
        return (1.0 - progress) ** s.power
    if s.name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def warmup_factor(step: int, cfg: RunConfig) -> float:
    s = cfg.schedule
    if step >= s.warmup_iters:
        return 1.0
    alpha = step / s.warmup_iters
    return s.warmup_ratio * (1.0 - alpha) + alpha


def learning_rate(step: int, cfg: RunConfig, base: float | None = None) -> float:
    """The learning rate of ``step`` for a group whose base rate is ``base`` (default: the run's)."""
    base = cfg.learning_rate() if base is None else base
    floor = min(cfg.schedule.min_lr, base)
    return ((base - floor) * decay_factor(step, cfg) + floor) * warmup_factor(step, cfg)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """``learning_rate(step) / base``: what the checkpoint records."""
    return learning_rate(step, cfg) / cfg.learning_rate()


def apply_schedule(optimizer, step: int, cfg: RunConfig) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg, group["initial_lr"])


def arch_parameters(model) -> list:
    """The parameters modules expose through ``arch_parameters()``, each once."""
    seen, out = set(), []
    for module in model.modules():
        if not callable(getattr(module, "arch_parameters", None)):
            continue
        for p in module.arch_parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                out.append(p)
    return out


def make_optimizers(cfg: RunConfig, model, weighting):
    """(main optimiser, architecture optimiser or None)."""
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


def apply_hyperparameters(optimizer, arch_optimizer, cfg: RunConfig) -> None:
    """Set the run config's hyper-parameters on optimisers restored from a checkpoint, so that a
    resumed run trains with the values it records (``resume.py`` reports the changed ones)."""
    o = cfg.optimizer
    for index, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = cfg.learning_rate()
        group["weight_decay"] = o.weight_decay if index == 0 else 0.0  # 1: the loss weighting's
        if "momentum" in group:
            group["momentum"] = o.momentum
        if "betas" in group:
            group["betas"] = tuple(o.betas)
    if arch_optimizer is not None:
        for group in arch_optimizer.param_groups:
            group["lr"] = o.arch_lr
            group["weight_decay"] = o.arch_weight_decay
