"""``weights NAME { ... }``: a spec's maps from official checkpoint names to its own, expanded to
plain IR entries (``ir.WeightRule``) while the spec is lowered.

An entry ``"head.bottleneck.{t}" -> "out.{t}.bottleneck"`` pairs an official key prefix with a
prefix of this spec's node/parameter names; ``unused "multi_task_decoder.scale_embed.2": "..."``
says why the official tensors under a prefix are not used. Placeholders: ``{t}`` is a task name
and ``{i}`` its position in the task list (the official repositories index per-task
``ModuleList``s by it); an entry using them, outside a loop binding ``t``, is expanded for every
task. Any other ``{name}`` is a constant in scope (a loop variable of the map's own ``for``, a
block parameter).

Entries in a user block are relative to where the block is inlined (its node-name prefix), so
they compose: an entry whose target is a call of a block that has a map of the same name stands
for that block's entries, their official names appended to the entry's; maps of inlined blocks
that no entry points at are included as they are. Each entry remembers the imports it came
through (``via``), which is how ``train --init demt=FILE`` finds the parts a hybrid imports.
This module does not import torch.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from ..ir import WeightRule

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
TASK, TASK_INDEX = "t", "i"


class PatternError(ValueError):
    """A placeholder that cannot be filled (the lowerer adds the location)."""


def placeholders(text: str | None) -> list[str]:
    return PLACEHOLDER.findall(text or "")


def expand(official: str, target: str | None, lookup: Callable[[str], tuple[bool, Any]],
           tasks: list[str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Fill the placeholders of one entry: [(official, target, the values used)], one per task
    when ``{t}``/``{i}`` are used and ``t`` is not bound in scope."""
    names = placeholders(official) + placeholders(target)
    for name in names:
        if not name.isidentifier():
            raise PatternError(f"'{{{name}}}' is not a placeholder: write {{name}} with a name "
                               f"in scope, {{t}} (task) or {{i}} (its position)")
    bound: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        found, value = lookup(name)
        if found:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise PatternError(f"'{{{name}}}' must be a name or an integer, got "
                                   f"{type(value).__name__} {value!r}")
            bound[name] = value
        elif name not in (TASK, TASK_INDEX):
            raise PatternError(f"unknown name '{name}' in '{{{name}}}'")
    per_task = any(n in (TASK, TASK_INDEX) and n not in bound for n in names)
    if TASK_INDEX in names and TASK_INDEX not in bound and TASK in bound:
        if bound[TASK] not in tasks:
            raise PatternError(f"'{{i}}' is the position of task t, but t = {bound[TASK]!r} is "
                               f"not a task")
        bound[TASK_INDEX] = tasks.index(bound[TASK])
        per_task = False
    runs = [dict(bound, **{TASK: t, TASK_INDEX: i}) for i, t in enumerate(tasks)] if per_task \
        else [bound]
    return [(_fill(official, values), _fill(target, values) if target is not None else None, values)
            for values in runs]


def _fill(text: str, values: dict[str, Any]) -> str:
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


Maps = dict[str, list[WeightRule]]


def compose(own: Maps, calls: dict[str, Maps]) -> Maps:
    """A block's (or model's) maps with those of the user blocks inlined in it (``calls``: call
    prefix -> its maps, targets absolute). An entry whose target is such a call's prefix stands
    for that call's entries of the same map; the calls' other maps are included as they are."""
    out: Maps = {}
    consumed: set[tuple[str, str]] = set()
    for name, entries in own.items():
        result = out.setdefault(name, [])
        for e in entries:
            inner = calls.get(e.target or "", {}).get(name) if e.target is not None else None
            if inner is None:
                result.append(e)
                continue
            consumed.add((e.target or "", name))
            result.extend(c.model_copy(update={"official": join(e.official, c.official)})
                          for c in inner)
    for prefix, maps in calls.items():
        for name, entries in maps.items():
            if (prefix, name) not in consumed:
                out.setdefault(name, []).extend(entries)
    return out


def tag(maps: Maps, via: Iterable[str]) -> Maps:
    """The entries of a call through an import (``demt.demt_encoder(...)``) remember it."""
    extra = [v for v in via if v]
    if not extra:
        return maps
    return {name: [e.model_copy(update={"via": list(dict.fromkeys([*e.via, *extra]))})
                   for e in entries] for name, entries in maps.items()}
