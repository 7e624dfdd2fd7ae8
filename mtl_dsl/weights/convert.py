"""Official checkpoints into compiled specs: ``mtl-dsl convert``, ``eval``/``predict --weights``
and ``train --init``.

Every path goes through one plan (``plan.make_plan``) built from the spec's ``weights`` map and
its blocks' official layouts, so the three commands accept and refuse the same files for the same
reasons. A refusal is one ``SpecError`` (exit 2) naming the most telling problem first; nothing
is written before the plan is complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import Diagnostic, SpecError, refuse_unwritable, simple_error
from .files import OfficialWeights, file_sha256, read_weights
from .plan import Plan, make_plan, select
from .report import correspondence, node_status, render
from .tensors import materialize

DEFAULT_MAP = "official"
INIT_SEED = 0  # the seed of the initialisation a partial conversion keeps


@dataclass
class Loaded:
    """The outcome of applying an official file to a model."""

    plan: Plan
    weights: OfficialWeights
    state: dict[str, torch.Tensor]  # the model tensors that got values (model names)
    report: str


def model_layouts(model: Any) -> dict[str, tuple]:
    """Each node's official layout, as its block declares it for this call."""
    from ..blocks import REGISTRY

    out = {}
    for node in model.ir.nodes:
        block = REGISTRY[node.block]
        out[node.name] = tuple(block.official_layout(model.checked.calls[node.name]))
    return out


def plan_for(model: Any, weights: OfficialWeights, map_name: str = DEFAULT_MAP,
             part: str | None = None) -> Plan:
    ir = model.ir
    maps = ir.weight_maps
    if map_name not in maps:
        known = ", ".join(f"'{m}'" for m in maps) or "none"
        raise simple_error(ir.file, f"model '{ir.name}' has no weights map '{map_name}' (its "
                                    f"maps: {known})",
                           hint="a spec says how official checkpoints name its tensors with "
                                "`weights NAME { ... }` (docs/language.md)")
    entries = select(maps[map_name], part)
    if part is not None and not entries:
        parts = sorted({v for e in maps[map_name] for v in e.via})
        raise simple_error("--init", f"no entry of the weights map '{map_name}' of '{ir.name}' "
                                     f"comes from '{part}'",
                           hint=f"parts it imports: {', '.join(parts)}" if parts else
                           "this model imports no part with a weights map")
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return make_plan(map_name, entries, weights.shapes(), model_shapes, model_layouts(model),
                     scoped=part is not None)


def refuse(plan: Plan, weights: OfficialWeights, model: Any, allow_partial: bool) -> None:
    """One error naming what does not fit, most telling first; nothing if the plan is usable."""
    problems = plan.problems(allow_partial)
    if not problems:
        return
    hint = _task_hint(weights, [t.name for t in model.ir.tasks])
    if hint:
        problems.insert(0, hint)
    raise SpecError(Diagnostic(  # line 0: a weights file has no line to point at
        str(weights.path), 0, 0, f"cannot load {weights.path.name} into {_label(model)}: "
                                 f"{problems[0]}",
        notes=tuple(problems[1:6]) + ((f"... and {len(problems) - 6} more problems",)
                                      if len(problems) > 6 else ())))


def _label(model: Any) -> str:
    return f"'{model.ir.name}' ({model.ir.file})"


def _task_hint(weights: OfficialWeights, tasks: list[str]) -> str:
    """When the file's per-task tensors name other tasks than the model's."""
    from ..tasks import KNOWN_TASKS

    parts = {part for key in weights.tensors for part in key.split(".")}
    found = [t for t in KNOWN_TASKS if t in parts]
    if not found or set(found) == set(tasks):
        return ""
    return (f"the checkpoint has per-task tensors for {len(found)} tasks ({', '.join(found)}), "
            f"the model was compiled for {len(tasks)} ({', '.join(tasks)}): give --tasks to match")


def apply_file(model: Any, path: str | Path, map_name: str = DEFAULT_MAP, part: str | None = None,
               allow_partial: bool = False) -> Loaded:
    """Load an official file into ``model`` (its other tensors keep their values)."""
    plan, weights, state, report = _planned_state(model, path, map_name, part, allow_partial)
    _, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # the plan only names the model's tensors
    return Loaded(plan, weights, state, report)


def _planned_state(model: Any, path: Any, map_name: str, part: str | None,
                   allow_partial: bool) -> tuple[Any, Any, dict, str]:
    """Read an official file, plan it onto ``model`` by name (refusing what the plan cannot
    place), and return (plan, weights, the model's tensors from it, the report)."""
    weights = read_weights(path)
    plan = plan_for(model, weights, map_name, part)
    refuse(plan, weights, model, allow_partial)
    reference = model.state_dict()
    state = materialize(plan, weights.tensors, reference)
    status = node_status(plan, [n.name for n in model.ir.nodes], list(reference))
    return plan, weights, state, render(plan, weights, _label(model), status, part)


def convert(spec: str, file: str | Path, out: Any, **kwargs: Any) -> tuple[Any, str]:
    """Write a checkpoint folder (``model.safetensors`` + ``meta.json``) of the compiled spec
    from an official file; returns (folder, report). ``out`` is a path, or a storage URI or
    ``Location`` (written in a temporary folder, then copied there)."""
    import shutil
    import tempfile

    from ..runtime.storage import Location, is_remote, open_location

    if not isinstance(out, Location) and not is_remote(out):
        return _convert(spec, file, Path(out), **kwargs)
    target = out if isinstance(out, Location) else open_location(str(out), where=f"-o {out}")
    if target.local:
        return _convert(spec, file, target.local_path, **kwargs)
    if target.exists():
        raise simple_error(str(target), f"output folder exists: {target}",
                           hint="choose another -o or remove it first")
    staging = Path(tempfile.mkdtemp(prefix="mtl-dsl-convert-"))
    try:
        written, report = _convert(spec, file, staging / (target.name or "converted"), **kwargs)
        target.upload(written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, report


def _convert(spec: str, file: str | Path, out: Path, *, tasks: str | None = None,
             input_size: tuple[int, int] | None = None, preset: str | None = None,
             overrides: dict[str, Any] | None = None, model_name: str | None = None,
             map_name: str = DEFAULT_MAP, allow_partial: bool = False) -> tuple[Path, str]:
    from ..api import compile_model, resolve_spec_path
    from ..runtime.checkpoints import ir_hash, save_checkpoint

    _check_new_folder(out)
    kwargs = dict(tasks=tasks, overrides=overrides or None, preset=preset, input_size=input_size,
                  model=model_name)
    weights = read_weights(file)
    torch.manual_seed(INIT_SEED)
    if allow_partial:  # the tensors the file does not give keep a real initialisation
        model = compile_model(spec, **kwargs)
    else:  # every value comes from the file: the model's names and shapes are enough
        with torch.device("meta"):
            model = compile_model(spec, **kwargs)
    plan = plan_for(model, weights, map_name)
    spec_label = _label(model)
    refuse(plan, weights, model, allow_partial)
    reference = model.state_dict()
    converted = materialize(plan, weights.tensors, reference)
    state = {k: converted[k] if k in converted else v for k, v in reference.items()}
    status = node_status(plan, [n.name for n in model.ir.nodes], list(reference))
    report = render(plan, weights, spec_label, status)
    path, _ = resolve_spec_path(spec)
    meta = {
        "kind": "converted",
        "step": 0,
        "spec": str(spec),
        "spec_file": str(path),
        "spec_source": path.read_text(encoding="utf-8"),
        "spec_sha256": file_sha256(path),
        "model": model.ir.name,
        "graph_hash": model.ir.graph_hash(),
        "ir_hash": ir_hash(model.ir),
        "source": {"file": str(Path(file)), "sha256": weights.sha256, "format": weights.format,
                   "wrapper": weights.wrapper, "prefix_removed": weights.stripped,
                   "tensors": len(weights.tensors), "set_aside": weights.set_aside},
        "correspondence": correspondence(plan),
        "init_seed": INIT_SEED if plan.missing else None,
        "profile": model.profile.model_dump(mode="json"),
        "input_size": list(model.input_size),
        "run_config": _run_config(tasks or model.ir.profile, tuple(model.input_size), preset,
                                  overrides),
    }
    try:
        save_checkpoint(out, state, {}, meta)
    except OSError as e:  # a full disk is CheckpointWriteError; this is anything else
        raise simple_error(str(out), f"cannot write {out}: {e.strerror or e}") from None
    return out, report


def _check_new_folder(out: Path) -> None:
    """Refuse, before anything is read or compiled, an -o that exists or cannot be created (a
    path under a file, a place that cannot be written): one error naming it, no traceback."""
    if out.exists():
        kind = "folder" if out.is_dir() else "path (a file)"
        raise simple_error(str(out), f"output {kind} exists: {out}",
                           hint="choose another -o or remove it first")
    refuse_unwritable(out, str(out))


def _run_config(tasks: str, input_size: tuple[int, int], preset: str | None,
                overrides: dict[str, Any] | None) -> dict:
    """The run config ``eval``/``predict``/``train`` rebuild the model from (the default run
    otherwise: the synthetic scenes unless ``--set dataset...`` says another)."""
    from ..runtime.config import load_config

    flat: dict[str, Any] = {"tasks": tasks, "training": {"input_size": list(input_size)}}
    model: dict[str, Any] = {}
    if preset is not None:
        model["preset"] = preset
    if overrides:
        model["overrides"] = dict(overrides)
    if model:
        flat["model"] = model
    return load_config(None, overrides=flat, check_paths=False).dump()


# --- eval / predict --weights, train --init -----------------------------------------------------


def load_official_model(spec: Any, path: str | Path, config: Any, map_name: str = DEFAULT_MAP,
                        allow_partial: bool = False) -> tuple[Any, Loaded]:
    """The spec compiled for the run config, with an official file's weights, in eval mode."""
    from ..api import build_model

    torch.manual_seed(INIT_SEED)
    model = build_model(spec, **config.model_arguments())
    loaded = apply_file(model, path, map_name, allow_partial=allow_partial)
    model.eval()
    return model, loaded


def parse_init(text: str) -> tuple[str | None, str]:
    """``--init FILE`` or ``--init PART=FILE`` (PART: a spec the model imports blocks from)."""
    part, sep, file = text.partition("=")
    if sep and part.isidentifier() and not Path(text).exists():
        return part, file
    return None, text


@dataclass
class Init:
    """What ``--init`` gives, checked against the model: a checkpoint folder's file, or the
    tensors of an official file under the model's names (written next to the run by ``write``)."""

    report: str
    file: Any = None  # a local Path, or a storage Location
    state: dict[str, torch.Tensor] | None = None
    source: str = ""

    def write(self, target: Any) -> Any:
        """The file the workers load (``target`` for an official file's tensors: a local path,
        or a ``storage.Location`` in a remote run folder, which every node reads)."""
        from safetensors.torch import save

        from ..runtime.storage import Location

        if self.file is not None:
            return self.file
        assert self.state is not None
        data = save({k: v.contiguous() for k, v in self.state.items()}, metadata={"source": self.source})
        if isinstance(target, Location) and not target.local:
            target.write_bytes(data)
            return target
        path = target.local_path if isinstance(target, Location) else Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def prepare_init(spec: Any, config: Any, text: str, map_name: str = DEFAULT_MAP,
                 allow_partial: bool = False) -> Init:
    """Check ``--init [PART=]FILE`` against the model before any worker starts.

    FILE is an official checkpoint (read through the spec's weights map; PART: only the entries
    of the blocks the spec imports from PART) or a checkpoint folder of this spec (``mtl-dsl
    convert`` output or a training run's), which must match the model tensor for tensor.
    """
    from ..api import build_model
    from ..runtime.checkpoints import check_matches, resolve_checkpoint
    from ..runtime.storage import is_remote, open_location

    part, file = parse_init(text)
    with torch.device("meta"):
        model = build_model(spec, **config.model_arguments())
    remote = open_location(file, config.run.storage_endpoint, where=f"--init {file}") \
        if is_remote(file) else None
    if (remote.is_dir() or not remote.exists()) if remote is not None else Path(file).is_dir():
        if part is not None:
            raise simple_error("--init", f"--init {part}=DIR: a checkpoint folder initialises the "
                                         f"whole model; give an official file for a part")
        folder = resolve_checkpoint(remote if remote is not None else file)
        check_matches(model, folder)
        model_file = folder.child("model.safetensors") if remote is not None else folder / "model.safetensors"
        return Init(f"initialising from the checkpoint {folder}", file=model_file)
    if remote is not None:  # an official file in storage: read from a temporary copy
        with remote.fetched() as local:
            return _init_from_official(model, local, file, map_name, allow_partial, part)
    return _init_from_official(model, file, file, map_name, allow_partial, part)


def _init_from_official(model: Any, path: Any, file: str, map_name: str, allow_partial: bool,
                        part: str | None) -> Init:
    _, weights, state, report = _planned_state(model, path, map_name, part, allow_partial)
    return Init(report, state=state,
                source=f"{file} (sha256 {weights.sha256})")


def load_init(model: Any, path: Any) -> int:
    """Load the tensors ``prepare_init`` wrote (every one must be the model's); the others keep
    their initialisation. Returns how many were loaded. ``path``: a local file or a
    ``storage.Location`` (read from storage by each worker)."""
    from safetensors.torch import load, load_file

    from ..runtime.storage import Location

    if isinstance(path, Location) and not path.local:
        state = load(path.read_bytes())
    else:
        state = load_file(str(path.local_path if isinstance(path, Location) else path))
    reference = model.state_dict()
    wrong = [k for k, v in state.items() if k not in reference or v.shape != reference[k].shape]
    if wrong:
        raise simple_error(str(path), f"--init: {len(wrong)} tensors do not fit the model: "
                                      f"{', '.join(wrong[:6])}")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=False)
    return len(state)
