"""The programmatic entry points: spec -> IR -> checked graph -> compiled model.

``load_ir`` and ``check_spec`` never import torch; ``compile_model`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .checker import CheckedGraph, check_ir
from .errors import Diagnostic, Diagnostics, SpecError, did_you_mean
from .frontend import Lowerer, builtin_spec_dirs, iter_builtin_specs, parse_override
from .ir import ModelIR
from .tasks import TaskError, TaskProfile, resolve_tasks

if TYPE_CHECKING:  # pragma: no cover
    from .compiler import CompiledModel

__all__ = ["DocumentCheck", "build_model", "check_document", "check_spec", "compile_ir",
           "compile_model", "load_ir", "parse_override", "resolve_profile", "resolve_spec_path",
           "spec_profile"]


def resolve_spec_path(spec: str | Path) -> tuple[Path, str]:
    """A path to a .mtl file, or the name of a built-in spec (``baseline_mt``)."""
    p = Path(spec)
    if p.is_file():
        target = p.resolve()
        if p.is_symlink() and p.suffix == ".mtl" and target.suffix != ".mtl":
            raise SpecError(Diagnostic(str(spec), 1, 1, f"{spec} is a link to {target}, which is "
                                                        f"not a .mtl spec file"))
        return p, str(spec)
    text = str(spec)
    if "/" not in text and "\\" not in text:
        name = text[:-4] if text.endswith(".mtl") else text
        for d in builtin_spec_dirs():
            candidate = d / f"{name}.mtl"
            if candidate.is_file():
                return candidate, f"{name}.mtl"
        builtin = [q.stem for q in iter_builtin_specs()]
        if not text.endswith(".mtl"):
            raise SpecError(Diagnostic(text, 1, 1, f"no spec file or built-in spec named "
                                                   f"'{text}'",
                                       did_you_mean(text, builtin) or
                                       f"built-in specs: {', '.join(builtin)}"))
    if p.exists() and not p.is_file():
        raise SpecError(Diagnostic(text, 1, 1, f"{text} is not a file"))
    raise SpecError(Diagnostic(text, 1, 1, f"spec file not found: {text}"))


def resolve_profile(tasks: str | TaskProfile | None) -> TaskProfile:
    if isinstance(tasks, TaskProfile):
        return tasks
    try:
        return resolve_tasks(tasks)
    except TaskError as e:
        raise SpecError(Diagnostic("--tasks", 1, 1, e.message, source_line=tasks or "")) from None


def spec_profile(spec: str | Path, model: str | None = None) -> str | None:
    """The task profile a spec's model states it is made for (``profile nyud``: "nyud"), or None.
    Reads the spec's own file only (a model's profile is written in its body)."""
    from .frontend import declared_profiles, parse_file

    path, display = resolve_spec_path(spec)
    models = parse_file(path, display).models
    chosen = [m for m in models if model is None or m.name == model][:1]
    statements = declared_profiles(chosen[0]) if chosen else []
    return statements[0].name if statements else None


def load_ir(spec: str | Path, tasks: str | TaskProfile | None = None,
            overrides: dict[str, Any] | None = None, preset: str | None = None,
            input_size: tuple[int, int] | None = None, model: str | None = None,
            plugins: Sequence[str] = (), sources: dict[str, str] | None = None) -> ModelIR:
    """The typed IR of a spec. ``plugins``: Python modules that define blocks, imported first
    (installed packages' ``mtl_dsl.blocks`` entry points load by themselves); ``sources``: texts
    read in place of files (resolved path -> text: an editor's unsaved documents)."""
    ir, _ = _lower(spec, tasks, overrides, preset, input_size, model, plugins, sources=sources)
    return ir


# ``--set fuse=false``: a compile option, not a parameter of the spec (see ``compile_model``).
FUSE_OPTION = "fuse"


def fusion_option(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """``overrides`` without the ``fuse`` option, and whether fusion is on (default: on)."""
    rest = dict(overrides or {})
    fuse = rest.pop(FUSE_OPTION, True)
    if not isinstance(fuse, bool):
        raise SpecError(Diagnostic("--set", 1, len(FUSE_OPTION) + 2,
                                   f"{FUSE_OPTION} takes true or false, got {fuse!r}",
                                   source_line=f"{FUSE_OPTION}={fuse}"))
    return rest, fuse


def _lower(spec, tasks, overrides, preset, input_size, model, plugins: Sequence[str] = (),
           sources=None, parsed=None, lowerers=None) -> tuple[ModelIR, Diagnostics]:
    """The IR, and the diagnostics sink (with the sources) the checker goes on reporting into.
    ``sources``: texts to read in place of files (resolved path -> text: an editor's unsaved
    documents); ``parsed``: syntax trees kept between compilations (``Loader``); ``lowerers``:
    a list the lowerer is appended to (``check_document`` reads its files)."""
    from .plugins import load_installed, load_plugins

    overrides, _ = fusion_option(overrides)
    load_installed()  # installed packages' blocks (entry-point group mtl_dsl.blocks), once
    load_plugins(plugins, origin="plugins")
    path, display = resolve_spec_path(spec)
    profile = resolve_profile(tasks) if tasks is not None else None  # None: the model's own
    if input_size is not None:
        h, w = input_size
        if not (isinstance(h, int) and isinstance(w, int) and 8 <= h <= 8192 and 8 <= w <= 8192):
            raise SpecError(Diagnostic("--input", 1, 1, f"input size {h}x{w} is out of range "
                                                        f"(8 to 8192 per side)"))
    lowerer = Lowerer(profile, input_size, sources=sources, parsed=parsed)
    if lowerers is not None:
        lowerers.append(lowerer)
    ir = lowerer.lower(path, display, model, overrides, preset)
    return ir, lowerer.sink


def check_spec(spec: str | Path, tasks: str | TaskProfile | None = None,
               overrides: dict[str, Any] | None = None, preset: str | None = None,
               input_size: tuple[int, int] | None = None, model: str | None = None,
               plugins: Sequence[str] = (), sources: dict[str, str] | None = None) -> CheckedGraph:
    ir, sink = _lower(spec, tasks, overrides, preset, input_size, model, plugins, sources=sources)
    return check_ir(ir, sink)


@dataclass
class DocumentCheck:
    """``check_document``'s answer: the checked graph (None when the spec has mistakes), the
    mistakes, and every file read (resolved path -> its ``FileScope``: syntax tree, blocks)."""

    graph: CheckedGraph | None
    diagnostics: list[Diagnostic]
    files: dict[str, Any] = field(default_factory=dict)


def check_document(spec: str | Path, tasks: str | TaskProfile | None = None,
                   input_size: tuple[int, int] | None = None,
                   sources: dict[str, str] | None = None,
                   parsed: dict | None = None) -> DocumentCheck:
    """``check_spec`` for an editor (``mtl-dsl lsp``): the same checks, its mistakes returned
    rather than raised, with the files as the loader read them; ``parsed`` keeps syntax trees
    from one call to the next."""
    lowerers: list[Lowerer] = []
    try:
        ir, sink = _lower(spec, tasks, None, None, input_size, None, sources=sources,
                          parsed=parsed, lowerers=lowerers)
        graph, diagnostics = check_ir(ir, sink), []
    except SpecError as e:
        graph, diagnostics = None, list(e.diagnostics)
    files = dict(lowerers[0].loader.files) if lowerers else {}
    return DocumentCheck(graph, diagnostics, files)


def compile_model(spec: str | Path, tasks: str | TaskProfile | None = None,
                  overrides: dict[str, Any] | None = None, preset: str | None = None,
                  input_size: tuple[int, int] | None = None, model: str | None = None,
                  plugins: Sequence[str] = (), sources: dict[str, str] | None = None,
                  fuse: bool | None = None) -> "CompiledModel":
    """The model of a spec. Cross-task fusion (``mtl_dsl.passes.fuse``) is on unless ``fuse`` is
    false or the overrides say ``fuse = false`` (``--set fuse=false``); it changes how the model
    runs, never its parameters, and ``model.set_fusion`` switches it later."""
    from .compiler import compile_graph

    overrides, fuse_set = fusion_option(overrides)
    graph = check_spec(spec, tasks, overrides, preset, input_size, model, plugins, sources=sources)
    return compile_graph(graph, fuse=fuse_set if fuse is None else fuse)


def build_model(spec: Any, tasks: str | TaskProfile | None = None,
                overrides: dict[str, Any] | None = None, preset: str | None = None,
                input_size: tuple[int, int] | None = None, plugins: Sequence[str] = ()) -> Any:
    """The model of a spec (a path or built-in name: ``compile_model``) or of a model factory, a
    callable ``factory(profile, input_size)`` returning an ``nn.Module`` with the compiled model's
    output format (what the training runtime accepts in place of a spec)."""
    if callable(spec) and not isinstance(spec, (str, Path)):
        profile = resolve_profile(tasks)
        return spec(profile, tuple(input_size) if input_size is not None else profile.input_size)
    return compile_model(str(spec), tasks, overrides, preset, input_size, plugins=plugins)


def compile_ir(ir: ModelIR, fuse: bool = True) -> "CompiledModel":
    from .compiler import compile_graph

    return compile_graph(check_ir(ir), fuse=fuse)
