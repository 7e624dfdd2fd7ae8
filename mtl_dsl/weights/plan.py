"""The correspondence between an official checkpoint's tensors and a compiled model's, by name.

Input: the entries of one ``weights`` map of the spec (``WeightRule``: an official name prefix and
the model name prefix it is, or the reason it is not used), each node's official layout (declared
by its block, see ``layout``), the official tensors' names and shapes, and the model's. Output: a
``Plan`` that says, for every official tensor, which model tensor(s) it becomes and how (copy,
split, channel permutation), or why it is not used; and what does not fit (official tensors no
entry covers, model tensors that get no value, shape mismatches with both names and shapes, a
tensor claimed twice).

Never by order or shape: an official tensor goes where its name says, or nowhere. For each
official key the entry with the longest matching prefix decides; the rest of the key is carried
over to the entry's target, and if the model has no tensor of that name, the node's block says
what its official layout calls it. This module does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..ir import WeightRule
from .layout import COPY, SPLIT, UNFOLD_ORDER, Alias, join, resolve, under

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transfer:
    """Official tensor ``official`` becomes the model tensor(s) ``ours`` by ``op``."""

    official: str
    ours: tuple[str, ...]
    op: str
    entry: WeightRule


@dataclass
class Plan:
    map_name: str
    transfers: list[Transfer] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)  # official key -> reason
    outside: list[str] = field(default_factory=list)  # official keys no entry covers
    missing: list[str] = field(default_factory=list)  # model keys that get no value
    mismatches: list[str] = field(default_factory=list)  # "official X (shape) -> ours Y (shape)"
    unresolved: list[str] = field(default_factory=list)  # an entry points at no model tensor
    conflicts: list[str] = field(default_factory=list)  # a tensor claimed twice
    kept_optional: list[str] = field(default_factory=list)  # optional in the layout, not in the file
    scoped: bool = False  # only the entries of one part (``--init demt=FILE``)

    @property
    def loaded(self) -> set[str]:
        return {name for t in self.transfers for name in t.ours}

    def problems(self, allow_partial: bool) -> list[str]:
        """What makes this plan unusable, most telling first, one line each."""
        out: list[str] = []
        if self.mismatches:
            more = len(self.mismatches) - 1
            out.append(f"shape mismatch: {self.mismatches[0]}" +
                       (f" (and {more} more, e.g. {self.mismatches[1]})" if more else ""))
        out += self.conflicts
        out += self.unresolved
        if self.outside and not self.scoped:
            out.append(f"{len(self.outside)} official tensor{_s(self.outside)} not in the map "
                       f"'{self.map_name}' (a checkpoint of another model?): "
                       f"{listing(self.outside)}")
        if self.missing and not allow_partial:
            out.append(f"{len(self.missing)} model tensor{_s(self.missing)} get no value: "
                       f"{listing(self.missing)} (--allow-partial keeps their initialisation)")
        return out


def _s(items: Sequence) -> str:
    return "" if len(items) == 1 else "s"


def listing(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def select(entries: Iterable[WeightRule], part: str | None) -> list[WeightRule]:
    """The entries of one imported part (``demt``: what the spec's ``import "demt.mtl" as demt``
    brought in), or all of them."""
    entries = list(entries)
    if part is None:
        return entries
    return [e for e in entries if part in e.via]


def make_plan(map_name: str, entries: Sequence[WeightRule], official: dict[str, Shape],
              model: dict[str, Shape], layouts: dict[str, tuple[Alias, ...]],
              scoped: bool = False) -> Plan:
    """``official`` and ``model``: name -> shape, in their files' orders; ``layouts``: node name
    -> the official layout its block declares (every node of the model, even without one)."""
    plan = Plan(map_name=map_name, scoped=scoped)
    index = _EntryIndex(entries)
    claimed: dict[str, str] = {}
    mismatched: set[str] = set()  # model tensors named by an official one of another shape
    for key, shape in official.items():
        entry = index.find(key, plan)
        if entry is None:
            continue
        resolved = _resolve(key, entry, model, layouts, plan)
        if resolved is None:
            continue
        names, op = resolved
        problem = _shape_problem(op, shape, [model[n] for n in names])
        if problem:
            mismatched.update(names)
            ours = ", ".join(f"{n} {list(model[n])}" for n in names)
            plan.mismatches.append(f"official {key} {list(shape)} -> model {ours}" +
                                   (f" ({problem})" if problem != "shape" else ""))
            continue
        twice = [n for n in names if n in claimed]
        if twice:
            plan.conflicts.append(f"model tensor {twice[0]} gets two values: from {claimed[twice[0]]} "
                                  f"and from {key}")
            continue
        for n in names:
            claimed[n] = key
        plan.transfers.append(Transfer(key, tuple(names), op, entry))
    _set_missing(plan, entries, model, layouts, set(claimed) | mismatched)
    return plan


def _resolve(key: str, entry: WeightRule, model: dict[str, Shape],
             layouts: dict[str, tuple[Alias, ...]], plan: Plan) -> tuple[list[str], str] | None:
    """The model tensors official ``key`` goes to under ``entry``, and how (copy, or an op of the
    official layout its block declares); None when the key is unused or does not resolve (noted
    in ``plan``)."""
    if entry.target is None:
        plan.unused[key] = entry.reason
        return None
    rest = key[len(entry.official):].lstrip(".") if entry.official else key
    candidate = join(entry.target, rest)
    if candidate in model:
        return [candidate], COPY
    found = _through_layout(candidate, layouts)
    if found is None:
        plan.unresolved.append(f"{key} -> {candidate}: the model has no tensor of that "
                               f"name ({_where(entry)})")
        return None
    alias, names = found
    if alias.unused:
        plan.unused[key] = alias.reason
        return None
    absent = [n for n in names if n not in model]
    if absent:
        plan.unresolved.append(f"{key} -> {', '.join(absent)}: the model has no tensor "
                               f"of that name ({_where(entry)})")
        return None
    return names, alias.op


def _set_missing(plan: Plan, entries: Sequence[WeightRule], model: dict[str, Shape],
                 layouts: dict[str, tuple[Alias, ...]], named: set[str]) -> None:
    """The model tensors no official tensor names (``named``: claimed or mismatched): kept when
    their layout says a file may lack them, else missing (a scoped map: only under its targets)."""
    optional = _optional(layouts)
    unclaimed = [k for k in model if k not in named]
    plan.kept_optional = [k for k in unclaimed if k in optional]
    unclaimed = [k for k in unclaimed if k not in optional]
    if plan.scoped:
        targets = [e.target for e in entries if e.target is not None]
        plan.missing = [k for k in unclaimed if any(under(k, t) for t in targets)]
    else:
        plan.missing = unclaimed


def _optional(layouts: dict[str, tuple[Alias, ...]]) -> set[str]:
    """Model tensors the official layouts say a file may lack (see ``Alias.optional``)."""
    return {join(node, alias.ours[0]) for node, aliases in layouts.items() for alias in aliases
            if alias.optional}


class _EntryIndex:
    """Longest-prefix lookup of map entries, grouped by the first name component."""

    def __init__(self, entries: Sequence[WeightRule]):
        self.by_head: dict[str, list[WeightRule]] = {}
        for e in entries:
            self.by_head.setdefault(e.official.split(".")[0], []).append(e)

    def find(self, key: str, plan: Plan) -> WeightRule | None:
        best: list[WeightRule] = []
        for e in self.by_head.get(key.split(".")[0], []) + self.by_head.get("", []):
            if under(key, e.official):
                if not best or len(e.official) > len(best[0].official):
                    best = [e]
                elif len(e.official) == len(best[0].official) and e not in best:
                    best.append(e)
        if not best:
            plan.outside.append(key)
            return None
        distinct = {(e.target, e.reason) for e in best}
        if len(distinct) > 1:
            plan.conflicts.append(f"official tensor {key} is claimed by two entries: "
                                  f"{_where(best[0])} and {_where(best[1])}")
            return None
        return best[0]


def _through_layout(candidate: str, layouts: dict[str, tuple[Alias, ...]]
                    ) -> tuple[Alias, list[str]] | None:
    """The node holding ``candidate`` and its block's official layout for the rest of the name."""
    parts = candidate.split(".")
    for i in range(len(parts), 0, -1):
        node = ".".join(parts[:i])
        if node in layouts:
            found = resolve(layouts[node], ".".join(parts[i:]))
            if found is None:
                return None
            alias, names = found
            return alias, [join(node, n) for n in names]
    return None


def _shape_problem(op: str, official: Shape, ours: list[Shape]) -> str:
    if op == SPLIT:
        if any(tuple(o[1:]) != tuple(official[1:]) for o in ours) or \
                sum(o[0] for o in ours) != (official[0] if official else -1):
            return f"it holds {len(ours)} tensors stacked along dim 0"
        return ""
    if tuple(official) != tuple(ours[0]):
        return "shape"
    if op == UNFOLD_ORDER and (not official or official[-1] % 4):
        return "the last dim is not 4 x channels"
    return ""


def _where(entry: WeightRule) -> str:
    return f"{entry.loc.file}:{entry.loc.line}"
