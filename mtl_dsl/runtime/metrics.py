"""Dataset-pooled evaluation metrics as the official code computes them (github.com/brdav/atrc,
src/data/metrics.py) and the multi-task Delta_m.

Every metric accumulates sums and counts over the whole split and computes the score once at the
end, so the result does not depend on the batch size or on how the split is sharded across
workers: :meth:`MetricSet.state_tensors` exposes those sums (float64 CPU tensors) for an
all-reduce, :meth:`MetricSet.load_state_tensors` puts the reduced values back, and
:meth:`MetricSet.merge` adds another set's sums in place.

Keys and units (``compute()``):

* ``semseg/mIoU``, ``human_parts/mIoU``: % (absent classes count 0, mean over all classes)
* ``depth/rmse``: metres, pixel-pooled, prediction clamped to >= 0
* ``normals/mean``, ``normals/median``: degrees; ``normals/within_11.25|22.5|30``: % of pixels
* ``sal/maxF``: % (ATRC/DeMT/TPANet definition)
* ``edge/odsF``: % (a Python approximation of SEISM, see docs/metrics.md)

Delta_m = mean over the baseline's metrics of (-1)^{lower is better} (M_mt - M_st) / M_st, in %,
against an explicit single-task baseline file (:func:`load_baseline`); there is no default.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import math

import torch
import torch.nn.functional as F

from ..tasks import IGNORE_INDEX

HIGHER, LOWER = "higher", "lower"
METRIC_DIRECTIONS: dict[str, str] = {
    "semseg/mIoU": HIGHER,
    "human_parts/mIoU": HIGHER,
    "sal/maxF": HIGHER,
    "depth/rmse": LOWER,
    "normals/mean": LOWER,
    "normals/median": LOWER,
    "normals/within_11.25": HIGHER,
    "normals/within_22.5": HIGHER,
    "normals/within_30": HIGHER,
    "edge/odsF": HIGHER,
}
METRIC_UNITS = {"depth/rmse": "m", "normals/mean": "deg", "normals/median": "deg"}
# The metric each task contributes to Delta_m in the papers' tables.
PRIMARY_METRICS = {"semseg": "semseg/mIoU", "human_parts": "human_parts/mIoU", "sal": "sal/maxF",
                   "depth": "depth/rmse", "normals": "normals/mean", "edge": "edge/odsF"}
# SEISM's maxDist as a fraction of the image diagonal (ATRC's edge_tolerance).
EDGE_MAX_DIST = {"nyud": 0.011, "pascal": 0.0075, "synthetic": 0.011}
SAL_STEPS, EDGE_STEPS = 20, 100  # thresholds k / steps for k = 1 .. steps - 1
SAL_THRESHOLDS = tuple(round(k / SAL_STEPS, 2) for k in range(1, SAL_STEPS))  # 0.05 .. 0.95
EDGE_THRESHOLDS = tuple(round(k / EDGE_STEPS, 2) for k in range(1, EDGE_STEPS))  # 0.01 .. 0.99
NORMAL_ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
NORMAL_HIST_BINS = 18000  # 0.01 deg bins over [0, 180] for the pooled median


def higher_is_better(key: str) -> bool:
    if key not in METRIC_DIRECTIONS:
        raise KeyError(f"unknown metric '{key}' (known: {', '.join(METRIC_DIRECTIONS)})")
    return METRIC_DIRECTIONS[key] == HIGHER


class TaskMetric(ABC):
    """Sums over a split for one task; ``state`` tensors are float64 on the CPU."""

    task = ""

    def __init__(self):
        self.state: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.state[name] += value.detach().to("cpu", torch.float64)

    def reset(self) -> None:
        for value in self.state.values():
            value.zero_()

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor, meta: list[dict] | None = None) -> None:
        """Add one batch to the pooled state."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metric values from the pooled state."""


class MeanIoU(TaskMetric):
    """ATRC's MeanIoU: per-class intersection and union pooled over the split, ignore 255, IoU of a
    class with an empty union is 0, mean over all classes."""

    def __init__(self, task: str, num_classes: int):
        super().__init__()
        self.task, self.num_classes = task, num_classes
        self.state = {"intersection": torch.zeros(num_classes, dtype=torch.float64),
                      "union": torch.zeros(num_classes, dtype=torch.float64)}

    def update(self, pred, target, meta=None):
        if pred.shape[1] != self.num_classes:
            raise ValueError(f"{self.task}: prediction has {pred.shape[1]} channels, expected {self.num_classes}")
        label = pred.argmax(dim=1)
        valid = target != IGNORE_INDEX
        p, t = label[valid], target[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"{self.task}: ground truth label {int(t.max())} outside 0..{self.num_classes - 1} (and not 255)")
        n = self.num_classes
        inter = torch.bincount(t[p == t], minlength=n)
        union = torch.bincount(p, minlength=n) + torch.bincount(t, minlength=n) - inter
        self._add("intersection", inter)
        self._add("union", union)

    def compute(self):
        union = self.state["union"]
        iou = torch.where(union > 0, self.state["intersection"] / union.clamp(min=1), torch.zeros_like(union))
        return {f"{self.task}/mIoU": 100.0 * float(iou.mean())}


class DepthRMSE(TaskMetric):
    """sqrt(sum of squared errors / valid pixels) over the split; valid = GT != 255."""

    task = "depth"

    def __init__(self):
        super().__init__()
        self.state = {"squared_error": torch.zeros((), dtype=torch.float64),
                      "pixels": torch.zeros((), dtype=torch.float64)}

    def update(self, pred, target, meta=None):
        valid = target != IGNORE_INDEX
        err = (pred.clamp(min=0).double() - target.double())[valid]
        self._add("squared_error", (err * err).sum())
        self._add("pixels", torch.tensor(float(valid.sum())))

    def compute(self):
        n = float(self.state["pixels"])
        return {"depth/rmse": math.sqrt(float(self.state["squared_error"]) / n) if n else float("nan")}


def _channel_norm(v: torch.Tensor) -> torch.Tensor:
    # Much faster than Tensor.norm(dim=1) on NCHW maps on the CPU.
    return (v * v).sum(dim=1).sqrt()


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = _channel_norm(v)[:, None]
    return torch.where(norm > 0, v / norm.clamp(min=1e-12), torch.zeros_like(v))


def angular_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle between L2-normalised vectors (B, 3, H, W) -> (B, H, W) in degrees, computed as
    2 atan2(|p - g|, |p + g|) (accurate near 0 and 180 deg)."""
    p, g = _unit(pred.double()), _unit(target.double())
    return torch.rad2deg(2.0 * torch.atan2(_channel_norm(p - g), _channel_norm(p + g)))


class NormalsError(TaskMetric):
    """Angular error pooled over every valid pixel (GT != 255 in all channels) of the split."""

    task = "normals"

    def __init__(self):
        super().__init__()
        self.state = {"angle_sum": torch.zeros((), dtype=torch.float64),
                      "pixels": torch.zeros((), dtype=torch.float64),
                      "within": torch.zeros(len(NORMAL_ANGLE_THRESHOLDS), dtype=torch.float64),
                      "histogram": torch.zeros(NORMAL_HIST_BINS, dtype=torch.float64)}

    def update(self, pred, target, meta=None):
        valid = (target != IGNORE_INDEX).all(dim=1)
        angle = angular_error_deg(pred, target)[valid]
        self._add("angle_sum", angle.sum())
        self._add("pixels", torch.tensor(float(angle.numel())))
        self._add("within", torch.stack([(angle < t).sum() for t in NORMAL_ANGLE_THRESHOLDS]))
        bins = (angle * (NORMAL_HIST_BINS / 180.0)).long().clamp(0, NORMAL_HIST_BINS - 1)
        self._add("histogram", torch.bincount(bins, minlength=NORMAL_HIST_BINS))

    def compute(self):
        n = float(self.state["pixels"])
        if not n:
            nan = float("nan")
            return {"normals/mean": nan, "normals/median": nan,
                    **{f"normals/within_{t:g}": nan for t in NORMAL_ANGLE_THRESHOLDS}}
        cumulative = torch.cumsum(self.state["histogram"], 0)
        median_bin = int(torch.searchsorted(cumulative, torch.tensor(n / 2.0, dtype=torch.float64)))
        out = {"normals/mean": float(self.state["angle_sum"]) / n,
               # the median to 0.01 deg: the centre of the histogram bin holding the middle pixel
               "normals/median": (median_bin + 0.5) * 180.0 / NORMAL_HIST_BINS}
        for t, count in zip(NORMAL_ANGLE_THRESHOLDS, self.state["within"]):
            out[f"normals/within_{t:g}"] = 100.0 * float(count) / n
        return out


def _f_measure(tp: torch.Tensor, pred_pos: torch.Tensor, actual_pos: torch.Tensor, beta2: float) -> torch.Tensor:
    precision = tp / pred_pos
    recall = tp / actual_pos
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)


class SaliencyMaxF(TaskMetric):
    """ATRC/DeMT/TPANet maxF: softmax probability of class 1 (sigmoid for one channel), 19
    thresholds 0.05..0.95 (``prob >= t``), TP / predicted / actual positives pooled over the split,
    F with beta^2 = 0.3, maximum over the thresholds."""

    task = "sal"
    beta2 = 0.3

    def __init__(self):
        super().__init__()
        n = len(SAL_THRESHOLDS)
        self.state = {"true_positives": torch.zeros(n, dtype=torch.float64),
                      "predicted_positives": torch.zeros(n, dtype=torch.float64),
                      "actual_positives": torch.zeros(n, dtype=torch.float64)}

    def update(self, pred, target, meta=None):
        prob = pred.float().softmax(dim=1)[:, 1] if pred.shape[1] == 2 else pred.float().sigmoid()[:, 0]
        valid = target != IGNORE_INDEX
        p, t = prob[valid], target[valid].double()
        self._add("true_positives", _counts_at_or_above(p, SAL_STEPS, weights=t))
        self._add("predicted_positives", _counts_at_or_above(p, SAL_STEPS))
        self._add("actual_positives", t.sum().expand(len(SAL_THRESHOLDS)))

    def compute(self):
        s = self.state
        f = _f_measure(s["true_positives"], s["predicted_positives"], s["actual_positives"], self.beta2)
        return {"sal/maxF": 100.0 * float(f.max())}


def _disk_offsets(radius: float) -> list[tuple[int, int]]:
    r = int(math.floor(radius))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius * radius]


def disk_max(values: torch.Tensor, radius: float, fill: float = -1.0) -> torch.Tensor:
    """Maximum of a 2-D map over a disk of ``radius`` pixels around each pixel (outside = fill)."""
    r = int(math.floor(radius))
    if r == 0:
        return values.clone()
    h, w = values.shape
    padded = F.pad(values[None, None], (r, r, r, r), value=fill)[0, 0]
    out = torch.full_like(values, fill)
    for dy, dx in _disk_offsets(radius):
        out = torch.maximum(out, padded[r + dy:r + dy + h, r + dx:r + dx + w])
    return out


def _counts_at_or_above(values: torch.Tensor, steps: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """For the thresholds k / steps, k = 1 .. steps - 1: the number (or weight sum) of values >= each.

    Binning replaces a comparison per threshold; 1e-9 absorbs the rounding of values such as 0.3.
    """
    idx = torch.floor(values.double() * steps + 1e-9).long().clamp(0, steps - 1)
    hist = torch.bincount(idx, weights=None if weights is None else weights.double(), minlength=steps)
    return torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])[1:]


class BoundaryOdsF(TaskMetric):
    """Optimal-dataset-scale F-measure of boundaries, pooled over the split (see docs/metrics.md).

    Per image, on the content region (the centre crop of ``meta["size"]``): a predicted pixel
    (sigmoid >= t) is correct if a GT boundary pixel lies within ``max_dist`` x the image diagonal;
    a GT pixel is recalled if a predicted pixel lies within that radius. Counts are summed over the
    split for 99 thresholds 0.01..0.99; odsF is the best F1 over the thresholds.
    """

    task = "edge"

    def __init__(self, max_dist: float):
        super().__init__()
        self.max_dist = max_dist
        n = len(EDGE_THRESHOLDS)
        self.state = {"matched_predictions": torch.zeros(n, dtype=torch.float64),
                      "predictions": torch.zeros(n, dtype=torch.float64),
                      "matched_boundaries": torch.zeros(n, dtype=torch.float64),
                      "boundaries": torch.zeros(n, dtype=torch.float64)}

    def update(self, pred, target, meta=None):
        prob = pred.float().sigmoid()[:, 0]
        for b in range(prob.shape[0]):
            p, g = prob[b], target[b, 0]
            if meta is not None:
                h, w = meta[b]["size"]
                top, left = (p.shape[0] - h) // 2, (p.shape[1] - w) // 2
                p, g = p[top:top + h, left:left + w], g[top:top + h, left:left + w]
            valid = g != IGNORE_INDEX
            boundary = (g == 1) & valid
            radius = self.max_dist * math.hypot(*p.shape)
            p = torch.where(valid, p, torch.full_like(p, -1.0))
            near_boundary = disk_max(boundary.float(), radius, fill=0.0) > 0
            nearby_best = disk_max(p, radius)
            self._add("predictions", _counts_at_or_above(p[valid], EDGE_STEPS))
            self._add("matched_predictions", _counts_at_or_above(p[valid & near_boundary], EDGE_STEPS))
            self._add("matched_boundaries", _counts_at_or_above(nearby_best[boundary], EDGE_STEPS))
            self._add("boundaries", boundary.sum().double().expand(len(EDGE_THRESHOLDS)))

    def compute(self):
        s = self.state
        precision = s["matched_predictions"] / s["predictions"]
        recall = s["matched_boundaries"] / s["boundaries"]
        f = torch.nan_to_num(2 * precision * recall / (precision + recall), nan=0.0)
        return {"edge/odsF": 100.0 * float(f.max())}


class MetricSet:
    """The metrics of a task profile on a dataset; see the module docstring for the keys."""

    def __init__(self, metrics: dict[str, TaskMetric]):
        self.metrics = metrics

    @classmethod
    def for_profile(cls, profile, dataset_name: str = "synthetic") -> "MetricSet":
        if dataset_name not in EDGE_MAX_DIST:
            raise ValueError(f"unknown dataset '{dataset_name}' (known: {', '.join(EDGE_MAX_DIST)})")
        metrics: dict[str, TaskMetric] = {}
        for task in profile.tasks:
            if task.name in ("semseg", "human_parts"):
                metrics[task.name] = MeanIoU(task.name, task.channels)
            elif task.name == "depth":
                metrics[task.name] = DepthRMSE()
            elif task.name == "normals":
                metrics[task.name] = NormalsError()
            elif task.name == "sal":
                metrics[task.name] = SaliencyMaxF()
            elif task.name == "edge":
                metrics[task.name] = BoundaryOdsF(EDGE_MAX_DIST[dataset_name])
        return cls(metrics)

    @torch.no_grad()
    def update(self, outputs: dict, batch: dict) -> None:
        """``outputs[task]["final"]``: (B, C, H, W) at the input size; ``batch``: collated samples."""
        meta = batch.get("meta")
        for task, metric in self.metrics.items():
            if task not in outputs or "final" not in outputs[task]:
                raise KeyError(f"no 'final' output for task '{task}' to evaluate")
            if task not in batch:
                raise KeyError(f"the batch has no ground truth for task '{task}'")
            pred, target = outputs[task]["final"].detach(), batch[task].to(outputs[task]["final"].device)
            if pred.shape[-2:] != target.shape[-2:]:
                raise ValueError(f"{task}: prediction is {tuple(pred.shape[-2:])}, ground truth "
                                 f"{tuple(target.shape[-2:])}; predictions must be at the input size")
            metric.update(pred, target, meta)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update(metric.compute())
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every accumulated sum as ``{"task/name": float64 CPU tensor}``; all-reduce with SUM."""
        return {f"{task}/{name}": value.clone() for task, metric in self.metrics.items()
                for name, value in metric.state.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.state_tensors()
        if set(tensors) != set(expected):
            raise KeyError(f"metric state keys differ: missing {sorted(set(expected) - set(tensors))}, "
                           f"unexpected {sorted(set(tensors) - set(expected))}")
        for key, value in tensors.items():
            task, name = key.split("/", 1)
            self.metrics[task].state[name] = value.detach().to("cpu", torch.float64).reshape(expected[key].shape).clone()

    def merge(self, other: "MetricSet") -> None:
        """Add another set's sums (e.g. from another worker) to this one."""
        theirs = other.state_tensors()
        mine = self.state_tensors()
        if set(theirs) != set(mine):
            raise KeyError("cannot merge metric sets of different tasks")
        self.load_state_tensors({k: mine[k] + theirs[k] for k in mine})
