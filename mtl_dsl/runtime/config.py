"""The run config: what to train on, with which losses, optimiser and schedule, and where to write.

A run config is YAML, read safely under size, nesting and alias-expansion limits
(``yaml_source.py``) and validated by pydantic: unknown keys are errors, and numbers and switches
are strict (``training.batch_size: true`` is an error, not 1). Layers, from lowest to highest
priority: the embedded default (a quick CPU run on the synthetic scenes), a training recipe
(``configs/<name>.yaml``, e.g. the official ATRC recipe; ``recipe: NAME`` or ``--recipe NAME``),
the user's file, then command-line flags (``--set optimizer.lr=0.01``, ``--tasks``, ...). Every
mistake is reported as one ``UsageError`` naming the key by its dotted path where it was written:
the file, line and column of a YAML key, or the flag as typed. This module does not import torch.

"Recipe" is the word for a training configuration (``configs/``); "preset" is a named set of a
spec's model parameters (``model.preset``, ``--preset``).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from ..errors import UsageError, did_you_mean, usage_error
from ..tasks import DATASETS, PROFILES, TaskError, TaskProfile, resolve_tasks
from .sweep_space import TuneSection
from .yaml_source import FileSource, FlagSource, Source, load_yaml, read_yaml_file

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


# ---------------------------------------------------------------------------------------------
# Layers: default < recipe < file < flags


class Overrides(dict):
    """Nested run-config overrides from the command line; ``origins`` maps a dotted key to the
    flag that set it, as typed (errors name the flag)."""

    def __init__(self, data: dict | None = None, origins: dict[str, str] | None = None):
        super().__init__(data or {})
        self.origins: dict[str, str] = dict(origins or {})

    def put(self, dotted: str, value: Any, flag: str) -> None:
        node = self
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise usage_error(flag, f"key '{dotted}' conflicts with another flag")
        node[keys[-1]] = value
        self.origins[dotted] = flag


def parse_set(items: list[str] | None) -> Overrides:
    """``--set optimizer.lr=0.01`` -> {"optimizer": {"lr": 0.01}} (values read as YAML)."""
    out = Overrides()
    for item in items or []:
        flag = f"--set {item}"
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise usage_error(flag, f"expected KEY=VALUE, got '{item}'")
        value = load_yaml(raw, flag) if raw.strip() else None
        out.put(key, value, flag)
    return out


def available_recipes() -> list[str]:
    names: set[str] = set()
    for folder in RECIPE_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def recipe_path(name: str, source: Source | None = None) -> Path:
    for folder in RECIPE_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file() and candidate.parent.resolve() == folder.resolve():
            return candidate
    hint = did_you_mean(name, available_recipes())
    message = (f"unknown recipe '{name}'" + (f", {hint}" if hint else "")
               + f" (recipes: {', '.join(available_recipes())})")
    if source is None:
        raise usage_error(f"--recipe {name}", message)
    raise source.error(("recipe",), message)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Default(Source):
    name = "<default config>"


class _Stored(FileSource):
    """A run config stored in a checkpoint's meta.json (errors name that file)."""

    def __init__(self, name: str):
        super().__init__(name, "")


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                recipe: str | None = None, check_paths: bool = True,
                base: tuple[dict, str] | None = None) -> RunConfig:
    """Build the run config from the embedded default, a recipe, a YAML file and overrides.

    ``base``: (run config, where it is stored) replaces the default and recipe layers (``eval``
    starts from the run config of the checkpoint). Raises ``UsageError`` on any mistake.
    """
    layers: list[tuple[dict, Source]] = []
    if base is not None:
        stored = dict(base[0])
        stored.pop("preset", None)  # checkpoints written before "recipe" named it "preset"
        chosen = stored.pop("recipe", None)
        layers.append((stored, _Stored(base[1])))
        user = _user_layers(path, overrides)
    else:
        layers.append((DEFAULT_CONFIG, _Default()))
        user = _user_layers(path, overrides)
        chosen, where = recipe, None
        for data, source in user:
            if data.get("recipe") is not None and recipe is None:
                chosen, where = data["recipe"], source
        if chosen is not None:
            if not isinstance(chosen, str):
                raise where.error(("recipe",), "key 'recipe': expected a recipe name")
            data, source = read_yaml_file(recipe_path(chosen, where))
            data = dict(data or {})
            data.pop("recipe", None)
            layers.append((data, source))
    layers.extend(user)
    merged: dict = {}
    for data, _ in layers:
        merged = _merge(merged, data)
    merged["recipe"] = chosen
    sources = [s for _, s in layers]
    try:
        config = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(exc, sources, merged) from None
    _check_semantics(config, sources, check_paths)
    return config


def _user_layers(path, overrides) -> list[tuple[dict, Source]]:
    layers: list[tuple[dict, Source]] = []
    if path is not None:
        data, source = read_yaml_file(Path(path))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise usage_error(str(path), "a run config must be a mapping of keys to values")
        layers.append((data, source))
    if overrides:
        origins = getattr(overrides, "origins", {})
        layers.append((dict(overrides), FlagSource(dict(overrides), origins)))
    return layers


# ---------------------------------------------------------------------------------------------
# Errors, named where the key was written


_MISSING = object()


def _lookup_value(data: Any, loc: tuple) -> Any:
    for key in loc:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return _MISSING
    return data


def _lookup_model(loc: tuple):
    model: Any = RunConfig
    for key in loc:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _error_at(sources: list[Source], loc: tuple, message: str, hint: str = "") -> UsageError:
    """The one-line error at the highest layer that wrote ``loc`` (or the top layer)."""
    if hint:
        message = f"{message} ({hint})"
    for source in reversed(sources):
        if source.has(loc):
            return source.error(loc, message)
    return sources[-1].error(loc, message)


def _unknown_key(loc: tuple) -> tuple[str, str]:
    dotted = ".".join(str(p) for p in loc)
    if loc == ("preset",):
        return ("unknown key 'preset'", "a training recipe is 'recipe: NAME' or --recipe NAME; "
                                        "a model preset is 'model.preset' or --preset NAME")
    parent = _lookup_model(loc[:-1])
    if parent is None:
        return f"unknown key '{dotted}'", ""
    valid = list(parent.model_fields)
    hint = did_you_mean(str(loc[-1]), valid)
    section = f"'{'.'.join(str(p) for p in loc[:-1])}'" if len(loc) > 1 else "the top level"
    return f"unknown key '{dotted}'", hint or f"the keys of {section} are {', '.join(valid)}"


def _validation_error(exc: ValidationError, sources: list[Source], data: dict) -> UsageError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    # pydantic names the member of a union it tried (tasks.str); the key is what the user wrote
    loc = tuple(p for p in loc if p not in ("str", "list[str]"))
    dotted = ".".join(str(p) for p in loc)
    hint = ""
    if err["type"] == "extra_forbidden":
        message, hint = _unknown_key(loc)
    elif err["type"] == "missing":
        message = f"missing key '{dotted}'"
    else:
        got = _lookup_value(data, loc)
        message = f"key '{dotted}': {err['msg']}" + (f" (got {got!r})" if got is not _MISSING else "")
    return _error_at(sources, loc, message, hint)


def _check_semantics(config: RunConfig, sources: list[Source], check_paths: bool) -> None:
    _check_tasks(config, sources)
    for task in config.loss.weights:
        if task not in OFFICIAL_LOSS_WEIGHTS:
            hint = did_you_mean(task, OFFICIAL_LOSS_WEIGHTS) or \
                f"the tasks are {', '.join(OFFICIAL_LOSS_WEIGHTS)}"
            raise _error_at(sources, ("loss", "weights", task), f"unknown key 'loss.weights.{task}'", hint)
    total = config.training.total_batch_size
    if total is not None and total % config.run.workers != 0:
        raise _error_at(sources, ("training", "total_batch_size"),
                        f"key 'training.total_batch_size': {total} is not divisible by "
                        f"{config.run.workers} workers")
    if config.schedule.min_lr >= config.learning_rate() and config.schedule.min_lr > 0:
        raise _error_at(sources, ("schedule", "min_lr"),
                        f"key 'schedule.min_lr': {config.schedule.min_lr:g} is not below the "
                        f"learning rate {config.learning_rate():g}")
    if config.dataset.name != "synthetic":
        if config.dataset.root is None:
            raise _error_at(sources, ("dataset",),
                            f"missing key 'dataset.root': dataset '{config.dataset.name}' needs its folder")
        root = Path(config.dataset.root).expanduser()
        # On a cluster the data lives on the nodes, not necessarily where the driver runs: every
        # worker checks the folder before the first step (naming a node that lacks it).
        if check_paths and not root.is_dir() and cluster_address(config) is None:
            raise _error_at(sources, ("dataset", "root"), f"dataset folder not found: {root}")
    _check_storage(config, sources)
    name = config.run.name
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise _error_at(sources, ("run", "name"), f"key 'run.name': '{name}' is not a folder name")


def cluster_address(config: RunConfig) -> Optional[str]:
    """The Ray cluster the run joins: ``run.address``, or ``RAY_ADDRESS`` (set for the driver
    of ``ray job submit``); None for a Ray started in this process."""
    import os

    return config.run.address or os.environ.get("RAY_ADDRESS") or None


def _check_storage(config: RunConfig, sources: list[Source]) -> None:
    """Refuse credentials in the storage URI and an endpoint for a store that is not S3 (the
    filesystem itself is opened when the run starts)."""
    from .storage import refuse_secrets, scheme_of

    storage, endpoint = config.run.storage, config.run.storage_endpoint
    try:
        refuse_secrets(storage, "run.storage")
    except UsageError as exc:
        raise _error_at(sources, ("run", "storage"), exc.message) from None
    if endpoint is not None and scheme_of(storage) not in ("s3", "s3a"):
        raise _error_at(sources, ("run", "storage_endpoint"),
                        f"key 'run.storage_endpoint': an endpoint applies to s3:// storage, and "
                        f"run.storage is {storage!r}")


def _check_tasks(config: RunConfig, sources: list[Source]) -> None:
    tasks = config.tasks
    if tasks is not None and not (tasks.strip() if isinstance(tasks, str) else tasks):
        raise _error_at(sources, ("tasks",), "key 'tasks': the task list is empty",
                        "give a task profile such as nyud, pascal or synthetic, or tasks such as "
                        "semseg,depth; or leave the key out for the dataset's tasks")
    try:
        profile = config.profile()
    except TaskError as exc:
        raise _error_at(sources, ("tasks",), f"key 'tasks': {exc.message}") from None
    available = set(PROFILES[config.dataset.name].task_names)
    extra = [t for t in profile.task_names if t not in available]
    if extra:
        raise _error_at(sources, ("tasks",),
                        f"key 'tasks': dataset '{config.dataset.name}' has no labels for "
                        f"{', '.join(extra)} (it has {', '.join(sorted(available))})")
