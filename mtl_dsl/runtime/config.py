"""The run config: what to train on, with which losses, optimiser and schedule, and where to write.

A run config is YAML, read with ``yaml.safe_load`` and validated by pydantic (unknown keys are
errors). Layers, from lowest to highest priority: the embedded default (a quick CPU run on the
synthetic scenes), a named preset (``configs/<name>.yaml``, e.g. the official ATRC recipe), the
user's file, then command-line overrides (``--set optimizer.lr=0.01``). Every mistake is reported
as one line naming the key by its dotted path (and its line in the file when it has one) before
any worker starts. This module does not import torch.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import SpecError, did_you_mean, simple_error
from ..tasks import DATASETS, PROFILES, TaskError, TaskProfile, resolve_tasks

# The official per-task loss weights (models.md §2.3; identical for ATRC/DeMT/TPANet/InvPT).
OFFICIAL_LOSS_WEIGHTS: dict[str, float] = {
    "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "depth": 1.0, "edge": 50.0,
}
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
PRESET_DIRS = (Path(__file__).resolve().parents[2] / "configs",
               Path(__file__).resolve().parents[1] / "configs")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Section):
    name: DatasetName = "synthetic"
    root: Optional[str] = None  # the dataset folder; required for nyud and pascal
    data_workers: int = Field(0, ge=0, le=64)  # DataLoader worker processes per training worker
    length: Optional[int] = Field(None, ge=1)  # synthetic only: images in the train split
    val_length: Optional[int] = Field(None, ge=1)  # synthetic only: images in the val split
    cache: bool = False  # synthetic only: keep generated scenes in memory


class LossConfig(_Section):
    weights: dict[str, float] = Field(default_factory=dict)  # per task; missing = official weight
    edge_pos_weight: Optional[float] = Field(None, gt=0.0, lt=1.0)  # None = the dataset's
    weighting: Literal["fixed", "uncertainty", "dwa"] = "fixed"
    dwa_temperature: float = Field(2.0, gt=0.0)
    dwa_interval: int = Field(100, ge=1)  # iterations averaged per DWA "epoch"


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    # Per-dataset learning rates of a recipe (ATRC: 0.01 on NYUD, 0.005 on PASCAL); wins over lr.
    lr_per_dataset: dict[DatasetName, float] = Field(default_factory=dict)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW only
    weight_decay: float = Field(0.0, ge=0.0)  # Adam: coupled L2 (as InvPT); AdamW: decoupled
    arch_lr: float = Field(5e-4, gt=0.0)  # Adam on architecture parameters (ATRC search)
    arch_weight_decay: float = Field(0.0, ge=0.0)


class ScheduleConfig(_Section):
    name: Literal["poly", "cosine", "constant"] = "poly"
    power: float = Field(0.9, gt=0.0)  # poly: lr * (1 - step/iterations) ** power
    warmup_iters: int = Field(0, ge=0)  # linear warm-up from warmup_ratio * lr
    warmup_ratio: float = Field(1e-3, ge=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0)


class TrainingConfig(_Section):
    iterations: int = Field(300, ge=1, le=100_000_000)
    batch_size: int = Field(8, ge=1, le=65_536)  # per worker
    total_batch_size: Optional[int] = Field(None, ge=1)  # if set: batch_size = total / workers
    input_size: Optional[tuple[int, int]] = None  # (H, W); None = the task profile's
    augment: bool = True
    mixed_precision: Literal["off", "bf16", "fp16"] = "off"  # always off on CPU
    seed: int = 0
    grad_clip: Optional[float] = Field(None, gt=0.0)  # max global gradient norm
    eval_interval: int = Field(100, ge=0)  # 0 = only at the end
    checkpoint_interval: int = Field(100, ge=0)  # 0 = only at the end
    log_interval: int = Field(10, ge=1)
    eval_batches: Optional[int] = Field(None, ge=1)  # cap on validation batches per evaluation

    @model_validator(mode="after")
    def _positive_size(self):
        if self.input_size is not None and min(self.input_size) < 8:
            raise ValueError("input_size must be at least 8x8")
        return self


class ModelSection(_Section):
    overrides: dict[str, Any] = Field(default_factory=dict)  # model parameters (``--set name=v``)
    preset: Optional[str] = None  # a model preset of the spec


class RunSection(_Section):
    name: Optional[str] = None  # default: "<spec>-<tasks>"
    storage: str = "runs"
    workers: int = Field(1, ge=1, le=4096)
    gpus_per_worker: Optional[float] = Field(None, ge=0.0)  # None: 1 if a GPU is visible, else 0
    # torch CPU threads per worker; None = the CPUs Ray reserves for it (locally: cores / workers).
    # On a small machine, one core fewer leaves room for Ray's own processes.
    threads_per_worker: Optional[int] = Field(None, ge=1, le=1024)
    address: Optional[str] = None  # an existing Ray cluster; None = local Ray in this process
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)  # worker-group restarts Ray Train attempts
    timeout_s: int = Field(300, ge=10)  # process-group timeout (a dead rank stops the others)


class RunConfig(_Section):
    preset: Optional[str] = None
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    tasks: Optional[Union[str, list[str]]] = None  # profile name or task list; None = the dataset's
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    run: RunSection = Field(default_factory=RunSection)

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

    def model_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``mtl_dsl.api.build_model`` / ``check_spec`` for this run."""
        return {"tasks": self.profile(), "overrides": dict(self.model.overrides) or None,
                "preset": self.model.preset, "input_size": self.input_size()}

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
# Loading, merging and reporting errors with a line number


def available_presets() -> list[str]:
    names: set[str] = set()
    for folder in PRESET_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def preset_path(name: str) -> Path:
    for folder in PRESET_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    hint = did_you_mean(name, available_presets())
    raise simple_error("preset", f"unknown preset '{name}'" + (f", {hint}" if hint else "")
                       + f" (presets: {', '.join(available_presets())})")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Source:
    """A YAML text with its file name, to find the line of a dotted key."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.text = text

    def line_of(self, path: tuple) -> tuple[int, int]:
        """(line, column) of the deepest key of ``path`` present in the text (1-based)."""
        if self.file == "--set":
            return 1, 1
        try:
            node = yaml.compose(self.text)
        except yaml.YAMLError:
            return 1, 1
        line, column = 1, 1
        for key in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == str(key):
                        line, column = k.start_mark.line + 1, k.start_mark.column + 1
                        node = v
                        break
                else:
                    break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line, column = node.start_mark.line + 1, node.start_mark.column + 1
            else:
                break
        return line, column


def _read_yaml(path: Path) -> tuple[dict, _Source]:
    name = str(path)
    if not path.is_file():
        raise simple_error(name, f"config file not found: {name}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise simple_error(name, f"cannot read config file {name}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise simple_error(name, f"invalid YAML: {problem}", line=line) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise simple_error(name, "a run config must be a mapping of keys to values")
    return data, _Source(name, text)


def _validation_error(exc: ValidationError, sources: list[_Source], data: dict) -> SpecError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _lookup_model(loc[:-1])
        hint = did_you_mean(str(loc[-1]), parent.model_fields) if parent is not None else ""
        message = f"unknown key '{dotted}'" + (f" ({hint})" if hint else "")
    elif kind == "missing":
        message = f"missing key '{dotted}'"
    else:
        got = _lookup_value(data, loc)
        message = f"key '{dotted}': {err['msg']}" + (f" (got {got!r})" if got is not _MISSING else "")
    # The layer that set the key names the file; the last (highest) layer that has it wins.
    for source in reversed(sources):
        if source.text and _has_path(source, loc):
            line, column = source.line_of(loc)
            return simple_error(source.file, message, line=line, column=column)
    return simple_error(sources[-1].file if sources else "<config>", message)


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


def _has_path(source: _Source, loc: tuple) -> bool:
    try:
        data = yaml.safe_load(source.text)
    except yaml.YAMLError:
        return False
    return _lookup_value(data, loc) is not _MISSING


def parse_set(items: list[str] | None) -> dict:
    """``--set optimizer.lr=0.01`` -> {"optimizer": {"lr": 0.01}} (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise simple_error("--set", f"expected KEY=VALUE, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise simple_error("--set", f"key '{key}' conflicts with another --set")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                preset: str | None = None, check_paths: bool = True) -> RunConfig:
    """Build the run config from the embedded default, a preset, a YAML file and overrides.

    Raises ``SpecError`` (one line naming the key or path) on any mistake.
    """
    layers: list[tuple[dict, _Source]] = [(DEFAULT_CONFIG, _Source("<default config>", ""))]
    user: list[tuple[dict, _Source]] = []
    if path is not None:
        user.append(_read_yaml(Path(path)))
    if overrides:
        user.append((overrides, _Source("--set", yaml.safe_dump(overrides))))
    chosen = preset
    for data, _ in user:
        if data.get("preset"):
            chosen = data["preset"] if preset is None else preset
    if chosen is not None:
        if not isinstance(chosen, str):
            raise simple_error(user[0][1].file if user else "--recipe", "key 'preset': expected a recipe name")
        data, source = _read_yaml(preset_path(chosen))
        data.pop("preset", None)
        layers.append((data, source))
    layers.extend(user)
    merged: dict = {}
    for data, _ in layers:
        merged = _merge(merged, data)
    if chosen is not None:
        merged["preset"] = chosen
    sources = [s for _, s in layers]
    try:
        config = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(exc, sources, merged) from None
    _check_semantics(config, sources, check_paths)
    return config


def _error_at(sources: list[_Source], loc: tuple, message: str) -> SpecError:
    for source in reversed(sources):
        if source.text and _has_path(source, loc):
            line, column = source.line_of(loc)
            return simple_error(source.file, message, line=line, column=column)
    return simple_error(sources[-1].file, message)


def _check_semantics(config: RunConfig, sources: list[_Source], check_paths: bool) -> None:
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
    for task in config.loss.weights:
        if task not in OFFICIAL_LOSS_WEIGHTS:
            hint = did_you_mean(task, OFFICIAL_LOSS_WEIGHTS)
            raise _error_at(sources, ("loss", "weights", task),
                            f"unknown key 'loss.weights.{task}'" + (f" ({hint})" if hint else ""))
    total = config.training.total_batch_size
    if total is not None and total % config.run.workers != 0:
        raise _error_at(sources, ("training", "total_batch_size"),
                        f"key 'training.total_batch_size': {total} is not divisible by "
                        f"{config.run.workers} workers")
    if config.dataset.name != "synthetic":
        if config.dataset.root is None:
            raise _error_at(sources, ("dataset",),
                            f"missing key 'dataset.root': dataset '{config.dataset.name}' needs its folder")
        root = Path(config.dataset.root).expanduser()
        if check_paths and not root.is_dir():
            raise _error_at(sources, ("dataset", "root"), f"dataset folder not found: {root}")
    if config.run.name is not None and (not config.run.name or "/" in config.run.name
                                        or config.run.name.startswith(".")):
        raise _error_at(sources, ("run", "name"), f"key 'run.name': '{config.run.name}' is not a folder name")
