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
from . import ast

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


# -- while lowering ---------------------------------------------------------------------------------

class WeightMaps:
    """Collects the maps of a model and of every user block inlined into it, as the lowering
    walks them (one frame per open block; the model's is the first)."""

    def __init__(self, ev: Any, names: Any, tasks: list[str],
                 failures: Callable[[], int] = lambda: 0):
        self.ev = ev  # consteval.Evaluator: constants, located errors
        self.names = names  # naming.NodeNames: the nodes made so far
        self.tasks = tasks
        self.failures = failures  # statements that failed so far: their nodes were never made
        self.frames: list[_Frame] = []

    # frames ------------------------------------------------------------------------------------
    def enter(self, body: list) -> None:
        """A block's (or the model's) body starts being lowered."""
        self.frames.append(_Frame(top_level={id(s) for s in body if isinstance(s, ast.Weights)}))

    def discard(self) -> None:
        """The block failed: its maps are dropped with it (its error is reported)."""
        self.frames.pop()

    def leave(self, body: list, scope: Any, prefix: str, via: Iterable[str]) -> None:
        """An inlined block's body is lowered: its maps, composed with those of the blocks it
        inlined, are the maps of the call at ``prefix``."""
        frame = self.frames.pop()
        maps = tag(compose(self._evaluate(body, scope), frame.calls), via)
        if maps and self.frames:
            self.frames[-1].calls[prefix] = maps

    def finish(self, body: list, scope: Any) -> Maps:
        """The model's body is lowered: its maps (empty ones dropped)."""
        frame = self.frames.pop()
        maps = compose(self._evaluate(body, scope), frame.calls)
        return {name: entries for name, entries in maps.items() if entries}

    def check_placement(self, stmt: "ast.Weights", scope: Any) -> None:
        """A map is written at the top level of a block or model body (not in a loop or an if),
        and is read once the body is lowered."""
        if stmt.keyword != "weights":
            raise self.ev.error(ast.keyword_loc(stmt), f"unknown statement "
                                f"'{stmt.keyword} {stmt.name} {{ ... }}'",
                                "a map of official weight names is written `weights NAME { ... }`")
        if not self.frames or id(stmt) not in self.frames[-1].top_level or not scope.is_function:
            raise self.ev.error(ast.keyword_loc(stmt),
                                "a weights map is written at the top level of a block or model, "
                                "not inside a loop or an if",
                                "use `for` and `if` inside the map")

    # evaluation --------------------------------------------------------------------------------
    def _evaluate(self, body: list, scope: Any) -> Maps:
        from .values import Poison

        out: Maps = {}
        for stmt in body:
            if isinstance(stmt, ast.Weights) and stmt.keyword == "weights":
                rules = out.setdefault(stmt.name, [])
                try:
                    self._items(stmt.name, stmt.items, scope, rules)
                except Poison:  # reported where the poisoned value was made: one error per cause
                    pass
        return out

    def _items(self, name: str, items: list, scope: Any, rules: list[WeightRule]) -> None:
        from .values import Poison

        for item in items:
            try:
                if isinstance(item, ast.WeightsEntry):
                    rules.extend(self._entry(name, item, scope))
                elif isinstance(item, ast.WeightsFor):
                    self._for(name, item, scope, rules)
                elif isinstance(item, ast.WeightsIf):
                    cond = self.ev.const(item.condition, scope, "an if condition")
                    if not isinstance(cond, bool):
                        raise self.ev.error(item.condition.loc, "an if condition must be true "
                                                                "or false")
                    self._items(name, item.body if cond else item.orelse, scope, rules)
            except Poison:
                continue

    def _for(self, name: str, item: "ast.WeightsFor", scope: Any, rules: list[WeightRule]) -> None:
        from .values import Scope, TableRow, TableValue

        values = self.ev.const(item.iterable, scope, "a for loop")
        if isinstance(values, (TableRow, TableValue)):
            values = list(self.tasks)
        if not isinstance(values, list):
            raise self.ev.error(item.iterable.loc, "a for loop runs over a list")
        for value in values:
            inner = Scope(vars={item.var: value}, parent=scope, prefix=scope.prefix,
                          suffix=scope.suffix, is_function=False, file=scope.file,
                          loop_var=item.var)
            if item.condition is not None:
                cond = self.ev.const(item.condition, inner, "a loop condition")
                if not isinstance(cond, bool):
                    raise self.ev.error(item.condition.loc, "a loop condition must be true or "
                                                            "false")
                if not cond:
                    continue
            self._items(name, item.body, inner, rules)

    def _entry(self, name: str, e: "ast.WeightsEntry", scope: Any) -> list[WeightRule]:
        from .values import sloc

        where = f"weights map '{name}'"
        if e.target is None and e.keyword != "unused":
            raise self.ev.error(ast.keyword_loc(e), f"{where}: expected an entry "
                                f"\"official\" -> \"ours\" or unused \"official\": \"reason\", "
                                f"got '{e.keyword}'")
        for text, loc, what in ((e.official, e.loc, "official name"),
                                (e.target, e.target_loc, "name of this spec")):
            if text is not None and not _dotted(text, allow_empty=what == "official name"):
                raise self.ev.error(loc or e.loc, f"{where}: '{text}' is not a dotted "
                                                  f"{what} (parts separated by single dots)")
        try:
            expanded = expand(e.official, e.target, scope.lookup, self.tasks)
        except PatternError as exc:
            raise self.ev.error(e.loc, f"{where}: {exc}") from None
        rules = []
        for official, target, values in expanded:
            absolute = scope.prefix + target if target is not None else None
            if absolute is not None and not self._exists(absolute):
                if self.failures():  # a node a failed statement would have made: not reported
                    continue
                for_task = f" (for t = {values[TASK]})" if TASK in values and \
                    TASK in placeholders(e.target) else ""
                raise self.ev.error(e.target_loc or e.loc,
                                    f"{where}: '{target}'{for_task} names no node of this "
                                    f"{'block' if scope.prefix else 'model'}",
                                    self._suggest(absolute, scope.prefix))
            rules.append(WeightRule(official=official, target=absolute, reason=e.reason,
                                    loc=sloc(e.loc)))
        return rules

    def _exists(self, name: str) -> bool:
        """A node, a name prefix of nodes, or a path inside a node's module."""
        if name in self.names.names or name in self.names.prefixes:
            return True
        parts = name.split(".")
        return any(".".join(parts[:i]) in self.names.names for i in range(1, len(parts)))

    def _suggest(self, name: str, prefix: str) -> str:
        from ..errors import did_you_mean

        known = [n[len(prefix):] for n in self.names.names if n.startswith(prefix)]
        return did_you_mean(name[len(prefix):], known) or \
            ("its nodes: " + ", ".join(sorted(known)[:8]) if known else "")


class _Frame:
    def __init__(self, top_level: set[int]):
        self.top_level = top_level
        self.calls: dict[str, Maps] = {}  # call prefix -> the maps of the block inlined there


def _dotted(text: str, allow_empty: bool) -> bool:
    if text == "":
        return allow_empty
    return all(part for part in text.split("."))
