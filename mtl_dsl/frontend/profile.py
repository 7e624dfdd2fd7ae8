"""The task profile and input size a model is compiled for.

A spec is normally dataset-free: it loops over ``tasks``, and the profile comes from ``--tasks``
(default: the built-in synthetic scenes). A spec made for one dataset says so at the top of its
model, ``profile nyud`` (or ``profile nyud(input = [448, 576])``, or a task list such as
``profile "semseg:13,depth"``): that profile is then the default; a selection of its tasks (same
channels, any order) is accepted at the profile's input size, and any other task set is refused with
one error, before anything else is lowered (ATRC's searched context tables name one dataset's tasks).
"""
from __future__ import annotations

from ..errors import Diagnostics, did_you_mean
from ..tasks import PROFILES, TaskError, TaskProfile, resolve_tasks
from . import ast
from .consteval import Evaluator
from .values import Poison, Scope, short

MIN_SIDE, MAX_SIDE = 8, 8192


def declared(model: ast.BlockDef) -> list[ast.Profile]:
    return [s for s in model.body if isinstance(s, ast.Profile)]


def describe(profile: TaskProfile) -> str:
    """``semseg:40, depth, normals, edge``: the tasks with the class counts that vary."""
    return ", ".join(f"{t.name}:{t.channels}" if t.is_classification and t.name != "sal"
                     else t.name for t in profile.tasks)


def choose(sink: Diagnostics, model: ast.BlockDef, requested: TaskProfile | None,
           input_size: tuple[int, int] | None) -> tuple[TaskProfile, tuple[int, int]] | None:
    """The profile and input size to compile ``model`` for; None after reporting why not."""
    statements = declared(model)
    default = PROFILES["synthetic"]
    if not statements:
        profile = requested or default
        return profile, tuple(input_size or profile.input_size)  # type: ignore[return-value]
    for extra in statements[1:]:
        sink.error(extra.loc, "a model states its profile once",
                   notes=(f"it is stated at line {statements[0].loc.line}",))
    stmt = statements[0]
    try:
        made_for = resolve_tasks(stmt.name)
    except TaskError as e:
        sink.error(stmt.loc, e.message)
        return None
    size = _declared_input(sink, stmt, made_for)
    if size is None or len(statements) > 1:
        return None
    if requested is not None and requested.tasks != made_for.tasks:
        if _subset(requested, made_for):
            return requested, tuple(input_size or size)  # type: ignore[return-value]
        sink.error(stmt.loc, f"model '{model.name}' is made for the task profile '{stmt.name}' "
                             f"({describe(made_for)}), not for '{requested.name}' "
                             f"({describe(requested)})",
                   "leave out --tasks (the model's profile is its default), or use a model made "
                   f"for {requested.name}")
        return None
    return made_for, tuple(input_size or size)  # type: ignore[return-value]


def _subset(requested: TaskProfile, made_for: TaskProfile) -> bool:
    """Some of the profile's tasks, each with the profile's channels, in any order: the official
    ATRC code builds a searched genotype for any such task list (github.com/brdav/atrc 76d80551,
    src/model/heads/relationalcontext.py reads ``atrc_genotype[target][source]`` for the
    configured tasks only), so the spec's table serves it too."""
    names = [t.name for t in requested.tasks]
    return len(set(names)) == len(names) and all(t in made_for.tasks for t in requested.tasks)


def _declared_input(sink: Diagnostics, stmt: ast.Profile,
                    made_for: TaskProfile) -> tuple[int, int] | None:
    size = made_for.input_size
    for arg in stmt.values:
        if arg.name != "input":
            sink.error(arg.loc, f"'profile' takes one setting, input = [height, width]; not "
                                f"'{arg.name}'", did_you_mean(arg.name or "", ["input"]))
            return None
        try:
            value = Evaluator(sink, made_for).const(arg.value, Scope({}, None, ""), "'input'")
        except Poison:
            return None
        if not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and MIN_SIDE <= v <= MAX_SIDE
                for v in value)):
            sink.error(arg.value.loc, f"'input' is [height, width] in pixels ({MIN_SIDE} to "
                                      f"{MAX_SIDE} each), got {short(value)}")
            return None
        size = (value[0], value[1])
    return size
