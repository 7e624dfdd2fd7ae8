"""Combining per-task losses into one: fixed weights, uncertainty weighting, DWA.

* ``fixed``: total = sum_k w_k L_k with the run config's task weights (the papers' recipes).
* ``uncertainty`` (Kendall, Gal & Cipolla 2018): a learnable s_k = log sigma_k^2 per task,
  total = sum_k c_k exp(-s_k) w_k L_k + s_k / 2 with c_k = 1/2 for regression tasks (depth,
  normals) and 1 for classification tasks. The configured task weights stay as a prior scale
  (set them to 1 for the paper's exact form); s_k starts at 0 and is optimised with the model
  (no weight decay).
* ``dwa`` (Liu, Johns & Davison 2019): lambda_k = K exp(r_k / T) / sum_j exp(r_j / T) with
  r_k = Lbar_k(n-1) / Lbar_k(n-2), Lbar the average loss of an interval of ``dwa_interval``
  iterations (the paper's "epoch"), T = 2; lambda = 1 for the first two intervals. total =
  sum_k lambda_k w_k L_k. The averages are fed with losses that are already averaged over all
  workers, so every rank computes the same weights.

All state lives in parameters/buffers so ``state_dict`` checkpoints it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn

REGRESSION_TASKS = ("depth", "normals")


class LossWeighting(nn.Module, ABC):
    def __init__(self, task_names: list[str], weights: dict[str, float]):
        super().__init__()
        self.task_names = list(task_names)
        self.register_buffer("base_weights", torch.tensor([float(weights[t]) for t in self.task_names]))

    def task_weights(self) -> dict[str, float]:
        """Effective weight per task now (for logging)."""
        return {t: float(w) for t, w in zip(self.task_names, self.base_weights)}

    def observe(self, step: int, losses: torch.Tensor) -> None:
        """Called once per iteration with the (all-worker) mean loss per task, detached."""

    @abstractmethod
    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total of the per-task losses."""


class FixedWeighting(LossWeighting):
    def forward(self, losses):
        return sum(self.base_weights[i] * losses[t] for i, t in enumerate(self.task_names))


class UncertaintyWeighting(LossWeighting):
    def __init__(self, task_names, weights):
        super().__init__(task_names, weights)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))
        self.register_buffer("scale", torch.tensor(
            [0.5 if t in REGRESSION_TASKS else 1.0 for t in self.task_names]))

    def task_weights(self):
        w = self.scale * torch.exp(-self.log_vars.detach()) * self.base_weights
        return {t: float(v) for t, v in zip(self.task_names, w)}

    def forward(self, losses):
        total = 0.0
        for i, t in enumerate(self.task_names):
            s = self.log_vars[i]
            total = total + self.scale[i] * torch.exp(-s) * self.base_weights[i] * losses[t] + 0.5 * s
        return total


class DynamicWeightAverage(LossWeighting):
    def __init__(self, task_names, weights, temperature: float = 2.0, interval: int = 100):
        super().__init__(task_names, weights)
        self.temperature = float(temperature)
        self.interval = int(interval)
        k = len(self.task_names)
        self.register_buffer("running_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("running_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))  # [n-2, n-1]
        self.register_buffer("intervals_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("lambdas", torch.ones(k))

    def task_weights(self):
        return {t: float(l * w) for t, l, w in zip(self.task_names, self.lambdas, self.base_weights)}

    def observe(self, step, losses):
        self.running_sum += losses.detach().to(self.running_sum)
        self.running_count += 1
        if int(self.running_count) >= self.interval:
            mean = self.running_sum / self.running_count
            self.history[0] = self.history[1]
            self.history[1] = mean
            self.intervals_done += 1
            self.running_sum.zero_()
            self.running_count.zero_()
            if int(self.intervals_done) >= 2:
                self.lambdas.copy_(dwa_lambdas(self.history[1], self.history[0], self.temperature))

    def forward(self, losses):
        return sum(self.lambdas[i] * self.base_weights[i] * losses[t] for i, t in enumerate(self.task_names))


def dwa_lambdas(last: torch.Tensor, before: torch.Tensor, temperature: float) -> torch.Tensor:
    ratio = last / before.clamp(min=1e-12)
    return (len(ratio) * torch.softmax(ratio / temperature, dim=0)).float()


def build_weighting(strategy: str, task_names: list[str], weights: dict[str, float],
                    dwa_temperature: float = 2.0, dwa_interval: int = 100) -> LossWeighting:
    if strategy == "fixed":
        return FixedWeighting(task_names, weights)
    if strategy == "uncertainty":
        return UncertaintyWeighting(task_names, weights)
    if strategy == "dwa":
        return DynamicWeightAverage(task_names, weights, dwa_temperature, dwa_interval)
    raise ValueError(f"unknown loss weighting '{strategy}' (fixed, uncertainty, dwa)")
