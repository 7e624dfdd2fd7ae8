"""Per-task losses as the official ATRC/DeMT/TPANet/InvPT code computes them (ATRC:
github.com/brdav/atrc, src/model/builder.py ``get_criterion`` and src/model/criterion.py; InvPT:
github.com/prismformore/Multi-Task-Transformer, InvPT/losses/loss_functions.py).

Every output of a task is supervised: ``final`` (the main prediction) and any other output name
(e.g. InvPT's intermediate predictions) with the task's normal loss, and ``aux`` (ATRC's auxiliary
"label" prediction) with a classification loss over the task's aux labels. A task's loss is the sum
over its outputs; the task weight is applied by the loss weighting (``weighting.py``), so the aux
and intermediate losses are multiplied by the same weight as the final one.

Targets follow the dataset contract: ignore label 255 everywhere (class maps, depth, normals in all
channels, edge padding). Every mean is over valid pixels only; an image (batch) without any valid
pixel contributes 0 rather than NaN (PASCAL images without part annotations are all-255).
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tasks import IGNORE_INDEX

DEPTH_BINS = 40
DEPTH_MIN, DEPTH_MAX = 0.7, 10.0  # ATRC's log-spaced depth bins (src/model/criterion.py, BinningCrossEntropyLoss)
RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """CE over pixels != 255, mean weighted by the class weight of each pixel's label.

    Same value as ``F.cross_entropy(..., ignore_index=255)``, but 0 (with a gradient path) when no
    pixel is valid instead of NaN.
    """
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    if weight is None:
        denom = valid.sum()
    else:
        denom = weight[target.clamp(max=weight.numel() - 1)][valid].sum()
    # Ignored pixels contribute 0 to the sum, so an all-ignored batch gives 0 without a host sync.
    return per_pixel.sum() / denom.clamp(min=1e-12)


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ATRC's saliency loss: two-class CE with class weights [1 - w, w], w = #negatives / #valid."""
    valid = target != IGNORE_INDEX
    n_valid = valid.sum().clamp(min=1)
    w_pos = ((target == 0) & valid).sum().to(logits.dtype) / n_valid.to(logits.dtype)
    weight = torch.stack([1.0 - w_pos, w_pos]).detach()
    return cross_entropy(logits, target, weight)


def depth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 over valid depth pixels (target != 255)."""
    valid = target != IGNORE_INDEX
    return ((pred - target).abs() * valid).sum() / valid.sum().clamp(min=1)


def normals_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the L2-normalised prediction and the GT, summed over channels, / #valid pixels."""
    valid = (target != IGNORE_INDEX).all(dim=1, keepdim=True)
    unit = F.normalize(pred, p=2, dim=1)
    return ((unit - target).abs() * valid).sum() / valid.sum().clamp(min=1)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """-w·y·log σ(x) - (1-w)(1-y)·log(1-σ(x)), mean over non-padding pixels."""
    valid = target != IGNORE_INDEX
    y = torch.where(valid, target, torch.zeros_like(target))
    weight = (pos_weight * y + (1.0 - pos_weight) * (1.0 - y)) * valid
    per_pixel = F.binary_cross_entropy_with_logits(logits, y, weight=weight, reduction="none")
    return per_pixel.sum() / valid.sum().clamp(min=1)


# --- auxiliary labels (ATRC) ---------------------------------------------------------------------


def depth_bins(depth: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] depth -> [B,H,W] long: floor(40·ln(d/0.7)/ln(10/0.7)) clipped to 0..39; 255 kept."""
    d = depth[:, 0]
    valid = d != IGNORE_INDEX
    scaled = torch.log(d.clamp(min=1e-6) / DEPTH_MIN) * (DEPTH_BINS / math.log(DEPTH_MAX / DEPTH_MIN))
    bins = scaled.floor().clamp(0, DEPTH_BINS - 1).long()
    return torch.where(valid, bins, torch.full_like(bins, IGNORE_INDEX))


@lru_cache(maxsize=4)
def load_centroids(name: str) -> np.ndarray:
    path = RESOURCES / f"{name}_centroids.npy"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read normal centroids {path}: {exc}") from None
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"normal centroids {path}: expected shape (K, 3), got {array.shape}")
    return array


def normals_clusters(normals: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] GT normals -> [B,H,W] index of the nearest centroid (Euclidean); 255 where invalid."""
    valid = (normals != IGNORE_INDEX).all(dim=1)
    b, _, h, w = normals.shape
    flat = normals.permute(0, 2, 3, 1).reshape(-1, 3).to(centroids.dtype)
    dist = torch.cdist(flat, centroids)
    labels = dist.argmin(dim=1).view(b, h, w)
    return torch.where(valid, labels, torch.full_like(labels, IGNORE_INDEX))


def edge_labels(edge: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] float 0/1/255 -> [B,H,W] long."""
    return edge[:, 0].round().long()


# --- the criterion --------------------------------------------------------------------------------


def _class_target(target: torch.Tensor) -> torch.Tensor:
    if target.dim() == 4:  # [B,1,H,W] -> [B,H,W]
        target = target[:, 0]
    return target.long()


class MultiTaskCriterion(nn.Module):
    """outputs {task: {name: logits}} and a batch -> {task: unweighted loss summed over outputs}."""

    def __init__(self, task_names: list[str], edge_pos_weight: float, centroids: str = "nyu"):
        super().__init__()
        self.task_names = list(task_names)
        self.edge_pos_weight = float(edge_pos_weight)
        self.register_buffer("centroids", torch.from_numpy(load_centroids(centroids)).float(),
                             persistent=False)

    def final_loss(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task in ("semseg", "human_parts"):
            return cross_entropy(pred, _class_target(target))
        if task == "sal":
            return balanced_cross_entropy(pred, _class_target(target))
        if task == "depth":
            return depth_l1(pred, target)
        if task == "normals":
            return normals_l1(pred, target)
        if task == "edge":
            return weighted_bce(pred, target, self.edge_pos_weight)
        raise KeyError(f"no loss for task '{task}'")

    def aux_loss(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task in ("semseg", "human_parts"):
            return cross_entropy(pred, _class_target(target))
        if task == "sal":
            return balanced_cross_entropy(pred, _class_target(target))
        if task == "depth":
            return cross_entropy(pred, depth_bins(target))
        if task == "normals":
            return cross_entropy(pred, normals_clusters(target, self.centroids))
        if task == "edge":
            w = self.edge_pos_weight
            weight = torch.tensor([1.0 - w, w], device=pred.device, dtype=pred.dtype)
            return cross_entropy(pred, edge_labels(target), weight)
        raise KeyError(f"no auxiliary loss for task '{task}'")

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for task in self.task_names:
            target = batch[task]
            total = None
            for name, pred in outputs[task].items():
                if pred.shape[-2:] != target.shape[-2:]:
                    raise ValueError(f"task '{task}' output '{name}' has size {tuple(pred.shape[-2:])}, "
                                     f"its label {tuple(target.shape[-2:])}")
                pred = pred.float()
                loss = self.aux_loss(task, pred, target) if name == "aux" else self.final_loss(task, pred, target)
                total = loss if total is None else total + loss
            losses[task] = total
        return losses
