"""The run config's schema: its sections and keys, their types and bounds, and the embedded
default (a quick CPU run on the synthetic scenes). Loading and checking a config, layer on layer
with located errors, is ``config.py``'s job; this module only says what a valid config is. It does
not import torch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict

from ..tasks import DATASETS, PROFILES, TaskProfile, resolve_tasks
from .sweep_space import TuneSection

# The official per-task loss weights, identical for ATRC, DeMT, TPANet and InvPT (ATRC:
# github.com/brdav/atrc, src/model/builder.py, ``get_criterion``).
OFFICIAL_LOSS_WEIGHTS: dict[str, float] = {
    "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "depth": 1.0, "edge": 50.0,
}
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
RECIPE_DIRS = (Path(__file__).resolve().parents[2] / "configs",
               Path(__file__).resolve().parents[1] / "configs")
SYNTHETIC_VAL_IMAGES = 200  # the synthetic val split when validation is not limited by the run

# Strict scalars: YAML's ``true`` is not the integer 1, nor the text "1" a number.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an int is still a valid float; NaN and infinities are not
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Side = Annotated[int, Strict(), Field(ge=8)]  # an input image side, in pixels


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DatasetConfig(_Section):
    name: DatasetName = "synthetic"
    root: Optional[Str] = None  # the dataset folder; required for nyud and pascal
    data_workers: Int = Field(0, ge=0, le=64)  # DataLoader worker processes per training worker
    length: Optional[Int] = Field(None, ge=1)  # synthetic only: images in the train split
    # synthetic only: images in the val split; default: sized to the run (validation_images())
    val_length: Optional[Int] = Field(None, ge=1)
    cache: Bool = False  # synthetic only: keep generated scenes in memory
    # A sample whose file cannot be read: False stops the run naming the file; True skips it
    # (the next readable sample takes its place) and counts it.
    skip_bad_samples: Bool = False


class LossConfig(_Section):
    weights: dict[str, Float] = Field(default_factory=dict)  # per task; missing = official weight
    edge_pos_weight: Optional[Float] = Field(None, gt=0.0, lt=1.0)  # None = the dataset's
    weighting: Literal["fixed", "uncertainty", "dwa"] = "fixed"
    dwa_temperature: Float = Field(2.0, gt=0.0)
    dwa_interval: Int = Field(100, ge=1)  # iterations averaged per DWA "epoch"


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: Float = Field(1e-3, gt=0.0)
    # Per-dataset learning rates of a recipe (ATRC: 0.01 on NYUD, 0.005 on PASCAL); wins over lr.
    lr_per_dataset: dict[DatasetName, Float] = Field(default_factory=dict)
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    betas: tuple[Float, Float] = (0.9, 0.999)  # Adam/AdamW only
    weight_decay: Float = Field(0.0, ge=0.0)  # Adam: coupled L2 (as InvPT); AdamW: decoupled
    arch_lr: Float = Field(5e-4, gt=0.0)  # Adam on architecture parameters (ATRC search)
    arch_weight_decay: Float = Field(0.0, ge=0.0)


class ScheduleConfig(_Section):
    name: Literal["poly", "cosine", "constant"] = "poly"
    power: Float = Field(0.9, gt=0.0)  # poly: (lr - min_lr) * (1 - step/iterations) ** power + min_lr
    warmup_iters: Int = Field(0, ge=0)  # linear warm-up from warmup_ratio * lr
    warmup_ratio: Float = Field(1e-3, ge=0.0, le=1.0)
    min_lr: Float = Field(0.0, ge=0.0)  # the rate the decay ends at (below lr)


class TrainingConfig(_Section):
    iterations: Int = Field(300, ge=1, le=100_000_000)
    batch_size: Int = Field(8, ge=1, le=65_536)  # per worker
    total_batch_size: Optional[Int] = Field(None, ge=1)  # if set: batch_size = total / workers
    input_size: Optional[tuple[Side, Side]] = None  # (H, W); None = the task profile's
    augment: Bool = True
    mixed_precision: Literal["off", "bf16", "fp16"] = "off"  # always off on CPU
    seed: Int = 0
    grad_clip: Optional[Float] = Field(None, gt=0.0)  # max global gradient norm
    eval_interval: Int = Field(100, ge=0)  # 0 = only at the end
    checkpoint_interval: Int = Field(100, ge=0)  # 0 = only at the end
    log_interval: Int = Field(10, ge=1)
    # cap on validation batches per worker and evaluation; default: sized to the run
    eval_batches: Optional[Int] = Field(None, ge=1)
    # time the fusion groups before the first step and keep batched those that pay
    # (mtl_dsl/fusion_tuning.py): auto = on GPUs; always; never (every group batched)
    fusion_tuning: Literal["auto", "always", "never"] = "auto"


class ModelSection(_Section):
    overrides: dict[str, Any] = Field(default_factory=dict)  # model parameters (``--set name=v``)
    preset: Optional[Str] = None  # a model preset of the spec


class RunSection(_Section):
    name: Optional[Str] = None  # default: "<spec>-<tasks>"
    # where run folders live: a local or NFS path, or a URI (s3://bucket/prefix, gs://..., any
    # filesystem pyarrow or fsspec knows); credentials come from the environment, never from here
    storage: Str = "runs"
    # an S3-compatible store's endpoint for s3:// storage (http://host:9000); default: AWS, or
    # the AWS_ENDPOINT_URL of the environment
    storage_endpoint: Optional[Str] = None
    workers: Int = Field(1, ge=1, le=4096)
    gpus_per_worker: Optional[Float] = Field(None, ge=0.0)  # None: 1 if a GPU is visible, else 0
    # torch CPU threads per worker; None = the CPUs Ray reserves for it (locally: cores / workers).
    # On a small machine, one core fewer leaves room for Ray's own processes.
    threads_per_worker: Optional[Int] = Field(None, ge=1, le=1024)
    # CPUs Ray reserves per worker; None = the cluster's CPUs / workers (a sweep shares them out)
    cpus_per_worker: Optional[Int] = Field(None, ge=1, le=1024)
    address: Optional[Str] = None  # an existing Ray cluster; None = local Ray in this process
    keep_checkpoints: Int = Field(2, ge=1)
    max_failures: Int = Field(2, ge=0)  # worker-group restarts Ray Train attempts
    timeout_s: Int = Field(300, ge=10)  # process-group timeout (a dead rank stops the others)
    # torch.distributed's backend; None = nccl with GPUs, else gloo (gloo on GPUs: e.g. two ranks
    # sharing one GPU, which NCCL before 2.30 refuses)
    backend: Optional[Literal["nccl", "gloo"]] = None


class RunConfig(_Section):
    recipe: Optional[Str] = None  # the training recipe this config started from (configs/)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    tasks: Optional[Union[Str, list[Str]]] = None  # profile name or task list; None = the dataset's
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    run: RunSection = Field(default_factory=RunSection)
    tune: TuneSection = Field(default_factory=TuneSection)  # ``mtl-dsl tune`` (sweep_space.py)
    # Python modules that define blocks (docs/blocks.md), imported before the spec is read, on the
    # driver and on every Ray worker (those that are not installed are shipped to the workers).
    plugins: list[Str] = Field(default_factory=list)

    # Derived views ---------------------------------------------------------------------------
    def tasks_text(self) -> str:
        if self.tasks is None:
            return self.dataset.name
        if isinstance(self.tasks, list):
            return ",".join(self.tasks)
        return self.tasks

    def profile(self) -> TaskProfile:
        profile = resolve_tasks(self.tasks_text())
        edge_w = self.edge_pos_weight_default()
        return profile.model_copy(update={"edge_pos_weight": edge_w})

    def edge_pos_weight_default(self) -> float:
        if self.loss.edge_pos_weight is not None:
            return self.loss.edge_pos_weight
        return PROFILES[self.dataset.name].edge_pos_weight

    def input_size(self) -> tuple[int, int]:
        if self.training.input_size is not None:
            return tuple(self.training.input_size)
        return PROFILES[self.dataset.name].input_size

    def learning_rate(self) -> float:
        return self.optimizer.lr_per_dataset.get(self.dataset.name, self.optimizer.lr)

    def loss_weight(self, task: str) -> float:
        return self.loss.weights.get(task, OFFICIAL_LOSS_WEIGHTS[task])

    def per_worker_batch(self) -> int:
        total = self.training.total_batch_size
        if total is None:
            return self.training.batch_size
        return max(1, total // self.run.workers)

    def validation_images(self) -> int:
        """How many validation images an evaluation covers by default: a tenth of the images the
        run trains on, at least one batch (a 3-step smoke run validates one batch; an official
        40k-iteration recipe, the whole split)."""
        total_batch = self.per_worker_batch() * self.run.workers
        return max(total_batch, self.training.iterations * total_batch // 10)

    def synthetic_val_length(self) -> int:
        if self.dataset.val_length is not None:
            return self.dataset.val_length
        return min(SYNTHETIC_VAL_IMAGES, self.validation_images())

    def eval_batches_per_worker(self) -> Optional[int]:
        """The cap on validation batches per worker (None: the whole split)."""
        if self.training.eval_batches is not None:
            return self.training.eval_batches
        if self.dataset.name == "synthetic":
            return None  # the split itself is sized to the run
        return math.ceil(self.validation_images() / (self.per_worker_batch() * self.run.workers))

    def for_spec(self, spec: Any) -> "RunConfig":
        """This config for ``spec``: a run that names no tasks, on the built-in scenes (which
        have every task), takes the task profile the spec's model states (``profile nyud``)."""
        if self.tasks is not None or self.dataset.name != "synthetic" \
                or not isinstance(spec, (str, Path)):
            return self
        from ..api import spec_profile

        declared = spec_profile(spec)
        return self if declared is None else self.model_copy(update={"tasks": declared})

    def model_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``mtl_dsl.api.build_model`` / ``check_spec`` for this run."""
        return {"tasks": self.profile(), "overrides": dict(self.model.overrides) or None,
                "preset": self.model.preset, "input_size": self.input_size(),
                "plugins": list(self.plugins)}

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Embedded default: a run that visibly learns on the synthetic scenes on a laptop CPU in minutes.
DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": {"name": "synthetic"},
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-6},
    "schedule": {"name": "poly", "power": 0.9, "warmup_iters": 20},
    "training": {"iterations": 300, "batch_size": 8, "augment": True,
                 "eval_interval": 100, "checkpoint_interval": 100, "log_interval": 10},
}
