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
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from ..errors import UsageError, did_you_mean, usage_error
from ..tasks import PROFILES, TaskError
from .yaml_source import FileSource, FlagSource, Source, load_yaml, read_yaml_file
from .config_schema import (  # noqa: F401 - the schema's names, re-exported
    DEFAULT_CONFIG, OFFICIAL_LOSS_WEIGHTS, RECIPE_DIRS, SYNTHETIC_VAL_IMAGES, Bool, DatasetConfig,
    DatasetName, Float, Int, LossConfig, ModelSection, OptimizerConfig, RunConfig, RunSection,
    ScheduleConfig, Side, Str, TrainingConfig)

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
        try:
            value = load_yaml(raw, flag) if raw.strip() else None
        except UsageError as exc:
            (d,) = exc.diagnostics
            if d.line != 1:
                raise
            # a mistake at a place in the value: shown in the flag as typed, with a caret
            raise usage_error("--set", d.message, hint=d.hint, line=1,
                              column=len(item) - len(raw) + d.column, source_line=item) from None
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
    # pydantic names the member of a union it tried (tasks.str, search.dim.list[any]); the key
    # is what the user wrote
    loc = _user_key(tuple(err["loc"]), data)
    dotted = ".".join(str(p) for p in loc)
    hint = ""
    if err["type"] == "extra_forbidden":
        message, hint = _unknown_key(loc)
    elif err["type"] == "missing":
        message = f"missing key '{dotted}'"
    else:
        got = _lookup_value(data, loc)
        said = err["msg"]
        if err["type"] == "value_error":  # our own validator's words, without pydantic's prefix
            said = str(err.get("ctx", {}).get("error", said.removeprefix("Value error, ")))
        quoted = got is _MISSING or repr(got) in said or (isinstance(got, str) and got in said)
        message = f"key '{dotted}': {said}" + ("" if quoted else f" (got {got!r})")
    return _error_at(sources, loc, message, hint)


def _user_key(loc: tuple, data: Any) -> tuple:
    """``loc`` without the union members pydantic inserts: a part that is not a key of the
    data at its place and names a type (``str``, ``list[any]``, ``function-after[...]``)."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part
                                        or part.startswith("function-")):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def _check_semantics(config: RunConfig, sources: list[Source], check_paths: bool) -> None:
    _check_tasks(config, sources)
    for i, module in enumerate(config.plugins):  # at the entry, before anything is imported
        if not all(part.isidentifier() for part in module.split(".")):
            raise _error_at(sources, ("plugins", i), f"key 'plugins': a plugin is a Python "
                                                     f"module path such as my_package.blocks, "
                                                     f"got {module!r}")
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
    if not storage.strip():  # '' would be the working folder itself, run folders strewn in it
        raise _error_at(sources, ("run", "storage"),
                        "key 'run.storage': empty; give a folder (default: runs) or a URI such "
                        "as s3://bucket/prefix")
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
